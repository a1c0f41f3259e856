//! The alert rules in `contrib/prometheus/`: promtool accepts them and their unit tests pass,
//! and every `hatune_*` series they name is one hatune exports (or a peer series promised for
//! the coming peers feature).
//!
//! promtool comes with Debian's `prometheus` package; without it these tests fail rather than
//! skip, so a CI machine that lacks it is noticed.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use hatune::daemon::metrics::Metrics;
use hatune::report::{Action, BackendReport, HostStatus, ServerRow, SocketStatus, TickReport};

const RULES: &str = "contrib/prometheus/hatune.rules.yml";
const RULE_TESTS: &str = "contrib/prometheus/hatune.rules.test.yml";

/// Series of the peers feature, not implemented yet: their names are a contract the rules
/// already rely on.
const CONTRACT: [&str; 3] = [
    "hatune_peer_leader",
    "hatune_peer_revision",
    "hatune_peer_etcd_up",
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `promtool` on PATH, or a failure that says how to install it.
fn promtool() -> PathBuf {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|d| d.join("promtool"))
        .find(|p| p.is_file());
    found.unwrap_or_else(|| {
        panic!(
            "promtool is not on PATH: install Debian's `prometheus` package \
             (`apt-get install --no-install-recommends prometheus`; CI installs it)"
        )
    })
}

/// Runs `promtool ARGS` in the crate root; fails with promtool's output unless it succeeds.
fn run_promtool(args: &[&str]) -> String {
    let out = Command::new(promtool())
        .args(args)
        .current_dir(root())
        .output()
        .expect("cannot run promtool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "`promtool {}` failed ({}):\n{text}",
        args.join(" "),
        out.status
    );
    text
}

#[test]
fn promtool_accepts_the_rules() {
    let out = run_promtool(&["check", "rules", RULES]);
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn the_rules_pass_their_unit_tests() {
    let out = run_promtool(&["test", "rules", RULE_TESTS]);
    assert!(out.contains("SUCCESS"), "{out}");
}

/// One tick that touches every family: a server, a skipped host, a socket that refused a weight
/// and was reloaded (a labelled family has no series before its first value).
fn busy_tick() -> TickReport {
    TickReport {
        dry_run: false,
        backends: vec![BackendReport {
            name: "app".into(),
            error: None,
            servers: vec![ServerRow {
                server: "app-1".into(),
                host: Some("http://h1:8080".into()),
                container: Some("app-1".into()),
                cpu: Some(0.5),
                current: 100,
                proposed: 110,
                action: Action::Set,
                reason: None,
                errors: vec![],
            }],
            unmatched_containers: vec![],
        }],
        hosts: vec![HostStatus {
            url: "http://h2:8080".into(),
            containers: None,
            error: Some("timed out".into()),
            kind: Some("timeout".into()),
        }],
        sockets: vec![SocketStatus {
            address: "/run/haproxy/admin.sock".into(),
            error: None,
            applied: 0,
            refused: 1,
            reloaded: true,
            restored: 0,
        }],
    }
}

/// Series names in the daemon's `/metrics` text after [`busy_tick`]: every sample's name, and
/// from each `# TYPE` line the names of its samples (`NAME_total` for a counter; `_bucket`,
/// `_sum` and `_count` for a histogram).
fn exported() -> BTreeSet<String> {
    let metrics = Metrics::new();
    metrics.observe(&busy_tick(), Duration::from_millis(5), 0);
    metrics.set_tick_interval(Duration::from_secs(30));
    let text = metrics.encode();
    let mut names = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                panic!("odd TYPE line `{line}` in\n{text}");
            };
            match kind {
                "counter" => {
                    names.insert(format!("{name}_total"));
                }
                "histogram" => {
                    for suffix in ["_bucket", "_sum", "_count"] {
                        names.insert(format!("{name}{suffix}"));
                    }
                }
                _ => {
                    names.insert(name.to_string());
                }
            }
        } else if !line.starts_with('#') {
            let name = line.split(['{', ' ']).next().unwrap_or_default();
            names.insert(name.to_string());
        }
    }
    names
}

/// Every `hatune_[a-z_]+` word in `text`.
fn named_in(text: &str) -> BTreeSet<String> {
    let re = regex::Regex::new(r"\bhatune_[a-z_]+").unwrap();
    re.find_iter(text).map(|m| m.as_str().to_string()).collect()
}

#[test]
fn the_rules_name_only_series_hatune_exports() {
    let exported = exported();
    // The list is real: it holds what the rules are about.
    for name in [
        "hatune_ticks_total",
        "hatune_tick_interval_seconds",
        "hatune_last_successful_tick_timestamp_seconds",
        "hatune_tick_duration_seconds_bucket",
        "hatune_skipped_hosts_total",
        "hatune_haproxy_socket_up",
        "hatune_haproxy_write_errors_total",
    ] {
        assert!(exported.contains(name), "{name} not in {exported:?}");
    }
    for file in [RULES, RULE_TESTS] {
        let text = std::fs::read_to_string(root().join(file)).unwrap();
        let named = named_in(&text);
        assert!(!named.is_empty(), "{file} names no hatune series");
        let unknown: Vec<_> = named
            .iter()
            .filter(|n| !exported.contains(*n) && !CONTRACT.contains(&n.as_str()))
            .collect();
        assert!(
            unknown.is_empty(),
            "{file} names series hatune does not export: {unknown:?}\nexported: {exported:?}"
        );
    }
}
