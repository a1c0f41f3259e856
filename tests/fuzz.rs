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
