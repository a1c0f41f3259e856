//! The cAdvisor JSON source: container CPU utilisation from every cAdvisor host at once.
//!
//! Parsing and the utilisation arithmetic are pure (`parse`, `utilisation`); HTTP lives in
//! `client`; [`CadvisorSource`] adds what lasts from tick to tick: where each host's next
//! window starts, and which hosts are failing.

use std::collections::HashMap;
use std::time::Duration;

use futures::future::BoxFuture;

use super::{HostHealth, HostPoll, Source};
use crate::config::Config;

mod client;
mod parse;
mod utilisation;

pub use super::{ContainerReading, HostError, HostReading, Nanos, NoReading, Utilisation};
pub use client::{max_hosts_in_flight, Client, MAX_HOSTS_IN_FLIGHT};
pub use parse::{
    cpuset_size, format_rfc3339, parse_containers, parse_num_cores, parse_rfc3339, ContainerInfo,
    CpuSpec, Sample,
};
pub use utilisation::utilisation;

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
}

impl CadvisorSource {
    /// The config's `cadvisor` hosts, each polled within its `timeout`.
    pub fn new(config: &Config) -> CadvisorSource {
        CadvisorSource {
            client: Client::new(config.timeout).with_max_reply(config.max_reply),
            hosts: config.cadvisor.clone(),
            span: config.window,
            newest: HashMap::new(),
            health: HostHealth::default(),
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
            for (host, poll) in self.hosts.iter().zip(&polls) {
                self.health.note(host, poll);
                let newest = poll
                    .iter()
                    .flat_map(|h| &h.containers)
                    .filter_map(|c| c.reading.as_ref().ok().map(|u| u.to));
                if let Some(t) = newest.max() {
                    self.newest.insert(host.clone(), t);
                }
            }
            polls
        })
    }

    fn reconfigure(&mut self, config: &Config) {
        if config.timeout != self.client.timeout() || config.max_reply != self.client.max_reply() {
            self.client = Client::new(config.timeout).with_max_reply(config.max_reply);
        }
        self.span = config.window;
        self.hosts = config.cadvisor.clone();
        let hosts = &self.hosts;
        self.newest.retain(|h, _| hosts.contains(h));
        self.health.retain(|h| hosts.iter().any(|x| x == h));
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
