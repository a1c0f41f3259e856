//! What each fuzz target asserts about one input, shared by the AFL++ targets in
//! `fuzz/src/bin/` and by `tests/fuzz.rs`, which replays what the fuzzers found (and the seeds)
//! in every `cargo test`. Each function takes the raw bytes a peer, or an operator's file, could
//! hold, and panics when a property fails; a panic is what the fuzzer records as a crash.

use std::fmt;
use std::sync::OnceLock;
use std::time::Duration;

use hatune::config::{Config, TOP_KEYS};
use hatune::peers::{InstanceRecord, WeightSet};
use hatune::sink::haproxy::{
    parse_show_info, parse_show_stat, weight_verdict, PromptFramer, Verdict,
};
use hatune::source::cadvisor::{
    cpuset_size, parse_containers, parse_containers_with_labels, parse_num_cores, parse_rfc3339,
    utilisation, utilisation_from_mark, ContainerInfo, CpuSpec, Mark, Sample, Window,
};
use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

/// Every target, by the name of its binary and of its folder of inputs.
pub const TARGETS: &[&str] = &[
    "show_stat",
    "show_info",
    "prompt_reply",
    "cadvisor_containers",
    "cadvisor_machine",
    "config",
    "exposition",
    "weight_set",
];

/// Runs the check of `target` on `data`.
pub fn check(target: &str, data: &[u8]) {
    match target {
        "show_stat" => show_stat(data),
        "show_info" => show_info(data),
        "prompt_reply" => prompt_reply(data),
        "cadvisor_containers" => cadvisor_containers(data),
        "cadvisor_machine" => cadvisor_machine(data),
        "config" => config(data),
        "exposition" => exposition(data),
        "weight_set" => weight_set(data),
        _ => panic!("no fuzz target {target:?}"),
    }
}

/// An error quotes at most the start of what it could not read (80 characters, escaped), never
/// a whole reply into the log.
const MAX_ERROR_LEN: usize = 1200;

/// `show stat`, read as the client reads it (lossy UTF-8): never panics; every row it keeps
/// names its backend and server; an error is short.
pub fn show_stat(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    match parse_show_stat(&text) {
        Ok(stat) => {
            assert!(text.contains('#'), "a stat without a `#` header line");
            for s in &stat.servers {
                assert!(!s.backend.is_empty() && !s.server.is_empty(), "{s:?}");
            }
            for b in &stat.backends {
                assert!(!b.name.is_empty(), "{b:?}");
            }
        }
        Err(e) => assert!(!e.is_empty() && e.len() <= MAX_ERROR_LEN, "{e:?}"),
    }
}

/// `show info`: never panics; an error is short.
pub fn show_info(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    match parse_show_info(&text) {
        Ok(info) => assert!(
            text.contains("Pid") && text.contains("Uptime_sec"),
            "{info:?}"
        ),
        Err(e) => assert!(!e.is_empty() && e.len() <= MAX_ERROR_LEN, "{e:?}"),
    }
}

/// The prompt-mode session. The first byte `n` (mod 16) says how many of the next bytes are
/// read sizes (cycled; 0 is an empty read); the rest is the stream. It is framed once whole and
/// once in those reads: the replies and what is left pending must be the same, no reply holds
/// the marker, the replies and the markers give back the stream, and every reply has a verdict.
pub fn prompt_reply(data: &[u8]) {
    const PROMPT: &str = "\n> ";
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = usize::from(n % 16).min(rest.len());
    let (sizes, stream) = rest.split_at(n);

    let mut whole = PromptFramer::new();
    whole.push(stream);
    let replies: Vec<String> = std::iter::from_fn(|| whole.next_reply()).collect();
    assert_eq!(whole.next_reply(), None);

    let mut framer = PromptFramer::new();
    let mut pieces = Vec::new();
    let mut at = 0;
    let mut sizes = sizes.iter().map(|&s| usize::from(s)).cycle();
    let mut last_was_empty = false;
    while at < stream.len() {
        let size = sizes.next().unwrap_or(stream.len());
        // Sizes that are all 0 would never get anywhere: an empty read is followed by a byte.
        let size = if size == 0 && last_was_empty { 1 } else { size };
        last_was_empty = size == 0;
        let end = (at + size).min(stream.len());
        framer.push(&stream[at..end]);
        at = end;
        while let Some(r) = framer.next_reply() {
            pieces.push(r);
        }
    }
    assert_eq!(replies, pieces, "framing depends on where reads split");
    assert_eq!(whole.pending(), framer.pending());
    assert!(
        !contains(whole.pending(), PROMPT.as_bytes()),
        "a complete reply left pending"
    );

    if let Ok(text) = std::str::from_utf8(stream) {
        let mut rebuilt = String::new();
        for r in &replies {
            rebuilt.push_str(r);
            rebuilt.push_str(PROMPT);
        }
        rebuilt
            .push_str(std::str::from_utf8(whole.pending()).expect("pending is the stream's tail"));
        assert_eq!(rebuilt, text, "the replies do not add up to the stream");
    }
    for r in &replies {
        assert!(!r.contains(PROMPT), "{r:?} holds the end marker");
        let trimmed = r.trim();
        match weight_verdict(r) {
            Verdict::Applied => assert!(trimmed.is_empty(), "{r:?} read as applied"),
            Verdict::PermissionDenied(t) => {
                assert_eq!(t, trimmed);
                assert!(t.ends_with("Permission denied"), "{t:?}");
            }
            Verdict::UnknownCommand(t) => {
                assert_eq!(t, trimmed);
                assert!(t.contains("Unknown command"), "{t:?}");
            }
            Verdict::Refused(t) => assert!(!t.is_empty() && t == trimmed, "{t:?}"),
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A cAdvisor container list: never panics; wherever serde_json reads the same bytes, the
/// lenient parser reads the same containers (as `ContainerInfo` from `serde_json::Value`
/// says), with their labels when asked for them and without otherwise; and `utilisation` of each, over several windows and core counts, is either a
/// reason or finite numbers over a forward window of its own samples.
pub fn cadvisor_containers(data: &[u8]) {
    let parsed = parse_containers_with_labels(data);
    let lean = parse_containers(data);
    if let Ok(Entries(entries)) = serde_json::from_slice::<Entries>(data) {
        let want: Vec<ContainerInfo> = entries
            .iter()
            .filter(|(_, v)| v.is_object())
            .map(|(key, v)| from_value(key.as_deref(), v))
            .collect();
        match &parsed {
            Ok(got) => assert_eq!(got, &want, "the lenient parser disagrees with serde_json"),
            Err(e) => panic!("serde_json reads what the lenient parser refuses: {e}"),
        }
    }
    match (&parsed, &lean) {
        (Ok(full), Ok(lean)) => {
            let unlabelled: Vec<ContainerInfo> = full
                .iter()
                .cloned()
                .map(|c| ContainerInfo {
                    labels: Default::default(),
                    ..c
                })
                .collect();
            assert_eq!(
                lean, &unlabelled,
                "labels aside, both parsers read the same"
            );
        }
        (Err(_), Err(_)) => {}
        _ => panic!("one parser refuses what the other reads: {parsed:?} / {lean:?}"),
    }
    let Ok(containers) = parsed else { return };
    for c in &containers {
        let stamps: Vec<i128> = c.samples.iter().filter_map(|s| s.timestamp).collect();
        let mut windows = vec![
            Window::Span(Duration::ZERO),
            Window::Span(Duration::from_secs(60)),
            Window::Span(Duration::MAX),
            Window::Since(i128::MIN),
            Window::Since(i128::MAX),
        ];
        windows.extend(stamps.iter().take(4).map(|&t| Window::Since(t)));
        for window in windows {
            for cores in [0, 1, 2, 64, u32::MAX] {
                let Ok(u) = utilisation(c, cores, window) else {
                    continue;
                };
                assert!(u.from < u.to, "{u:?}");
                assert!(stamps.contains(&u.from) && stamps.contains(&u.to), "{u:?}");
                assert!(u.cores_used.is_finite() && u.cores_used >= 0.0, "{u:?}");
                assert!(
                    u.capacity_cores.is_finite() && u.capacity_cores > 0.0,
                    "{u:?}"
                );
                assert!(u.cpu.is_finite() && u.cpu >= 0.0, "{u:?}");
            }
        }
        // The lean tick: a reading from a mark (the container's own samples, or none) is a
        // reason, or finite numbers from the mark forward to one of its samples.
        let marks = c.samples.iter().take(4).filter_map(|s| {
            Some(Mark {
                t: s.timestamp?,
                usage: s.usage_total?,
            })
        });
        for mark in std::iter::once(None).chain(marks.map(Some)) {
            for (cores, now) in [(0, i128::MAX), (2, i128::MAX), (64, 0)] {
                let Ok(u) = utilisation_from_mark(c, mark, cores, now) else {
                    continue;
                };
                let m = mark.expect("no mark gives no reading");
                assert!(u.from == m.t && u.from < u.to, "{u:?} from {m:?}");
                assert!(stamps.contains(&u.to), "{u:?}");
                assert!(u.cores_used.is_finite() && u.cores_used >= 0.0, "{u:?}");
                assert!(u.cpu.is_finite() && u.cpu >= 0.0, "{u:?}");
            }
        }
    }
}

/// What the lenient parser should make of one entry, read from serde_json's own `Value`.
fn from_value(key: Option<&str>, v: &Value) -> ContainerInfo {
    let num = |v: &Value| {
        v.as_u64().or_else(|| {
            v.as_f64()
                .filter(|f| f.is_finite() && (0.0..18_446_744_073_709_551_616.0).contains(f))
                .map(|f| f as u64)
        })
    };
    let cpu = &v["spec"]["cpu"];
    let list = |v: &Value| v.as_array().cloned().unwrap_or_default();
    ContainerInfo {
        name: v["name"].as_str().or(key).unwrap_or_default().to_string(),
        aliases: list(&v["aliases"])
            .iter()
            .filter_map(|a| a.as_str().map(str::to_string))
            .collect(),
        labels: v["spec"]["labels"]
            .as_object()
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                    .collect()
            })
            .unwrap_or_default(),
        cpu: CpuSpec {
            quota: num(&cpu["quota"]),
            period: num(&cpu["period"]),
            cpuset_size: cpu["mask"].as_str().and_then(cpuset_size),
        },
        samples: list(&v["stats"])
            .iter()
            .map(|s| Sample {
                timestamp: s["timestamp"].as_str().and_then(parse_rfc3339),
                usage_total: num(&s["cpu"]["usage"]["total"]),
            })
            .collect(),
    }
}

/// A JSON object's entries in order, duplicates kept (`Value` would merge them), or an array's
/// items without keys; anything else is an error, as it is for the parser.
struct Entries(Vec<(Option<String>, Value)>);

impl<'de> Deserialize<'de> for Entries {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Entries;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object or an array")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entries, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, Value>()? {
                    out.push((Some(k), v));
                }
                Ok(Entries(out))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Entries, A::Error> {
                let mut out = Vec::new();
                while let Some(v) = seq.next_element::<Value>()? {
                    out.push((None, v));
                }
                Ok(Entries(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// A `/api/v1.3/machine` reply: never panics, and a core count is only read from a JSON object
/// whose `num_cores` is that number. (serde_json skips the fields it does not read without
/// checking their escapes, UTF-8 or number ranges, so where `Value` refuses the bytes there is
/// nothing to compare.)
pub fn cadvisor_machine(data: &[u8]) {
    let Ok(n) = parse_num_cores(data) else {
        return;
    };
    if let Ok(v) = serde_json::from_slice::<Value>(data) {
        assert!(v.is_object(), "num_cores {n} read from {v}");
        assert_eq!(v["num_cores"].as_u64(), Some(u64::from(n)), "{v}");
    }
}

/// A config file's text: never panics, and every error names a key, or is about the file as a
/// whole (not JSON, or not an object). A key it names is one the config has or may have.
pub fn config(data: &[u8]) {
    // `Config::load` refuses a file that is not UTF-8 before parsing.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let e = match Config::parse(text) {
        Ok(c) => {
            assert!(!c.haproxy.is_empty() && !c.cadvisor.is_empty() && !c.backends.is_empty());
            assert!(!c.timeout.is_zero() && !c.window.is_zero());
            return;
        }
        Err(e) => e,
    };
    assert!(!e.message.trim().is_empty(), "{e:?}");
    let top = serde_json::from_str::<Value>(text).ok();
    let top = top.as_ref().and_then(Value::as_object);
    match top {
        None => assert!(
            e.key.is_empty(),
            "not a JSON object, yet the error is at a key: {e}"
        ),
        Some(top) => {
            assert!(!e.key.is_empty(), "a JSON object, yet no key named: {e}");
            let root = e.key.split(['.', '[']).next().unwrap_or_default();
            // An unknown empty key is named `""`.
            let named = |k: &str| top.contains_key(k) || (k == r#""""# && top.contains_key(""));
            assert!(
                TOP_KEYS.contains(&root) || named(&e.key),
                "the error names a key the config neither has nor may have: {e}"
            );
        }
    }
}

/// The Prometheus text format, read as a source reads a scrape (lossy UTF-8): never panics;
/// every sample has a well-formed name and label names, and written back (values escaped) it
/// reads as the same sample; an error names its line, which is a line of the input.
pub fn exposition(data: &[u8]) {
    use hatune::source::exposition::samples;
    let text = String::from_utf8_lossy(data);
    let lines = text.lines().count();
    let name_ok = |n: &str, colon: bool| {
        !n.is_empty()
            && !n.starts_with(|c: char| c.is_ascii_digit())
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || (colon && c == ':'))
    };
    for s in samples(&text) {
        let s = match s {
            Ok(s) => s,
            Err(e) => {
                assert!(e.line >= 1 && e.line <= lines, "{e} of {lines} lines");
                continue;
            }
        };
        assert!(name_ok(s.name, true), "{:?}", s.name);
        assert!(s.labels.iter().all(|(k, _)| name_ok(k, false)), "{s:?}");
        let esc = |v: &str| {
            v.replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n")
        };
        let labels: Vec<String> = s
            .labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", esc(v)))
            .collect();
        let mut line = format!("{}{{{}}} {:?}", s.name, labels.join(","), s.value);
        if let Some(t) = s.timestamp_ms {
            line.push_str(&format!(" {t}"));
        }
        let again: Vec<_> = samples(&line).collect();
        assert_eq!(again.len(), 1, "{line:?}");
        let again = again[0]
            .as_ref()
            .unwrap_or_else(|e| panic!("{line:?}: {e}"));
        assert_eq!(again.name, s.name);
        assert_eq!(again.labels, s.labels, "{line:?}");
        assert!(
            again.value == s.value || (again.value.is_nan() && s.value.is_nan()),
            "{line:?}"
        );
        assert_eq!(again.timestamp_ms, s.timestamp_ms);
    }
}

/// HAProxy's weights that hatune sets: a set decoded from a peer holds only these.
const WEIGHTS: std::ops::RangeInclusive<u32> = 1..=256;

/// The config `weight_set` turns sets into decisions for: one backend, `app`, tuning the
/// servers matching `^app-`.
fn weight_set_config() -> &'static Config {
    static CONFIG: OnceLock<Config> = OnceLock::new();
    CONFIG.get_or_init(|| {
        Config::parse(
            r#"{"haproxy": "/run/h.sock", "cadvisor": "http://h:1",
                "backends": [{"name": "app", "pattern": "^app-"}]}"#,
        )
        .expect("the weight_set target's config parses")
    })
}

/// A weight set read from etcd (a peer's bytes), and an instance's record read from the same
/// bytes: neither panics. A set it accepts holds only weights 1..=256 and no empty backend or
/// server name, encodes and decodes back to itself, and as decisions for the fixed config
/// names only backend `app` and exactly the set's servers there that match `^app-`, each set
/// to the set's weight. A set it refuses is refused with a short error, and only when it is
/// not JSON of a set's shape or breaks one of those rules (or names over a million servers).
pub fn weight_set(data: &[u8]) {
    if let Ok(record) = InstanceRecord::decode(data) {
        let again = InstanceRecord::decode(record.encode().as_bytes())
            .unwrap_or_else(|e| panic!("{record:?} encoded does not decode: {e}"));
        assert_eq!(again, record, "an instance record does not round-trip");
    }
    let hostile = |set: &WeightSet| {
        set.weights.iter().any(|(backend, servers)| {
            backend.is_empty()
                || servers
                    .iter()
                    .any(|(server, w)| server.is_empty() || !WEIGHTS.contains(w))
        }) || set.weights.values().map(|s| s.len()).sum::<usize>() > 1_000_000
    };
    let set = match WeightSet::decode(data) {
        Ok(set) => set,
        Err(e) => {
            assert!(
                !e.is_empty() && e.len() <= MAX_ERROR_LEN,
                "{} bytes: {e:?}",
                e.len()
            );
            if let Ok(raw) = serde_json::from_slice::<WeightSet>(data) {
                assert!(hostile(&raw), "a well-formed set refused ({e}): {raw:?}");
            }
            return;
        }
    };
    for (backend, servers) in &set.weights {
        assert!(!backend.is_empty(), "a backend with an empty name: {set:?}");
        for (server, w) in servers {
            assert!(!server.is_empty(), "{backend}: a server with an empty name");
            assert!(WEIGHTS.contains(w), "{backend}/{server} weight {w}");
        }
    }
    assert!(!hostile(&set), "{set:?}");
    let encoded = set.encode();
    let again = WeightSet::decode(encoded.as_bytes())
        .unwrap_or_else(|e| panic!("{encoded:?}, the set encoded, does not decode: {e}"));
    assert_eq!(again, set, "a set does not round-trip");

    let decisions = set.decisions(&weight_set_config().backends);
    let mut named = 0;
    for (backend, list) in &decisions {
        assert_eq!(
            *backend, "app",
            "a decision for a backend the config does not tune"
        );
        let servers = &set.weights["app"];
        for d in list {
            assert!(
                d.name.starts_with("app-"),
                "{d:?}: not a server `app` tunes"
            );
            assert!(d.set, "{d:?}");
            assert_eq!(Some(&d.proposed), servers.get(&d.name), "{d:?}");
        }
        named += list.len();
    }
    let tuned = set
        .weights
        .get("app")
        .map_or(0, |s| s.keys().filter(|n| n.starts_with("app-")).count());
    assert!(decisions.len() <= 1, "{decisions:?}");
    assert_eq!(
        named, tuned,
        "decisions leave out servers `app` tunes: {decisions:?}"
    );
}
