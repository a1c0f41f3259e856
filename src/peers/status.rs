//! `hatune status`: who leads, the published set, and what each instance applied. Rendering
//! is pure; [`super::snapshot`] reads what it shows.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::Snapshot;
use crate::config::Peers as PeersConfig;
use crate::report::printable;

fn when(ms: u64) -> String {
    // RFC 3339 stops at year 9999: a peer's later (or absurd) time is shown as it was written.
    if ms > MAX_MS {
        return format!("{ms} ms after the epoch");
    }
    let t = UNIX_EPOCH + Duration::from_millis(ms);
    let ago = SystemTime::now()
        .duration_since(t)
        .map(|d| {
            format!(
                " ({} ago)",
                humantime::format_duration(Duration::from_secs(d.as_secs()))
            )
        })
        .unwrap_or_default();
    format!("{}{ago}", humantime::format_rfc3339_seconds(t))
}

/// 9999-12-31T23:59:59.999Z, in milliseconds since the epoch.
const MAX_MS: u64 = 253_402_300_799_999;

/// The status as people read it; what etcd held is escaped ([`printable`]).
pub fn render(cfg: &PeersConfig, s: &Snapshot) -> String {
    let mut out = String::new();
    let leader = s.leader.as_deref().filter(|l| !l.is_empty());
    let _ = writeln!(
        out,
        "peer group {} on {}: {}",
        cfg.prefix,
        cfg.etcd.join(", "),
        match leader {
            Some(l) => format!("led by {}", printable(l)),
            None => "NO LEADER".to_string(),
        }
    );
    match &s.published {
        None => {
            let _ = writeln!(out, "published: nothing yet");
        }
        Some(Err(e)) => {
            let _ = writeln!(out, "published: UNREADABLE ({})", printable(e));
        }
        Some(Ok(p)) => {
            let servers: usize = p.set.weights.values().map(|b| b.len()).sum();
            let _ = writeln!(
                out,
                "published: revision {} by {} at {}, {servers} servers",
                p.revision,
                printable(&p.set.leader),
                when(p.set.at_ms)
            );
            for (backend, list) in &p.set.weights {
                let weights: Vec<String> = list
                    .iter()
                    .map(|(server, w)| format!("{}={w}", printable(server)))
                    .collect();
                let _ = writeln!(out, "  {}: {}", printable(backend), weights.join(" "));
            }
        }
    }
    let newest = match &s.published {
        Some(Ok(p)) => p.revision,
        _ => 0,
    };
    if s.instances.is_empty() {
        let _ = writeln!(out, "instances: none recorded");
    } else {
        let _ = writeln!(out, "instances:");
    }
    for (name, record) in &s.instances {
        match record {
            Ok(r) => {
                let role = if leader == Some(name.as_str()) {
                    " (leader)"
                } else {
                    ""
                };
                let behind = if r.applied < newest { "  BEHIND" } else { "" };
                let _ = writeln!(
                    out,
                    "  {}{role}: applied revision {} at {}{behind}",
                    printable(name),
                    r.applied,
                    when(r.applied_ms)
                );
            }
            Err(e) => {
                let _ = writeln!(out, "  {}: UNREADABLE ({})", printable(name), printable(e));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peers::{InstanceRecord, Published, WeightSet};

    #[test]
    fn the_status_names_the_leader_the_set_and_who_is_behind() {
        let cfg = PeersConfig {
            etcd: vec!["http://127.0.0.1:2379".into()],
            prefix: "/hatune/prod".into(),
            lease: Duration::from_secs(5),
            name: "lb-1".into(),
            timeout: Duration::from_secs(1),
            standalone_after: None,
            ca_file: None,
            client_cert_file: None,
        };
        let mut set = WeightSet {
            leader: "lb-1".into(),
            at_ms: 1_700_000_000_000,
            weights: Default::default(),
        };
        set.weights
            .entry("app".into())
            .or_default()
            .extend([("app-1".to_string(), 115), ("app-2".to_string(), 256)]);
        let record = |applied| InstanceRecord {
            applied,
            applied_ms: 1_700_000_000_500,
            leader: false,
            requests: Default::default(),
        };
        let s = Snapshot {
            leader: Some("lb-1".into()),
            published: Some(Ok(Published { revision: 42, set })),
            instances: vec![
                ("lb-1".into(), Ok(record(42))),
                ("lb-2".into(), Ok(record(41))),
                ("lb\u{1b}3".into(), Err("not an instance record".into())),
            ],
        };
        let text = render(&cfg, &s);
        assert!(
            text.starts_with("peer group /hatune/prod on http://127.0.0.1:2379: led by lb-1\n"),
            "{text}"
        );
        assert!(
            text.contains("published: revision 42 by lb-1 at 2023-11-14T22:13:20Z"),
            "{text}"
        );
        assert!(text.contains("  app: app-1=115 app-2=256\n"), "{text}");
        assert!(
            text.contains("  lb-1 (leader): applied revision 42 at 2023-11-14T22:13:20Z"),
            "{text}"
        );
        assert!(
            text.contains("  lb-2: applied revision 41") && text.contains("BEHIND"),
            "{text}"
        );
        assert!(!text.contains('\u{1b}'), "escaped: {text}");
        // A peer's time past year 9999 is shown as written, not a panic.
        let mut far = s;
        if let Some(Ok(p)) = &mut far.published {
            p.set.at_ms = u64::MAX;
        }
        let text = render(&cfg, &far);
        assert!(
            text.contains("18446744073709551615 ms after the epoch"),
            "{text}"
        );
        let none = Snapshot {
            leader: None,
            published: None,
            instances: vec![],
        };
        let text = render(&cfg, &none);
        assert!(
            text.contains("NO LEADER")
                && text.contains("nothing yet")
                && text.contains("none recorded"),
            "{text}"
        );
    }
}
