//! The sink: HAProxy's runtime API (stats socket), over a unix or TCP socket.
//!
//! Parsing is pure (`stat`, `reply`); the connection I/O lives in `client`.

mod address;
mod client;
mod reply;
mod stat;

#[cfg(test)]
mod fixture_tests;

pub use address::Address;
pub use client::Client;
pub use stat::{parse_show_info, parse_show_stat};

use std::time::Duration;

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
}

impl ServerStat {
    /// The weight an operator (or hatune) set: `uweight` when HAProxy reports it, else `weight`.
    pub fn user_weight(&self) -> u32 {
        self.uweight.unwrap_or(self.weight)
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
