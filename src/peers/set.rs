//! The weight set the leader publishes, and what each instance records of itself: their
//! forms in etcd, and how a set is made from decisions and turned back into them. Pure.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::Backend;
use crate::controller::Decision;
use crate::sink::View;

/// HAProxy's largest weight: a set holding more is not hatune's.
const MAX_WEIGHT: u32 = 256;
/// A set naming more servers than this is not one a leader wrote (a hostile or broken
/// value must not make every instance allocate without bound).
const MAX_SERVERS: usize = 1_000_000;

/// The most of a peer's text a refusal quotes, in characters.
const QUOTE_MOST: usize = 80;

/// `text`, cut to [`QUOTE_MOST`] characters (marked with `…` when cut).
fn clip(text: &str) -> String {
    match text.char_indices().nth(QUOTE_MOST) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_string(),
    }
}

/// Each backend's servers and the weight they should hold.
pub type Weights = BTreeMap<String, BTreeMap<String, u32>>;

/// The set every instance applies, as the leader published it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WeightSet {
    /// The instance that decided it.
    pub leader: String,
    /// When it was decided, in milliseconds since the Unix epoch (for people).
    pub at_ms: u64,
    pub weights: Weights,
}

/// A set with the etcd revision it was published at: instances apply sets in revision
/// order only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub revision: i64,
    pub set: WeightSet,
}

/// What one instance records under the prefix, with its own lease: what it applied and when,
/// and (capacity mode) the requests its balancers counted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct InstanceRecord {
    /// The revision of the last set it applied (0: none yet).
    pub applied: i64,
    /// When it applied it, in milliseconds since the Unix epoch.
    pub applied_ms: u64,
    pub leader: bool,
    /// Requests served per backend and server, summed over its balancers (cumulative).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub requests: BTreeMap<String, BTreeMap<String, u64>>,
}

impl WeightSet {
    /// The JSON stored in etcd.
    pub fn encode(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// A set read back from etcd, checked: weights hatune sets (1..=256), names that are
    /// not empty, a bounded size. Anything else is refused whole: a set is applied entire or
    /// not at all.
    pub fn decode(bytes: &[u8]) -> Result<WeightSet, String> {
        // What a refusal quotes is clipped: a hostile set must not put megabytes in a log line.
        let set: WeightSet = serde_json::from_slice(bytes).map_err(|e| {
            format!(
                "not a weight set ({}): {}",
                clip(&e.to_string()),
                clip(&String::from_utf8_lossy(&bytes[..bytes.len().min(80)]))
            )
        })?;
        let servers: usize = set.weights.values().map(BTreeMap::len).sum();
        if servers > MAX_SERVERS {
            return Err(format!("{servers} servers: more than any leader writes"));
        }
        for (backend, servers) in &set.weights {
            if backend.is_empty() {
                return Err("a backend with an empty name".into());
            }
            for (server, &w) in servers {
                let (b, s) = (clip(backend), clip(server));
                if server.is_empty() {
                    return Err(format!("{b}: a server with an empty name"));
                }
                if w > MAX_WEIGHT {
                    return Err(format!("{b}/{s} weight {w} is over {MAX_WEIGHT}"));
                }
                // hatune never sets 0: that is an operator's drain, and a set must not drain
                // a server on every balancer.
                if w == 0 {
                    return Err(format!("{b}/{s} weight 0 (hatune never drains)"));
                }
            }
        }
        Ok(set)
    }

    /// The next set: each server the leader tuned this tick at its decision; the others that
    /// the last set had (no data this tick, drained on the leader's balancer) keep that
    /// weight; a backend the leader decided nothing for keeps the last set's servers. Servers
    /// gone from a decided backend are dropped.
    pub fn next(
        previous: Option<&WeightSet>,
        decisions: &[(&str, Vec<Decision>)],
        leader: &str,
        at_ms: u64,
    ) -> WeightSet {
        let mut weights = previous.map(|p| p.weights.clone()).unwrap_or_default();
        for (backend, list) in decisions {
            let before = previous.and_then(|p| p.weights.get(*backend));
            let servers: BTreeMap<String, u32> = list
                .iter()
                .filter_map(|d| {
                    let tuned = d.tuned();
                    let w = if tuned {
                        Some(d.proposed)
                    } else {
                        before.and_then(|b| b.get(&d.name)).copied()
                    };
                    w.map(|w| (d.name.clone(), w))
                })
                .collect();
            if servers.is_empty() {
                weights.remove(*backend);
            } else {
                weights.insert(backend.to_string(), servers);
            }
        }
        WeightSet {
            leader: leader.to_string(),
            at_ms,
            weights,
        }
    }

    /// The same weights as `other` (who decided and when aside).
    pub fn same_weights(&self, other: &WeightSet) -> bool {
        self.weights == other.weights
    }

    /// The set as decisions for [`crate::sink::plan`], for this instance's `backends`: each
    /// server the set names that this instance tunes is tuned to its weight. A backend or a
    /// server this instance does not tune (another config, or a set written by hand) is not
    /// touched: a set never reaches past what the local config hands to hatune.
    pub fn decisions<'a>(&'a self, backends: &[Backend]) -> Vec<(&'a str, Vec<Decision>)> {
        self.weights
            .iter()
            .filter_map(|(name, servers)| {
                let backend = backends.iter().find(|b| b.name == *name)?;
                Some((name, servers, backend))
            })
            .map(|(backend_name, servers, backend)| {
                let list = servers
                    .iter()
                    .filter(|(name, _)| backend.tunes(name))
                    .map(|(name, &w)| Decision {
                        name: name.clone(),
                        current: w,
                        proposed: w,
                        set: true,
                        reason: None,
                    })
                    .collect();
                (backend_name.as_str(), list)
            })
            .collect()
    }

    /// `views` with each server the set names holding the set's weight: the weights the
    /// leader decides from are the published ones, not its own balancer's (which a reload or
    /// a late apply may have left elsewhere). Servers someone else weighted keep theirs, so
    /// they stay left alone.
    pub fn overlay(&self, views: &[Option<&View>]) -> Vec<Option<View>> {
        views
            .iter()
            .map(|v| {
                v.map(|v| {
                    let mut v = v.clone();
                    for s in &mut v.servers {
                        if s.overridden.is_some() {
                            continue;
                        }
                        if let Some(&w) = self
                            .weights
                            .get(&s.key.backend)
                            .and_then(|b| b.get(&s.key.server))
                        {
                            s.holds = w;
                            s.restore = None;
                        }
                    }
                    v
                })
            })
            .collect()
    }
}

impl InstanceRecord {
    pub fn encode(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<InstanceRecord, String> {
        serde_json::from_slice(bytes).map_err(|e| format!("not an instance record: {e}"))
    }

    /// Requests per server, summed over `views` (one instance's balancers read this tick);
    /// a server any of them does not count is left out.
    pub fn requests_of(views: &[Option<&View>]) -> BTreeMap<String, BTreeMap<String, u64>> {
        let mut out: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
        for v in views.iter().flatten() {
            for s in &v.servers {
                if let Some(r) = s.requests {
                    let e = out
                        .entry(s.key.backend.clone())
                        .or_default()
                        .entry(s.key.server.clone())
                        .or_default();
                    *e = e.saturating_add(r);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::{Reason, ServerKey};
    use crate::sink::ServerView;

    fn d(name: &str, current: u32, proposed: u32, set: bool, reason: Option<Reason>) -> Decision {
        Decision {
            name: name.into(),
            current,
            proposed,
            set,
            reason,
        }
    }

    fn set(weights: &[(&str, &str, u32)]) -> WeightSet {
        let mut w = Weights::new();
        for (b, s, x) in weights {
            w.entry(b.to_string())
                .or_default()
                .insert(s.to_string(), *x);
        }
        WeightSet {
            leader: "lb-1".into(),
            at_ms: 1,
            weights: w,
        }
    }

    #[test]
    fn the_next_set_takes_decisions_and_keeps_what_was_not_decided() {
        let before = set(&[
            ("app", "a", 100),
            ("app", "b", 120),
            ("app", "c", 80),
            ("app", "gone", 50),
            ("other", "x", 30),
        ]);
        let decisions = vec![(
            "app",
            vec![
                d("a", 100, 150, true, None),
                d("b", 120, 120, false, Some(Reason::WithinDeadband)),
                d("c", 80, 80, false, Some(Reason::NoContainer)),
                d("new", 100, 100, false, Some(Reason::NoContainer)),
                d("drained", 90, 90, false, Some(Reason::Drain)),
            ],
        )];
        let next = WeightSet::next(Some(&before), &decisions, "lb-2", 7);
        assert_eq!(next.leader, "lb-2");
        assert_eq!(
            next.weights,
            set(&[
                ("app", "a", 150),
                ("app", "b", 120),
                ("app", "c", 80),
                ("other", "x", 30)
            ])
            .weights,
            "a decided; b within the deadband; c kept from before; a server without a weight \
             before and without a decision is not named; `gone` left the backend; `other` kept"
        );
        let first = WeightSet::next(None, &decisions, "lb-1", 7);
        assert_eq!(
            first.weights,
            set(&[("app", "a", 150), ("app", "b", 120)]).weights
        );
        let none = WeightSet::next(
            None,
            &[("app", vec![d("c", 1, 1, false, Some(Reason::NoContainer))])],
            "lb-1",
            7,
        );
        assert!(
            none.weights.is_empty(),
            "a backend with nothing to set is not named"
        );
    }

    #[test]
    fn a_set_round_trips_and_hostile_ones_are_refused_whole() {
        let s = set(&[("app", "a", 150), ("app", "b", 1)]);
        assert_eq!(WeightSet::decode(s.encode().as_bytes()).unwrap(), s);
        for bad in [
            &b"garbage"[..],
            br#"{"leader":"x","at_ms":1,"weights":{"app":{"a":257}}}"#,
            br#"{"leader":"x","at_ms":1,"weights":{"app":{"a":-1}}}"#,
            br#"{"leader":"x","at_ms":1,"weights":{"app":{"a":0}}}"#,
            br#"{"leader":"x","at_ms":1,"weights":{"app":{"":1}}}"#,
            br#"{"leader":"x","weights":{}}"#,
            br#"{"leader":"x","at_ms":1,"weights":{"app":{"a":"1"}}}"#,
        ] {
            assert!(
                WeightSet::decode(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn the_set_as_decisions_tunes_what_this_instance_tunes_and_nothing_else() {
        let config = crate::config::Config::parse(
            r#"{"haproxy": "/run/haproxy.sock", "cadvisor": "http://h:8080",
                "backends": [{"name": "app", "pattern": "^app-"}]}"#,
        )
        .unwrap();
        let s = set(&[
            ("app", "app-1", 150),
            ("app", "app-2", 90),
            ("app", "static", 3),
            ("db", "db-1", 7),
        ]);
        let list = s.decisions(&config.backends);
        assert_eq!(list.len(), 1, "`db` is not this instance's to tune");
        assert_eq!(list[0].0, "app");
        let names: Vec<&str> = list[0].1.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(
            names,
            ["app-1", "app-2"],
            "`static` does not match the pattern"
        );
        assert!(list[0].1.iter().all(|d| d.set && d.current == d.proposed));
        assert_eq!(list[0].1[1].proposed, 90);
    }

    #[test]
    fn the_leader_decides_from_the_published_weights_but_not_over_an_operator() {
        let s = set(&[("app", "a", 150), ("app", "b", 90), ("app", "c", 40)]);
        let mut b = ServerView::new(ServerKey::new("app", "b"), 100);
        b.overridden = Some(90);
        let mut c = ServerView::new(ServerKey::new("app", "c"), 100);
        c.restore = Some(41);
        let view = View {
            servers: vec![ServerView::new(ServerKey::new("app", "a"), 100), b, c],
            ..View::default()
        };
        let out = s.overlay(&[Some(&view), None]);
        let v = out[0].as_ref().unwrap();
        assert_eq!(v.servers[0].weight(), 150);
        assert_eq!(v.servers[1].weight(), 100, "an operator's weight stays");
        assert_eq!(
            v.servers[2].weight(),
            40,
            "the set, not what a reload gives back"
        );
        assert!(out[1].is_none());
    }

    #[test]
    fn requests_are_summed_over_an_instances_balancers() {
        let mut a1 = ServerView::new(ServerKey::new("app", "a"), 100);
        a1.requests = Some(10);
        let mut a2 = a1.clone();
        a2.requests = Some(5);
        let b = ServerView::new(ServerKey::new("app", "b"), 100);
        let v1 = View {
            servers: vec![a1, b],
            ..View::default()
        };
        let v2 = View {
            servers: vec![a2],
            ..View::default()
        };
        let r = InstanceRecord::requests_of(&[Some(&v1), Some(&v2), None]);
        assert_eq!(r["app"]["a"], 15);
        assert!(!r["app"].contains_key("b"));
        let rec = InstanceRecord {
            applied: 3,
            applied_ms: 9,
            leader: true,
            requests: r,
        };
        assert_eq!(
            InstanceRecord::decode(rec.encode().as_bytes()).unwrap(),
            rec
        );
    }
}
