//! The damped controller: one backend, one tick, no I/O.
//!
//! Each server that takes part moves `gain` of the way toward the weight that would bring it to
//! the backend's average utilisation, `w × avg / cpu`. Then the backend is scaled so its largest
//! weight is `max_weight` (precision: HAProxy weights are integers up to 256), floored at
//! `min_weight`, and changes within the deadband are dropped.
//!
//! Who takes part: servers that are up (or not checked), not MAINT/DRAIN/NOLB, not backup, with a
//! user weight above 0 that no agent sets, and a fresh reading. A server that could take part but
//! has no reading this tick is *held*: it keeps its share of traffic (its weight is scaled with
//! the others). Everyone else is left exactly as HAProxy has them.

use std::fmt;

use serde::Serialize;

use crate::config::ControllerSettings;

/// What the controller knows of one server.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerInput {
    pub name: String,
    /// The user weight HAProxy has now (not the slowstart-throttled one).
    pub weight: u32,
    pub input: Input,
}

/// A server's part in this tick.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// Takes part, with its utilisation (share of its capacity, 0.0..).
    Measured(f64),
    /// Could take part but has no reading this tick: held at its share.
    NoData(Reason),
    /// Not touched at all.
    Excluded(Reason),
}

/// Why a server's weight is not moved by its own reading.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "reason", content = "detail")]
pub enum Reason {
    Down,
    Maint,
    Drain,
    /// `NOLB`, or another status that takes no new traffic.
    NotBalanced(String),
    WeightZero,
    Backup,
    /// An agent-check sets this server's weight and would overwrite ours.
    AgentCheck,
    /// In slowstart on a HAProxy without `uweight`: the user weight is unknown.
    SlowstartUnknownWeight,
    /// The server's name does not match the backend's pattern.
    NotMatched,
    /// Someone else changed its weight since hatune set `expected`: the operator wins.
    Overridden {
        expected: u32,
    },
    /// No container of this name on any host that answered.
    NoContainer,
    /// The same alias on two hosts: which one is this server?
    DuplicateAlias(Vec<String>),
    /// A container that restarted: its counter went down.
    CounterReset,
    /// The container's reading is unusable (too few samples, bad timestamps, ...).
    NoReading(String),
    /// The change is under the deadband (or rounds to nothing).
    WithinDeadband,
    /// Every server that takes part is idle: there is nothing to balance.
    BackendIdle,
    /// No server of the backend has a reading: weights are left as they are.
    NoServerHasData,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Down => write!(f, "DOWN"),
            Reason::Maint => write!(f, "MAINT"),
            Reason::Drain => write!(f, "DRAIN"),
            Reason::NotBalanced(s) => write!(f, "status {s}"),
            Reason::WeightZero => write!(f, "weight 0 (drained by weight)"),
            Reason::Backup => write!(f, "backup server"),
            Reason::AgentCheck => write!(f, "agent-check sets its weight"),
            Reason::SlowstartUnknownWeight => {
                write!(f, "slowstart, user weight unknown (HAProxy < 2.4)")
            }
            Reason::NotMatched => write!(f, "name does not match the pattern"),
            Reason::Overridden { expected } => {
                write!(f, "weight changed outside hatune (hatune set {expected})")
            }
            Reason::NoContainer => write!(f, "no data: no container found"),
            Reason::DuplicateAlias(hosts) => {
                write!(f, "duplicate alias on {}", hosts.join(", "))
            }
            Reason::CounterReset => write!(f, "no data: counter reset"),
            Reason::NoReading(why) => write!(f, "no data: {why}"),
            Reason::WithinDeadband => write!(f, "within deadband"),
            Reason::BackendIdle => write!(f, "backend idle"),
            Reason::NoServerHasData => write!(f, "no server of the backend has data"),
        }
    }
}

/// What to do with one server.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub name: String,
    pub current: u32,
    /// The weight it should have; equal to `current` unless `set`.
    pub proposed: u32,
    /// True when `proposed` should be sent to HAProxy.
    pub set: bool,
    /// Why it is not set, or why its own reading did not move it (held servers that are set).
    pub reason: Option<Reason>,
}

/// Decides one backend's weights. Pure: the same inputs give the same outputs, whatever their
/// order. Decisions come back in the order of `servers`.
pub fn decide(servers: &[ServerInput], s: &ControllerSettings) -> Vec<Decision> {
    let keep = |srv: &ServerInput, reason: Reason| Decision {
        name: srv.name.clone(),
        current: srv.weight,
        proposed: srv.weight,
        set: false,
        reason: Some(reason),
    };

    // Sum in name order so that float rounding, and so the result, cannot depend on input order.
    let mut measured: Vec<(&str, f64)> = servers
        .iter()
        .filter_map(|srv| match srv.input {
            Input::Measured(cpu) => Some((srv.name.as_str(), cpu.max(0.0))),
            _ => None,
        })
        .collect();
    measured.sort_by(|a, b| a.0.cmp(b.0));

    let whole_backend = if measured.is_empty() {
        Some(Reason::NoServerHasData)
    } else {
        None
    };
    let avg = if measured.is_empty() {
        0.0
    } else {
        measured.iter().map(|(_, c)| c).sum::<f64>() / measured.len() as f64
    };
    let whole_backend = whole_backend.or(if avg <= 0.0 || !avg.is_finite() {
        Some(Reason::BackendIdle)
    } else {
        None
    });
    if let Some(reason) = whole_backend {
        return servers
            .iter()
            .map(|srv| match &srv.input {
                Input::Excluded(r) | Input::NoData(r) => keep(srv, r.clone()),
                Input::Measured(_) => keep(srv, reason.clone()),
            })
            .collect();
    }

    // Unscaled new weights of those that take part or are held.
    let raw: Vec<Option<f64>> = servers
        .iter()
        .map(|srv| {
            let w = f64::from(srv.weight);
            match srv.input {
                _ if srv.weight == 0 => None,
                Input::Measured(cpu) => Some(w * step(cpu.max(0.0), avg, s)),
                Input::NoData(_) => Some(w),
                Input::Excluded(_) => None,
            }
        })
        .collect();
    let largest = raw.iter().flatten().fold(0.0_f64, |m, &x| m.max(x));
    let scale = f64::from(s.max_weight) / largest;

    servers
        .iter()
        .zip(raw)
        .map(|(srv, raw)| {
            let Some(raw) = raw else {
                return match &srv.input {
                    Input::Excluded(r) | Input::NoData(r) => keep(srv, r.clone()),
                    Input::Measured(_) => keep(srv, Reason::WeightZero),
                };
            };
            let proposed = ((raw * scale).round() as u32).clamp(s.min_weight, s.max_weight);
            let held = match &srv.input {
                Input::NoData(r) => Some(r.clone()),
                _ => None,
            };
            let current = f64::from(srv.weight);
            let delta = (f64::from(proposed) - current).abs();
            if proposed == srv.weight || delta <= s.deadband * current {
                return keep(srv, held.unwrap_or(Reason::WithinDeadband));
            }
            Decision {
                name: srv.name.clone(),
                current: srv.weight,
                proposed,
                set: true,
                reason: held,
            }
        })
        .collect()
}

/// The factor one measured server's weight moves by: `gain` of the way toward `avg / cpu`,
/// never more than `max_step` either way. An idle server is not infinitely underloaded: it
/// moves up by `max_step` at most.
fn step(cpu: f64, avg: f64, s: &ControllerSettings) -> f64 {
    let factor = if cpu > 0.0 {
        1.0 + s.gain * (avg / cpu - 1.0)
    } else {
        s.max_step
    };
    factor.clamp(1.0 / s.max_step, s.max_step)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn settings() -> ControllerSettings {
        ControllerSettings::default()
    }

    fn srv(name: &str, weight: u32, input: Input) -> ServerInput {
        ServerInput {
            name: name.to_string(),
            weight,
            input,
        }
    }

    fn m(name: &str, weight: u32, cpu: f64) -> ServerInput {
        srv(name, weight, Input::Measured(cpu))
    }

    fn proposed(d: &[Decision]) -> Vec<u32> {
        d.iter().map(|d| d.proposed).collect()
    }

    #[test]
    fn halfway_toward_the_average_then_scaled_to_max_weight() {
        // Capacities 1,1,2,4 with equal weights: CPU = share / capacity.
        let servers = [
            m("a", 100, 0.25),
            m("b", 100, 0.25),
            m("c", 100, 0.125),
            m("d", 100, 0.0625),
        ];
        let d = decide(&servers, &settings());
        // avg = 0.171875; factors 0.84375, 0.84375, 1.1875, 1.875 → largest scaled to 256.
        assert_eq!(proposed(&d), vec![115, 115, 162, 256]);
        assert!(d.iter().all(|d| d.set && d.reason.is_none()));
    }

    #[test]
    fn balanced_backend_sends_nothing() {
        let servers = [m("a", 256, 0.4), m("b", 128, 0.401), m("c", 64, 0.399)];
        let d = decide(&servers, &settings());
        assert_eq!(proposed(&d), vec![256, 128, 64]);
        assert!(d
            .iter()
            .all(|d| !d.set && d.reason == Some(Reason::WithinDeadband)));
    }

    /// Table: each guard, with the weights it must leave alone.
    #[test]
    fn guards() {
        struct Case {
            what: &'static str,
            servers: Vec<ServerInput>,
            want: Vec<(u32, bool)>,
            settings: ControllerSettings,
        }
        let cases = vec![
            Case {
                what: "excluded servers are untouched and not counted in the average",
                servers: vec![
                    m("a", 100, 0.5),
                    m("b", 100, 0.5),
                    srv("c", 100, Input::Excluded(Reason::Drain)),
                    srv("d", 0, Input::Excluded(Reason::WeightZero)),
                    srv("e", 7, Input::Excluded(Reason::Maint)),
                ],
                // a and b are balanced: scaled from 100 to 256, the excluded stay put.
                want: vec![
                    (256, true),
                    (256, true),
                    (100, false),
                    (0, false),
                    (7, false),
                ],
                settings: settings(),
            },
            Case {
                what: "a held server keeps its share: scaled with the others",
                servers: vec![
                    m("a", 128, 0.5),
                    m("b", 128, 0.5),
                    srv("c", 64, Input::NoData(Reason::NoContainer)),
                ],
                want: vec![(256, true), (256, true), (128, true)],
                settings: settings(),
            },
            Case {
                what: "an idle server moves up by max_step, no division by zero",
                servers: vec![m("a", 100, 0.0), m("b", 100, 0.6)],
                // factors: a 2.0 (capped), b 1 + 0.5*(0.3/0.6 - 1) = 0.75
                want: vec![(256, true), (96, true)],
                settings: settings(),
            },
            Case {
                what: "a whole idle backend is left alone",
                servers: vec![m("a", 10, 0.0), m("b", 20, 0.0)],
                want: vec![(10, false), (20, false)],
                settings: settings(),
            },
            Case {
                what: "no data anywhere: nothing moves, not even by scaling",
                servers: vec![
                    srv("a", 10, Input::NoData(Reason::CounterReset)),
                    srv("b", 20, Input::NoData(Reason::NoContainer)),
                ],
                want: vec![(10, false), (20, false)],
                settings: settings(),
            },
            Case {
                what: "floor at min_weight, never 0",
                servers: vec![m("a", 256, 0.01), m("b", 1, 1.0)],
                want: vec![(256, false), (1, false)],
                settings: settings(),
            },
            Case {
                what: "floor at a configured min_weight",
                servers: vec![m("a", 256, 0.01), m("b", 1, 1.0)],
                want: vec![(256, false), (5, true)],
                settings: ControllerSettings {
                    min_weight: 5,
                    ..settings()
                },
            },
            Case {
                what: "max_step caps a big move down",
                servers: vec![m("a", 200, 0.01), m("b", 200, 1.0)],
                // b: 1 + 0.5*(0.505 - 1) = 0.7525; a: capped at 2 → 400 → scale 0.64
                want: vec![(256, true), (96, true)],
                settings: settings(),
            },
            Case {
                what: "a change under the deadband is not sent, one above is",
                servers: vec![m("a", 256, 0.5), m("b", 100, 0.51), m("c", 100, 0.46)],
                // avg 0.49, scale 256/253.44: b → 99 (1% ≤ deadband), c → 104 (4%)
                want: vec![(256, false), (100, false), (104, true)],
                settings: settings(),
            },
            Case {
                what: "a lone measured server stays at max_weight",
                servers: vec![m("a", 256, 0.9)],
                want: vec![(256, false)],
                settings: settings(),
            },
        ];
        for c in cases {
            let d = decide(&c.servers, &c.settings);
            let got: Vec<(u32, bool)> = d.iter().map(|d| (d.proposed, d.set)).collect();
            assert_eq!(got, c.want, "{}: {d:#?}", c.what);
        }
    }

    #[test]
    fn reasons_are_reported() {
        let servers = [
            m("a", 100, 0.5),
            m("b", 50, 0.5),
            srv("c", 100, Input::Excluded(Reason::Maint)),
            srv("d", 100, Input::NoData(Reason::CounterReset)),
        ];
        let d = decide(&servers, &settings());
        assert_eq!(d[0].reason, None);
        assert_eq!(d[2].reason, Some(Reason::Maint));
        assert!(d[3].set, "held servers are scaled with the others");
        assert_eq!(d[3].reason, Some(Reason::CounterReset));
    }

    /// Converges from 1,1,2,4 cores with the published halfway figures.
    #[test]
    fn converges_like_the_published_halfway_rule() {
        let capacity = [1.0, 1.0, 2.0, 4.0];
        let mut weights = [100u32; 4];
        let mut ratios = vec![];
        for _ in 0..8 {
            let total: f64 = weights.iter().map(|&w| f64::from(w)).sum();
            let cpu: Vec<f64> = (0..4)
                .map(|i| f64::from(weights[i]) / total * 2.0 / capacity[i])
                .collect();
            let mean = cpu.iter().sum::<f64>() / 4.0;
            ratios.push(cpu.iter().cloned().fold(0.0, f64::max) / mean);
            let servers: Vec<ServerInput> = (0..4)
                .map(|i| m(&format!("s{i}"), weights[i], cpu[i]))
                .collect();
            for (w, d) in weights.iter_mut().zip(decide(&servers, &settings())) {
                *w = d.proposed;
            }
        }
        assert!((ratios[0] - 1.455).abs() < 0.01, "{ratios:?}");
        assert!(
            ratios[1] < 1.25 && ratios[2] < 1.12 && ratios[3] < 1.07,
            "{ratios:?}"
        );
        assert!(ratios[7] < 1.03, "{ratios:?}");
    }

    fn arb_server() -> impl Strategy<Value = (u32, Option<f64>, u8)> {
        (0u32..=256, proptest::option::of(0.0f64..4.0), 0u8..4)
    }

    proptest! {
        /// Every weight that is set lies within min..max; nothing is ever set to 0.
        #[test]
        fn weights_stay_within_bounds(
            list in proptest::collection::vec(arb_server(), 1..40),
            min in 1u32..20,
            max_extra in 0u32..236,
            gain in 0.05f64..1.0,
        ) {
            let s = ControllerSettings { min_weight: min, max_weight: min + max_extra, gain, ..settings() };
            let servers: Vec<ServerInput> = list.iter().enumerate().map(|(i, &(w, cpu, kind))| {
                let input = match (kind, cpu) {
                    (0, _) => Input::Excluded(Reason::Maint),
                    (1, _) | (_, None) => Input::NoData(Reason::NoContainer),
                    (_, Some(c)) => Input::Measured(c),
                };
                srv(&format!("s{i}"), w, input)
            }).collect();
            for d in decide(&servers, &s) {
                if d.set {
                    prop_assert!(d.proposed >= s.min_weight && d.proposed <= s.max_weight, "{d:?}");
                    prop_assert!(d.proposed != d.current);
                } else {
                    prop_assert_eq!(d.proposed, d.current);
                }
            }
        }

        /// The order servers come in never changes what each gets.
        #[test]
        fn order_does_not_matter(
            list in proptest::collection::vec((1u32..=256, 0.0f64..2.0), 1..30),
            seed in any::<u64>(),
        ) {
            let servers: Vec<ServerInput> = list.iter().enumerate()
                .map(|(i, &(w, c))| m(&format!("s{i}"), w, c)).collect();
            let mut shuffled = servers.clone();
            // A deterministic shuffle from the seed.
            let mut x = seed | 1;
            for i in (1..shuffled.len()).rev() {
                x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                shuffled.swap(i, (x % (i as u64 + 1)) as usize);
            }
            let by_name = |d: Vec<Decision>| {
                let mut v: Vec<(String, u32, bool)> = d.into_iter().map(|d| (d.name, d.proposed, d.set)).collect();
                v.sort();
                v
            };
            prop_assert_eq!(by_name(decide(&servers, &settings())), by_name(decide(&shuffled, &settings())));
        }
    }
}
