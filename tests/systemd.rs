//! The systemd units: `systemd-analyze verify` accepts them as shipped (with the test's binary
//! and config paths), they carry what the daemon relies on, and their hardening does not slip:
//! `systemd-analyze security --offline=true` scores each service no worse than it does now.

use std::path::Path;
use std::process::Command;

const UNITS: &[&str] = &["hatune.service", "hatune-once.service", "hatune-once.timer"];

/// The overall exposure of each service, as `systemd-analyze security --offline=true` (systemd
/// 252) scores the units as shipped: 0 is best, 10 worst; 1.6 is "OK". Lower these when the
/// units improve; a change that raises a score must not.
const EXPOSURE_CEILINGS: &[(&str, f64)] = &[("hatune.service", 1.6), ("hatune-once.service", 1.6)];

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

/// `→ Overall exposure level for hatune.service: 1.6 OK 🙂` gives 1.6.
fn overall_exposure(report: &str, unit: &str) -> Option<f64> {
    let marker = format!("Overall exposure level for {unit}:");
    let rest = report.lines().find_map(|l| l.split_once(&marker))?.1;
    rest.split_whitespace().next()?.parse().ok()
}

#[test]
fn overall_exposure_is_parsed() {
    let line = "\u{2192} Overall exposure level for hatune.service: 1.6 OK \u{1f642}\n";
    assert_eq!(overall_exposure(line, "hatune.service"), Some(1.6));
    assert_eq!(overall_exposure(line, "hatune-once.service"), None);
    let plain = "Overall exposure level for hatune-once.service: 9.6 UNSAFE";
    assert_eq!(overall_exposure(plain, "hatune-once.service"), Some(9.6));
}

/// `--offline=true` reads the unit files themselves, so no running systemd is needed (the
/// test runs in containers and on CI machines without one). systemd 250 and later have it.
#[test]
fn the_services_exposure_scores_do_not_rise() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        println!("skipped: systemd-analyze is not installed");
        return;
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd");
    for &(name, ceiling) in EXPOSURE_CEILINGS {
        let out = Command::new("systemd-analyze")
            .args(["security", "--offline=true", "--no-pager"])
            .arg(dir.join(name))
            .output()
            .unwrap();
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success(),
            "systemd-analyze security --offline=true {name} failed ({}): {said}",
            out.status
        );
        let score = overall_exposure(&said, name)
            .unwrap_or_else(|| panic!("no overall exposure level for {name} in:\n{said}"));
        println!("{name}: overall exposure {score}");
        assert!(
            score <= ceiling,
            "{name}: overall exposure {score}, above the {ceiling} it had: a hardening \
             setting was lost or weakened\n{said}"
        );
    }
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
    let once = unit("hatune-once.service");
    assert!(once
        .lines()
        .any(|l| l.starts_with("ExecStart=/usr/local/bin/hatune once --config")));
    // The state file lives in the directory systemd makes for the dynamic user.
    assert!(once.lines().any(|l| l == "StateDirectory=hatune"));
    assert!(once
        .lines()
        .any(|l| l.starts_with("ExecStart=") && l.contains("--state /var/lib/hatune/once.json")));
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
