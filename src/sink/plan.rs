//! The writes one balancer needs to agree with the decisions. Pure.

use std::collections::{HashMap, HashSet};

use super::{ServerView, View, Write};
use crate::controller::Decision;

/// Every tuned server whose weight on this balancer differs from its decision, unless this
/// balancer's own state excludes it (an operator drained it here, or changed its weight); and
/// every weight a reload made it forget, where no decision takes its place. A server within the
/// deadband is tuned too: another balancer may hold its weight while this one does not.
pub fn plan(view: &View, decisions: &[(&str, Vec<Decision>)]) -> Vec<Write> {
    let here: HashMap<(&str, &str), &ServerView> = view
        .servers
        .iter()
        .map(|s| ((s.key.backend.as_str(), s.key.server.as_str()), s))
        .collect();
    let mut writes = vec![];
    let mut decided = HashSet::new();
    for (backend, list) in decisions {
        for d in list {
            let tuned = d.tuned();
            let Some(server) = here.get(&(*backend, d.name.as_str())).filter(|_| tuned) else {
                continue;
            };
            if server.exclusion.is_some() || server.overridden.is_some() {
                continue;
            }
            decided.insert(&server.key);
            let moves = server.weight() != d.proposed;
            // After a reload the weight is written even when it equals what the balancer
            // holds: that weight was the config's, and is hatune's from now on.
            if moves || server.restore.is_some() {
                writes.push(Write {
                    key: server.key.clone(),
                    weight: d.proposed,
                    decided: moves,
                    restores: server.restore.is_some(),
                });
            }
        }
    }
    for s in &view.servers {
        if let Some(weight) = s.restore.filter(|_| !decided.contains(&s.key)) {
            writes.push(Write {
                key: s.key.clone(),
                weight,
                decided: false,
                restores: true,
            });
        }
    }
    writes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::{Reason, ServerKey};

    fn decision(
        name: &str,
        current: u32,
        proposed: u32,
        set: bool,
        reason: Option<Reason>,
    ) -> Decision {
        Decision {
            name: name.into(),
            current,
            proposed,
            set,
            reason,
        }
    }

    fn row(server: &str, exclusion: Option<Reason>, w: u32) -> ServerView {
        ServerView {
            exclusion,
            ..ServerView::new(ServerKey::new("app", server), w)
        }
    }

    fn weights(writes: Vec<Write>) -> Vec<(String, u32)> {
        writes
            .into_iter()
            .map(|w| (w.key.server, w.weight))
            .collect()
    }

    /// A second HAProxy gets the same weights, except where its own operator drained a server.
    #[test]
    fn every_balancer_is_brought_to_the_same_weights() {
        let decisions = vec![(
            "app",
            vec![
                decision("a", 100, 256, true, None),
                decision("b", 128, 128, false, Some(Reason::WithinDeadband)),
                decision("c", 100, 100, false, Some(Reason::Maint)),
                decision("d", 50, 100, true, Some(Reason::NoContainer)),
                decision("e", 60, 60, false, Some(Reason::NoServerHasData)),
            ],
        )];
        let primary = View {
            servers: vec![
                row("a", None, 100),
                row("b", None, 128),
                row("c", Some(Reason::Maint), 100),
                row("d", None, 50),
                row("e", None, 60),
            ],
            ..View::default()
        };
        let mut secondary = View {
            servers: vec![
                row("a", Some(Reason::Drain), 100),
                row("b", None, 100),
                row("c", None, 100),
                row("d", None, 50),
                row("e", None, 10),
            ],
            ..View::default()
        };
        assert_eq!(
            weights(plan(&primary, &decisions)),
            vec![("a".into(), 256), ("d".into(), 100)]
        );
        assert_eq!(
            weights(plan(&secondary, &decisions)),
            vec![("b".into(), 128), ("d".into(), 100)]
        );
        // An operator's weight on the secondary wins there.
        secondary.servers[1].overridden = Some(128);
        assert_eq!(
            weights(plan(&secondary, &decisions)),
            vec![("d".into(), 100)]
        );
    }

    /// After a reload every forgotten weight is written back, and a decision takes the place
    /// of its server's restore: one write each, counted as what it does.
    #[test]
    fn a_reload_is_written_back_with_the_decisions() {
        let decisions = vec![(
            "app",
            vec![
                decision("a", 200, 220, true, None),
                decision("b", 120, 120, false, Some(Reason::WithinDeadband)),
                decision("c", 80, 80, false, Some(Reason::NoContainer)),
                decision("d", 100, 100, false, Some(Reason::WithinDeadband)),
                decision("e", 60, 100, true, None),
            ],
        )];
        let restored = |server: &str, holds: u32, restore: u32| ServerView {
            restore: Some(restore),
            ..row(server, None, holds)
        };
        let view = View {
            servers: vec![
                restored("a", 100, 200),
                restored("b", 100, 120),
                restored("c", 100, 80),
                row("d", None, 100),
                restored("e", 100, 60),
            ],
            reloaded: true,
            ..View::default()
        };
        let got: Vec<(String, u32, bool, bool)> = plan(&view, &decisions)
            .into_iter()
            .map(|w| (w.key.server, w.weight, w.decided, w.restores))
            .collect();
        assert_eq!(
            got,
            vec![
                ("a".into(), 220, true, true),
                ("b".into(), 120, false, true),
                // e's decision equals what HAProxy holds, not what hatune had: written.
                ("e".into(), 100, true, true),
                // Held: no decision moves it, the restore does.
                ("c".into(), 80, false, true),
            ]
        );
    }
}
