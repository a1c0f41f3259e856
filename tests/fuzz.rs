//! The fuzzers' checks (`fuzz/src/checks.rs`, the same file) without AFL: on every input the
//! fuzzers found and we kept (`tests/fixtures/fuzz/TARGET/`), and on the material the corpus
//! is seeded from. A crash the fuzzers find is fixed and its input added there, so it stays
//! fixed in every `cargo test`; README, "Fuzzing".

#[path = "../fuzz/src/checks.rs"]
mod checks;

use std::fs;
use std::path::{Path, PathBuf};

use hatune::testkit::cadvisor::{docker_body, machine_body, unix_now, FakeContainer};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = match fs::read_dir(dir) {
        Ok(entries) => entries
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file())
            .collect(),
        Err(_) => Vec::new(),
    };
    out.sort();
    out
}

/// Runs `target`'s check on each file, naming the file that fails.
fn check_files(target: &str, paths: &[PathBuf]) {
    for path in paths {
        let data = fs::read(path).unwrap();
        let run = std::panic::catch_unwind(|| checks::check(target, &data));
        assert!(run.is_ok(), "{target}: {} fails its check", path.display());
    }
}

#[test]
fn what_the_fuzzers_found_stays_fixed() {
    let dir = root().join("tests/fixtures/fuzz");
    for entry in fs::read_dir(&dir).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if name.ends_with(".md") {
            continue;
        }
        assert!(
            checks::TARGETS.contains(&name.as_str()),
            "tests/fixtures/fuzz/{name} is not a fuzz target"
        );
    }
    for target in checks::TARGETS {
        check_files(target, &files(&dir.join(target)));
    }
}

#[test]
fn the_haproxy_fixtures_pass_the_checks() {
    let fixtures = root().join("tests/fixtures/haproxy");
    let stats: Vec<PathBuf> = ["2.2-shaped", "2.6.12", "3.2-shaped", "3.4-shaped"]
        .iter()
        .map(|v| fixtures.join(v).join("show_stat.csv"))
        .collect();
    check_files("show_stat", &stats);
    check_files("show_info", &[fixtures.join("2.6.12/show_info.txt")]);
    let session = fs::read(fixtures.join("2.6.12/set_weight_prompt.raw")).unwrap();
    for sizes in [&[][..], &[1], &[1, 5, 7], &[0, 3], &[0]] {
        let mut data = vec![sizes.len() as u8];
        data.extend_from_slice(sizes);
        data.extend_from_slice(&session);
        checks::prompt_reply(&data);
    }
}

#[test]
fn our_exposition_text_passes_the_check() {
    let dir = root().join("tests/fixtures/prometheus");
    check_files("exposition", &files(&dir));
    let text = fs::read_to_string(dir.join("cadvisor_metrics_ours.txt")).unwrap();
    let all: Vec<_> = hatune::source::exposition::samples(&text).collect();
    assert!(all.iter().all(Result::is_ok), "{all:?}");
    assert_eq!(all.len(), 12);
    checks::exposition(b"m{a=\"x\"} 1 2\nbroken{\n\nm 1 2 3\n");
}

#[test]
fn rendered_cadvisor_replies_pass_the_checks() {
    let containers = [
        FakeContainer::new("app-1", 0.5),
        FakeContainer::new("app-2", 0.25).with_quota(1.0),
    ];
    for cores in [1, 2, 8] {
        checks::cadvisor_containers(docker_body(cores, &containers, unix_now(), 7).as_bytes());
        checks::cadvisor_machine(machine_body(cores).as_bytes());
    }
}

#[test]
fn the_example_and_seed_configs_pass_the_checks() {
    let mut configs = files(&root().join("fuzz/seeds/config"));
    assert!(!configs.is_empty());
    configs.push(root().join("config.example.json"));
    check_files("config", &configs);
}

/// A weight set as a peer could write it, with `weights` as given (raw JSON).
fn set_with(weights: &str) -> String {
    format!(r#"{{"leader":"lb-1","at_ms":1750000000123,"weights":{weights}}}"#)
}

#[test]
fn weight_sets_pass_the_check_and_hostile_ones_are_refused() {
    use hatune::peers::{InstanceRecord, WeightSet};

    let valid = [
        set_with(r#"{"app":{"app-1":150,"app-2":90,"static":3},"db":{"db-1":7}}"#),
        set_with(r#"{"app":{"app-1":1,"app-2":256}}"#),
        set_with("{}"),
        // Duplicate keys: the last one counts, and the set still round-trips.
        set_with(r#"{"app":{"app-1":3,"app-1":4}}"#),
        r#"{"weights":{},"at_ms":0,"leader":"","extra":[1,{"a":null}]}"#.to_string(),
    ];
    for text in &valid {
        assert!(WeightSet::decode(text.as_bytes()).is_ok(), "{text}");
        checks::weight_set(text.as_bytes());
    }

    let refused = [
        set_with(r#"{"app":{"app-1":0}}"#),
        set_with(r#"{"app":{"app-1":257}}"#),
        set_with(r#"{"app":{"app-1":-1}}"#),
        set_with(r#"{"app":{"app-1":"1"}}"#),
        set_with(r#"{"app":{"app-1":1.0}}"#),
        set_with(r#"{"app":{"app-1":null}}"#),
        set_with(r#"{"app":{"":1}}"#),
        set_with(r#"{"":{"app-1":1}}"#),
        // Nested wrong types.
        set_with("[]"),
        set_with(r#"{"app":[1]}"#),
        set_with(r#"{"app":{"app-1":[1]}}"#),
        set_with(r#"{"app":{"app-1":{"w":1}}}"#),
        r#"{"leader":1,"at_ms":1,"weights":{}}"#.to_string(),
        r#"{"leader":"x","at_ms":"1","weights":{}}"#.to_string(),
        r#"{"leader":"x","weights":{}}"#.to_string(),
        r#"[["x",1,{}]]"#.to_string(),
        // Huge numbers.
        set_with(r#"{"app":{"app-1":4294967297}}"#),
        set_with(r#"{"app":{"app-1":18446744073709551616}}"#),
        set_with(r#"{"app":{"app-1":1e400}}"#),
        r#"{"leader":"x","at_ms":18446744073709551616,"weights":{}}"#.to_string(),
        r#"{"leader":"x","at_ms":-1,"weights":{}}"#.to_string(),
        // Not JSON, or not whole.
        String::new(),
        "garbage".to_string(),
        set_with(r#"{"app":{"app-1":1}"#),
        format!("{}\u{0}", set_with("{}")),
        "[".repeat(10_000),
    ];
    for text in &refused {
        let shown = &text[..text.len().min(200)];
        assert!(WeightSet::decode(text.as_bytes()).is_err(), "{shown}");
        let run = std::panic::catch_unwind(|| checks::weight_set(text.as_bytes()));
        assert!(run.is_ok(), "weight_set: {shown} fails its check");
    }

    // Refused, but with an error quoting a name or a value whole: the check fails on these
    // (see tests/fixtures/fuzz/weight_set/), so only the refusal is asserted here.
    let long = "app-".to_string() + &"x".repeat(5000);
    for text in [
        set_with(&format!(r#"{{"app":{{"{long}":257}}}}"#)),
        set_with(&format!(r#"{{"app":{{"app-1":"{long}"}}}}"#)),
    ] {
        assert!(WeightSet::decode(text.as_bytes()).is_err());
    }

    // A set naming what this instance does not tune: `db` and `static` are dropped.
    let text = set_with(r#"{"app":{"app-1":150,"static":3,"app-":9},"db":{"db-1":7,"app-2":8}}"#);
    let set = WeightSet::decode(text.as_bytes()).unwrap();
    let config = hatune::config::Config::parse(
        r#"{"haproxy": "/run/h.sock", "cadvisor": "http://h:1",
            "backends": [{"name": "app", "pattern": "^app-"}]}"#,
    )
    .unwrap();
    let decisions = set.decisions(&config.backends);
    let named: Vec<(&str, Vec<(&str, u32)>)> = decisions
        .iter()
        .map(|(b, list)| {
            (
                *b,
                list.iter().map(|d| (d.name.as_str(), d.proposed)).collect(),
            )
        })
        .collect();
    assert_eq!(named, [("app", vec![("app-", 9), ("app-1", 150)])]);
    checks::weight_set(text.as_bytes());

    // The instance record under the same check, and its near-misses.
    for text in [
        r#"{"applied":42,"applied_ms":1750000000123,"leader":true,"requests":{"app":{"app-1":1234}}}"#,
        r#"{"applied":-1,"applied_ms":0,"leader":false}"#,
        r#"{"applied":1,"applied_ms":1,"leader":"yes"}"#,
        r#"{"applied":1,"applied_ms":-1,"leader":true}"#,
        r#"{"applied":1,"applied_ms":1,"leader":true,"requests":{"app":{"a":-1}}}"#,
    ] {
        let _ = InstanceRecord::decode(text.as_bytes());
        checks::weight_set(text.as_bytes());
    }
}

/// Inputs found by hand (not by the 300 s run) that failed the `weight_set` check: an empty
/// backend name with no servers was accepted, and a refusal quoted a name or a string value
/// whole (2 KB in one log line). Fixed in `WeightSet::decode`; kept here so they stay fixed.
#[test]
fn hand_found_weight_sets_stay_fixed() {
    let long = "app-".to_string() + &"x".repeat(2000);
    let failing: Vec<String> = [
        set_with(r#"{"":{}}"#),
        set_with(&format!(r#"{{"app":{{"{long}":257}}}}"#)),
        set_with(&format!(r#"{{"{long}":{{"app-1":0}}}}"#)),
        set_with(&format!(r#"{{"app":{{"app-1":"{long}"}}}}"#)),
    ]
    .into_iter()
    .filter(|text| std::panic::catch_unwind(|| checks::weight_set(text.as_bytes())).is_err())
    .map(|text| text[..text.len().min(80)].to_string())
    .collect();
    assert!(
        failing.is_empty(),
        "weight_set: these fail its check: {failing:#?}"
    );
}
