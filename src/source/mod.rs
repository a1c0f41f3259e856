//! Sources: where utilisation comes from. A [`Source`] polls its hosts and yields, per host,
//! neutral readings: each container's identity and its utilisation, or why it has none. What
//! comes after (mapping, the controller) never knows which kind of source spoke.
//!
//! - [`cadvisor`]: cAdvisor's JSON API, every host at once, each container's window from its
//!   own sample timestamps.
//!
//! Adding a source: a module here with a type that implements [`Source`] (its own config part,
//! its own cross-tick state), and a line in [`build`].

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use futures::future::BoxFuture;

use crate::config::Config;

pub mod cadvisor;
pub mod exposition;
mod health;
pub mod http;
pub mod marks;
pub mod prometheus;
pub mod rate;
pub mod scrape;
pub mod series;

pub use health::HostHealth;

/// A point in time as nanoseconds since the Unix epoch, from a sample's own timestamp.
pub type Nanos = i128;

/// A container's CPU use over a window.
#[derive(Debug, Clone, PartialEq)]
pub struct Utilisation {
    /// Share of the container's capacity in use: 0.0 idle, 1.0 every core it may use is busy.
    pub cpu: f64,
    /// Cores in use (Δusage_ns / Δt_ns).
    pub cores_used: f64,
    /// Cores the container may use: its CFS quota/period, else its cpuset size, else the
    /// machine's cores.
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
    /// More CPU than the container can use: a counter that jumped, not load.
    #[error(
        "impossible reading: {} cores used of {} it can use (counter jump?)",
        cores(*used_millicores),
        cores(*limit_millicores)
    )]
    Impossible {
        used_millicores: u64,
        limit_millicores: u64,
    },
    /// Samples dated ahead of hatune's clock were ignored, and too few were left.
    #[error("too few samples: {samples} dated {by_secs} s or more ahead of this machine's clock (the host's clock is off?)")]
    AheadOfClock { samples: usize, by_secs: u64 },
    /// Samples dated long before the window were ignored, and too few were left.
    #[error("too few samples in the window ({samples} dated long before it ignored)")]
    OutsideWindow { samples: usize },
    /// Every sample is older than the newest one of the last tick.
    #[error("no sample since the last tick's newest (the host's clock went back?)")]
    ClockWentBack,
    /// The newest sample is the one the last tick ended on (an idle container's housekeeping
    /// backs off to up to a minute).
    #[error("no new sample since the last tick")]
    NoNewSample,
    /// A container not seen at the last tick: its first sample starts its next reading.
    #[error("first sample of this container: its reading starts next tick")]
    FirstSample,
}

fn cores(millicores: u64) -> String {
    let c = millicores as f64 / 1000.0;
    if c >= 1e6 {
        format!("{c:.3e}")
    } else {
        format!("{c}")
    }
}

/// One container as seen on one host: who it is (what mapping needs) and its reading.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerReading {
    /// Its cgroup name, e.g. `/docker/1d6e…`.
    pub name: String,
    /// The names it goes by (Docker: `[name, full id]`); mapping matches these.
    pub aliases: Vec<String>,
    /// Its labels that some backend's template reads (the others are not kept).
    pub labels: BTreeMap<String, String>,
    pub reading: Result<Utilisation, NoReading>,
}

/// Everything one host reported in one tick.
#[derive(Debug, Clone, PartialEq)]
pub struct HostReading {
    /// The host as the config names it (a cAdvisor base URL).
    pub host: String,
    /// Its name or IP, as the URL gives it (a template's `{host}`).
    pub name: String,
    /// Its IP addresses, resolved this tick when some backend maps by address (else empty).
    pub addresses: Vec<IpAddr>,
    /// The machine's cores (0 when unknown).
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
    /// 401 or 403: the host would not let hatune read (no token, or one refused).
    #[error("HTTP status {status} from {url}: {why}")]
    Denied {
        url: String,
        status: u16,
        why: &'static str,
    },
    #[error("garbled reply from {url}: {detail}")]
    Garbled { url: String, detail: String },
    /// A 3xx: the host pointed elsewhere, and only the host itself is asked.
    #[error("HTTP status {status} from {url} (redirects are not followed{})", location.as_ref().map(|l| format!("; it points to {l}")).unwrap_or_default())]
    Redirect {
        url: String,
        status: u16,
        location: Option<String>,
    },
    /// A reply larger than the config's `max_reply` (`limit`, as people write it).
    #[error("reply from {url} is larger than max_reply ({limit}): {detail}")]
    TooLarge {
        url: String,
        limit: String,
        detail: String,
    },
}

impl HostError {
    /// A short label for the kind of failure (metrics, logs).
    pub fn kind(&self) -> &'static str {
        match self {
            HostError::Unreachable(_) => "unreachable",
            HostError::Timeout(_) => "timeout",
            HostError::Status { .. } => "status",
            HostError::Denied { .. } => "denied",
            HostError::Garbled { .. } => "garbled",
            HostError::Redirect { .. } => "redirect",
            HostError::TooLarge { .. } => "too_large",
        }
    }
}

/// One host's answer to one poll.
pub type HostPoll = Result<HostReading, HostError>;

/// A source of utilisation readings.
///
/// A source owns what it learns from tick to tick (for cAdvisor: each host's newest sample, so
/// the next window starts where the last one ended, and which hosts are failing, so the log
/// speaks when that changes). A fresh source knows nothing: `hatune once` builds one per run.
pub trait Source: Send {
    /// What kind of source it is, for people: `cAdvisor`.
    fn kind(&self) -> &'static str;

    /// The hosts of its last [`poll`](Source::poll), in the order it answered (for the
    /// cAdvisor and scrape sources, the config's; for a Prometheus server, those its series
    /// named, or the server itself when the query failed).
    fn hosts(&self) -> &[String];

    /// Polls every host at once; one answer per host, in the order of [`hosts`](Source::hosts).
    /// One host's failure never affects another's answer, and no poll outlives the timeout.
    fn poll(&mut self) -> BoxFuture<'_, Vec<HostPoll>>;

    /// Takes a reloaded config (SIGHUP): keeps what it knows of hosts it still has.
    fn reconfigure(&mut self, config: &Config);

    /// `hatune check`: polls every host once as a fresh source would (over the config's
    /// `window`), changing nothing the next [`poll`](Source::poll) sees; each answer with its
    /// host (a Prometheus server's hosts are those its series name).
    fn probe(&self) -> BoxFuture<'_, Vec<(String, HostPoll)>>;

    /// What it learnt, for the next run of `hatune once --state` (`None`: nothing worth it).
    fn save(&self) -> Option<Box<serde_json::value::RawValue>> {
        None
    }

    /// Takes what a run saved `age` ago (by hatune's clock); what it cannot read or what is
    /// too old to use is dropped. The error says why nothing could be read.
    fn restore(
        &mut self,
        _saved: &serde_json::value::RawValue,
        _age: Duration,
    ) -> Result<(), String> {
        Ok(())
    }
}

/// The sources a config names, each only when it has hosts.
pub fn build(config: &Config) -> Vec<Box<dyn Source>> {
    let mut sources: Vec<Box<dyn Source>> = vec![];
    if !config.cadvisor.is_empty() {
        sources.push(Box::new(cadvisor::CadvisorSource::new(config)));
    }
    if !config.cadvisor_metrics.is_empty() {
        sources.push(Box::new(scrape::ScrapeSource::new(
            scrape::ScrapeSpec::cadvisor(config),
        )));
    }
    if let Some(k) = &config.kubelet {
        sources.push(Box::new(scrape::ScrapeSource::new(
            scrape::ScrapeSpec::kubelet(config, k),
        )));
    }
    if let Some(p) = &config.prometheus {
        sources.push(Box::new(prometheus::PrometheusSource::new(config, p)));
    }
    sources
}
