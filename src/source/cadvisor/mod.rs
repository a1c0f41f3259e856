//! The source: container CPU utilisation from cAdvisor hosts, polled concurrently.
//!
//! Parsing and the utilisation arithmetic are pure; HTTP lives in `client`.

use std::time::Duration;

mod client;
mod parse;
mod utilisation;

pub use client::{max_hosts_in_flight, Client, MAX_HOSTS_IN_FLIGHT};
pub use parse::{
    cpuset_size, format_rfc3339, parse_containers, parse_num_cores, parse_rfc3339, ContainerInfo,
    CpuSpec, Sample,
};
pub use utilisation::utilisation;

/// A point in time as nanoseconds since the Unix epoch, from a sample's RFC 3339 timestamp.
pub type Nanos = i128;

/// Which samples of a container make up one reading.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Window {
    /// One-shot mode: the newest samples spanning this long (from the newest sample back).
    Span(Duration),
    /// Daemon mode: from the newest sample at or before this time (the previous tick's newest
    /// sample of that container) to the newest sample.
    Since(Nanos),
}

/// A container's CPU use over a window.
#[derive(Debug, Clone, PartialEq)]
pub struct Utilisation {
    /// Share of the container's capacity in use: 0.0 idle, 1.0 every core it may use is busy.
    pub cpu: f64,
    /// Cores in use (Δusage_ns / Δt_ns).
    pub cores_used: f64,
    /// Cores the container may use: its CFS quota/period, else its cpuset size, else the
    /// machine's `num_cores`.
    pub capacity_cores: f64,
    /// Timestamp of the first and last sample of the window.
    pub from: Nanos,
    pub to: Nanos,
}

/// Why a container has no reading this tick.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoReading {
    #[error("counter reset (container restarted)")]
    CounterReset,
    #[error("too few samples")]
    TooFewSamples,
    #[error("samples out of order or with equal timestamps")]
    BadTimestamps,
    #[error("no capacity known (num_cores 0)")]
    NoCapacity,
}

/// One container as seen on one host.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerReading {
    /// cgroup name, e.g. `/docker/1d6e…`.
    pub name: String,
    /// Docker aliases: `[name, full id]`.
    pub aliases: Vec<String>,
    pub reading: Result<Utilisation, NoReading>,
}

/// Everything one host reported in one tick.
#[derive(Debug, Clone, PartialEq)]
pub struct HostReading {
    /// The base URL from the config.
    pub host: String,
    pub num_cores: u32,
    pub containers: Vec<ContainerReading>,
}

/// Why one host gave nothing this tick.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum HostError {
    #[error("unreachable: {0}")]
    Unreachable(String),
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    #[error("HTTP status {status} from {url}")]
    Status { url: String, status: u16 },
    #[error("garbled reply from {url}: {detail}")]
    Garbled { url: String, detail: String },
}

impl HostError {
    /// A short label for the kind of failure (metrics, logs).
    pub fn kind(&self) -> &'static str {
        match self {
            HostError::Unreachable(_) => "unreachable",
            HostError::Timeout(_) => "timeout",
            HostError::Status { .. } => "status",
            HostError::Garbled { .. } => "garbled",
        }
    }
}
