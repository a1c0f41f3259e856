//! HTTP: polls cAdvisor hosts, all at once, each under one timeout.
//!
//! How 1,000 hosts fit in one round trip without 1,000 replies in memory: every host's request
//! is sent at once (each host is its own task, so parsing uses every core), but a reply's body
//! is only read once a *body slot* is free. There are two slots per core; a host holding one
//! reads, parses and reduces its reply to a few numbers per container, then frees it. Bodies
//! waiting for a slot stay in the kernel's socket buffers (and on the sender's side), not in
//! hatune's memory. The timeout counts network time only: the wait for a slot, which is
//! hatune's own CPU, is not charged to the host.
//!
//! A body is also bounded in size, by the config's `max_reply`: a reply whose `Content-Length`
//! is larger is refused before it waits for a slot, and one without a length is read chunk by
//! chunk into its slot and dropped once it passes the cap, so a slot never holds more.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::time::Instant;
use tracing::info;

use super::parse::{parse_containers, parse_containers_with_labels, parse_num_cores};
use crate::source::rate::{newest_mark, utilisation_at, utilisation_from_mark};
use super::{Ask, ContainerReading, HostError, HostReading, Marks, Nanos, Window};
use crate::config::{format_size, DEFAULT_MAX_REPLY};

/// The most hosts [`Client::poll_all`] polls at once, whatever the file descriptor limit.
///
/// Each host in flight costs about 28 KB in the HTTP client (measured with massif: hyper's
/// request channel ~9 KB, its write buffer 8 KB and read buffer 8 KB, the tasks), whatever its
/// reply. 1,024 keeps a tick of 1,000 hosts at one round trip; at 10,000 hosts it held RSS at
/// 103 MB instead of 135 MB (4,096) for 1.74 s instead of 1.56 s (`cargo bench --bench poll --
/// --scale`, lean reads, 100 ms latency), the fake fleet's own serving being most of that time.
pub const MAX_HOSTS_IN_FLIGHT: usize = 1024;

/// The most of a body's announced length reserved before it arrives; it grows from there.
const PREALLOCATE_MOST: u64 = 8 << 20;

/// Descriptors left for everything else (HAProxy sockets, metrics, logs, the runtime).
const FD_RESERVE: u64 = 64;

/// How many hosts [`Client::poll_all`] polls at once: [`MAX_HOSTS_IN_FLIGHT`], or fewer when
/// the soft `RLIMIT_NOFILE` is low. A host needs up to two connections while it is polled (its
/// reply and `/machine` the first time), so with the usual soft limit of 1,024 this is 480;
/// `hatune` raises the soft limit to the hard one at start.
pub fn max_hosts_in_flight() -> usize {
    let soft = rlimit::Resource::NOFILE
        .get_soft()
        .unwrap_or(1024)
        .max(FD_RESERVE + 32);
    usize::try_from((soft - FD_RESERVE) / 2)
        .unwrap_or(usize::MAX)
        .clamp(16, MAX_HOSTS_IN_FLIGHT)
}

/// A cAdvisor client shared by every tick: one HTTP client, one timeout per host, the machines'
/// core counts (which do not change while a host is up) and the body slots. Clones share them.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    timeout: Duration,
    /// `num_cores` by base URL (trailing `/` stripped). Dropped when a host fails, so a host that
    /// comes back (possibly resized) is asked again.
    num_cores: Arc<Mutex<HashMap<String, u32>>>,
    /// Body slots: how many replies may be read and parsed at once (see the module doc).
    bodies: Arc<Semaphore>,
    /// The largest body read, in bytes (the config's `max_reply`).
    max_reply: u64,
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
        let http = reqwest::Client::builder()
            // No idle connections between ticks. hyper grows a connection's read buffer while
            // it reads a large reply (up to ~400 KB) and keeps it while the connection idles in
            // the pool: measured, 1,000 idle connections held ~440 MB of a daemon's 520 MB RSS
            // (1.2 MB replies). Reconnecting costs one round trip per tick; on loopback, nothing.
            .pool_max_idle_per_host(0)
            // A host answers for itself: one that redirects elsewhere would report another
            // host's containers as its own (each then seen twice, as a duplicate alias). A
            // redirect is that host's failure, never followed.
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(timeout)
            .tcp_nodelay(true)
            .build()
            // Only fails when a TLS backend or resolver cannot initialise; neither is enabled.
            .unwrap_or_else(|_| reqwest::Client::new());
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Client {
            http,
            timeout,
            num_cores: Arc::new(Mutex::new(HashMap::new())),
            bodies: Arc::new(Semaphore::new(2 * cores)),
            max_reply: DEFAULT_MAX_REPLY,
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
        self.max_reply = bytes;
        self
    }

    /// The per-host timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The largest body read, in bytes.
    pub fn max_reply(&self) -> u64 {
        self.max_reply
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
            match (self.resolve, literal) {
                (false, _) => vec![],
                (true, Some(ip)) => vec![ip],
                (true, None) => {
                    let found = tokio::time::timeout(
                        self.timeout,
                        tokio::net::lookup_host((name.as_str(), port)),
                    )
                    .await;
                    let mut ips: Vec<IpAddr> = match found {
                        Ok(Ok(addrs)) => addrs.map(|a| a.ip()).collect(),
                        _ => vec![],
                    };
                    ips.dedup();
                    ips
                }
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
        // A task per host in flight, no more: a poll's future is several KB before it has
        // sent anything, so spawning every host at once (each waiting its turn) cost more
        // memory than the polls themselves at 10,000 hosts.
        let limit = max_hosts_in_flight().max(1);
        let mut tasks = tokio::task::JoinSet::new();
        let mut out: Vec<Option<Result<(HostReading, Marks), HostError>>> =
            (0..hosts.len()).map(|_| None).collect();
        let mut next = hosts.iter().enumerate();
        loop {
            while tasks.len() < limit {
                let Some((i, host)) = next.next() else { break };
                let (client, host, a) = (self.clone(), host.clone(), ask(host));
                tasks.spawn(async move { (i, client.poll_ask(&host, a).await) });
            }
            let Some(joined) = tasks.join_next().await else {
                break;
            };
            match joined {
                Ok((i, r)) => out[i] = Some(r),
                // A poll that panicked: re-raise here rather than report a made-up error.
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(_) => {}
            }
        }
        out.into_iter()
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
                return self.send(&docker_url, None).await;
            }
            match self.send(&docker_url, Some(request)).await {
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
                    self.send(&docker_url, None).await
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
                        let resp = self.send(&machine_url, None).await?;
                        let body = self.read_body(&machine_url, resp).await?;
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
        let (resp, num_cores) = tokio::time::timeout(self.timeout, head)
            .await
            .map_err(|_| HostError::Timeout(self.timeout))??;
        let spent = started.elapsed();
        // 2. A body slot: our own CPU, not charged to the host.
        let _slot = self.bodies.acquire().await;
        // 3. The body, within what is left of the timeout; then parse and reduce.
        let left = self.timeout.saturating_sub(spent);
        let body = tokio::time::timeout(left, self.read_body(&docker_url, resp))
            .await
            .map_err(|_| HostError::Timeout(self.timeout))??;
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
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| Nanos::try_from(d.as_nanos()).unwrap_or(Nanos::MAX));
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

    /// One GET, or a POST of a JSON `body`, to a 2xx response whose body is not read yet. A
    /// redirect is an error (it is not followed).
    async fn send(&self, url: &str, body: Option<String>) -> Result<reqwest::Response, HostError> {
        let request = match body {
            None => self.http.get(url),
            Some(body) => self
                .http
                .post(url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body),
        };
        let resp = request.send().await.map_err(|e| self.error(url, e))?;
        let status = resp.status();
        if status.is_redirection() {
            let location = resp.headers().get(reqwest::header::LOCATION).map(|v| {
                String::from_utf8_lossy(v.as_bytes())
                    .chars()
                    .take(200)
                    .collect()
            });
            return Err(HostError::Redirect {
                url: url.to_owned(),
                status: status.as_u16(),
                location,
            });
        }
        if !status.is_success() {
            return Err(HostError::Status {
                url: url.to_owned(),
                status: status.as_u16(),
            });
        }
        // Refused before it waits for a body slot: nothing of it is read.
        if let Some(n) = resp.content_length().filter(|&n| n > self.max_reply) {
            return Err(self.too_large(url, format!("its Content-Length is {n} bytes; not read")));
        }
        Ok(resp)
    }

    /// The body of a reply that [`send`](Client::send) let through, chunk by chunk, never
    /// holding more than `max_reply` bytes of it: a reply without a `Content-Length` that goes
    /// past it is dropped there, unread beyond.
    async fn read_body(
        &self,
        url: &str,
        mut resp: reqwest::Response,
    ) -> Result<Vec<u8>, HostError> {
        // Room for what it announced (at most `max_reply`, checked in `send`), but no more
        // than a generous real reply up front: a peer's header is no reason to reserve 4 GiB.
        let announced = resp.content_length().unwrap_or(0).min(PREALLOCATE_MOST);
        let mut body = Vec::with_capacity(usize::try_from(announced).unwrap_or(0));
        while let Some(chunk) = resp.chunk().await.map_err(|e| self.error(url, e))? {
            if (body.len() + chunk.len()) as u64 > self.max_reply {
                return Err(self.too_large(
                    url,
                    format!(
                        "more than {} bytes arrived (no Content-Length); the rest was not read",
                        self.max_reply
                    ),
                ));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    fn too_large(&self, url: &str, detail: String) -> HostError {
        HostError::TooLarge {
            url: url.to_owned(),
            limit: format_size(self.max_reply),
            detail,
        }
    }

    fn error(&self, url: &str, e: reqwest::Error) -> HostError {
        if e.is_timeout() {
            HostError::Timeout(self.timeout)
        } else if e.is_decode() {
            HostError::Garbled {
                url: url.to_owned(),
                detail: error_chain(&e),
            }
        } else {
            HostError::Unreachable(format!("{url}: {}", error_chain(&e)))
        }
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

/// A base URL's host as written (brackets of an IPv6 address dropped), the IP when it is
/// one, and its port.
fn host_of(base: &str) -> (String, Option<IpAddr>, u16) {
    let Ok(url) = reqwest::Url::parse(base) else {
        return (base.to_owned(), None, 0);
    };
    let port = url.port_or_known_default().unwrap_or(0);
    let host = url
        .host_str()
        .unwrap_or(base)
        .trim_start_matches('[')
        .trim_end_matches(']');
    (host.to_owned(), host.parse().ok(), port)
}

/// reqwest's top-level message is terse ("error sending request for url (…)") and each layer
/// repeats the one below; the innermost cause says why ("Connection refused (os error 111)").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut root = e;
    while let Some(c) = root.source() {
        root = c;
    }
    root.to_string()
}
