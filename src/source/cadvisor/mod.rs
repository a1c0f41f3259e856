//! The cAdvisor JSON source: container CPU utilisation from every cAdvisor host at once.
//!
//! Parsing and the utilisation arithmetic are pure (`parse`, `utilisation`); HTTP lives in
//! `client`; [`CadvisorSource`] adds what lasts from tick to tick: each container's newest
//! sample (its [`Mark`]: the next poll asks only for the newest samples and reads from there),
//! and which hosts are failing; and saves the marks and core counts for `hatune once --state`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tracing::{debug, info, warn};

use super::{marks, HostHealth, HostPoll, Source};
use crate::config::Config;

mod client;
mod parse;

pub use super::{ContainerReading, HostError, HostReading, Nanos, NoReading, Utilisation};
pub use crate::source::rate::{
    newest_mark, utilisation, utilisation_at, utilisation_from_mark, Mark, Window, FUTURE_SLACK,
    MAX_SHARE,
};
pub use client::{max_hosts_in_flight, Client, MAX_HOSTS_IN_FLIGHT};
pub use parse::{
    cpuset_size, format_rfc3339, parse_containers, parse_containers_with_labels, parse_num_cores,
    parse_rfc3339, ContainerInfo, CpuSpec, Sample, MAX_CORES,
};

pub use crate::source::marks::Marks;

/// What one poll of a host asks for, and so how much cAdvisor sends.
#[derive(Debug, Clone, PartialEq)]
pub enum Ask {
    /// Samples enough for the window (`{"num_stats": N}`, N from the window's span).
    Window(Window),
    /// Only each container's newest sample (`{"num_stats": 1}`); readings start at the marks
    /// of the host's last poll.
    Newest(Arc<Marks>),
}

impl Ask {
    /// The v1 `ContainerInfoRequest` body: how many of the newest samples per container.
    /// For a span, one a second (cAdvisor's default housekeeping; its samples are 1-2 s apart)
    /// and two more, so the samples reach back at least the span: 62 for a minute.
    pub fn num_stats(&self) -> i64 {
        match self {
            Ask::Window(Window::Span(d)) => {
                let secs = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
                secs.saturating_add(2 + i64::from(d.subsec_nanos() > 0))
                    .clamp(2, MAX_NUM_STATS)
            }
            // No span to size it by: cAdvisor's own default.
            Ask::Window(Window::Since(_)) => DEFAULT_NUM_STATS,
            Ask::Newest(_) => 1,
        }
    }
}

/// cAdvisor's default number of samples per container (v1 API).
pub const DEFAULT_NUM_STATS: i64 = 60;

/// The most samples asked for: cAdvisor keeps 2 minutes at 1 s by default, and a window of
/// hours would otherwise ask for thousands of samples of every container.
pub const MAX_NUM_STATS: i64 = 600;

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
    /// Each container's newest sample at its host's last poll, per host that answered it:
    /// the next poll of that host asks only for the newest samples, and each reading starts
    /// at the container's mark.
    marks: HashMap<String, Arc<Marks>>,
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
            marks: HashMap::new(),
            health: HostHealth::default(),
            clock_ahead: HashSet::new(),
        }
    }

    /// What the next poll of `host` asks for: the newest samples when its last poll
    /// answered, else the config's window (a host new to the source, or back from a failure).
    pub fn ask(&self, host: &str) -> Ask {
        match self.marks.get(host) {
            Some(marks) => Ask::Newest(marks.clone()),
            None => Ask::Window(Window::Span(self.span)),
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
        if went_back && self.marks.remove(host).is_some() {
            warn!(
                host = %host,
                "cAdvisor host has no sample since the last tick's newest: its clock went back? its next window starts afresh"
            );
        }
    }
}

pub use crate::source::marks::MARKS_EXPIRE_AFTER_WINDOWS;

impl Source for CadvisorSource {
    fn kind(&self) -> &'static str {
        "cAdvisor"
    }

    fn hosts(&self) -> &[String] {
        &self.hosts
    }

    fn poll(&mut self) -> BoxFuture<'_, Vec<HostPoll>> {
        Box::pin(async move {
            let polls = self.client.poll_all_ask(&self.hosts, |h| self.ask(h)).await;
            let mut out = Vec::with_capacity(polls.len());
            for (i, poll) in polls.into_iter().enumerate() {
                let host = self.hosts[i].clone();
                let poll = match poll {
                    Ok((reading, marks)) => {
                        // No marks (no container, none with a usable sample): the next poll
                        // reads the window, so whatever appears has a reading at once.
                        if marks.is_empty() {
                            self.marks.remove(&host);
                        } else {
                            self.marks.insert(host.clone(), Arc::new(marks));
                        }
                        Ok(reading)
                    }
                    Err(e) => {
                        // Back from a failure, a host is read over the window again.
                        self.marks.remove(&host);
                        Err(e)
                    }
                };
                self.health.note(&host, &poll);
                if let Ok(reading) = &poll {
                    self.note_clock(&host, reading);
                }
                out.push(poll);
            }
            out
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
        self.marks.retain(|h, _| hosts.contains(h.as_str()));
        self.health.retain(|h| hosts.contains(h));
        self.clock_ahead.retain(|h| hosts.contains(h.as_str()));
    }

    fn probe(&self) -> BoxFuture<'_, Vec<(String, HostPoll)>> {
        Box::pin(async move {
            let polls = self
                .client
                .poll_all(&self.hosts, |_| Window::Span(self.span))
                .await;
            self.hosts.iter().cloned().zip(polls).collect()
        })
    }

    fn save(&self) -> Option<Box<serde_json::value::RawValue>> {
        marks::save(&self.hosts, &self.client.known_cores(), &self.marks)
    }

    fn restore(
        &mut self,
        saved: &serde_json::value::RawValue,
        age: Duration,
    ) -> Result<(), String> {
        let (marks, cores) = marks::restore(saved, age, self.span, &self.hosts)?;
        self.marks.extend(marks);
        self.client.remember_cores(cores);
        Ok(())
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

    /// A host's first poll asks for the configured span; after one that answered, only the
    /// newest samples (readings from the marks it left); a failure forgets the marks; a config
    /// reload keeps them for hosts still polled.
    #[test]
    fn a_host_that_answered_is_asked_only_for_its_newest_samples() {
        let mut source = CadvisorSource::new(&config());
        let span = Ask::Window(Window::Span(Duration::from_secs(60)));
        assert_eq!(source.ask("http://h:1"), span);
        assert_eq!(span.num_stats(), 62);
        let marks = |t| Arc::new(Marks::from([("/docker/a".into(), Mark { t, usage: 9 })]));
        source.marks.insert("http://h:1".into(), marks(5));
        source.marks.insert("http://h:2".into(), marks(7));
        assert_eq!(source.ask("http://h:1"), Ask::Newest(marks(5)));
        assert_eq!(source.ask("http://h:1").num_stats(), 1);
        let fewer = Config::parse(
            r#"{"haproxy": "/s", "cadvisor": ["http://h:1"], "window": "30s",
                "backends": [{"name": "app", "pattern": "^app-"}]}"#,
        )
        .unwrap();
        source.reconfigure(&fewer);
        assert_eq!(source.ask("http://h:1"), Ask::Newest(marks(5)));
        assert!(!source.marks.contains_key("http://h:2"));
        assert_eq!(source.hosts(), ["http://h:1"]);
        let span30 = Ask::Window(Window::Span(Duration::from_secs(30)));
        assert_eq!(source.ask("http://h:3"), span30);
        assert_eq!(span30.num_stats(), 32);
    }

    /// How many samples a window asks for: its seconds and two more, within bounds.
    #[test]
    fn a_window_asks_for_about_one_sample_a_second() {
        let n = |ms: u64| Ask::Window(Window::Span(Duration::from_millis(ms))).num_stats();
        assert_eq!(n(0), 2);
        assert_eq!(n(300), 3);
        assert_eq!(n(1_000), 3);
        assert_eq!(n(60_000), 62);
        assert_eq!(n(60_500), 63);
        assert_eq!(n(3_600_000), MAX_NUM_STATS);
        assert_eq!(Ask::Window(Window::Since(0)).num_stats(), DEFAULT_NUM_STATS);
    }
}
