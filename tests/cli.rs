//! Where the real `hatune` binary finds its config: `--config`, else `HATUNE_CONFIG`, else
//! `/etc/hatune/config.json`. Only bad configs and `check --config-only` are run, so no HAProxy
//! or cAdvisor is needed.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const DEFAULT: &str = "/etc/hatune/config.json";

/// Every subcommand that reads a config (a bad config stops each before it contacts anything).
const SUBCOMMANDS: &[&[&str]] = &[
    &["once"],
    &["once", "--dry-run"],
    &["run"],
    &["check"],
    &["check", "--config-only"],
];

/// Runs the binary with `HATUNE_CONFIG` set to `env`, or unset.
fn hatune(args: &[&str], env: Option<&Path>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hatune"));
    cmd.args(args).env_remove("RUST_LOG").env("NO_COLOR", "1");
    match env {
        Some(path) => cmd.env("HATUNE_CONFIG", path),
        None => cmd.env_remove("HATUNE_CONFIG"),
    };
    cmd.output().expect("cannot run the hatune binary")
}

fn said(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn good() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config.example.json")
}

/// A config whose only fault is `backends[0].pattern`.
fn bad(dir: &tempfile::TempDir) -> PathBuf {
    let path = dir.path().join("bad.json");
    std::fs::write(
        &path,
        r#"{"haproxy": "/s", "cadvisor": "http://h:1", "backends": [{"name": "a", "pattern": "("}]}"#,
    )
    .unwrap();
    path
}

#[test]
fn hatune_config_is_read_by_every_subcommand() {
    let dir = tempfile::tempdir().unwrap();
    let bad = bad(&dir);
    for args in SUBCOMMANDS {
        let out = hatune(args, Some(&bad));
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", said(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("backends[0].pattern"),
            "{args:?}: {}",
            said(&out)
        );
    }
    let out = hatune(&["check", "--config-only"], Some(&good()));
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with(&format!("ok   config {}: ", good().display())),
        "{}",
        said(&out)
    );
}

#[test]
fn without_either_the_default_path_is_read() {
    if Path::new(DEFAULT).exists() {
        println!("skipped: {DEFAULT} exists on this machine");
        return;
    }
    for args in SUBCOMMANDS {
        let out = hatune(args, None);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", said(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&format!("cannot read {DEFAULT}")),
            "{args:?}: {}",
            said(&out)
        );
    }
}

#[test]
fn the_option_beats_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    let bad = bad(&dir);
    let good = good();
    for flag in ["--config", "-c"] {
        // A good --config over a bad HATUNE_CONFIG: the good one is read.
        let args = ["check", "--config-only", flag, good.to_str().unwrap()];
        let out = hatune(&args, Some(&bad));
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", said(&out));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains(good.to_str().unwrap()),
            "{args:?}: {}",
            said(&out)
        );

        // And the other way round: the bad one is read.
        let args = ["check", "--config-only", flag, bad.to_str().unwrap()];
        let out = hatune(&args, Some(&good));
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", said(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("backends[0].pattern"),
            "{args:?}: {}",
            said(&out)
        );
    }
}

#[test]
fn help_names_the_default_and_the_variable() {
    for sub in ["once", "run", "check"] {
        let out = hatune(&[sub, "--help"], None);
        assert_eq!(out.status.code(), Some(0), "{sub}: {}", said(&out));
        let help = String::from_utf8_lossy(&out.stdout);
        let line = help
            .lines()
            .find(|l| l.contains("--config <FILE>"))
            .unwrap_or_else(|| panic!("{sub} --help has no --config: {help}"));
        assert!(
            line.contains(DEFAULT) && line.contains("HATUNE_CONFIG"),
            "{sub} --help: {line}"
        );
    }
}
