//! A fleet of fake cAdvisor hosts in one process, for benchmarks: N listeners on 127.0.0.1,
//! each answering `/api/v1.3/docker/` and `/api/v1.3/machine` after a fixed latency, with the
//! real-shaped replies of [`super::cadvisor`] (a few containers, [`SAMPLES`] samples each when
//! the request has no body).
//!
//! Rendering a 450 KB reply per request for 1,000 hosts would cost the fleet more CPU than
//! hatune spends parsing it, and the machine has 2 cores. So the fleet renders ONE reply (a
//! template) per reply shape and serves it to every host with the host's number spliced in:
//! container aliases are `app{host:05}-{c:02}` and container ids start with the host number, so
//! every host reports distinct containers, at the cost of a few `writev` slices per reply. With
//! [`FleetSpec::refresh`] (or [`Fleet::refresh`]) the templates are re-rendered, so a daemon
//! ticking over the fleet sees fresh samples (and, with `rotate_loads`, loads that move between
//! containers, so weights keep changing); the containers' counters continue from one rendering
//! to the next, as a real host's do, so readings that span two replies are right too. The
//! templates of a round are rendered at the same moment: their newest sample is that moment,
//! for every request until the next round (a host whose housekeeping has not run since).
//!
//! Request bodies are read (by `Content-Length`, or chunked) and decoded as cAdvisor does (see
//! [`StatsQuery::from_body`]): any method; `num_stats` is honoured, one template per distinct
//! number of samples asked (rendered on the first request asking it, and on every refresh
//! after); no body means 60; -1 means all [`STORAGE`] kept; 0 gives containers without
//! `stats`; below -1, the connection is closed without a reply (cAdvisor's handler panics); a
//! body that is not JSON gets cAdvisor's 500. `start` and `end` are ignored: every host's
//! samples end at the template's rendering, whatever the request asks.
//!
//! `GET /metrics` (any method, the body ignored) answers cAdvisor's Prometheus text in its
//! per-CPU shape (see [`super::cadvisor::Exposition::Cadvisor`]), from the same containers and
//! counters: one template per round too (rendered on the first request, and on every refresh
//! after), at the round's moment, so its counters are those of the newest sample of the JSON
//! replies of the same round. Its bytes count in [`Fleet::bytes_sent`] and
//! [`Fleet::metrics_bytes_sent`], to compare a tick of the fleet on `/metrics` with one on the
//! JSON API.
//!
//! Backends for a fleet: host `h` belongs to group `h / 10`; `^app{group:04}` matches the
//! aliases of its 10 hosts (see [`group_pattern`]).

use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::io::AsyncWrite;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::source::Nanos;

use super::cadvisor::{
    machine_body, read_request, unix_now, FakeContainer, HostModel, StatsQuery,
    METRICS_CONTENT_TYPE, SAMPLES, STORAGE,
};

/// Placeholder for the host number in the template: 5 characters, like `{host:05}`.
const SLOT: &[u8] = b"@@@@@";

/// What the fleet looks like.
#[derive(Debug, Clone)]
pub struct FleetSpec {
    pub hosts: usize,
    /// App containers per host (each host also runs the `cadvisor` container).
    pub containers_per_host: usize,
    pub num_cores: u32,
    /// Delay before every reply.
    pub latency: Duration,
    /// Re-render the samples this often (`None`: once, at start).
    pub refresh: Option<Duration>,
    /// On each refresh, shift which container carries which load.
    pub rotate_loads: bool,
}

impl Default for FleetSpec {
    fn default() -> Self {
        FleetSpec {
            hosts: 10,
            containers_per_host: 3,
            num_cores: 4,
            latency: Duration::from_millis(100),
            refresh: None,
            rotate_loads: false,
        }
    }
}

/// The alias of container `c` on host `h` (and the HAProxy server name it stands for).
pub fn alias(host: usize, c: usize) -> String {
    format!("app{host:05}-{c:02}")
}

/// Number of groups (backends) for `hosts` hosts: 10 hosts per group.
pub fn groups(hosts: usize) -> usize {
    hosts.div_ceil(10)
}

/// Backend name of group `g`.
pub fn group_backend(g: usize) -> String {
    format!("be{g:04}")
}

/// The pattern matching the aliases of group `g`'s hosts.
pub fn group_pattern(g: usize) -> String {
    format!("^app{g:04}")
}

/// HAProxy backends for the fleet: one per group, one server per container, all pointing at a
/// closed port (no traffic needed). `balance roundrobin` takes any weight.
pub fn haproxy_backends(spec: &FleetSpec) -> String {
    let mut cfg = String::new();
    for g in 0..groups(spec.hosts) {
        cfg.push_str(&format!(
            "backend {}\n    balance roundrobin\n",
            group_backend(g)
        ));
        for h in (g * 10)..((g + 1) * 10).min(spec.hosts) {
            for c in 0..spec.containers_per_host {
                cfg.push_str(&format!(
                    "    server {} 127.0.0.1:9 weight 100\n",
                    alias(h, c)
                ));
            }
        }
    }
    cfg
}

/// A hatune config (JSON) for the fleet: one backend per group, `timeout` as given (`"5s"`),
/// `extra` appended inside the top-level object (e.g. `, "interval": "200ms"`).
pub fn hatune_config(
    spec: &FleetSpec,
    urls: &[String],
    haproxy: &str,
    timeout: &str,
    extra: &str,
) -> String {
    let backends: Vec<String> = (0..groups(spec.hosts))
        .map(|g| {
            format!(
                r#"{{"name": "{}", "pattern": "{}"}}"#,
                group_backend(g),
                group_pattern(g)
            )
        })
        .collect();
    let urls: Vec<String> = urls.iter().map(|u| format!("\"{u}\"")).collect();
    format!(
        r#"{{"haproxy": ["{haproxy}"], "cadvisor": [{}], "timeout": "{timeout}", "window": "60s", "backends": [{}]{extra}}}"#,
        urls.join(", "),
        backends.join(", ")
    )
}

/// The load of container `c` of `n` in refresh `round`: 0.2 to 1.0 cores spread over the
/// containers, shifted each round with `rotate_loads`.
fn load(spec: &FleetSpec, c: usize, round: usize) -> f64 {
    let n = spec.containers_per_host;
    let k = if spec.rotate_loads {
        (c + round) % n
    } else {
        c
    };
    0.2 + 0.8 * k as f64 / n.max(2).saturating_sub(1) as f64
}

/// The template a request asking `num_stats` gets: its number of samples per container, or
/// `None` for a number cAdvisor closes the connection on.
fn template_key(num_stats: i64) -> Option<usize> {
    match num_stats {
        -1 => Some(STORAGE),
        n if n < -1 => None,
        n => Some(usize::try_from(n).unwrap_or(usize::MAX).min(STORAGE)),
    }
}

/// The docker reply, cut at every host-number slot.
struct Template {
    parts: Vec<Vec<u8>>,
    len: usize,
}

impl Template {
    /// The reply with `samples` samples per container, at `now`.
    fn render(model: &HostModel, samples: usize, now: Nanos) -> Template {
        let query = StatsQuery {
            num_stats: Some(samples as i64),
            ..StatsQuery::default()
        };
        let body = model
            .render(now, &query)
            .expect("a non-negative num_stats always has a reply");
        Template::from_body(model, body)
    }

    /// The `/metrics` reply at `now`.
    fn render_metrics(model: &HostModel, now: Nanos) -> Template {
        Template::from_body(model, model.render_metrics(now))
    }

    /// `body` (a reply for `model`'s containers) cut at every host-number slot.
    fn from_body(model: &HostModel, mut body: String) -> Template {
        // Container ids are the same in every rendering: make their first 5 hex digits the
        // host number too (digits are hex), so ids differ between hosts.
        for id in model.ids() {
            body = body.replace(id.as_str(), &format!("@@@@@{}", &id[5..]));
        }
        let bytes = body.into_bytes();
        let mut parts = vec![];
        let mut rest = &bytes[..];
        while let Some(at) = rest.windows(SLOT.len()).position(|w| w == SLOT) {
            parts.push(rest[..at].to_vec());
            rest = &rest[at + SLOT.len()..];
        }
        parts.push(rest.to_vec());
        let len = bytes.len();
        debug_assert_eq!(
            parts.iter().map(Vec::len).sum::<usize>() + (parts.len() - 1) * SLOT.len(),
            len
        );
        Template { parts, len }
    }

    /// `header`, then the reply with `number` in every slot.
    fn slices<'a>(&'a self, header: &'a [u8], number: &'a [u8]) -> Vec<&'a [u8]> {
        let mut slices: Vec<&[u8]> = Vec::with_capacity(self.parts.len() * 2 + 1);
        slices.push(header);
        for (i, part) in self.parts.iter().enumerate() {
            if i > 0 {
                slices.push(number);
            }
            slices.push(part);
        }
        slices
    }
}

struct Shared {
    spec: FleetSpec,
    /// The containers every host runs (aliases with the host-number slot).
    model: Mutex<HostModel>,
    templates: Mutex<Templates>,
    /// Held while rendering, so that every template of a round is rendered at its time.
    render: Mutex<()>,
    machine: Vec<u8>,
    requests: AtomicU64,
    docker_requests: AtomicU64,
    machine_requests: AtomicU64,
    metrics_requests: AtomicU64,
    bytes_sent: AtomicU64,
    docker_bytes_sent: AtomicU64,
    metrics_bytes_sent: AtomicU64,
    round: AtomicUsize,
}

/// The replies of one round: all rendered at the same moment, so they hold the same samples
/// (a lean reply is the end of a full one, as cAdvisor's are).
struct Templates {
    at: Nanos,
    /// By samples per container (`0..=STORAGE`), once asked for.
    by_samples: Vec<Option<Arc<Template>>>,
    /// The `/metrics` reply, once asked for.
    metrics: Option<Arc<Template>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    /// The template with `samples` samples per container, rendered now (at the round's time)
    /// if none was asked yet.
    fn template(&self, samples: usize) -> Arc<Template> {
        if let Some(t) = &lock(&self.templates).by_samples[samples] {
            return t.clone();
        }
        let _rendering = lock(&self.render);
        let at = {
            let templates = lock(&self.templates);
            if let Some(t) = &templates.by_samples[samples] {
                return t.clone();
            }
            templates.at
        };
        let model = lock(&self.model).clone();
        let t = Arc::new(Template::render(&model, samples, at));
        lock(&self.templates).by_samples[samples] = Some(t.clone());
        t
    }

    /// The `/metrics` template, rendered now (at the round's time) if none was asked yet.
    fn metrics_template(&self) -> Arc<Template> {
        if let Some(t) = &lock(&self.templates).metrics {
            return t.clone();
        }
        let _rendering = lock(&self.render);
        let at = {
            let templates = lock(&self.templates);
            if let Some(t) = &templates.metrics {
                return t.clone();
            }
            templates.at
        };
        let model = lock(&self.model).clone();
        let t = Arc::new(Template::render_metrics(&model, at));
        lock(&self.templates).metrics = Some(t.clone());
        t
    }

    /// The next round, now: loads moved (with `rotate_loads`), every template asked for so
    /// far re-rendered.
    fn refresh(&self) {
        let _rendering = lock(&self.render);
        let round = self.round.fetch_add(1, Ordering::Relaxed) + 1;
        let now = round_time();
        let model = {
            let mut m = lock(&self.model);
            if self.spec.rotate_loads {
                for c in 0..self.spec.containers_per_host {
                    m.set_cores_used(c, now, load(&self.spec, c, round));
                }
            }
            m.clone()
        };
        let (asked, metrics_asked): (Vec<bool>, bool) = {
            let templates = lock(&self.templates);
            (
                templates.by_samples.iter().map(Option::is_some).collect(),
                templates.metrics.is_some(),
            )
        };
        let by_samples = asked
            .iter()
            .enumerate()
            .map(|(k, &asked)| asked.then(|| Arc::new(Template::render(&model, k, now))))
            .collect();
        let metrics = metrics_asked.then(|| Arc::new(Template::render_metrics(&model, now)));
        *lock(&self.templates) = Templates {
            at: now,
            by_samples,
            metrics,
        };
    }
}

/// The moment of a new round: now, rounded down to the millisecond (the resolution of the
/// `/metrics` timestamps, so that both replies of a round hold the same sample).
fn round_time() -> Nanos {
    unix_now() / 1_000_000 * 1_000_000
}

/// A running fleet; stops (listeners and open connections) when dropped.
pub struct Fleet {
    urls: Vec<String>,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
}

impl Fleet {
    /// Binds one listener per host and starts serving. Needs about one file descriptor per
    /// host plus one per open connection: raise the soft limit first for 1,000 hosts.
    pub async fn start(spec: FleetSpec) -> io::Result<Fleet> {
        let containers: Vec<FakeContainer> = (0..spec.containers_per_host)
            .map(|c| FakeContainer::new(format!("app@@@@@-{c:02}"), load(&spec, c, 0)))
            .collect();
        let start = round_time();
        let shared = Arc::new(Shared {
            model: Mutex::new(HostModel::new(spec.num_cores, &containers, start, 7)),
            templates: Mutex::new(Templates {
                at: start,
                by_samples: vec![None; STORAGE + 1],
                metrics: None,
            }),
            render: Mutex::new(()),
            machine: machine_body(spec.num_cores).into_bytes(),
            requests: AtomicU64::new(0),
            docker_requests: AtomicU64::new(0),
            machine_requests: AtomicU64::new(0),
            metrics_requests: AtomicU64::new(0),
            bytes_sent: AtomicU64::new(0),
            docker_bytes_sent: AtomicU64::new(0),
            metrics_bytes_sent: AtomicU64::new(0),
            round: AtomicUsize::new(0),
            spec: spec.clone(),
        });
        // The reply to a request without a body, ready before the first request.
        shared.template(SAMPLES);
        let (stop, stop_rx) = watch::channel(false);
        let mut urls = Vec::with_capacity(spec.hosts);
        for host in 0..spec.hosts {
            let listener = TcpListener::bind("127.0.0.1:0").await?;
            urls.push(format!("http://{}", listener.local_addr()?));
            tokio::spawn(accept_loop(listener, host, shared.clone(), stop_rx.clone()));
        }
        if let Some(every) = spec.refresh {
            let shared = shared.clone();
            let mut stop_rx = stop_rx.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = stop_rx.wait_for(|s| *s) => return,
                        _ = tokio::time::sleep(every) => {}
                    }
                    shared.refresh();
                }
            });
        }
        Ok(Fleet { urls, shared, stop })
    }

    /// Starts the next round now, as [`FleetSpec::refresh`] does: every reply gets a newer
    /// sample (and the loads move, with `rotate_loads`). For a bench that wants each run of a
    /// client to see a new sample, as a real host's 1 s housekeeping gives.
    pub fn refresh(&self) {
        self.shared.refresh();
    }

    /// Base URLs, one per host, in host order.
    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    /// Bytes of one docker reply's body to a request without a body (the same for every host).
    pub fn docker_reply_len(&self) -> usize {
        self.shared.template(SAMPLES).len
    }

    /// Bytes of one docker reply's body to a request asking `num_stats` (rendering that reply
    /// now if no request asked it yet); 0 below -1 (no reply at all).
    pub fn docker_reply_len_for(&self, num_stats: i64) -> usize {
        template_key(num_stats).map_or(0, |k| self.shared.template(k).len)
    }

    /// Bytes of one `/metrics` reply's body (the same length for every host; rendering it now
    /// if no request asked it yet this round).
    pub fn metrics_reply_len(&self) -> usize {
        self.shared.metrics_template().len
    }

    /// Samples per container in a reply to a request without a body.
    pub fn samples(&self) -> usize {
        SAMPLES
    }

    /// Requests answered or in progress so far (every path).
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::Relaxed)
    }

    /// Requests for `/api/v1.3/docker/` so far.
    pub fn docker_requests(&self) -> u64 {
        self.shared.docker_requests.load(Ordering::Relaxed)
    }

    /// Requests for `/api/v1.3/machine` so far.
    pub fn machine_requests(&self) -> u64 {
        self.shared.machine_requests.load(Ordering::Relaxed)
    }

    /// Bytes of replies (heads and bodies) written to clients so far, every path; a reply cut
    /// off counts what the kernel took.
    pub fn bytes_sent(&self) -> u64 {
        self.shared.bytes_sent.load(Ordering::Relaxed)
    }

    /// The part of [`bytes_sent`](Fleet::bytes_sent) that answered `/api/v1.3/docker/`.
    pub fn docker_bytes_sent(&self) -> u64 {
        self.shared.docker_bytes_sent.load(Ordering::Relaxed)
    }

    /// Requests for `/metrics` so far.
    pub fn metrics_requests(&self) -> u64 {
        self.shared.metrics_requests.load(Ordering::Relaxed)
    }

    /// The part of [`bytes_sent`](Fleet::bytes_sent) that answered `/metrics`.
    pub fn metrics_bytes_sent(&self) -> u64 {
        self.shared.metrics_bytes_sent.load(Ordering::Relaxed)
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

async fn accept_loop(
    listener: TcpListener,
    host: usize,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let mut conn_stop = stop.clone();
        let accepted = tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((stream, _)) = accepted else {
            // Out of descriptors: back off instead of spinning.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = conn_stop.wait_for(|s| *s) => {}
                _ = serve(stream, host, &shared) => {}
            }
        });
    }
}

async fn serve(mut stream: TcpStream, host: usize, shared: &Shared) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let number = format!("{host:05}");
    let mut buf: Vec<u8> = Vec::with_capacity(512);
    while let Some(request) = read_request(&mut stream, &mut buf).await {
        shared.requests.fetch_add(1, Ordering::Relaxed);
        let path = request.target().split('?').next().unwrap_or("/");
        let keep_alive = request.keep_alive();
        if !shared.spec.latency.is_zero() {
            tokio::time::sleep(shared.spec.latency).await;
        }
        let conn = if keep_alive { "keep-alive" } else { "close" };
        let all = [&shared.bytes_sent];
        let docker = [&shared.bytes_sent, &shared.docker_bytes_sent];
        let metrics = [&shared.bytes_sent, &shared.metrics_bytes_sent];
        if path == "/metrics" || path == "/metrics/" {
            shared.metrics_requests.fetch_add(1, Ordering::Relaxed);
            let t = shared.metrics_template();
            let header = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: {METRICS_CONTENT_TYPE}\r\nContent-Length: {}\r\nConnection: {conn}\r\n\r\n",
                t.len
            );
            write_all_vectored(
                &mut stream,
                &t.slices(header.as_bytes(), number.as_bytes()),
                &metrics,
            )
            .await?;
        } else if path.starts_with("/api/v1.3/docker") {
            shared.docker_requests.fetch_add(1, Ordering::Relaxed);
            match StatsQuery::from_body(&request.body).map(|q| template_key(q.limit())) {
                Err(e) => {
                    let msg = format!("{e}\n");
                    let header = format!(
                        "HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain; charset=utf-8\r\nX-Content-Type-Options: nosniff\r\nContent-Length: {}\r\nConnection: {conn}\r\n\r\n",
                        msg.len()
                    );
                    write_all_vectored(&mut stream, &[header.as_bytes(), msg.as_bytes()], &docker)
                        .await?;
                }
                // cAdvisor's handler panics: no reply, the connection closed.
                Ok(None) => return Ok(()),
                Ok(Some(samples)) => {
                    let t = shared.template(samples);
                    let header = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: {conn}\r\n\r\n",
                        t.len
                    );
                    write_all_vectored(
                        &mut stream,
                        &t.slices(header.as_bytes(), number.as_bytes()),
                        &docker,
                    )
                    .await?;
                }
            }
        } else if path.starts_with("/api/v1.3/machine") {
            shared.machine_requests.fetch_add(1, Ordering::Relaxed);
            let header = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: {conn}\r\n\r\n",
                shared.machine.len()
            );
            write_all_vectored(&mut stream, &[header.as_bytes(), &shared.machine], &all).await?;
        } else {
            let msg = b"page not found\n";
            let header = format!(
                "HTTP/1.1 404 Not Found\r\nContent-Length: {}\r\nConnection: {conn}\r\n\r\n",
                msg.len()
            );
            write_all_vectored(&mut stream, &[header.as_bytes(), msg], &all).await?;
        }
        if !keep_alive {
            return Ok(());
        }
    }
    Ok(())
}

/// `write_all` over several slices with `writev`, resuming after partial writes; every byte
/// written is added to each of `counters`.
async fn write_all_vectored(
    stream: &mut TcpStream,
    slices: &[&[u8]],
    counters: &[&AtomicU64],
) -> io::Result<()> {
    let mut i = 0;
    let mut offset = 0;
    while i < slices.len() {
        // Built inside the poll: an IoSlice is not Send, so it must not live across an await.
        let mut n = std::future::poll_fn(|cx| {
            let io: Vec<IoSlice<'_>> = std::iter::once(IoSlice::new(&slices[i][offset..]))
                .chain(slices[i + 1..].iter().take(63).map(|s| IoSlice::new(s)))
                .collect();
            std::pin::Pin::new(&mut *stream).poll_write_vectored(cx, &io)
        })
        .await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        for c in counters {
            c.fetch_add(n as u64, Ordering::Relaxed);
        }
        while i < slices.len() && n >= slices[i].len() - offset {
            n -= slices[i].len() - offset;
            i += 1;
            offset = 0;
        }
        offset += n;
    }
    Ok(())
}

/// The local address of a fleet URL (for tests of the fleet itself).
pub fn addr_of(url: &str) -> Option<SocketAddr> {
    url.strip_prefix("http://")?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::cadvisor::{parse_containers, Client, Window};

    #[tokio::test]
    async fn every_host_reports_its_own_containers() {
        let spec = FleetSpec {
            hosts: 3,
            containers_per_host: 2,
            latency: Duration::from_millis(1),
            ..FleetSpec::default()
        };
        let fleet = Fleet::start(spec).await.unwrap();
        let client = Client::new(Duration::from_secs(5));
        let polls = client
            .poll_all(fleet.urls(), |_| Window::Span(Duration::from_secs(60)))
            .await;
        for (h, poll) in polls.iter().enumerate() {
            let host = poll.as_ref().unwrap();
            assert_eq!(host.num_cores, 4);
            let aliases: Vec<&str> = host
                .containers
                .iter()
                .map(|c| c.aliases[0].as_str())
                .collect();
            assert_eq!(aliases, [alias(h, 0), alias(h, 1), "cadvisor".into()]);
            for c in &host.containers {
                assert!(c.aliases[1].starts_with(&format!("{h:05}")));
                assert!(c.reading.is_ok(), "{c:?}");
            }
        }
        assert!(addr_of(&fleet.urls()[0]).is_some());
        assert!(fleet.docker_reply_len() > 100_000);
    }

    #[tokio::test]
    async fn num_stats_in_the_body_shapes_the_reply() {
        let spec = FleetSpec {
            hosts: 2,
            containers_per_host: 3,
            latency: Duration::ZERO,
            ..FleetSpec::default()
        };
        let fleet = Fleet::start(spec).await.unwrap();
        // One client: its requests share a connection, so a body mistaken for the next
        // request's head would break the second one.
        let http = reqwest::Client::new();
        let url = format!("{}/api/v1.3/docker/", fleet.urls()[1]);
        let ask = |body: Option<&'static str>| {
            let mut req = http.post(&url);
            if let Some(b) = body {
                req = req.header("content-type", "application/json").body(b);
            }
            async move {
                let resp = req.send().await.unwrap();
                (resp.status().as_u16(), resp.bytes().await.unwrap())
            }
        };
        let (status, lean) = ask(Some(r#"{"num_stats":1}"#)).await;
        assert_eq!(status, 200);
        let (_, full) = ask(None).await;
        let (_, all) = ask(Some(r#"{"num_stats":-1}"#)).await;
        let (_, none) = ask(Some(r#"{"num_stats":0}"#)).await;
        let (_, lean_again) = ask(Some(r#"{"num_stats":1}"#)).await;
        assert_eq!(lean, lean_again, "the same template");
        let samples = |body: &[u8]| -> Vec<usize> {
            let parsed = parse_containers(body).unwrap();
            assert_eq!(parsed[0].aliases[0], alias(1, 0));
            parsed.iter().map(|c| c.samples.len()).collect()
        };
        assert_eq!(samples(&lean), [1; 4]);
        assert_eq!(samples(&full), [SAMPLES; 4]);
        assert_eq!(samples(&all), [STORAGE; 4]);
        assert_eq!(samples(&none), [0; 4]);
        assert!(
            lean.len() * 20 < full.len(),
            "{} vs {}",
            lean.len(),
            full.len()
        );
        assert_eq!(fleet.docker_reply_len_for(1), lean.len());
        assert_eq!(fleet.docker_reply_len_for(60), full.len());
        assert_eq!(fleet.docker_reply_len(), full.len());
        assert_eq!(fleet.docker_reply_len_for(-1), all.len());
        assert_eq!(fleet.docker_reply_len_for(1000), all.len());
        assert_eq!(fleet.docker_reply_len_for(-2), 0);
        // The newest sample is the same in both: the lean reply is the end of the full one.
        let newest = |body: &[u8]| parse_containers(body).unwrap()[0].samples.last().copied();
        assert_eq!(newest(&lean), newest(&full));

        let (status, text) = ask(Some("num_stats=1")).await;
        assert_eq!(status, 500);
        assert!(String::from_utf8_lossy(&text).starts_with("unable to decode the json value"));
        assert_eq!(fleet.docker_requests(), 6);
        assert_eq!(fleet.machine_requests(), 0);
        let bodies = (lean.len() * 2 + full.len() + all.len() + none.len() + text.len()) as u64;
        let sent = fleet.docker_bytes_sent();
        assert!(
            sent > bodies && sent < bodies + 6 * 200,
            "{sent} vs {bodies}"
        );
        assert_eq!(fleet.bytes_sent(), sent);
    }

    #[tokio::test]
    async fn metrics_for_every_host_hold_the_rounds_newest_sample() {
        use crate::source::exposition::{samples, Sample};
        let spec = FleetSpec {
            hosts: 3,
            containers_per_host: 2,
            num_cores: 4,
            latency: Duration::ZERO,
            ..FleetSpec::default()
        };
        let fleet = Fleet::start(spec).await.unwrap();
        let http = reqwest::Client::new();
        for (h, url) in fleet.urls().iter().enumerate() {
            let resp = http.get(format!("{url}/metrics")).send().await.unwrap();
            assert_eq!(resp.status().as_u16(), 200);
            assert_eq!(
                resp.headers()["content-type"].to_str().unwrap(),
                METRICS_CONTENT_TYPE
            );
            let text = resp.text().await.unwrap();
            assert_eq!(text.len(), fleet.metrics_reply_len());
            let all: Vec<Sample> = samples(&text).collect::<Result<_, _>>().unwrap();
            let json = http
                .post(format!("{url}/api/v1.3/docker/"))
                .body(r#"{"num_stats":1}"#)
                .send()
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
            let parsed = parse_containers(&json).unwrap();
            let names: Vec<&str> = parsed.iter().map(|c| c.aliases[0].as_str()).collect();
            assert_eq!(names, [alias(h, 0), alias(h, 1), "cadvisor".into()]);
            for c in &parsed {
                let cpu: Vec<&Sample> = all
                    .iter()
                    .filter(|s| {
                        s.name == "container_cpu_usage_seconds_total"
                            && s.label("name") == Some(c.aliases[0].as_str())
                    })
                    .collect();
                assert_eq!(cpu.len(), 4, "{}", c.aliases[0]);
                let newest = c.samples[0];
                for s in &cpu {
                    assert_eq!(s.label("id").unwrap(), format!("/docker/{}", c.aliases[1]));
                    assert_eq!(
                        s.timestamp_ms,
                        Some((newest.timestamp.unwrap() / 1_000_000) as i64)
                    );
                }
                let sum: f64 = cpu.iter().map(|s| s.value).sum();
                let total = newest.usage_total.unwrap() as f64;
                assert!((sum * 1e9 - total).abs() < 2.0, "{sum} s vs {total} ns");
            }
        }
        assert_eq!(fleet.metrics_requests(), 3);
        assert_eq!(fleet.docker_requests(), 3);
        let bodies = 3 * fleet.metrics_reply_len() as u64;
        let sent = fleet.metrics_bytes_sent();
        assert!(
            sent > bodies && sent < bodies + 3 * 200,
            "{sent} vs {bodies}"
        );
        assert_eq!(fleet.bytes_sent(), sent + fleet.docker_bytes_sent());
        // One sample per series: lighter than the JSON's 60 samples, heavier than one.
        assert!(fleet.metrics_reply_len() < fleet.docker_reply_len());
        assert!(fleet.metrics_reply_len() > fleet.docker_reply_len_for(1));
    }

    #[tokio::test]
    async fn a_refresh_keeps_the_counters_going() {
        let spec = FleetSpec {
            hosts: 1,
            containers_per_host: 2,
            latency: Duration::ZERO,
            refresh: Some(Duration::from_millis(1100)),
            rotate_loads: true,
            ..FleetSpec::default()
        };
        let fleet = Fleet::start(spec).await.unwrap();
        let http = reqwest::Client::new();
        let url = format!("{}/api/v1.3/docker/", fleet.urls()[0]);
        let newest = || async {
            let body = http
                .post(&url)
                .body(r#"{"num_stats":1}"#)
                .send()
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
            parse_containers(&body).unwrap()[0].samples[0]
        };
        let a = newest().await;
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let b = newest().await;
        let secs = (b.timestamp.unwrap() - a.timestamp.unwrap()) as f64 / 1e9;
        let cores = (b.usage_total.unwrap() - a.usage_total.unwrap()) as f64 / 1e9 / secs;
        // Container 0 runs 0.2 or 1.0 cores, alternating each refresh.
        assert!(secs > 1.0, "{secs}");
        assert!(cores > 0.19 && cores < 1.01, "{cores} cores over {secs} s");
    }
}
