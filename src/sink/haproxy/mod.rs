//! HAProxy's runtime API (stats socket), over a unix or TCP socket, as a sink.
//!
//! Parsing is pure (`stat`, `reply`); the connection I/O lives in `client`; what the sink
//! remembers of a socket from tick to tick (reloads, hatune's weights, operators' changes,
//! lost replies, backoff) is the pure `reconcile`; `sink` ties them to the [`Sink`] seam.
//!
//! [`Sink`]: crate::sink::Sink

mod api;
mod client;
mod reconcile;
mod reply;
mod sink;
mod stat;

#[cfg(test)]
mod fixture_tests;

/// Where a stats socket lives: a config value, named here where it is used.
pub use crate::config::Address;
pub use api::RuntimeApi;
pub use client::Client;
pub use reply::{weight_verdict, PromptFramer, Verdict};
pub use sink::HaproxySink;
pub use stat::{parse_servers_state, parse_show_info, parse_show_stat};

use std::time::Duration;

use crate::controller::Reason;

/// One server row of `show stat`, read by column name.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerStat {
    pub backend: String,
    pub server: String,
    /// The raw `status` column: `UP`, `UP 1/3`, `DOWN`, `NOLB`, `MAINT`, `MAINT (via b/s)`,
    /// `DRAIN`, `DRAIN (agent)`, `no check`, ...
    pub status: String,
    /// The effective weight (`weight` column; throttled during slowstart).
    pub weight: u32,
    /// The user weight (`uweight`, HAProxy 2.4+); `None` on older versions.
    pub uweight: Option<u32>,
    /// `bck` = 1.
    pub backup: bool,
    /// `throttle` in % while in slowstart, else `None`.
    pub throttle: Option<u32>,
    /// `agent_status`; empty when the server has no agent-check.
    pub agent_status: String,
    /// `stot`: cumulative sessions sent to this server.
    pub sessions_total: Option<u64>,
    /// `lbtot`: times the server was selected by the load balancer.
    pub lb_total: Option<u64>,
    /// `addr`: where it sends traffic, when that is an IP and port (not a unix socket, and
    /// resolved); filled at CLI level operator and above.
    pub address: Option<std::net::SocketAddr>,
}

impl ServerStat {
    /// The weight an operator (or hatune) set: `uweight` when HAProxy reports it, else `weight`.
    pub fn user_weight(&self) -> u32 {
        self.uweight.unwrap_or(self.weight)
    }

    /// Why HAProxy's own state keeps this server out of tuning, if it does.
    pub fn exclusion(&self) -> Option<Reason> {
        let status = self.status.trim();
        if status.starts_with("MAINT") {
            return Some(Reason::Maint);
        }
        if status.starts_with("DRAIN") {
            return Some(Reason::Drain);
        }
        if status.starts_with("DOWN") {
            return Some(Reason::Down);
        }
        // `UP`, `UP 1/3` (still up, a check failed), `no check`: serving.
        let serving = status == "UP" || status.starts_with("UP ") || status == "no check";
        if !serving {
            return Some(Reason::NotBalanced(status.to_string()));
        }
        if self.user_weight() == 0 {
            return Some(Reason::WeightZero);
        }
        if self.backup {
            return Some(Reason::Backup);
        }
        if !self.agent_status.trim().is_empty() {
            return Some(Reason::AgentCheck);
        }
        if self.uweight.is_none() && self.throttle.is_some() {
            return Some(Reason::SlowstartUnknownWeight);
        }
        None
    }
}

/// One backend row of `show stat`.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendStat {
    pub name: String,
    /// The `algo` column (`roundrobin`, `source`, ...), when present.
    pub algo: Option<String>,
}

/// What `show stat` says about backends and their servers, in reply order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Stat {
    pub backends: Vec<BackendStat>,
    pub servers: Vec<ServerStat>,
}

/// The parts of `show info` hatune uses to notice a reload.
#[derive(Debug, Clone, PartialEq)]
pub struct Info {
    pub version: String,
    pub pid: u32,
    pub uptime_sec: u64,
    pub start_time_sec: Option<u64>,
}

/// A weight to set: `set weight BACKEND/SERVER WEIGHT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeightChange {
    pub backend: String,
    pub server: String,
    pub weight: u32,
}

/// HAProxy's answer to one `set weight`: `Ok` when it printed nothing, else its text.
pub type WeightOutcome = Result<(), String>;

/// A failure to talk to one HAProxy socket.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot connect to HAProxy at {addr}: {source}")]
    Connect {
        addr: Address,
        source: std::io::Error,
    },
    #[error("HAProxy at {addr}: {source}")]
    Io {
        addr: Address,
        source: std::io::Error,
    },
    #[error("HAProxy at {addr} did not answer within {timeout:?}")]
    Timeout { addr: Address, timeout: Duration },
    #[error(
        "HAProxy at {addr} refused `{command}`: the socket needs `level admin` (it said: {reply})"
    )]
    PermissionDenied {
        addr: Address,
        command: String,
        reply: String,
    },
    #[error("HAProxy at {addr} gave an unexpected reply to `{command}`: {detail}")]
    BadReply {
        addr: Address,
        command: String,
        detail: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat(status: &str, weight: u32) -> ServerStat {
        ServerStat {
            backend: "app".into(),
            server: "s".into(),
            status: status.into(),
            weight,
            uweight: Some(weight),
            backup: false,
            throttle: None,
            agent_status: String::new(),
            sessions_total: None,
            lb_total: None,
            address: None,
        }
    }

    #[test]
    fn exclusions_from_haproxy_state() {
        let mut slow_old = stat("UP", 50);
        slow_old.uweight = None;
        slow_old.throttle = Some(20);
        let mut slow_new = stat("UP", 10);
        slow_new.uweight = Some(50);
        slow_new.throttle = Some(20);
        let mut backup = stat("UP", 100);
        backup.backup = true;
        let mut agent = stat("UP", 100);
        agent.agent_status = "L7OK".into();
        let cases: Vec<(ServerStat, Option<Reason>)> = vec![
            (stat("UP", 100), None),
            (stat("UP 1/3", 100), None),
            (stat("no check", 100), None),
            (stat("MAINT", 100), Some(Reason::Maint)),
            (stat("MAINT (via app/x)", 100), Some(Reason::Maint)),
            (stat("MAINT (resolution)", 100), Some(Reason::Maint)),
            (stat("DRAIN", 100), Some(Reason::Drain)),
            (stat("DRAIN (agent)", 100), Some(Reason::Drain)),
            (stat("DOWN", 100), Some(Reason::Down)),
            (stat("DOWN 1/2", 100), Some(Reason::Down)),
            (stat("NOLB", 100), Some(Reason::NotBalanced("NOLB".into()))),
            (stat("UP", 0), Some(Reason::WeightZero)),
            (backup, Some(Reason::Backup)),
            (agent, Some(Reason::AgentCheck)),
            (slow_old, Some(Reason::SlowstartUnknownWeight)),
            (slow_new.clone(), None),
        ];
        for (s, want) in cases {
            assert_eq!(s.exclusion(), want, "{s:?}");
        }
        // In slowstart the controller sees the user weight, not the throttled one.
        assert_eq!(slow_new.user_weight(), 50);
    }
}
