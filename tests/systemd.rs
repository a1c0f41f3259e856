//! The systemd units: `systemd-analyze verify` accepts them as shipped (with the test's binary
//! and config paths), and they carry what the daemon relies on.

use std::path::Path;
use std::process::Command;

const UNITS: &[&str] = &["hatune.service", "hatune-once.service", "hatune-once.timer"];

fn unit(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("systemd")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn systemd_analyze_verify_accepts_the_units() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        println!("skipped: systemd-analyze is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.example.json");
    for name in UNITS {
        let text = unit(name)
            .replace("/usr/local/bin/hatune", env!("CARGO_BIN_EXE_hatune"))
            .replace("/etc/hatune/config.json", example.to_str().unwrap());
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(UNITS.iter().map(|u| dir.path().join(u)))
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // verify only warns (exit 0) on unknown or misspelt settings: any output is a failure.
    assert!(out.status.success() && said.trim().is_empty(), "{said}");
}

#[test]
fn the_daemon_unit_is_notify_checked_and_hardened() {
    let service = unit("hatune.service");
    for line in [
        "Type=notify",
        "ExecStartPre=/usr/local/bin/hatune check --config-only --config /etc/hatune/config.json",
        "ExecStart=/usr/local/bin/hatune run --config /etc/hatune/config.json --log-format json",
        "ExecReload=/usr/local/bin/hatune check --config-only --config /etc/hatune/config.json",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "WatchdogSec=120s",
        "DynamicUser=yes",
        "SupplementaryGroups=haproxy",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
    ] {
        assert!(
            service.lines().any(|l| l == line),
            "hatune.service lacks `{line}`"
        );
    }
    let timer = unit("hatune-once.timer");
    assert!(timer.lines().any(|l| l == "OnCalendar=*-*-* *:*:00"));
    assert!(unit("hatune-once.service")
        .lines()
        .any(|l| l.starts_with("ExecStart=/usr/local/bin/hatune once --config")));
}

/// ExecStartPre and ExecReload run `check --config-only`: it must refuse a bad config with
/// exit 2 and accept a good one without probing anything (the example's hosts do not exist).
#[test]
fn check_config_only_validates_without_probing() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.example.json");
    let ok = Command::new(env!("CARGO_BIN_EXE_hatune"))
        .args(["check", "--config-only", "--config"])
        .arg(&example)
        .output()
        .unwrap();
    assert_eq!(ok.status.code(), Some(0), "{ok:?}");
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        r#"{"haproxy": "/s", "cadvisor": "http://h:1", "backends": [{"name": "a", "pattern": "("}]}"#,
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_hatune"))
        .args(["check", "--config-only", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("backends[0].pattern"));
}
