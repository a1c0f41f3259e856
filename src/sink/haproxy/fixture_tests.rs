//! The parsers and the reply framing against real HAProxy replies: our own captures from
//! 2.6.12 and the layouts of 2.2/3.2/3.4 (`tests/fixtures/haproxy/`), then, when the shared
//! captures from 2.6.12, 3.2.0 and 3.4.0 sit next to the project, those too.

use std::path::{Path, PathBuf};

use super::reply::{weight_verdict, PromptFramer, Verdict};
use super::*;

fn own(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/haproxy")
        .join(path)
}

fn read(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    String::from_utf8_lossy(&bytes).into_owned()
}

fn server<'a>(stat: &'a Stat, backend: &str, server: &str) -> &'a ServerStat {
    stat.servers
        .iter()
        .find(|s| s.backend == backend && s.server == server)
        .unwrap_or_else(|| panic!("{backend}/{server} missing"))
}

fn algo<'a>(stat: &'a Stat, backend: &str) -> Option<&'a str> {
    stat.backends
        .iter()
        .find(|b| b.name == backend)
        .and_then(|b| b.algo.as_deref())
}

#[test]
fn own_show_stat_in_every_layout() {
    for (layout, has_uweight) in [
        ("2.2-shaped", false),
        ("2.6.12", true),
        ("3.2-shaped", true),
        ("3.4-shaped", true),
    ] {
        let stat = parse_show_stat(&read(&own(&format!("{layout}/show_stat.csv"))))
            .unwrap_or_else(|e| panic!("{layout}: {e}"));
        assert_eq!(stat.servers.len(), 10, "{layout}");
        assert_eq!(stat.backends.len(), 3, "{layout}");

        let drained = server(&stat, "web", "web-3");
        assert_eq!(
            (drained.status.as_str(), drained.weight),
            ("DRAIN", 100),
            "{layout}"
        );
        assert_eq!(server(&stat, "web", "web-5").status, "MAINT", "{layout}");
        assert_eq!(server(&stat, "web", "web-2").status, "DOWN", "{layout}");
        assert_eq!(server(&stat, "web", "web-1").status, "no check", "{layout}");

        let slow = server(&stat, "web", "web-4");
        assert_eq!((slow.weight, slow.throttle), (3, Some(6)), "{layout}");
        assert_eq!(slow.uweight, has_uweight.then_some(40), "{layout}");
        assert_eq!(slow.user_weight(), if has_uweight { 40 } else { 3 });

        let zero = server(&stat, "db", "db-2");
        assert_eq!((zero.weight, zero.user_weight()), (0, 0), "{layout}");
        assert!(server(&stat, "web", "web-6").backup, "{layout}");
        assert!(!server(&stat, "web", "web-1").backup, "{layout}");
        assert_eq!(server(&stat, "web", "web-1").sessions_total, Some(0));
        assert_eq!(server(&stat, "web", "web-1").lb_total, Some(0));
        assert_eq!(server(&stat, "web", "web-1").agent_status, "");

        assert_eq!(algo(&stat, "web"), Some("roundrobin"), "{layout}");
        assert_eq!(algo(&stat, "db"), Some("leastconn"), "{layout}");
        assert_eq!(algo(&stat, "pinned"), Some("source"), "{layout}");
    }
}

#[test]
fn own_show_info() {
    let info = parse_show_info(&read(&own("2.6.12/show_info.txt"))).unwrap();
    assert!(info.version.starts_with("2.6.12"), "{info:?}");
    assert!(info.pid > 0);
    assert!(info.start_time_sec.is_some());
}

#[test]
fn own_prompt_batch_frames_into_one_outcome_per_command() {
    let raw = std::fs::read(own("2.6.12/set_weight_prompt.raw")).unwrap();
    let mut framer = PromptFramer::new();
    framer.push(&raw);
    let replies: Vec<String> = std::iter::from_fn(|| framer.next_reply()).collect();
    assert!(framer.pending().is_empty());
    // First frame: the reply to `prompt` itself.
    assert_eq!(replies[0], "");
    let verdicts: Vec<Verdict> = replies[1..].iter().map(|r| weight_verdict(r)).collect();
    let refused = |s: &str| Verdict::Refused(s.to_string());
    assert_eq!(
        verdicts,
        vec![
            Verdict::Applied,
            refused("No such server."),
            refused("No such backend."),
            refused(
                "Backend is using a static LB algorithm and only accepts weights '0%' and '100%'."
            ),
            refused("Absolute weight can only be between 0 and 256 inclusive."),
            refused("Empty weight string empty or preceded by garbage"),
            refused("Trailing garbage in weight string"),
            Verdict::Applied,
        ]
    );
}

/// Splits a non-interactive reply to one `;`-joined line: each reply ends with an empty line.
/// (hatune itself uses prompt mode; this reads the shared captures, made the other way.)
fn split_plain(raw: &str) -> Vec<String> {
    let mut replies = Vec::new();
    let mut current = String::new();
    for line in raw.split_inclusive('\n') {
        if line == "\n" {
            replies.push(std::mem::take(&mut current));
        } else {
            current.push_str(line);
        }
    }
    replies
}

#[test]
fn shared_captures_from_26_32_34() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/haproxy");
    if !root.is_dir() {
        println!(
            "skipped: {} does not exist (shared captures are optional)",
            root.display()
        );
        return;
    }
    for version in ["2.6.12", "3.2.0", "3.4.0"] {
        let dir = root.join(version);
        let stat = parse_show_stat(&read(&dir.join("show_stat.csv")))
            .unwrap_or_else(|e| panic!("{version}: {e}"));
        assert_eq!(stat.servers.len(), 10, "{version}");
        let app3 = server(&stat, "app", "app-3");
        assert_eq!(
            (app3.status.as_str(), app3.weight),
            ("DRAIN", 100),
            "{version}"
        );
        let app4 = server(&stat, "app", "app-4");
        assert_eq!(
            (app4.uweight, app4.status.as_str()),
            (Some(50), "UP"),
            "{version}"
        );
        assert_eq!(server(&stat, "app", "app-5").status, "MAINT", "{version}");
        assert!(server(&stat, "app", "app-6").backup, "{version}");
        assert_eq!(server(&stat, "api", "api-2").uweight, Some(0), "{version}");
        assert_eq!(server(&stat, "api", "api-1").uweight, Some(10), "{version}");
        assert_eq!(algo(&stat, "sticky"), Some("source"), "{version}");
        assert_eq!(algo(&stat, "app"), Some("roundrobin"), "{version}");

        let after = parse_show_stat(&read(&dir.join("show_stat_after_batch.csv"))).unwrap();
        assert_eq!(
            server(&after, "app", "app-1").user_weight(),
            200,
            "{version}"
        );
        assert_eq!(
            server(&after, "api", "api-1").user_weight(),
            12,
            "{version}"
        );
        assert_eq!(
            server(&after, "sticky", "s-1").user_weight(),
            100,
            "{version}"
        );

        let info = parse_show_info(&read(&dir.join("show_info.txt"))).unwrap();
        assert!(
            info.version.starts_with(version),
            "{version}: {}",
            info.version
        );
        assert!(info.pid > 0 && info.start_time_sec.is_some(), "{version}");

        let batch = split_plain(&read(&dir.join("set_weight_batch_reply.raw")));
        let verdicts: Vec<Verdict> = batch.iter().map(|r| weight_verdict(r)).collect();
        let refused = |s: &str| Verdict::Refused(s.to_string());
        let absolute = "Absolute weight can only be between 0 and 256 inclusive.";
        assert_eq!(
            verdicts,
            vec![
                Verdict::Applied,
                refused("No such server."),
                refused("No such backend."),
                refused("Backend is using a static LB algorithm and only accepts weights '0%' and '100%'."),
                refused(absolute),
                refused(absolute),
                Verdict::Applied,
            ],
            "{version}"
        );

        let user = read(&dir.join("set_weight_user_level.txt"));
        assert!(
            matches!(weight_verdict(&user), Verdict::PermissionDenied(_)),
            "{version}: {user:?}"
        );
    }
}
