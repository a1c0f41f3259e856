//! HTTP: polls cAdvisor hosts, all at once, each under one timeout.
//!
//! How 1,000 hosts fit in one round trip without 1,000 replies in memory: every host's request
//! is sent at once (each host is its own task, so parsing uses every core), but a reply's body
//! is only read once a body slot is free (see [`crate::source::http`]). The timeout counts
//! network time only: the wait for a slot, which is hatune's own CPU, is not charged to the
//! host.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tracing::info;

use super::parse::{parse_containers, parse_containers_with_labels, parse_num_cores};
use super::{Ask, ContainerReading, HostError, HostReading, Marks, Window};
use crate::config::DEFAULT_MAX_REPLY;
use crate::source::http::{self, host_of, now_nanos, poll_each, Http};
pub use crate::source::http::{max_hosts_in_flight, MAX_HOSTS_IN_FLIGHT};
use crate::source::rate::{newest_mark, utilisation_at, utilisation_from_mark};

/// A cAdvisor client shared by every tick: one HTTP client, one timeout per host, the machines'
/// core counts (which do not change while a host is up) and the body slots. Clones share them.
#[derive(Debug, Clone)]
pub struct Client {
    http: Http,
    /// `num_cores` by base URL (trailing `/` stripped). Dropped when a host fails, so a host that
    /// comes back (possibly resized) is asked again.
    num_cores: Arc<Mutex<HashMap<String, u32>>>,
    /// The container labels kept (those some backend's template reads).
    keep_labels: Arc<HashSet<String>>,
    /// Resolve each host's addresses (some backend maps by address).
    resolve: bool,
    /// Hosts that refused the POST (405 or 501: a read-only proxy in front of cAdvisor, say):
    /// asked with a plain GET from then on, which gets cAdvisor's default of 60 samples.
    get_only: Arc<Mutex<HashSet<String>>>,
}

impl Client {
    /// A client whose every [`poll`](Client::poll) of one host, both requests included, takes at
    /// most `timeout` of network time.
    pub fn new(timeout: Duration) -> Client {
        Client {
            http: Http::new(timeout, DEFAULT_MAX_REPLY),
            num_cores: Arc::new(Mutex::new(HashMap::new())),
            keep_labels: Arc::default(),
            resolve: false,
            get_only: Arc::default(),
        }
    }

    /// The same client keeping the container labels in `labels` (no others), and resolving
    /// each host's addresses at every poll when `resolve`.
    pub fn with_mapping(mut self, labels: HashSet<String>, resolve: bool) -> Client {
        self.keep_labels = Arc::new(labels);
        self.resolve = resolve;
        self
    }

    /// True when it keeps the same labels and resolves alike.
    pub fn maps_like(&self, labels: &HashSet<String>, resolve: bool) -> bool {
        *self.keep_labels == *labels && self.resolve == resolve
    }

    /// The same client reading no body larger than `bytes` ([`DEFAULT_MAX_REPLY`] without
    /// it): a larger reply is refused unread when its `Content-Length` says so, and read no
    /// further than `bytes` when it has none, so a host's reply never costs more memory.
    pub fn with_max_reply(mut self, bytes: u64) -> Client {
        self.http = Http::new(self.http.timeout(), bytes);
        self
    }

    /// The per-host timeout.
    pub fn timeout(&self) -> Duration {
        self.http.timeout()
    }

    /// The largest body read, in bytes.
    pub fn max_reply(&self) -> u64 {
        self.http.max_reply()
    }

    /// Polls one host over `window`: see [`poll_ask`](Client::poll_ask).
    pub async fn poll(&self, base: &str, window: Window) -> Result<HostReading, HostError> {
        self.poll_ask(base, Ask::Window(window))
            .await
            .map(|(reading, _)| reading)
    }

    /// Polls one host: `POST {base}/api/v1.3/docker/` with the samples `ask` needs
    /// (`{"num_stats": N}`, as cAdvisor's own client asks) and, unless its core count is
    /// known, `GET {base}/api/v1.3/machine`, concurrently, within the timeout (network time;
    /// waiting for a body slot is not counted). Each container gets a reading, or the reason it
    /// has none, and the mark its next reading starts from.
    pub async fn poll_ask(&self, base: &str, ask: Ask) -> Result<(HostReading, Marks), HostError> {
        let key = base.trim_end_matches('/');
        let (name, literal, port) = host_of(key);
        // Resolved beside the poll, within the same timeout. Not the address the poll
        // connected to: through an HTTP proxy (the environment's), that is the proxy's.
        let resolve = async {
            if self.resolve {
                http::resolve(&name, literal, port, self.timeout()).await
            } else {
                vec![]
            }
        };
        let (polled, addresses) = tokio::join!(self.poll_inner(key, &ask), resolve);
        match polled {
            Ok((num_cores, containers, marks)) => Ok((
                HostReading {
                    host: base.to_owned(),
                    name,
                    addresses,
                    num_cores,
                    containers,
                },
                marks,
            )),
            Err(e) => {
                self.cores_cache().remove(key);
                Err(e)
            }
        }
    }

    /// Polls every host at once over its window: see [`poll_all_ask`](Client::poll_all_ask).
    pub async fn poll_all(
        &self,
        hosts: &[String],
        window: impl Fn(&str) -> Window,
    ) -> Vec<Result<HostReading, HostError>> {
        self.poll_all_ask(hosts, |h| Ask::Window(window(h)))
            .await
            .into_iter()
            .map(|r| r.map(|(reading, _)| reading))
            .collect()
    }

    /// Polls every host at once (at most [`max_hosts_in_flight`] at a time), each in its own
    /// task, asking each what `ask` says; results come in the order of `hosts`. One host's
    /// failure never affects another's result. Dropping the future aborts the polls still
    /// running.
    pub async fn poll_all_ask(
        &self,
        hosts: &[String],
        ask: impl Fn(&str) -> Ask,
    ) -> Vec<Result<(HostReading, Marks), HostError>> {
        let polls = poll_each(hosts, |_, host| {
            let (client, a) = (self.clone(), ask(host));
            let host = host.to_owned();
            async move { client.poll_ask(&host, a).await }
        })
        .await;
        polls
            .into_iter()
            .zip(hosts)
            .map(|(r, h)| {
                r.unwrap_or_else(|| Err(HostError::Unreachable(format!("{h}: poll cancelled"))))
            })
            .collect()
    }

    async fn poll_inner(
        &self,
        base: &str,
        ask: &Ask,
    ) -> Result<(u32, Vec<ContainerReading>, Marks), HostError> {
        let started = Instant::now();
        let docker_url = format!("{base}/api/v1.3/docker/");
        let cached = self.cores_cache().get(base).copied();
        let request = format!(r#"{{"num_stats":{}}}"#, ask.num_stats());
        // 1. The reply's head (and the small `/machine` reply), within the timeout.
        let get_only = self.lock(&self.get_only).contains(base);
        let docker = async {
            if get_only {
                return self.http.send(&docker_url, None).await;
            }
            match self.http.send(&docker_url, Some(request)).await {
                Err(HostError::Status {
                    status: status @ (405 | 501),
                    ..
                }) => {
                    if self.lock(&self.get_only).insert(base.to_owned()) {
                        info!(
                            host = %base,
                            status,
                            "cAdvisor host refuses POST (a proxy in front?): asking it with GET from now on, which gets cAdvisor's default of 60 samples a container"
                        );
                    }
                    self.http.send(&docker_url, None).await
                }
                other => other,
            }
        };
        let head = async {
            match cached {
                Some(n) => Ok((docker.await?, n)),
                None => {
                    let machine_url = format!("{base}/api/v1.3/machine");
                    let machine = async {
                        let resp = self.http.send(&machine_url, None).await?;
                        let body = self.http.read_body(&machine_url, resp).await?;
                        parse_num_cores(&body).map_err(|detail| HostError::Garbled {
                            url: machine_url.clone(),
                            detail,
                        })
                    };
                    let (resp, n) = futures::try_join!(docker, machine)?;
                    // 0 would make every unbounded container unreadable: ask again next time.
                    if n > 0 {
                        self.cores_cache().insert(base.to_owned(), n);
                    }
                    Ok((resp, n))
                }
            }
        };
        let timeout = self.timeout();
        let (resp, num_cores) = tokio::time::timeout(timeout, head)
            .await
            .map_err(|_| HostError::Timeout(timeout))??;
        let spent = started.elapsed();
        // 2. A body slot: our own CPU, not charged to the host.
        let _slot = self.http.body_slot().await;
        // 3. The body, within what is left of the timeout; then parse and reduce.
        let left = timeout.saturating_sub(spent);
        let body = tokio::time::timeout(left, self.http.read_body(&docker_url, resp))
            .await
            .map_err(|_| HostError::Timeout(timeout))??;
        // Labels are read only when a template reads them: otherwise skipped unread.
        let parse = if self.keep_labels.is_empty() {
            parse_containers
        } else {
            parse_containers_with_labels
        };
        let containers = parse(&body).map_err(|detail| HostError::Garbled {
            url: docker_url,
            detail,
        })?;
        drop(body);
        // hatune's own clock: samples dated far ahead of it are not believed.
        let now = now_nanos();
        let keep = &self.keep_labels;
        let mut marks = Marks::with_capacity(containers.len());
        let readings = containers
            .into_iter()
            .map(|c| {
                let reading = match ask {
                    Ask::Window(window) => utilisation_at(&c, num_cores, *window, now),
                    Ask::Newest(last) => {
                        utilisation_from_mark(&c, last.get(&c.name).copied(), num_cores, now)
                    }
                };
                // The next reading starts at the newest sample (or, with none usable, where
                // this one would have).
                let mark = newest_mark(&c, now).or_else(|| match ask {
                    Ask::Newest(last) => last.get(&c.name).copied(),
                    Ask::Window(_) => None,
                });
                if let Some(mark) = mark {
                    marks.insert(c.name.clone(), mark);
                }
                ContainerReading {
                    reading,
                    labels: if keep.is_empty() {
                        BTreeMap::new()
                    } else {
                        c.labels
                            .into_iter()
                            .filter(|(k, _)| keep.contains(k))
                            .collect()
                    },
                    name: c.name,
                    aliases: c.aliases,
                }
            })
            .collect();
        Ok((num_cores, readings, marks))
    }

    /// The core counts known, by base URL without a trailing `/`.
    pub fn known_cores(&self) -> HashMap<String, u32> {
        self.cores_cache().clone()
    }

    /// Core counts learnt elsewhere (a state file): those hosts are not asked for `/machine`.
    pub fn remember_cores(&self, cores: impl IntoIterator<Item = (String, u32)>) {
        self.cores_cache().extend(cores);
    }

    fn cores_cache(&self) -> std::sync::MutexGuard<'_, HashMap<String, u32>> {
        self.lock(&self.num_cores)
    }

    fn lock<'a, T>(&self, m: &'a Mutex<T>) -> std::sync::MutexGuard<'a, T> {
        // A poisoned lock only means another poll panicked mid-insert; the data is still valid.
        m.lock().unwrap_or_else(|p| p.into_inner())
    }
}
