//! The damped controller: one backend, one tick, no I/O.
//!
//! Each server that takes part gets a *target factor* `F`: how much its weight should change
//! for it to be as busy as the backend's mean.
//!
//! - `halfway` mode (the default, the 2015 tool's rule): `F = mean / cpu`, and the weight moves
//!   `gain` of the way there: `w × (1 + gain × (F − 1))`.
//! - `capacity` mode: `F = k × capacity / w`, where `capacity` is the server's filtered estimate
//!   of requests served per unit of utilisation and `k` keeps the total weight of those servers;
//!   the weight moves all the way. The estimate compares requests and CPU over the same window,
//!   so a CPU window that lags the weights does not fool it. A server without an estimate yet
//!   (one-shot mode, a daemon's first tick, a reset counter) moves by the halfway rule.
//!
//! Guards, in order:
//! - *freeze*: when fewer than `freeze_below` of the servers that could take part have a reading,
//!   nothing moves (the readings left are not a fair sample of the backend);
//! - *deadband*: a server whose `F` is within `deadband` of 1 does not move by its own reading;
//! - *step cap*: a weight changes by at most `max_step` either way (an idle server, `F = ∞`,
//!   moves up by exactly that);
//! - *scale*: the largest weight becomes `max_weight` (HAProxy weights are integers up to 256:
//!   256 keeps the rounding error under 1%), each floored at `min_weight`;
//! - *hold*: a server that could take part but has no reading keeps its weight (scaled with
//!   the others); after `hold` without data it falls back to the backend's mean weight;
//! - *new servers* (first seen by the daemon) start at the mean weight;
//! - *no wind-up*: the controller's only state is the weight HAProxy holds, already clamped, so
//!   a server held at `min_weight` or by the step cap carries no accumulated error;
//! - a server moved only by the rescaling (held, or within the deadband) is not sent a change
//!   within the deadband.
//!
//! Who takes part: servers that are up (or not checked), not MAINT/DRAIN/NOLB, not backup, with a
//! user weight above 0 that no agent sets, and a fresh reading. Everyone else is left exactly as
//! HAProxy has them.

use std::fmt;
use std::time::Duration;

use serde::Serialize;

mod settings;

pub use settings::{Mode, Overrides, Settings, SettingsError, CAPACITY_JUMP};

pub mod history;

pub use history::History;

/// One server of one backend: what a weight belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServerKey {
    pub backend: String,
    pub server: String,
}

impl ServerKey {
    pub fn new(backend: impl Into<String>, server: impl Into<String>) -> ServerKey {
        ServerKey {
            backend: backend.into(),
            server: server.into(),
        }
    }
}

impl fmt::Display for ServerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.backend, self.server)
    }
}

/// What the controller knows of one server.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerInput {
    pub name: String,
    /// The user weight HAProxy has now (not the slowstart-throttled one).
    pub weight: u32,
    pub input: Input,
    /// Capacity mode: the filtered estimate of requests served per unit of utilisation
    /// ([`filter_capacity`]); `None` when there is none yet.
    pub capacity: Option<f64>,
    /// How long the server has been without a reading, when known (the daemon keeps track).
    pub outage: Option<Duration>,
    /// First seen in this backend by the daemon: it starts at the mean weight.
    pub new: bool,
}

impl ServerInput {
    /// A server with no history: no capacity estimate, no known outage, not new.
    pub fn new(name: impl Into<String>, weight: u32, input: Input) -> ServerInput {
        ServerInput {
            name: name.into(),
            weight,
            input,
            capacity: None,
            outage: None,
            new: false,
        }
    }
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
    /// The server is not one the backend tunes: by alias, its name does not match the
    /// pattern; otherwise it does not match `servers`.
    NotMatched,
    /// Someone else changed its weight since hatune set `expected`: the operator wins.
    Overridden {
        expected: u32,
    },
    /// No container of this name on any host that answered.
    NoContainer,
    /// The same alias on two hosts: which one is this server?
    DuplicateAlias(Vec<String>),
    /// Address matching: no container the pattern matches on a host at this address.
    NoContainerAt(String),
    /// Address matching: the server has no IP address (a unix socket, or not resolved).
    NoAddress,
    /// Address matching: balancers hold the server at different addresses.
    AddressesDiffer(Vec<String>),
    /// Several containers fit this server (each `alias on host`): which one is it?
    Ambiguous(Vec<String>),
    /// The one container that fits this server fits other serving servers too: whose load is
    /// it?
    SharedContainer {
        container: String,
        servers: Vec<String>,
    },
    /// A container that restarted: its counter went down.
    CounterReset,
    /// The container's reading is unusable (too few samples, bad timestamps, ...).
    NoReading(String),
    /// The window covers time a balancer ran the weights a reload reset, not hatune's: the
    /// reading says nothing of the weights it would be compared with.
    SpansReload,
    /// The change is under the deadband (or rounds to nothing).
    WithinDeadband,
    /// Every server that takes part is idle: there is nothing to balance.
    BackendIdle,
    /// No server of the backend has a reading: weights are left as they are.
    NoServerHasData,
    /// Too few servers of the backend have a reading: every weight is frozen.
    MostTelemetryMissing {
        with_data: usize,
        could_take_part: usize,
    },
    /// Without a reading for longer than `hold`: set to the backend's mean weight.
    HoldExpired,
    /// First seen in this backend: starts at the backend's mean weight.
    NewServer,
}

impl Reason {
    /// True when a server excluded for this reason takes no traffic from the balancer (down,
    /// in maintenance, draining, weight 0, backup), as opposed to one that serves at a weight
    /// someone else sets (an operator's, an agent's).
    pub fn takes_no_traffic(&self) -> bool {
        matches!(
            self,
            Reason::Down
                | Reason::Maint
                | Reason::Drain
                | Reason::NotBalanced(_)
                | Reason::WeightZero
                | Reason::Backup
        )
    }
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
            Reason::NotMatched => write!(
                f,
                "not tuned: name does not match the pattern (or `servers`)"
            ),
            Reason::Overridden { expected } => {
                write!(f, "weight changed outside hatune (hatune set {expected})")
            }
            Reason::NoContainer => write!(f, "no data: no container found"),
            Reason::DuplicateAlias(hosts) => {
                write!(f, "duplicate alias on {}", hosts.join(", "))
            }
            Reason::NoContainerAt(addr) => {
                write!(f, "no data: no container found on a host at {addr}")
            }
            Reason::NoAddress => write!(
                f,
                "no data: the server has no IP address (a unix socket, or not resolved)"
            ),
            Reason::AddressesDiffer(addrs) => write!(
                f,
                "no data: the balancers hold it at different addresses: {}",
                addrs.join(", ")
            ),
            Reason::Ambiguous(containers) => write!(
                f,
                "no data: several containers fit: {}",
                containers.join(", ")
            ),
            Reason::SharedContainer { container, servers } => write!(
                f,
                "no data: container {container} fits servers {} too",
                servers.join(", ")
            ),
            Reason::CounterReset => write!(f, "no data: counter reset"),
            Reason::NoReading(why) => write!(f, "no data: {why}"),
            Reason::SpansReload => write!(f, "no data: the window spans a HAProxy reload"),
            Reason::WithinDeadband => write!(f, "within deadband"),
            Reason::BackendIdle => write!(f, "backend idle"),
            Reason::NoServerHasData => write!(f, "no server of the backend has data"),
            Reason::MostTelemetryMissing {
                with_data,
                could_take_part,
            } => write!(
                f,
                "frozen: only {with_data} of {could_take_part} servers have data"
            ),
            Reason::HoldExpired => write!(f, "no data for longer than hold: mean weight"),
            Reason::NewServer => write!(f, "new server: mean weight"),
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

impl Decision {
    /// hatune tunes this server: it is set, or held within the deadband (another balancer may
    /// hold its weight while one does not, so it is still brought to it everywhere).
    pub fn tuned(&self) -> bool {
        self.set || self.reason == Some(Reason::WithinDeadband)
    }
}

/// The next filtered capacity estimate from the previous one and this tick's `sample`
/// (requests served / utilisation over the same window). A sample further than
/// [`CAPACITY_JUMP`] from the estimate is a real change and restarts the filter.
pub fn filter_capacity(previous: Option<f64>, sample: f64, s: &Settings) -> f64 {
    match previous {
        Some(p) if p > 0.0 && p.is_finite() && ((sample - p) / p).abs() <= CAPACITY_JUMP => {
            p + s.capacity_filter * (sample - p)
        }
        _ => sample,
    }
}

/// The mean of a backend's weights that hatune wrote (0 is an operator's, not counted),
/// rounded and kept within `min_weight..=max_weight`: where a server that the balancer gained
/// with a reload starts. `None` when there is none to average.
pub fn mean_weight(weights: &[u32], s: &Settings) -> Option<u32> {
    let ours: Vec<f64> = weights
        .iter()
        .filter(|&&w| w > 0)
        .map(|&w| f64::from(w))
        .collect();
    if ours.is_empty() {
        return None;
    }
    let mean = ours.iter().sum::<f64>() / ours.len() as f64;
    Some((mean.round() as u32).clamp(s.min_weight, s.max_weight))
}

/// How a server's raw (unscaled) weight is formed.
enum Raw {
    /// Not touched.
    Keep(Reason),
    /// Moved (or held) to this raw weight; `own` when its own reading moved it.
    Weight { raw: f64, own: bool },
    /// Set to the backend's mean weight.
    Mean(Reason),
}

/// Decides one backend's weights. Pure: the same inputs give the same outputs, whatever their
/// order. Decisions come back in the order of `servers`.
pub fn decide(servers: &[ServerInput], s: &Settings) -> Vec<Decision> {
    let keep = |srv: &ServerInput, reason: Reason| Decision {
        name: srv.name.clone(),
        current: srv.weight,
        proposed: srv.weight,
        set: false,
        reason: Some(reason),
    };
    let takes_part = |srv: &ServerInput| srv.weight > 0 && !srv.new;

    // Sum in name order so that float rounding, and so the result, cannot depend on input order.
    let mut measured: Vec<(&str, f64, f64, Option<f64>)> = servers
        .iter()
        .filter(|srv| takes_part(srv))
        .filter_map(|srv| match srv.input {
            Input::Measured(cpu) => Some((
                srv.name.as_str(),
                cpu.max(0.0),
                f64::from(srv.weight),
                srv.capacity.filter(|c| *c > 0.0 && c.is_finite()),
            )),
            _ => None,
        })
        .collect();
    measured.sort_by(|a, b| a.0.cmp(b.0));
    let held = servers
        .iter()
        .filter(|srv| takes_part(srv) && matches!(srv.input, Input::NoData(_)))
        .count();
    let could_take_part = measured.len() + held;

    let avg = if measured.is_empty() {
        0.0
    } else {
        measured.iter().map(|m| m.1).sum::<f64>() / measured.len() as f64
    };
    let whole_backend = if measured.is_empty() {
        Some(Reason::NoServerHasData)
    } else if (measured.len() as f64) < s.freeze_below * could_take_part as f64 {
        Some(Reason::MostTelemetryMissing {
            with_data: measured.len(),
            could_take_part,
        })
    } else if avg <= 0.0 || !avg.is_finite() {
        Some(Reason::BackendIdle)
    } else {
        None
    };
    if let Some(reason) = whole_backend {
        return servers
            .iter()
            .map(|srv| match &srv.input {
                Input::Excluded(r) | Input::NoData(r) => keep(srv, r.clone()),
                Input::Measured(_) => keep(srv, reason.clone()),
            })
            .collect();
    }

    // Capacity mode: `k` keeps the total weight of the servers with an estimate.
    let k = if s.mode == Mode::Capacity {
        let (w, c) = measured
            .iter()
            .filter_map(|m| Some((m.2, m.3?)))
            .fold((0.0, 0.0), |(w, c), (mw, mc)| (w + mw, c + mc));
        (c > 0.0).then(|| w / c)
    } else {
        None
    };

    let raw: Vec<Raw> = servers
        .iter()
        .map(|srv| {
            let w = f64::from(srv.weight);
            match &srv.input {
                Input::Excluded(r) => Raw::Keep(r.clone()),
                _ if srv.weight == 0 && matches!(srv.input, Input::Measured(_)) => {
                    Raw::Keep(Reason::WeightZero)
                }
                Input::NoData(r) if srv.weight == 0 => Raw::Keep(r.clone()),
                _ if srv.new => Raw::Mean(Reason::NewServer),
                Input::NoData(_) if srv.outage.is_some_and(|o| o >= s.hold) => {
                    Raw::Mean(Reason::HoldExpired)
                }
                Input::NoData(_) => Raw::Weight { raw: w, own: false },
                Input::Measured(cpu) => {
                    let capacity = srv.capacity.filter(|c| *c > 0.0 && c.is_finite());
                    match (k, capacity) {
                        (Some(k), Some(c)) => step(Some(k * c / w), 1.0, w, s),
                        _ => {
                            let cpu = cpu.max(0.0);
                            step((cpu > 0.0).then(|| avg / cpu), s.gain, w, s)
                        }
                    }
                }
            }
        })
        .collect();

    let largest = raw
        .iter()
        .filter_map(|r| match r {
            Raw::Weight { raw, .. } => Some(*raw),
            _ => None,
        })
        .fold(0.0_f64, f64::max);
    let scale = f64::from(s.max_weight) / largest;
    let round = |x: f64| ((x * scale).round() as u32).clamp(s.min_weight, s.max_weight);
    // The mean weight of the servers whose reading moved them, in name order.
    let mut moved: Vec<(&str, f64)> = servers
        .iter()
        .zip(&raw)
        .filter_map(|(srv, r)| match (r, &srv.input) {
            (Raw::Weight { raw, .. }, Input::Measured(_)) => Some((srv.name.as_str(), *raw)),
            _ => None,
        })
        .collect();
    moved.sort_by(|a, b| a.0.cmp(b.0));
    let mean = moved.iter().map(|m| m.1).sum::<f64>() / moved.len().max(1) as f64;

    servers
        .iter()
        .zip(raw)
        .map(|(srv, raw)| {
            let held = match &srv.input {
                Input::NoData(r) => Some(r.clone()),
                _ => None,
            };
            let (proposed, reason, own) = match raw {
                Raw::Keep(r) => return keep(srv, r),
                Raw::Mean(r) => (round(mean), Some(r), true),
                Raw::Weight { raw, own } => (round(raw), held, own),
            };
            let current = f64::from(srv.weight);
            let delta = (f64::from(proposed) - current).abs();
            if proposed == srv.weight || (!own && delta <= s.deadband * current) {
                return keep(srv, reason.unwrap_or(Reason::WithinDeadband));
            }
            Decision {
                name: srv.name.clone(),
                current: srv.weight,
                proposed,
                set: true,
                reason,
            }
        })
        .collect()
}

/// One measured server's raw weight: `gain` of the way toward `w × target`, never more than
/// `max_step` either way, not at all within the deadband. An idle server (`target` unknown:
/// infinitely underloaded) moves up by `max_step`.
fn step(target: Option<f64>, gain: f64, w: f64, s: &Settings) -> Raw {
    let factor = match target {
        Some(t) if (t - 1.0).abs() <= s.deadband => return Raw::Weight { raw: w, own: false },
        Some(t) => 1.0 + gain * (t - 1.0),
        None => s.max_step,
    };
    Raw::Weight {
        raw: w * factor.clamp(1.0 / s.max_step, s.max_step),
        own: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn settings() -> Settings {
        Settings::default()
    }

    fn srv(name: &str, weight: u32, input: Input) -> ServerInput {
        ServerInput::new(name, weight, input)
    }

    fn m(name: &str, weight: u32, cpu: f64) -> ServerInput {
        srv(name, weight, Input::Measured(cpu))
    }

    fn outage(mut s: ServerInput, secs: u64) -> ServerInput {
        s.outage = Some(Duration::from_secs(secs));
        s
    }

    fn cap(mut s: ServerInput, capacity: f64) -> ServerInput {
        s.capacity = Some(capacity);
        s
    }

    fn capacity() -> Settings {
        Settings {
            mode: Mode::Capacity,
            ..settings()
        }
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
            settings: Settings,
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
                settings: Settings {
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
                what: "deadband: a server within 2% of the mean does not move; one just outside does",
                servers: vec![m("a", 256, 0.5), m("b", 128, 0.51), m("c", 128, 0.49)],
                // avg 0.5: b is 1.96% busier (kept), c 2.04% idler: moves halfway, 1.02%.
                want: vec![(256, false), (128, false), (129, true)],
                settings: settings(),
            },
            Case {
                what: "deadband on the error, not the step: a 3% error is not stuck behind a 1.5% step",
                servers: vec![m("a", 256, 0.5), m("b", 128, 0.515), m("c", 128, 0.485)],
                want: vec![(256, false), (126, true), (130, true)],
                settings: settings(),
            },
            Case {
                what: "freeze: 1 of 3 servers has data (< freeze_below 0.5): nothing moves",
                servers: vec![
                    m("a", 100, 0.9),
                    srv("b", 100, Input::NoData(Reason::NoContainer)),
                    srv("c", 100, Input::NoData(Reason::NoContainer)),
                ],
                want: vec![(100, false), (100, false), (100, false)],
                settings: settings(),
            },
            Case {
                what: "freeze_below 0 never freezes",
                servers: vec![
                    m("a", 100, 0.9),
                    srv("b", 100, Input::NoData(Reason::NoContainer)),
                    srv("c", 100, Input::NoData(Reason::NoContainer)),
                ],
                want: vec![(256, true), (256, true), (256, true)],
                settings: Settings {
                    freeze_below: 0.0,
                    ..settings()
                },
            },
            Case {
                what: "hold: within `hold` a server without data keeps its share",
                servers: vec![
                    m("a", 200, 0.5),
                    m("b", 100, 0.5),
                    outage(srv("c", 50, Input::NoData(Reason::NoContainer)), 300),
                ],
                want: vec![(256, true), (128, true), (64, true)],
                settings: settings(),
            },
            Case {
                what: "hold expired: a server without data for longer than `hold` gets the mean weight",
                servers: vec![
                    m("a", 200, 0.5),
                    m("b", 100, 0.5),
                    outage(srv("c", 50, Input::NoData(Reason::NoContainer)), 660),
                ],
                want: vec![(256, true), (128, true), (192, true)],
                settings: settings(),
            },
            Case {
                what: "a new server starts at the mean weight and is not counted in the mean load",
                servers: vec![
                    m("a", 200, 0.5),
                    m("b", 100, 0.5),
                    ServerInput {
                        new: true,
                        ..m("c", 10, 0.0)
                    },
                ],
                want: vec![(256, true), (128, true), (192, true)],
                settings: settings(),
            },
            Case {
                what: "capacity mode: weights proportional to capacity in one step",
                servers: vec![
                    cap(m("a", 100, 0.5), 1.0),
                    cap(m("b", 100, 0.5), 1.0),
                    cap(m("c", 100, 0.25), 2.0),
                    cap(m("d", 100, 0.125), 4.0),
                ],
                want: vec![(64, true), (64, true), (128, true), (256, true)],
                settings: capacity(),
            },
            Case {
                what: "capacity mode without estimates falls back to the halfway rule",
                servers: vec![
                    m("a", 100, 0.5),
                    m("b", 100, 0.5),
                    m("c", 100, 0.25),
                    m("d", 100, 0.125),
                ],
                want: vec![(115, true), (115, true), (162, true), (256, true)],
                settings: capacity(),
            },
            Case {
                what: "capacity mode: max_step still caps each move",
                servers: vec![
                    cap(m("a", 100, 0.5), 1.0),
                    cap(m("b", 100, 0.5), 1.0),
                    cap(m("c", 100, 0.25), 2.0),
                    cap(m("d", 100, 0.0625), 8.0),
                ],
                // k = 400/12: F = 0.33 (→ 0.5), 0.33 (→ 0.5), 0.67, 2.67 (→ 2); ×1.28
                want: vec![(64, true), (64, true), (85, true), (256, true)],
                settings: capacity(),
            },
            Case {
                what: "no wind-up: a server pinned at min_weight moves up the tick its load drops",
                servers: vec![m("a", 1, 0.2), m("b", 256, 0.5)],
                // avg 0.35: a 1.375, b 0.85 → 217.6 → ×1.176: a 1.6 → 2
                want: vec![(2, true), (256, false)],
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

    #[test]
    fn whole_backend_and_fallback_reasons() {
        let frozen = decide(
            &[
                m("a", 100, 0.9),
                srv("b", 100, Input::NoData(Reason::NoContainer)),
                srv("c", 100, Input::NoData(Reason::CounterReset)),
            ],
            &settings(),
        );
        assert_eq!(
            frozen[0].reason,
            Some(Reason::MostTelemetryMissing {
                with_data: 1,
                could_take_part: 3
            })
        );
        assert_eq!(frozen[2].reason, Some(Reason::CounterReset));
        let d = decide(
            &[
                m("a", 200, 0.5),
                m("b", 100, 0.5),
                outage(srv("c", 50, Input::NoData(Reason::NoContainer)), 601),
                ServerInput {
                    new: true,
                    ..m("d", 10, 0.0)
                },
            ],
            &settings(),
        );
        assert_eq!(d[2].reason, Some(Reason::HoldExpired));
        assert_eq!(d[3].reason, Some(Reason::NewServer));
    }

    /// Table: the capacity filter smooths noise and restarts on a real change.
    #[test]
    fn capacity_filter() {
        let s = Settings {
            capacity_filter: 0.5,
            ..settings()
        };
        let cases: &[(Option<f64>, f64, f64)] = &[
            (None, 40.0, 40.0),          // first estimate: taken as it is
            (Some(100.0), 110.0, 105.0), // within 15%: halfway toward it
            (Some(100.0), 90.0, 95.0),
            (Some(100.0), 50.0, 50.0), // lost half its cores: restart from it
            (Some(100.0), 130.0, 130.0), // grew by 30%: restart
            (Some(0.0), 7.0, 7.0),     // no usable estimate before
        ];
        for &(prev, sample, want) in cases {
            assert_eq!(filter_capacity(prev, sample, &s), want, "{prev:?} {sample}");
        }
        let unfiltered = Settings {
            capacity_filter: 1.0,
            ..settings()
        };
        assert_eq!(filter_capacity(Some(100.0), 110.0, &unfiltered), 110.0);
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

    /// Where a server new with a reload starts: the mean of hatune's weights, 0 left out,
    /// within min..max.
    #[test]
    fn mean_weight_of_hatunes_weights() {
        let s = settings();
        assert_eq!(mean_weight(&[200, 100, 66], &s), Some(122));
        assert_eq!(
            mean_weight(&[200, 0, 100], &s),
            Some(150),
            "0 is an operator's"
        );
        assert_eq!(mean_weight(&[], &s), None);
        assert_eq!(mean_weight(&[0], &s), None);
        let narrow = Settings {
            min_weight: 10,
            max_weight: 20,
            ..s
        };
        assert_eq!(mean_weight(&[100, 200], &narrow), Some(20));
        assert_eq!(mean_weight(&[1, 2], &narrow), Some(10));
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
            let s = Settings { min_weight: min, max_weight: min + max_extra, gain, ..settings() };
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
