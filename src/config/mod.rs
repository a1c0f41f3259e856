//! The config file: the 2015 tool's legacy keys or the full format, parsed once into validated
//! types. Every error names the key to fix; `hatune check` runs exactly this code.
//!
//! Legacy (haproxy_cadvisor.py), accepted unchanged:
//! `{"haproxy_socket": "/run/haproxy/admin.sock", "backend": "app", "pattern": "app-", "urls": [..]}`
//!
//! Full: see `config.example.json`.
//!
//! Here: the types and their assembly. `legacy` reconciles the old keys with the new,
//! `controller` reads the controller settings, `values` parses durations, the cron schedule,
//! URLs and addresses, `json` reads values at a key path, `error` is the error they all give.

use std::collections::HashSet;
use std::hash::Hash;
use std::path::Path;
use std::time::Duration;

use regex::Regex;
use serde_json::Value;

use crate::controller::Settings;
use crate::naming::{Matching, ServerFilter, Template};

mod address;
mod controller;
mod error;
mod json;
mod legacy;
mod peers;
mod sources;
mod values;

pub use address::Address;
pub use error::ConfigError;
pub use peers::Peers;
pub use sources::{is_metrics_url, Kubelet, Prometheus};
pub use values::{format_size, DEFAULT_MAX_REPLY};

use error::err;
use json::{reject_unknown, string};
use legacy::Backends;
use values::{DURATION_MAX, MAX_REPLY_LEAST, MAX_REPLY_MOST, TIMEOUT_MAX};

/// A config that passed every check.
#[derive(Debug, Clone)]
pub struct Config {
    /// Every HAProxy runtime API socket; all get the same weights.
    pub haproxy: Vec<Address>,
    /// cAdvisor JSON API base URLs, without a trailing `/`.
    pub cadvisor: Vec<String>,
    /// cAdvisor `/metrics` URLs (Prometheus text), from the same `cadvisor` list.
    pub cadvisor_metrics: Vec<String>,
    /// The wait between a `/metrics` host's two scrapes when it has no earlier one.
    pub second_scrape: Duration,
    pub kubelet: Option<Kubelet>,
    pub prometheus: Option<Prometheus>,
    /// Bound on each cAdvisor host and each HAProxy socket exchange.
    pub timeout: Duration,
    /// The largest cAdvisor reply body read, in bytes: a host whose reply is larger is
    /// skipped.
    pub max_reply: u64,
    /// One-shot mode (and the daemon's first tick): the CPU window (a cron period).
    pub window: Duration,
    pub backends: Vec<Backend>,
    /// When the daemon ticks.
    pub schedule: Schedule,
    /// Where the daemon serves Prometheus metrics on `/metrics`.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Other balancers to agree one set of weights with, through etcd; `None`: standalone.
    pub peers: Option<Peers>,
}

/// When `hatune run` ticks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Schedule {
    /// A fixed period (`"interval": "30s"`, the default); missed ticks are skipped.
    Interval(Duration),
    /// A cron expression in UTC with seconds (`"schedule": "0 */5 * * * *"`); a 5-field
    /// expression gets second 0.
    Cron(String),
}

/// One tuned HAProxy backend.
#[derive(Debug, Clone)]
pub struct Backend {
    pub name: String,
    /// The pattern as written.
    pub pattern_text: String,
    /// The pattern anchored at the start, like Python's `re.match`.
    pub pattern: Regex,
    /// How its servers find their containers (`server`, `match`, `port`).
    pub matching: Matching,
    pub controller: Settings,
}

impl Backend {
    /// True when `name` (a server name or a container alias) matches the backend's pattern at
    /// its start.
    pub fn matches(&self, name: &str) -> bool {
        self.pattern.is_match(name)
    }

    /// True when hatune tunes the server named `server` here (whatever its state): see
    /// [`Matching::tunes`].
    pub fn tunes(&self, server: &str) -> bool {
        self.matching.tunes(&self.pattern, server)
    }
}

/// Every top-level key a config may have (the legacy ones among them).
pub const TOP_KEYS: &[&str] = &[
    "haproxy",
    "cadvisor",
    "timeout",
    "window",
    "backends",
    "controller",
    "haproxy_socket",
    "backend",
    "pattern",
    "urls",
    "interval",
    "schedule",
    "metrics_listen",
    "max_reply",
    "kubelet",
    "prometheus",
    "second_scrape",
    "peers",
];
const BACKEND_KEYS: &[&str] = &[
    "name",
    "pattern",
    "server",
    "match",
    "port",
    "servers",
    "controller",
];

impl Config {
    /// The container labels some backend's template reads.
    pub fn label_keys(&self) -> HashSet<String> {
        self.backends
            .iter()
            .flat_map(|b| b.matching.labels())
            .map(str::to_string)
            .collect()
    }

    /// True when some backend maps its servers by address.
    pub fn maps_by_address(&self) -> bool {
        self.backends.iter().any(|b| b.matching.by_address())
    }

    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| err("", format!("cannot read {}: {e}", path.display())))?;
        Config::parse(&text)
    }

    /// Parses and validates config text. Keys are checked in a fixed order, so a config with
    /// several problems always reports the same one.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let value: Value = serde_json::from_str(text).map_err(|e| {
            err(
                "",
                format!(
                    "not valid JSON at line {} column {}: {e}",
                    e.line(),
                    e.column()
                ),
            )
        })?;
        let top = value
            .as_object()
            .ok_or_else(|| err("", "the config must be a JSON object"))?;
        reject_unknown(top, TOP_KEYS, "")?;

        let defaults = match top.get("controller") {
            Some(v) => controller::settings(v, "controller", &Settings::default())?,
            None => Settings::default(),
        };

        let haproxy = legacy::haproxy(top)?
            .into_iter()
            .map(|(s, key)| Address::parse(&s).map_err(|m| err(key, m)))
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(i) = first_repeat(&haproxy) {
            return Err(err(
                "haproxy",
                format!("`{}` is listed twice: each socket is read once", haproxy[i]),
            ));
        }

        let sources = sources::sources(top)?;

        let timeout = values::duration(top, "timeout", Duration::from_secs(5), TIMEOUT_MAX)?;
        let window = values::duration(top, "window", Duration::from_secs(60), DURATION_MAX)?;
        let max_reply = values::size(
            top,
            "max_reply",
            DEFAULT_MAX_REPLY,
            MAX_REPLY_LEAST,
            MAX_REPLY_MOST,
        )?;

        let backends = match legacy::backends(top)? {
            Backends::List(v) => backend_list(v, &defaults)?,
            Backends::Legacy { name, pattern } => {
                vec![make_backend(name, "backend", pattern, "pattern", defaults)?]
            }
        };
        let names: Vec<&str> = backends.iter().map(|b| b.name.as_str()).collect();
        if let Some(i) = first_repeat(&names) {
            return Err(err(
                format!("backends[{i}].name"),
                format!("backend `{}` is listed twice", names[i]),
            ));
        }

        let schedule = match (top.get("interval"), top.get("schedule")) {
            (Some(_), Some(_)) => {
                return Err(err(
                    "schedule",
                    "use either `interval` or `schedule` (cron), not both",
                ))
            }
            (_, Some(v)) => Schedule::Cron(values::cron(&string(v, "schedule")?)?),
            _ => Schedule::Interval(values::duration(
                top,
                "interval",
                Duration::from_secs(30),
                DURATION_MAX,
            )?),
        };
        let metrics_listen = top
            .get("metrics_listen")
            .map(|v| values::listen_address(v, "metrics_listen"))
            .transpose()?;
        let peers = peers::peers(top)?;

        Ok(Config {
            haproxy,
            cadvisor: sources.cadvisor,
            cadvisor_metrics: sources.cadvisor_metrics,
            second_scrape: sources.second_scrape,
            kubelet: sources.kubelet,
            prometheus: sources.prometheus,
            timeout,
            max_reply,
            window,
            backends,
            schedule,
            metrics_listen,
            peers,
        })
    }
}

/// The index of the first item that repeats an earlier one. Linear: a set of the items seen
/// so far, so a config of a million hosts validates in well under a second (scanning the list
/// before each item took 2 s for 40,000 and never finished for a million).
fn first_repeat<T: Eq + Hash>(items: &[T]) -> Option<usize> {
    let mut seen = HashSet::with_capacity(items.len());
    items.iter().position(|item| !seen.insert(item))
}

/// The value of `backends`: a list of at least one backend, each over the top-level settings.
fn backend_list(v: &Value, defaults: &Settings) -> Result<Vec<Backend>, ConfigError> {
    let list = v
        .as_array()
        .ok_or_else(|| err("backends", "must be a list of {name, pattern}"))?;
    if list.is_empty() {
        return Err(err("backends", "is empty: name at least one backend"));
    }
    list.iter()
        .enumerate()
        .map(|(i, b)| backend(b, &format!("backends[{i}]"), defaults))
        .collect()
}

fn backend(v: &Value, key: &str, defaults: &Settings) -> Result<Backend, ConfigError> {
    let obj = v
        .as_object()
        .ok_or_else(|| err(key, "must be an object {\"name\": .., \"pattern\": ..}"))?;
    reject_unknown(obj, BACKEND_KEYS, &format!("{key}."))?;
    let name_key = format!("{key}.name");
    let name = string(
        obj.get("name").ok_or_else(|| err(&name_key, "missing"))?,
        &name_key,
    )?;
    let pattern_key = format!("{key}.pattern");
    let pattern = string(
        obj.get("pattern")
            .ok_or_else(|| err(&pattern_key, "missing"))?,
        &pattern_key,
    )?;
    let settings = match obj.get("controller") {
        Some(c) => controller::settings(c, &format!("{key}.controller"), defaults)?,
        None => *defaults,
    };
    let mut backend = make_backend(name, &name_key, pattern, &pattern_key, settings)?;
    backend.matching = matching(obj, key, &backend.pattern)?;
    Ok(backend)
}

/// A backend's `server`, `match` and `port`: how its servers find their containers.
fn matching(
    obj: &serde_json::Map<String, Value>,
    key: &str,
    pattern: &Regex,
) -> Result<Matching, ConfigError> {
    let template = |name: &str| -> Result<Option<Template>, ConfigError> {
        let k = format!("{key}.{name}");
        obj.get(name)
            .map(|v| {
                let text = string(v, &k)?;
                Template::parse(&text, pattern).map_err(|e| err(&k, format!("`{text}`: {e}")))
            })
            .transpose()
    };
    let match_key = format!("{key}.match");
    let by = match obj.get("match") {
        None => "name".to_string(),
        Some(v) => string(v, &match_key)?,
    };
    let server = template("server")?;
    let port = template("port")?;
    let servers_key = format!("{key}.servers");
    let servers = obj
        .get("servers")
        .map(|v| {
            let text = string(v, &servers_key)?;
            // As written first, so that `x)|(.*` cannot escape the anchor below.
            Regex::new(&text)
                .map_err(|e| err(&servers_key, format!("`{text}` is not a valid regex: {e}")))?;
            Regex::new(&format!("^(?:{text})"))
                .map(ServerFilter)
                .map_err(|e| err(&servers_key, format!("`{text}` is not a valid regex: {e}")))
        })
        .transpose()?;
    match by.as_str() {
        "name" => {
            if port.is_some() {
                return Err(err(
                    format!("{key}.port"),
                    "is only for `\"match\": \"address\"` (a port tells apart containers on one host)",
                ));
            }
            match server {
                Some(server) => Ok(Matching::Name { server, servers }),
                None if servers.is_some() => Err(err(
                    &servers_key,
                    "is only for `server` or `\"match\": \"address\"`: by alias, the pattern picks the servers",
                )),
                None => Ok(Matching::Alias),
            }
        }
        "address" => {
            if server.is_some() {
                return Err(err(
                    format!("{key}.server"),
                    "does not go with `\"match\": \"address\"`: a server is found by its address (use `port` to tell containers on one host apart)",
                ));
            }
            Ok(Matching::Address { port, servers })
        }
        other => Err(err(
            &match_key,
            format!("`{other}` is neither \"name\" nor \"address\""),
        )),
    }
}

fn make_backend(
    name: String,
    name_key: &str,
    pattern: String,
    pattern_key: &str,
    controller: Settings,
) -> Result<Backend, ConfigError> {
    if name.contains(|c: char| c.is_whitespace() || c == ';' || c == '/' || c == '\\') {
        return Err(err(
            name_key,
            format!("`{name}` is not a HAProxy backend name"),
        ));
    }
    // The pattern as written first, so an error points into what the operator wrote.
    Regex::new(&pattern).map_err(|e| {
        err(
            pattern_key,
            format!("`{pattern}` is not a valid regex: {e}"),
        )
    })?;
    // `re.match` semantics: anchored at the start, free at the end.
    let anchored = Regex::new(&format!("^(?:{pattern})")).map_err(|e| {
        err(
            pattern_key,
            format!("`{pattern}` is not a valid regex: {e}"),
        )
    })?;
    Ok(Backend {
        name,
        pattern_text: pattern,
        pattern: anchored,
        matching: Matching::Alias,
        controller,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::Mode;

    const LEGACY: &str = r#"{
        "haproxy_socket": "/var/run/haproxy.sock",
        "backend": "app",
        "pattern": "app-",
        "urls": ["http://10.0.0.11:8080", "http://10.0.0.12:8080/"]
    }"#;

    #[test]
    fn legacy_config_is_accepted_unchanged() {
        let c = Config::parse(LEGACY).unwrap();
        assert_eq!(
            c.haproxy,
            vec![Address::Unix("/var/run/haproxy.sock".into())]
        );
        assert_eq!(
            c.cadvisor,
            vec!["http://10.0.0.11:8080", "http://10.0.0.12:8080"]
        );
        assert_eq!(c.backends.len(), 1);
        let b = &c.backends[0];
        assert_eq!(b.name, "app");
        assert_eq!(b.controller, Settings::default());
        assert_eq!(c.timeout, Duration::from_secs(5));
        assert_eq!(c.window, Duration::from_secs(60));
        assert_eq!(c.max_reply, 32 << 20);
        // re.match: anchored at the start only.
        assert!(b.matches("app-1"));
        assert!(b.matches("app-1-canary"));
        assert!(!b.matches("myapp-1"));
    }

    #[test]
    fn daemon_keys() {
        let base = r#""haproxy": "/s", "cadvisor": "http://h:1", "backends": [{"name": "a", "pattern": "a"}]"#;
        let c = Config::parse(&format!("{{{base}}}")).unwrap();
        assert_eq!(c.schedule, Schedule::Interval(Duration::from_secs(30)));
        assert_eq!(c.metrics_listen, None);
        let c = Config::parse(&format!(
            r#"{{{base}, "interval": "10s", "metrics_listen": "127.0.0.1:9150"}}"#
        ))
        .unwrap();
        assert_eq!(c.schedule, Schedule::Interval(Duration::from_secs(10)));
        assert_eq!(c.metrics_listen, Some("127.0.0.1:9150".parse().unwrap()));
        let c = Config::parse(&format!(r#"{{{base}, "schedule": "*/5 * * * *"}}"#)).unwrap();
        assert_eq!(c.schedule, Schedule::Cron("0 */5 * * * *".into()));
        let c = Config::parse(&format!(r#"{{{base}, "schedule": "*/10 * * * * *"}}"#)).unwrap();
        assert_eq!(c.schedule, Schedule::Cron("*/10 * * * * *".into()));
        for (extra, key) in [
            (r#""schedule": "every minute""#, "schedule"),
            (r#""schedule": "* * *""#, "schedule"),
            (r#""interval": "5s", "schedule": "* * * * *""#, "schedule"),
            (r#""interval": "fast""#, "interval"),
            (r#""metrics_listen": "localhost""#, "metrics_listen"),
        ] {
            let e = Config::parse(&format!("{{{base}, {extra}}}")).expect_err(extra);
            assert_eq!(e.key, key, "{extra}: {e}");
        }
    }

    /// The regex error points into the pattern as written, not hatune's anchored form.
    #[test]
    fn a_bad_pattern_is_shown_as_written() {
        let e = Config::parse(
            r#"{"haproxy": "/s", "cadvisor": "http://h:1", "backends": [{"name": "a", "pattern": "(a"}]}"#,
        )
        .unwrap_err();
        assert_eq!(e.key, "backends[0].pattern");
        assert!(!e.message.contains("^(?:"), "{e}");
    }

    /// Found in review: each names the key the file has.
    #[test]
    fn review_findings_name_the_right_key() {
        let base = r#""cadvisor": "http://h:1", "backends": [{"name": "a", "pattern": "a"}]"#;
        let cases = [
            (
                format!(r#"{{"haproxy": "/s", {base}, "timeout": "10000000000000000000s"}}"#),
                "timeout",
                "longer than",
            ),
            (
                format!(r#"{{"haproxy": "/s", {base}, "interval": "400d"}}"#),
                "interval",
                "longer than",
            ),
            (
                format!(r#"{{"haproxy": ["/s", "unix:///s"], {base}}}"#),
                "haproxy",
                "twice",
            ),
            (
                r#"{"haproxy": "/s", "cadvisor": "http://h:1", "controller": {"max_weight": 4},
                   "backends": [{"name": "a", "pattern": "a", "controller": {"min_weight": 10}}]}"#
                    .to_string(),
                "backends[0].controller.min_weight",
                "inherited",
            ),
        ];
        for (text, key, words) in cases {
            let e = Config::parse(&text).expect_err(&text);
            assert_eq!(e.key, key, "{e}");
            assert!(e.message.contains(words), "{e}");
        }
    }

    #[test]
    fn first_repeat_finds_the_first_item_seen_before() {
        let cases: &[(&[&str], Option<usize>)] = &[
            (&[], None),
            (&["a"], None),
            (&["a", "b", "c"], None),
            (&["a", "a", "a"], Some(1)),
            (&["a", "b", "a"], Some(2)),
            (&["a", "b", "c", "b", "a"], Some(3)),
        ];
        for &(items, want) in cases {
            assert_eq!(first_repeat(items), want, "{items:?}");
        }
    }

    /// Each item is compared only with the few that share its hash, not with every one before
    /// it: 10,000 items took 50 million comparisons when the list was scanned for each.
    #[test]
    fn first_repeat_compares_each_item_about_once() {
        use std::cell::Cell;
        use std::hash::Hasher;
        thread_local!(static COMPARISONS: Cell<usize> = const { Cell::new(0) });
        struct Counted(usize);
        impl PartialEq for Counted {
            fn eq(&self, other: &Counted) -> bool {
                COMPARISONS.with(|c| c.set(c.get() + 1));
                self.0 == other.0
            }
        }
        impl Eq for Counted {}
        impl Hash for Counted {
            fn hash<H: Hasher>(&self, state: &mut H) {
                self.0.hash(state)
            }
        }
        let n = 10_000;
        let mut items: Vec<Counted> = (0..n).map(Counted).collect();
        items.push(Counted(n / 2));
        assert_eq!(first_repeat(&items), Some(n));
        let comparisons = COMPARISONS.with(Cell::get);
        assert!(
            comparisons < 2 * n,
            "{comparisons} comparisons for {n} items"
        );
    }

    /// 200,000 hosts validate (the list was scanned once per host: 40,000 took 2 s), and a
    /// repeat at the very end is still found and named.
    #[test]
    fn a_config_of_200_000_hosts_validates() {
        let n = 200_000;
        let urls: Vec<String> = (0..n)
            .map(|i| format!("http://10.{}.{}.{}:8080", i >> 16, (i >> 8) & 255, i & 255))
            .collect();
        let text = |urls: &[String]| {
            serde_json::json!({
                "haproxy": "/s",
                "cadvisor": urls,
                "backends": [{"name": "app", "pattern": "app-"}],
            })
            .to_string()
        };
        let c = Config::parse(&text(&urls)).unwrap();
        assert_eq!(c.cadvisor.len(), n);
        assert_eq!(c.cadvisor[n - 1], urls[n - 1]);

        let mut repeated = urls;
        let again = repeated[n / 2].clone();
        repeated.push(format!("{again}/"));
        let e = Config::parse(&text(&repeated)).unwrap_err();
        assert_eq!(e.key, "cadvisor");
        assert_eq!(
            e.message,
            format!("`{again}` is listed twice: each host is polled once")
        );
    }

    #[test]
    fn the_example_config_is_valid() {
        let c = Config::parse(include_str!("../../config.example.json")).unwrap();
        assert_eq!(c.haproxy.len(), 2);
        assert_eq!(c.max_reply, DEFAULT_MAX_REPLY);
        assert_eq!(c.backends[1].controller.min_weight, 4);
        assert_eq!(c.backends[1].controller.mode, Mode::Capacity);
        assert_eq!(c.backends[0].controller, Settings::default());
        assert!(c.backends[2].matching.by_address());
        assert_eq!(c.label_keys().into_iter().collect::<Vec<_>>(), ["port"]);
    }

    #[test]
    fn full_config_with_overrides() {
        let c = Config::parse(
            r#"{
            "haproxy": ["/run/haproxy/admin.sock", "tcp://10.0.0.5:9999"],
            "cadvisor": ["http://10.0.0.11:8080"],
            "timeout": "2s 500ms",
            "max_reply": "64MiB",
            "window": "30s",
            "backends": [
                {"name": "app", "pattern": "^app-"},
                {"name": "api", "pattern": "api-", "controller": {"gain": 0.3}}
            ],
            "controller": {"gain": 0.5, "min_weight": 2, "max_weight": 200, "deadband": 0.05}
        }"#,
        )
        .unwrap();
        assert_eq!(c.haproxy[1], Address::Tcp("10.0.0.5:9999".into()));
        assert_eq!(c.timeout, Duration::from_millis(2500));
        assert_eq!(c.max_reply, 64 << 20);
        assert_eq!(c.window, Duration::from_secs(30));
        assert_eq!(c.backends[0].controller.max_weight, 200);
        assert_eq!(c.backends[0].controller.gain, 0.5);
        // The override changes only what it names.
        let api = c.backends[1].controller;
        assert_eq!((api.gain, api.min_weight, api.max_weight), (0.3, 2, 200));
        assert_eq!(api.deadband, 0.05);
    }

    #[test]
    fn controller_mode_and_guards() {
        let c = Config::parse(
            r#"{
            "haproxy": "/s", "cadvisor": "http://h:1",
            "backends": [
                {"name": "app", "pattern": "^app-"},
                {"name": "api", "pattern": "api-", "controller": {"mode": "halfway", "hold": "90s"}}
            ],
            "controller": {"mode": "capacity", "freeze_below": 0.3, "capacity_filter": 0.25}
        }"#,
        )
        .unwrap();
        let app = c.backends[0].controller;
        assert_eq!(app.mode, Mode::Capacity);
        assert_eq!((app.freeze_below, app.capacity_filter), (0.3, 0.25));
        assert_eq!(app.hold, Duration::from_secs(600), "default hold");
        let api = c.backends[1].controller;
        assert_eq!(api.mode, Mode::Halfway);
        assert_eq!(api.hold, Duration::from_secs(90));
        assert_eq!(api.freeze_below, 0.3, "inherits the top-level setting");
        let d = Settings::default();
        assert_eq!(
            (d.mode, d.hold, d.freeze_below, d.capacity_filter),
            (Mode::Halfway, Duration::from_secs(600), 0.5, 0.5)
        );
    }

    /// `server`, `match` and `port` build each backend's matching; the source is told which
    /// labels to keep and whether to resolve hosts.
    #[test]
    fn matching_keys() {
        let c = Config::parse(
            r#"{"haproxy": "/s", "cadvisor": "http://h:1", "backends": [
                {"name": "a", "pattern": "a"},
                {"name": "b", "pattern": "proj_b_(\\d+)", "server": "b_{1}_{label:x}", "match": "name"},
                {"name": "c", "pattern": "c-", "match": "address"},
                {"name": "d", "pattern": "d-", "match": "address", "port": "{label:port}", "servers": "srv"}]}"#,
        )
        .unwrap();
        let m: Vec<&Matching> = c.backends.iter().map(|b| &b.matching).collect();
        assert_eq!(m[0], &Matching::Alias);
        assert!(
            matches!(m[1], Matching::Name { server: t, servers: None } if t.as_str() == "b_{1}_{label:x}")
        );
        assert_eq!(
            m[2],
            &Matching::Address {
                port: None,
                servers: None
            }
        );
        assert!(
            matches!(m[3], Matching::Address { port: Some(t), servers: Some(f) } if t.as_str() == "{label:port}" && f.0.as_str() == "^(?:srv)")
        );
        let mut labels: Vec<String> = c.label_keys().into_iter().collect();
        labels.sort();
        assert_eq!(labels, ["port", "x"]);
        assert!(c.maps_by_address());
        assert!(c.backends[3].tunes("srv1") && !c.backends[3].tunes("static-1"));
        assert!(c.backends[2].tunes("anything"));
        assert!(c.backends[0].tunes("a1") && !c.backends[0].tunes("b1"));
        let legacy = Config::parse(LEGACY).unwrap();
        assert!(legacy.label_keys().is_empty() && !legacy.maps_by_address());
    }

    /// Each bad config names the key to fix.
    #[test]
    fn bad_configs_name_their_key() {
        let cases: &[(&str, &str, &str)] = &[
            ("[1]", "", "JSON object"),
            ("{", "", "not valid JSON"),
            (
                r#"{"cadvisor": ["http://h:1"], "backends": [{"name": "a", "pattern": "a"}]}"#,
                "haproxy",
                "missing",
            ),
            (
                r#"{"haproxy": "/s", "backends": [{"name": "a", "pattern": "a"}]}"#,
                "cadvisor",
                "missing",
            ),
            (
                r#"{"haproxy": "/s", "cadvisor": "http://h:1"}"#,
                "backends",
                "missing",
            ),
            (
                r#"{"haproxy": "/s", "cadvisor": "http://h:1", "backends": []}"#,
                "backends",
                "empty",
            ),
            (
                r#"{"haproxy": "/s", "cadvisor": "http://h:1", "backends": [{"name": "a", "pattern": "a"}], "colour": 1}"#,
                "colour",
                "unknown key",
            ),
            (
                r#"{"haproxy": "/s", "cadvisor": "http://h:1", "backends": [{"name": "a", "pattern": "a", "weight": 3}]}"#,
                "backends[0].weight",
                "unknown key",
            ),
            (
                r#"{"haproxy": "/s", "cadvisor": "http://h:1", "backends": [{"name": "a", "pattern": "a", "server": "web_{1}"}]}"#,
                "backends[0].server",
                "`web_{1}`: `{1}`: the pattern has 0 capture group(s)",
            ),
            (
                r#"{"haproxy": "/s", "cadvisor": "http://h:1", "backends": [{"name": "a", "pattern": "a", "server": "{nme}"}]}"#,
                "backends[0].server",
                "no group named `nme`",
            ),
            (
                r#"{"haproxy": "/s", "cadvisor": "http://h:1", "backends": [{"name": "a", "pattern": "a", "server": 3}]}"#,
                "backends[0].server",
                "must be a string",
            ),
            (
                r#"{"haproxy": "/s", "cadvisor": "http://h:1", "backends": [{"name": "a", "pattern": "a", "match": "addr"}]}"#,
                "backends[0].match",
                "neither \"name\" nor \"address\"",
            ),
            (
                r#"{"haproxy": "/s", "cadvisor": "http://h:1", "backends": [{"name": "a", "pattern": "a", "match": "address", "server": "{alias}"}]}"#,
                "backends[0].server",
                "does not go with",
            ),
            (
                r#"{"haproxy": "/s", "cadvisor": "http://h:1", "backends": [{"name": "a", "pattern": "a", "port": "{label:port}"}]}"#,
                "backends[0].port",
                "only for",
            ),
            (
                r#"{"haproxy": "/s", "cadvisor": "http://h:1", "backends": [{"name": "a", "pattern": "a", "match": "address", "port": "{label:}"}]}"#,
                "backends[0].port",
                "names no label",
            ),
            (
                r#"{"haproxy": "/s", "cadvisor": "http://h:1", "backends": [{"name": "a", "pattern": "a", "servers": "srv"}]}"#,
                "backends[0].servers",
                "is only for `server`",
            ),
            (
                r#"{"haproxy": "/s", "cadvisor": "http://h:1", "backends": [{"name": "a", "pattern": "a", "match": "address", "servers": "(srv"}]}"#,
                "backends[0].servers",
                "not a valid regex",
            ),
            (
                r#"{"haproxy": "/s", "cadvisor": "http://h:1", "backends": [{"name": "a", "pattern": "a", "match": "address", "servers": "x)|(.*"}]}"#,
                "backends[0].servers",
                "`x)|(.*` is not a valid regex",
            ),
            // Found by fuzzing (fuzz/run config): an empty key read as an error of the file.
            (r#"{"": 1}"#, r#""""#, "unknown key"),
            (
                r#"{"haproxy": "/s", "cadvisor": "http://h:1", "backends": [{"name": "a", "pattern": "a", "": 3}]}"#,
                "backends[0].\"\"",
                "unknown key",
            ),
            (
                r#"{"haproxy": "/s", "cadvisor": "http://h:1", "backends": [{"name": "a", "pattern": "(a"}]}"#,
                "backends[0].pattern",
                "not a valid regex",
            ),
            (
                r#"{"haproxy": "/s", "cadvisor": "http://h:1", "backends": [{"pattern": "a"}]}"#,
                "backends[0].name",
                "missing",
            ),
            (
                r#"{"haproxy": "/s", "cadvisor": "http://h:1", "backends": [{"name": "a", "pattern": "a"}, {"name": "a", "pattern": "b"}]}"#,
                "backends[1].name",
                "twice",
            ),
            (
                r#"{"haproxy": ["/s", "tcp://h"], "cadvisor": "http://h:1", "backends": [{"name": "a", "pattern": "a"}]}"#,
                "haproxy[1]",
                "no port",
            ),
            (
                r#"{"haproxy": "/s", "cadvisor": ["ftp://h"], "backends": [{"name": "a", "pattern": "a"}]}"#,
                "cadvisor[0]",
                "http://",
            ),
            (
                r#"{"haproxy": "/s", "cadvisor": ["http://h:1", "http://h:1/"], "backends": [{"name": "a", "pattern": "a"}]}"#,
                "cadvisor",
                "twice",
            ),
            (
                r#"{"haproxy": "/s", "cadvisor": "http://h:1", "timeout": "soon", "backends": [{"name": "a", "pattern": "a"}]}"#,
                "timeout",
                "not a duration",
            ),
            (
                r#"{"haproxy": "/s", "cadvisor": "http://h:1", "timeout": 5, "backends": [{"name": "a", "pattern": "a"}]}"#,
                "timeout",
                "duration string",
            ),
            (
                r#"{"haproxy": "/s", "cadvisor": "http://h:1", "max_reply": "32 megs", "backends": [{"name": "a", "pattern": "a"}]}"#,
                "max_reply",
                "not a size",
            ),
            (
                r#"{"haproxy": "/s", "cadvisor": "http://h:1", "max_reply": 100, "backends": [{"name": "a", "pattern": "a"}]}"#,
                "max_reply",
                "smaller than 256KiB",
            ),
            (
                r#"{"haproxy": "/s", "cadvisor": "http://h:1", "window": "0s", "backends": [{"name": "a", "pattern": "a"}]}"#,
                "window",
                "longer than zero",
            ),
            (
                r#"{"haproxy": "/s", "cadvisor": "http://h:1", "backends": [{"name": "a", "pattern": "a"}], "controller": {"gain": 0}}"#,
                "controller.gain",
                "outside",
            ),
            (
                r#"{"haproxy": "/s", "cadvisor": "http://h:1", "backends": [{"name": "a", "pattern": "a"}], "controller": {"min_weight": 0}}"#,
                "controller.min_weight",
                "outside",
            ),
            (
                r#"{"haproxy": "/s", "cadvisor": "http://h:1", "backends": [{"name": "a", "pattern": "a"}], "controller": {"max_weight": 300}}"#,
                "controller.max_weight",
                "outside",
            ),
            (
                r#"{"haproxy": "/s", "cadvisor": "http://h:1", "backends": [{"name": "a", "pattern": "a"}], "controller": {"deadband": "2%"}}"#,
                "controller.deadband",
                "number",
            ),
            (
                r#"{"haproxy": "/s", "cadvisor": "http://h:1", "backends": [{"name": "a", "pattern": "a", "controller": {"max_step": 1}}]}"#,
                "backends[0].controller.max_step",
                "outside",
            ),
            (
                r#"{"haproxy": "/s", "cadvisor": "http://h:1", "backends": [{"name": "a", "pattern": "a", "controller": {"gian": 1}}]}"#,
                "backends[0].controller.gian",
                "unknown key",
            ),
            (
                r#"{"haproxy": "/s", "cadvisor": "http://h:1", "backends": [{"name": "a", "pattern": "a"}], "controller": {"mode": "pid"}}"#,
                "controller.mode",
                "\"halfway\" or \"capacity\"",
            ),
            (
                r#"{"haproxy": "/s", "cadvisor": "http://h:1", "backends": [{"name": "a", "pattern": "a", "controller": {"hold": 30}}]}"#,
                "backends[0].controller.hold",
                "duration string",
            ),
            (
                r#"{"haproxy": "/s", "cadvisor": "http://h:1", "backends": [{"name": "a", "pattern": "a", "controller": {"hold": "soon"}}]}"#,
                "backends[0].controller.hold",
                "not a duration",
            ),
            (
                r#"{"haproxy": "/s", "cadvisor": "http://h:1", "backends": [{"name": "a", "pattern": "a"}], "controller": {"hold": "0s"}}"#,
                "controller.hold",
                "longer than zero",
            ),
            (
                r#"{"haproxy": "/s", "cadvisor": "http://h:1", "backends": [{"name": "a", "pattern": "a"}], "controller": {"freeze_below": 1.5}}"#,
                "controller.freeze_below",
                "outside [0, 1]",
            ),
            (
                r#"{"haproxy": "/s", "cadvisor": "http://h:1", "backends": [{"name": "a", "pattern": "a"}], "controller": {"capacity_filter": 0}}"#,
                "controller.capacity_filter",
                "outside (0, 1]",
            ),
            (
                r#"{"haproxy_socket": "/s", "haproxy": "/t", "urls": "http://h:1", "backend": "a", "pattern": "a"}"#,
                "haproxy_socket",
                "not both",
            ),
            (
                r#"{"haproxy_socket": "/s", "urls": "http://h:1", "backend": "a"}"#,
                "pattern",
                "missing",
            ),
            (
                r#"{"haproxy_socket": "/s", "urls": [], "backend": "a", "pattern": "a"}"#,
                "urls",
                "empty",
            ),
            (
                r#"{"haproxy_socket": "/s", "urls": "http://h:1", "backend": "a b", "pattern": "a"}"#,
                "backend",
                "not a HAProxy backend name",
            ),
        ];
        for (text, key, words) in cases {
            let e = Config::parse(text).expect_err(text);
            assert_eq!(&e.key, key, "{text}: {e}");
            assert!(e.to_string().contains(words), "{text}: {e}");
        }
    }
}
