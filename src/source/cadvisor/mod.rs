//! The cAdvisor JSON source: container CPU utilisation from every cAdvisor host at once.
//!
//! Parsing and the utilisation arithmetic are pure (`parse`, `utilisation`); HTTP lives in
//! `client`; [`CadvisorSource`] adds what lasts from tick to tick: where each host's next
//! window starts, and which hosts are failing.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use futures::future::BoxFuture;
use tracing::{debug, info, warn};

use super::{HostHealth, HostPoll, Source};
use crate::config::Config;

mod client;
mod parse;
mod utilisation;

pub use super::{ContainerReading, HostError, HostReading, Nanos, NoReading, Utilisation};
pub use client::{max_hosts_in_flight, Client, MAX_HOSTS_IN_FLIGHT};
pub use parse::{
    cpuset_size, format_rfc3339, parse_containers, parse_containers_with_labels, parse_num_cores,
    parse_rfc3339, ContainerInfo, CpuSpec, Sample, MAX_CORES,
};
pub use utilisation::{utilisation, utilisation_at, FUTURE_SLACK, MAX_SHARE};

/// Which samples of a container make up one reading.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Window {
    /// The newest samples spanning this long (from the newest sample back): `hatune once`,
    /// and a host's first poll in the daemon.
    Span(Duration),
    /// From the newest sample at or before this time (the previous poll's newest sample of that
    /// host) to the newest sample: the daemon, so each reading covers what the last change did.
    Since(Nanos),
}

/// The client a config asks for: its timeout and reply cap, the labels its templates read,
/// and host addresses when a backend maps by address.
fn client_for(config: &Config) -> Client {
    Client::new(config.timeout)
        .with_max_reply(config.max_reply)
        .with_mapping(config.label_keys(), config.maps_by_address())
}

/// The cAdvisor hosts of a config, polled as one source.
#[derive(Debug)]
pub struct CadvisorSource {
    client: Client,
    hosts: Vec<String>,
    /// The window of a host polled for the first time (the config's `window`).
    span: Duration,
    /// Newest sample per host at its last poll: its next window starts there.
    newest: HashMap<String, Nanos>,
    health: HostHealth,
    /// Hosts whose samples were dated ahead of hatune's clock at their last poll.
    clock_ahead: HashSet<String>,
}

impl CadvisorSource {
    /// The config's `cadvisor` hosts, each polled within its `timeout`.
    pub fn new(config: &Config) -> CadvisorSource {
        CadvisorSource {
            client: client_for(config),
            hosts: config.cadvisor.clone(),
            span: config.window,
            newest: HashMap::new(),
            health: HostHealth::default(),
            clock_ahead: HashSet::new(),
        }
    }

    /// The window the next poll of `host` reads.
    pub fn window(&self, host: &str) -> Window {
        match self.newest.get(host) {
            Some(&t) => Window::Since(t),
            None => Window::Span(self.span),
        }
    }
}

impl CadvisorSource {
    /// Logs why containers have no reading (at debug), and at warn what says the host's clock
    /// is off: samples dated ahead of hatune's (ignored), or all older than the last tick's
    /// newest (the window anchor is dropped, so the next poll reads the configured span).
    fn note_clock(&mut self, host: &str, reading: &HostReading) {
        let mut ahead_by = None;
        let mut went_back = false;
        for c in &reading.containers {
            let Err(why) = &c.reading else { continue };
            let name = c.aliases.first().unwrap_or(&c.name);
            debug!(host = %host, container = %name, reason = %why, "container has no reading");
            match why {
                NoReading::AheadOfClock { by_secs, .. } => {
                    ahead_by = ahead_by.max(Some(*by_secs));
                }
                NoReading::ClockWentBack => went_back = true,
                _ => {}
            }
        }
        match ahead_by {
            Some(by_secs) if self.clock_ahead.insert(host.to_string()) => warn!(
                host = %host,
                ahead_secs = by_secs,
                "cAdvisor host's samples are dated ahead of this machine's clock: those are ignored; is its clock off?"
            ),
            None if self.clock_ahead.remove(host) => {
                info!(host = %host, "cAdvisor host's samples are in line with this machine's clock again");
            }
            _ => {}
        }
        if went_back && self.newest.remove(host).is_some() {
            warn!(
                host = %host,
                "cAdvisor host has no sample since the last tick's newest: its clock went back? its next window starts afresh"
            );
        }
    }
}

impl Source for CadvisorSource {
    fn kind(&self) -> &'static str {
        "cAdvisor"
    }

    fn hosts(&self) -> &[String] {
        &self.hosts
    }

    fn poll(&mut self) -> BoxFuture<'_, Vec<HostPoll>> {
        Box::pin(async move {
            let polls = self.client.poll_all(&self.hosts, |h| self.window(h)).await;
            for (i, poll) in polls.iter().enumerate() {
                let host = self.hosts[i].clone();
                self.health.note(&host, poll);
                let Ok(reading) = poll else { continue };
                self.note_clock(&host, reading);
                let newest = reading
                    .containers
                    .iter()
                    .filter_map(|c| c.reading.as_ref().ok().map(|u| u.to));
                if let Some(t) = newest.max() {
                    self.newest.insert(host, t);
                }
            }
            polls
        })
    }

    fn reconfigure(&mut self, config: &Config) {
        if config.timeout != self.client.timeout()
            || config.max_reply != self.client.max_reply()
            || !self
                .client
                .maps_like(&config.label_keys(), config.maps_by_address())
        {
            self.client = client_for(config);
        }
        self.span = config.window;
        self.hosts = config.cadvisor.clone();
        // One set, not a scan of the list per host: configs list thousands of hosts.
        let hosts: HashSet<&str> = self.hosts.iter().map(String::as_str).collect();
        self.newest.retain(|h, _| hosts.contains(h.as_str()));
        self.health.retain(|h| hosts.contains(h));
        self.clock_ahead.retain(|h| hosts.contains(h.as_str()));
    }

    fn probe(&self) -> BoxFuture<'_, Vec<HostPoll>> {
        Box::pin(
            self.client
                .poll_all(&self.hosts, |_| Window::Span(self.span)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config::parse(
            r#"{"haproxy": "/s", "cadvisor": ["http://h:1", "http://h:2"],
                "backends": [{"name": "app", "pattern": "^app-"}]}"#,
        )
        .unwrap()
    }

    /// A host's first window is the configured span; after that it starts at the newest
    /// sample its last poll saw, and a config reload keeps that for hosts still polled.
    #[test]
    fn the_window_starts_at_the_last_newest_sample() {
        let mut source = CadvisorSource::new(&config());
        assert_eq!(
            source.window("http://h:1"),
            Window::Span(Duration::from_secs(60))
        );
        source.newest.insert("http://h:1".into(), 5);
        source.newest.insert("http://h:2".into(), 7);
        assert_eq!(source.window("http://h:1"), Window::Since(5));
        let fewer = Config::parse(
            r#"{"haproxy": "/s", "cadvisor": ["http://h:1"], "window": "30s",
                "backends": [{"name": "app", "pattern": "^app-"}]}"#,
        )
        .unwrap();
        source.reconfigure(&fewer);
        assert_eq!(source.window("http://h:1"), Window::Since(5));
        assert!(!source.newest.contains_key("http://h:2"));
        assert_eq!(source.hosts(), ["http://h:1"]);
        assert_eq!(
            source.window("http://h:3"),
            Window::Span(Duration::from_secs(30))
        );
    }
}
