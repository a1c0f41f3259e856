//! The tick's peer stage: what the leader publishes, what a follower applies, and what each
//! records of itself. The etcd calls are [`Peers`]'; each is bounded by `peers.timeout`, and
//! none is made while etcd is known to be out of reach (the agent finds when it is back).

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::time::Instant;
use tracing::debug;

use super::Counters;
use crate::config::Backend;
use crate::controller::{Decision, Mode};
use crate::peers::{InstanceRecord, Peers, Published, WeightSet};
use crate::report::{Action, BackendReport, ServerRow, SocketStatus};
use crate::sink::{self, View};

/// Requests per backend and server, as an instance records them.
pub type Requests = BTreeMap<String, BTreeMap<String, u64>>;

/// One instance's recorded requests as the controller's counters.
pub(super) fn counters(r: &Requests) -> Counters<'_> {
    r.iter()
        .flat_map(|(b, servers)| {
            servers
                .iter()
                .map(move |(s, &n)| ((b.as_str(), s.as_str()), Some(n)))
        })
        .collect()
}

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The other instances' records, for capacity mode (none otherwise: nothing needs them).
pub(super) async fn remote_counters(
    p: &Peers,
    backends: &[Backend],
) -> Vec<(String, InstanceRecord)> {
    if !p.etcd_up() || !backends.iter().any(|b| b.controller.mode == Mode::Capacity) {
        return vec![];
    }
    match p.others().await {
        Ok(mut others) => {
            others.sort_by(|a, b| a.0.cmp(&b.0));
            others
        }
        Err(e) => {
            debug!(error = %e, "peers: the other instances' request counters could not be read");
            vec![]
        }
    }
}

/// The leader's decisions as the next set, published when it differs from the last; the set
/// this instance then applies. When it could not be published, the last set stays (and the
/// rows say why nothing moved).
pub(super) async fn publish(
    p: &Peers,
    fence: i64,
    latest: Option<Published>,
    decisions: &[(&str, Vec<Decision>)],
    reports: &mut [BackendReport],
) -> Option<Published> {
    let next = WeightSet::next(
        latest.as_ref().map(|l| &l.set),
        decisions,
        p.name(),
        wall_ms(),
    );
    if latest.as_ref().is_some_and(|l| l.set.same_weights(&next)) {
        return latest;
    }
    let result = match p.etcd_up() {
        true => p.publish(fence, next).await,
        false => Err("etcd is out of reach".to_string()),
    };
    match result {
        Ok(published) => {
            debug!(revision = published.revision, "peers: weight set published");
            Some(published)
        }
        Err(e) => {
            // An outage is said once, by the agent; a refusal (deposed) by `publish`.
            debug!(error = %e, "peers: the weight set was not published: the balancers keep the last one");
            for b in reports.iter_mut() {
                for row in b.servers.iter_mut().filter(|r| r.action == Action::Set) {
                    row.action = Action::Keep;
                    row.reason = Some(format!("not published: {e}"));
                }
            }
            latest
        }
    }
}

/// A follower's rows: each tuned server of each backend at the set's weight.
pub(super) fn follow(
    backends: &[Backend],
    views: &[Option<&View>],
    published: Option<&Published>,
) -> Vec<BackendReport> {
    let grouped: Vec<_> = views
        .iter()
        .flatten()
        .map(|v| sink::by_backend(v))
        .collect();
    let empty = BTreeMap::new();
    backends
        .iter()
        .map(|backend| {
            let set = published
                .and_then(|p| p.set.weights.get(&backend.name))
                .unwrap_or(&empty);
            let servers = sink::merge(&backend.name, &grouped)
                .into_iter()
                .filter(|(s, _)| backend.tunes(&s.key.server))
                .map(|(s, overridden)| {
                    let current = s.weight();
                    let target = set.get(&s.key.server).copied();
                    let (action, proposed, reason) = match (target, &s.exclusion, overridden) {
                        (_, Some(why), _) => (Action::Skip, current, Some(why.to_string())),
                        (_, None, Some(_)) => (
                            Action::Skip,
                            current,
                            Some("weighted by someone else".into()),
                        ),
                        (None, None, None) => (
                            Action::Keep,
                            current,
                            Some("not in the published set".into()),
                        ),
                        (Some(w), None, None) if w != current => (Action::Set, w, None),
                        (Some(w), None, None) => (Action::Keep, w, None),
                    };
                    ServerRow {
                        server: s.key.server.clone(),
                        host: None,
                        container: None,
                        cpu: None,
                        current,
                        proposed,
                        action,
                        reason,
                        errors: vec![],
                    }
                })
                .collect();
            BackendReport {
                name: backend.name.clone(),
                error: None,
                servers,
                unmatched_containers: vec![],
            }
        })
        .collect()
}

/// Notes the set applied (when every balancer read took it) and records this instance.
pub(super) async fn applied(
    p: &Peers,
    published: Option<&Published>,
    views: &[Option<&View>],
    sockets: &[SocketStatus],
    now: Instant,
) {
    if let Some(published) = published {
        if sockets.iter().all(|s| s.error.is_none()) {
            p.mark_applied(published.revision);
        }
    }
    if !p.etcd_up() {
        return;
    }
    let record = InstanceRecord {
        applied: p.applied(),
        applied_ms: wall_ms(),
        leader: p.leads(now),
        requests: InstanceRecord::requests_of(views),
    };
    if let Err(e) = p.record(&record).await {
        debug!(error = %e, "peers: this instance's record was not written");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::controller::{Reason, ServerKey};
    use crate::sink::ServerView;

    fn config() -> Config {
        Config::parse(
            r#"{"haproxy": "/run/haproxy.sock", "cadvisor": "http://h:8080",
                "backends": [{"name": "app", "pattern": "^app-"}]}"#,
        )
        .unwrap()
    }

    fn published(weights: &[(&str, u32)]) -> Published {
        let mut set = WeightSet {
            leader: "lb-1".into(),
            at_ms: 1,
            weights: Default::default(),
        };
        let app = set.weights.entry("app".into()).or_default();
        for (s, w) in weights {
            app.insert(s.to_string(), *w);
        }
        Published { revision: 7, set }
    }

    /// A follower brings each server to the set, except where its own balancer's state or an
    /// operator keeps it; a server the set does not name is kept as it is.
    #[test]
    fn a_follower_takes_the_set_where_nothing_local_keeps_a_server() {
        let config = config();
        let row = |name: &str, w| ServerView::new(ServerKey::new("app", name), w);
        let mut drained = row("app-2", 100);
        drained.exclusion = Some(Reason::Drain);
        let mut by_hand = row("app-3", 30);
        by_hand.overridden = Some(100);
        let view = View {
            backends: vec!["app".into()],
            servers: vec![
                row("app-1", 100),
                drained,
                by_hand,
                row("app-4", 100),
                row("app-5", 120),
                row("static", 5),
            ],
            reloaded: false,
        };
        let p = published(&[("app-1", 150), ("app-2", 80), ("app-3", 90), ("app-4", 100)]);
        let reports = follow(&config.backends, &[Some(&view)], Some(&p));
        let rows: Vec<_> = reports[0]
            .servers
            .iter()
            .map(|r| (r.server.as_str(), r.action, r.current, r.proposed))
            .collect();
        assert_eq!(
            rows,
            [
                ("app-1", Action::Set, 100, 150),
                ("app-2", Action::Skip, 100, 100),
                ("app-3", Action::Skip, 30, 30),
                ("app-4", Action::Keep, 100, 100),
                ("app-5", Action::Keep, 120, 120),
            ],
            "`static` does not match the pattern and is not listed"
        );
        let none = follow(&config.backends, &[Some(&view)], None);
        assert!(none[0].servers.iter().all(|r| r.action != Action::Set));
        // And the writes the set's decisions plan on this balancer: only app-1 moves.
        let writes = sink::plan(&view, &p.set.decisions(&config.backends));
        let moved: Vec<_> = writes
            .iter()
            .map(|w| (w.key.server.as_str(), w.weight))
            .collect();
        assert_eq!(moved, [("app-1", 150)]);
    }

    #[test]
    fn recorded_requests_become_counters() {
        let mut r = Requests::new();
        r.entry("app".into())
            .or_default()
            .insert("app-1".into(), 42);
        let c = counters(&r);
        assert_eq!(c.get(&("app", "app-1")), Some(&Some(42)));
        assert_eq!(c.len(), 1);
    }
}
