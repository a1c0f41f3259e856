//! A fake cAdvisor: a real HTTP/1.1 server on loopback serving `/api/v1.3/docker/` and
//! `/api/v1.3/machine` with replies shaped like real ones (see the v1.2 capture in the shared
//! fixtures), generated from a configured CPU rate per container.
//!
//! Each container's cumulative `cpu.usage.total` is a continuous function of wall-clock time:
//! the integral of its rate history, so a rate change via [`FakeCadvisor::set_cores_used`] shows
//! up in the following samples and never makes the counter jump. Samples sit on a fixed grid about
//! one interval apart (with a small jitter that is the same in every reply, as cAdvisor keeps its
//! samples), plus one sample at the moment of the request; the fake keeps the newest
//! [`STORAGE`] of them (cAdvisor's 2 minutes of `--storage_duration` at its 1 s housekeeping
//! interval). Every host also runs a `cadvisor` container that is not an app.
//!
//! Requests are answered as cAdvisor v0.49 answers them (`cmd/internal/api/handler.go`
//! `getContainerInfoRequest`, `utils/timed_store.go` `InTimeRange`): any method; the body, if
//! any, is a JSON [`StatsQuery`] (`{"num_stats": N, "start": T, "end": T}`) over the default
//! `{"num_stats": 60}`, so a request without a body gets the newest [`SAMPLES`]; a body that is
//! not valid JSON gets a 500. See [`StatsQuery`] for which samples a query selects.
//!
//! `GET /metrics` answers cAdvisor's Prometheus text, rendered from the same containers and the
//! same counters (see *Prometheus text* below, and [`metrics_body`]).
//! [`FakeKubelet`] is the same fake behind HTTPS and a bearer token, answering the kubelet's
//! `/metrics/resource` and `/metrics/cadvisor` instead.
//!
//! [`docker_body`] and [`machine_body`] render the same replies without a server (for benchmarks).
//!
//! # Prometheus text
//!
//! Every reply is one scrape at the moment of the request rounded down to the millisecond: the
//! value of a container's counter is the one the JSON reply's newest sample would have at that
//! moment, and the series carries that moment as its timestamp, so value and timestamp agree
//! exactly. Families come in name order, series in each family in label-value order, labels in
//! name order (as Go's Prometheus client writes them). Values are Go's `%g` layout (`2e-09`,
//! `11155.288817375`, `1.5e+06`) but exact: a counter in seconds carries every nanosecond, so it
//! may have more digits than Go would write. See [`metrics_body`] for the series each endpoint has.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::de::{self, IgnoredAny, MapAccess, Visitor};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::source::cadvisor::{format_rfc3339, parse_rfc3339, Nanos};

mod kubelet;
mod metrics;

pub(crate) use kubelet::make_ca_named;
pub use kubelet::{other_ca_pem, FakeKubelet, KubeletOptions, KUBELET_USER};
pub use metrics::{metrics_body, CpuSeries, Exposition, METRICS_CONTENT_TYPE};

/// Samples per container in a reply to a request without a body (cAdvisor's default
/// `num_stats` for the v1 API).
pub const SAMPLES: usize = 60;

/// Samples the fake keeps per container, the most a reply holds (`{"num_stats": -1}`): 2 minutes
/// at [`SAMPLE_INTERVAL`], as cAdvisor keeps with its default `--storage_duration 2m`.
pub const STORAGE: usize = 120;

/// Housekeeping interval: samples are about this far apart.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);

/// Alias of the non-app container every fake host runs (cAdvisor itself, at a small load).
pub const SIDECAR_ALIAS: &str = "cadvisor";

const SIDECAR_CORES: f64 = 0.02;

/// The CFS period the fake reports with a quota (the kernel default, µs).
const CFS_PERIOD_US: u64 = 100_000;

/// Counter value of a restarted container's newest sample under [`Behaviour::CounterReset`].
const RESTARTED_USAGE_NS: u64 = 12_345_678;

/// One app container on a fake host.
#[derive(Debug, Clone, PartialEq)]
pub struct FakeContainer {
    /// First Docker alias (the container name), matched against HAProxy server names.
    pub alias: String,
    /// Cores in use from the start.
    pub cores_used: f64,
    /// CFS quota in cores (`quota/period`); `None` for an unlimited container.
    pub quota_cores: Option<f64>,
    /// Labels besides the ones every fake container has (`com.docker.compose.project`,
    /// `com.docker.compose.service` = its alias, `maintainer`); a key given here wins.
    pub labels: Vec<(String, String)>,
    /// Where the kubelet's endpoints place it; `None`: namespace `default`, pod = the alias,
    /// container `app` (see [`FakeContainer::kube_identity`]).
    pub kube: Option<KubeIdentity>,
}

/// A container's Kubernetes identity, as the kubelet's `namespace`, `pod` and `container`
/// labels give it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeIdentity {
    pub namespace: String,
    pub pod: String,
    pub container: String,
}

impl FakeContainer {
    /// An unlimited container using `cores_used` cores.
    pub fn new(alias: impl Into<String>, cores_used: f64) -> FakeContainer {
        FakeContainer {
            alias: alias.into(),
            cores_used,
            quota_cores: None,
            labels: vec![],
            kube: None,
        }
    }

    /// The same container as container `container` of pod `namespace/pod` (several containers
    /// may share a pod; give each its own `container` name).
    pub fn with_pod(
        mut self,
        namespace: impl Into<String>,
        pod: impl Into<String>,
        container: impl Into<String>,
    ) -> FakeContainer {
        self.kube = Some(KubeIdentity {
            namespace: namespace.into(),
            pod: pod.into(),
            container: container.into(),
        });
        self
    }

    /// Its identity on the kubelet's endpoints: the one given to
    /// [`with_pod`](FakeContainer::with_pod), else namespace `default`, pod = the alias,
    /// container `app`.
    pub fn kube_identity(&self) -> KubeIdentity {
        self.kube.clone().unwrap_or_else(|| KubeIdentity {
            namespace: "default".into(),
            pod: self.alias.clone(),
            container: "app".into(),
        })
    }

    /// The same container with this label too.
    pub fn with_label(mut self, key: impl Into<String>, value: impl Into<String>) -> FakeContainer {
        self.labels.push((key.into(), value.into()));
        self
    }

    /// The same container limited to `cores` by a CFS quota.
    pub fn with_quota(mut self, cores: f64) -> FakeContainer {
        self.quota_cores = Some(cores);
        self
    }
}

/// How the fake answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Behaviour {
    /// Real-shaped replies.
    #[default]
    Normal,
    /// Reads the request and never answers (until the client gives up).
    Hang,
    /// 200 with a body that is not JSON (a reply cut off halfway).
    Garbage,
    /// Every container with `"stats": []`.
    EmptyStats,
    /// The app containers restarted just before the newest sample: its counter is near zero.
    /// The `cadvisor` container is unaffected.
    CounterReset,
    /// Every request answered with this HTTP status.
    Status(u16),
    /// A read-only proxy in front: a request with any method but GET or HEAD is answered
    /// `405 Method Not Allowed`; the others as usual.
    GetOnly,
    /// The app containers' newest sample has a counter of u64::MAX (a glitch, not load).
    CounterJump,
    /// The app containers' samples start with one dated 1970-01-01.
    AncientFirstSample,
    /// Every sample of every container is dated this many seconds later (a host whose clock is
    /// off).
    ClockAhead(u64),
    /// Every request answered `301 Moved Permanently` to the same path on this address (say,
    /// another fake host).
    RedirectTo(SocketAddr),
    /// The real-shaped `/api/v1.3/docker/` reply, padded with trailing spaces (still valid
    /// JSON) to `bytes`; with a `Content-Length`, or `chunked` without one, in 64 KiB chunks.
    /// `/machine` is answered as usual.
    Oversized { bytes: usize, chunked: bool },
}

/// 75 years, in seconds: a [`Behaviour::ClockAhead`] from the year 2100.
pub const DECADES_AHEAD_SECS: u64 = 75 * 365 * 86_400;

/// Which samples a `/api/v1.3/docker/` request asks for: cAdvisor's `ContainerInfoRequest`
/// (`info/v1/container.go`), decoded from the request body as cAdvisor decodes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StatsQuery {
    /// `num_stats` as sent; `None` when the body had none (cAdvisor's default, 60, applies).
    /// `-1` asks for every sample kept; `0` for none.
    pub num_stats: Option<i64>,
    /// `start`: only samples at or after it (`None`: from the oldest).
    pub start: Option<Nanos>,
    /// `end`: only samples at or before it (`None`: to the newest).
    pub end: Option<Nanos>,
}

/// Go's zero `time.Time`, `0001-01-01T00:00:00Z`, in Unix nanoseconds: cAdvisor reads a
/// `start` or `end` of that value as not given (`IsZero`).
const GO_ZERO_TIME: Nanos = -62_135_596_800 * 1_000_000_000;

impl StatsQuery {
    /// Decodes a request body as cAdvisor's handler does (`json.NewDecoder(body).Decode(&q)`
    /// over the default `{"num_stats": 60}`): an empty (or all-whitespace) body or `null` keeps
    /// the default; otherwise the first JSON value must be an object (what follows it is not
    /// read); keys match case-insensitively (Go's `encoding/json`), the last of duplicates
    /// wins, unknown keys and `null` values are skipped; `num_stats` must be an integer, `start`
    /// and `end` RFC 3339 strings. Anything else is an error, which cAdvisor answers with a 500
    /// whose text is the error (`unable to decode the json value: ...`).
    pub fn from_body(body: &[u8]) -> Result<StatsQuery, String> {
        if body
            .iter()
            .all(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
        {
            return Ok(StatsQuery::default());
        }
        let mut de = serde_json::Deserializer::from_slice(body);
        serde::Deserializer::deserialize_any(&mut de, QueryVisitor)
            .map_err(|e| format!("unable to decode the json value: {e}"))
    }

    /// The `num_stats` cAdvisor applies: as sent, or 60.
    pub fn limit(&self) -> i64 {
        self.num_stats.unwrap_or(SAMPLES as i64)
    }

    /// The samples of `times` (ascending) this query returns, as `InTimeRange` picks them:
    /// those with `start <= t <= end`, then the newest `num_stats` of them (all for -1). An
    /// empty range when `start` is after every sample or `end` before every sample. `None`
    /// where cAdvisor's handler panics (`make` with a negative length: `num_stats` below -1, or
    /// `start` after `end` with samples between), after which Go's `net/http` closes the
    /// connection without a reply.
    pub fn select(&self, times: &[Nanos]) -> Option<Range<usize>> {
        let n = times.len();
        if n == 0 {
            return Some(0..0);
        }
        let lo = match self.start {
            None => 0,
            Some(start) => {
                let lo = times.partition_point(|&t| t < start);
                if lo == n {
                    return Some(0..0);
                }
                lo
            }
        };
        let hi = match self.end {
            None => n,
            Some(end) => {
                let hi = times.partition_point(|&t| t <= end);
                if hi == 0 {
                    return Some(0..0);
                }
                hi
            }
        };
        let mut count = hi as i64 - lo as i64;
        let limit = self.limit();
        if limit != -1 && count > limit {
            count = limit;
        }
        if count < 0 {
            return None;
        }
        Some(hi - count as usize..hi)
    }
}

/// Reads a `ContainerInfoRequest` from a JSON value the way Go's `encoding/json` does.
struct QueryVisitor;

impl<'de> Visitor<'de> for QueryVisitor {
    type Value = StatsQuery;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object (Go value of type v1.ContainerInfoRequest)")
    }

    fn visit_unit<E: de::Error>(self) -> Result<StatsQuery, E> {
        Ok(StatsQuery::default())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<StatsQuery, A::Error> {
        let mut q = StatsQuery::default();
        while let Some(key) = map.next_key::<String>()? {
            match key.to_ascii_lowercase().as_str() {
                "num_stats" => match map.next_value::<serde_json::Value>()? {
                    serde_json::Value::Null => {}
                    serde_json::Value::Number(n) if n.as_i64().is_some() => {
                        q.num_stats = n.as_i64();
                    }
                    v => {
                        return Err(de::Error::custom(format!(
                            "cannot unmarshal {} into Go struct field \
                             ContainerInfoRequest.num_stats of type int",
                            go_kind(&v)
                        )));
                    }
                },
                field @ ("start" | "end") => {
                    let t = match map.next_value::<serde_json::Value>()? {
                        serde_json::Value::Null => continue,
                        serde_json::Value::String(s) => parse_rfc3339(&s).ok_or_else(|| {
                            de::Error::custom(format!("parsing time {s:?} as RFC 3339"))
                        })?,
                        v => {
                            return Err(de::Error::custom(format!(
                                "cannot unmarshal {} into Go struct field \
                                 ContainerInfoRequest.{field} of type time.Time",
                                go_kind(&v)
                            )));
                        }
                    };
                    let t = (t != GO_ZERO_TIME).then_some(t);
                    if field == "start" {
                        q.start = t;
                    } else {
                        q.end = t;
                    }
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(q)
    }
}

/// How Go's `encoding/json` names a JSON value in a type error.
fn go_kind(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => "null".into(),
        serde_json::Value::Bool(_) => "bool".into(),
        serde_json::Value::Number(n) => format!("number {n}"),
        serde_json::Value::String(_) => "string".into(),
        serde_json::Value::Array(_) => "array".into(),
        serde_json::Value::Object(_) => "object".into(),
    }
}

/// What the last `/api/v1.3/docker/` request to a [`FakeCadvisor`] asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InfoRequest {
    /// `GET`, `POST`, ... (cAdvisor answers any).
    pub method: String,
    /// The `Content-Type` header, if sent (cAdvisor does not look at it).
    pub content_type: Option<String>,
    /// The body as sent (lossy UTF-8).
    pub body: String,
    /// `num_stats` from the body (`None`: not given, or a body cAdvisor could not decode).
    pub num_stats: Option<i64>,
    /// `start` from the body.
    pub start: Option<Nanos>,
    /// `end` from the body.
    pub end: Option<Nanos>,
    /// Why cAdvisor refused the body (answered 500), if it did.
    pub error: Option<String>,
}

/// Handle to a running fake cAdvisor. Clones share the server; it stops when the last handle is
/// dropped (or on [`shutdown`](FakeCadvisor::shutdown)), closing its open connections too.
#[derive(Clone)]
pub struct FakeCadvisor {
    addr: SocketAddr,
    shared: Arc<Shared>,
    _stop: Arc<StopOnDrop>,
}

struct Shared {
    state: Mutex<State>,
    /// Serving as the kubelet (HTTPS, a token, the kubelet's paths) rather than as cAdvisor.
    kubelet: bool,
    bytes_sent: AtomicU64,
    docker_bytes_sent: AtomicU64,
    metrics_bytes_sent: AtomicU64,
    requests: AtomicU64,
    docker_requests: AtomicU64,
    machine_requests: AtomicU64,
    metrics_requests: AtomicU64,
    tls_failures: AtomicU64,
}

struct State {
    num_cores: u32,
    seed: u64,
    series: Vec<Series>,
    /// The root cgroup and a system service's, which the Prometheus endpoints list too.
    cgroups: HostCgroups,
    behaviour: Behaviour,
    latency: Duration,
    interval: Duration,
    last_docker: Option<InfoRequest>,
    cpu_series: CpuSeries,
    timestamps: bool,
    /// Requests by path (the target without its query).
    paths: std::collections::BTreeMap<String, u64>,
    last_authorization: Option<String>,
    /// Kubelet mode: what a request must carry.
    auth: Option<Auth>,
}

/// What the fake kubelet accepts.
struct Auth {
    token: String,
    user: String,
}

struct StopOnDrop(watch::Sender<bool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.send_replace(true);
    }
}

impl FakeCadvisor {
    /// Starts a fake host with `num_cores` cores, the given app containers and a `cadvisor`
    /// container, listening on 127.0.0.1 on a free port.
    pub async fn start(
        num_cores: u32,
        containers: Vec<FakeContainer>,
    ) -> std::io::Result<FakeCadvisor> {
        FakeCadvisor::start_on("127.0.0.1".parse().expect("an IP"), num_cores, containers).await
    }

    /// [`start`](FakeCadvisor::start) on `ip` (any of 127.0.0.0/8 works on Linux without
    /// setup: a host of its own address, as address matching needs).
    pub async fn start_on(
        ip: std::net::IpAddr,
        num_cores: u32,
        containers: Vec<FakeContainer>,
    ) -> std::io::Result<FakeCadvisor> {
        let listener = TcpListener::bind((ip, 0)).await?;
        let (fake, stop_rx) = FakeCadvisor::new(&listener, num_cores, &containers, None)?;
        tokio::spawn(accept_loop(listener, fake.shared.clone(), stop_rx));
        Ok(fake)
    }

    /// A fake kubelet: see [`FakeKubelet::start`].
    pub async fn start_kubelet(
        num_cores: u32,
        containers: Vec<FakeContainer>,
        options: KubeletOptions,
    ) -> std::io::Result<FakeKubelet> {
        FakeKubelet::start(num_cores, containers, options).await
    }

    /// The handle and its state, bound to `listener`; serving is the caller's.
    fn new(
        listener: &TcpListener,
        num_cores: u32,
        containers: &[FakeContainer],
        auth: Option<Auth>,
    ) -> std::io::Result<(FakeCadvisor, watch::Receiver<bool>)> {
        let addr = listener.local_addr()?;
        let now = unix_now();
        let seed = u64::from(addr.port()) ^ (now as u64).rotate_left(17);
        let kubelet = auth.is_some();
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                num_cores,
                seed,
                series: host_series(containers, now, seed),
                cgroups: HostCgroups::new(containers, now, seed),
                behaviour: Behaviour::Normal,
                latency: Duration::ZERO,
                interval: SAMPLE_INTERVAL,
                last_docker: None,
                cpu_series: if kubelet {
                    CpuSeries::Total
                } else {
                    CpuSeries::PerCpu
                },
                timestamps: true,
                paths: Default::default(),
                last_authorization: None,
                auth,
            }),
            kubelet,
            bytes_sent: AtomicU64::new(0),
            docker_bytes_sent: AtomicU64::new(0),
            metrics_bytes_sent: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            docker_requests: AtomicU64::new(0),
            machine_requests: AtomicU64::new(0),
            metrics_requests: AtomicU64::new(0),
            tls_failures: AtomicU64::new(0),
        });
        let (stop_tx, stop_rx) = watch::channel(false);
        let fake = FakeCadvisor {
            addr,
            shared,
            _stop: Arc::new(StopOnDrop(stop_tx)),
        };
        Ok((fake, stop_rx))
    }

    /// Base URL, `http://127.0.0.1:PORT` (`https://` for a [`FakeKubelet`]), as it would appear
    /// in a config.
    pub fn url(&self) -> String {
        let scheme = if self.shared.kubelet { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How every following request is answered.
    pub fn set_behaviour(&self, b: Behaviour) {
        self.state().behaviour = b;
    }

    /// The container `alias` uses `cores` from now on; its counter keeps growing continuously.
    /// Panics when no container has that alias (a mistake in the test).
    pub fn set_cores_used(&self, alias: &str, cores: f64) {
        let now = unix_now();
        let mut st = self.state();
        let s = st
            .series
            .iter_mut()
            .find(|s| s.alias == alias)
            .unwrap_or_else(|| panic!("fake cAdvisor has no container {alias:?}"));
        s.set_rate(now, cores);
    }

    /// Adds an app container (e.g. a scaled-out server); its history starts now.
    pub fn add_container(&self, c: FakeContainer) {
        let now = unix_now();
        let mut st = self.state();
        let seed = st.seed;
        st.series.push(Series::new(&c, now, seed, true));
    }

    /// Removes the container `alias`, as if it stopped; returns whether it was there.
    pub fn remove_container(&self, alias: &str) -> bool {
        let mut st = self.state();
        let before = st.series.len();
        st.series.retain(|s| s.alias != alias);
        st.series.len() != before
    }

    /// Delay before each reply (for latency benchmarks).
    pub fn set_latency(&self, d: Duration) {
        self.state().latency = d;
    }

    /// Spacing of the sample grid (default [`SAMPLE_INTERVAL`]); shorter makes demos faster.
    pub fn set_sample_interval(&self, d: Duration) {
        assert!(!d.is_zero(), "sample interval must be positive");
        self.state().interval = d;
    }

    /// How the Prometheus endpoints give `container_cpu_usage_seconds_total`: one series per
    /// CPU (cgroup v1; cAdvisor's default here) or one `cpu="total"` (cgroup v2; the kubelet's
    /// default here).
    pub fn set_cpu_series(&self, mode: CpuSeries) {
        self.state().cpu_series = mode;
    }

    /// Whether Prometheus samples carry their timestamp (default true; some exporters leave it
    /// out, as kubelets before 1.16 did).
    pub fn set_metrics_timestamps(&self, on: bool) {
        self.state().timestamps = on;
    }

    /// Requests received so far (every path, counted when the request head is read, including
    /// requests that hang or fail).
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// Requests for `path` so far (the target without its query, as sent: `/metrics`,
    /// `/metrics/resource`, ...), counted as [`requests`](FakeCadvisor::requests) are,
    /// whatever the reply (401s included).
    pub fn requests_for(&self, path: &str) -> u64 {
        self.state().paths.get(path).copied().unwrap_or(0)
    }

    /// The `Authorization` header of the last request (`None` before the first, or when the
    /// last one had none).
    pub fn last_authorization(&self) -> Option<String> {
        self.state().last_authorization.clone()
    }

    /// Bytes of replies (heads and bodies) written to clients so far; a reply the client
    /// stopped reading counts what the kernel took before the connection closed.
    pub fn bytes_sent(&self) -> u64 {
        self.shared.bytes_sent.load(Ordering::SeqCst)
    }

    /// Bytes of `/api/v1.3/docker/` replies (heads and bodies, whatever the status) written so
    /// far; counted as [`bytes_sent`](FakeCadvisor::bytes_sent) is.
    pub fn docker_bytes_sent(&self) -> u64 {
        self.shared.docker_bytes_sent.load(Ordering::SeqCst)
    }

    /// Bytes of replies to the Prometheus endpoints (`/metrics`; the kubelet's
    /// `/metrics/resource` and `/metrics/cadvisor`), heads and bodies, whatever the status;
    /// counted as [`bytes_sent`](FakeCadvisor::bytes_sent) is.
    pub fn metrics_bytes_sent(&self) -> u64 {
        self.shared.metrics_bytes_sent.load(Ordering::SeqCst)
    }

    /// What the last `/api/v1.3/docker/` request asked for (`None` before the first).
    pub fn last_docker_request(&self) -> Option<InfoRequest> {
        self.state().last_docker.clone()
    }

    /// Requests for `/api/v1.3/docker/` so far.
    pub fn docker_requests(&self) -> u64 {
        self.shared.docker_requests.load(Ordering::SeqCst)
    }

    /// Requests for `/api/v1.3/machine` so far.
    pub fn machine_requests(&self) -> u64 {
        self.shared.machine_requests.load(Ordering::SeqCst)
    }

    /// Requests for the Prometheus endpoints so far (`/metrics`; the kubelet's
    /// `/metrics/resource` and `/metrics/cadvisor`; see
    /// [`requests_for`](FakeCadvisor::requests_for) for one path).
    pub fn metrics_requests(&self) -> u64 {
        self.shared.metrics_requests.load(Ordering::SeqCst)
    }

    /// Stops listening and closes every open connection; later connections are refused.
    pub fn shutdown(&self) {
        self._stop.0.send_replace(true);
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.shared.state()
    }
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Nanoseconds since the epoch, now (the fake's clock: wall time, as cAdvisor's timestamps).
pub fn unix_now() -> Nanos {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as Nanos)
}

/// Renders a `/api/v1.3/docker/` reply for `containers` (plus the `cadvisor` container) whose
/// rates have been constant: [`SAMPLES`] samples about [`SAMPLE_INTERVAL`] apart ending at `now`
/// (the reply to a request without a body). `host_seed` varies container ids and jitter between
/// hosts.
pub fn docker_body(
    num_cores: u32,
    containers: &[FakeContainer],
    now: Nanos,
    host_seed: u64,
) -> String {
    docker_body_for(
        num_cores,
        containers,
        now,
        host_seed,
        &StatsQuery::default(),
    )
    .expect("the default query always has a reply")
}

/// [`docker_body`] for a request asking `query`: the samples it selects out of the
/// [`STORAGE`] kept (see [`StatsQuery::select`]); `None` where cAdvisor would close the
/// connection without a reply. A container none of whose samples is selected has no `stats`
/// key at all, as cAdvisor (`omitempty`) renders it.
pub fn docker_body_for(
    num_cores: u32,
    containers: &[FakeContainer],
    now: Nanos,
    host_seed: u64,
    query: &StatsQuery,
) -> Option<String> {
    let series = host_series(containers, now, host_seed);
    render_docker(
        num_cores,
        &series,
        now,
        SAMPLE_INTERVAL,
        Behaviour::Normal,
        query,
    )
}

/// A host's containers with counters that continue from one rendering to the next (for the
/// fleet, which renders one reply for every host and re-renders it as time goes by).
#[derive(Clone)]
pub(crate) struct HostModel {
    num_cores: u32,
    seed: u64,
    series: Vec<Series>,
    cgroups: HostCgroups,
}

impl HostModel {
    /// `containers` plus the `cadvisor` one, their rates constant until `now`.
    pub(crate) fn new(
        num_cores: u32,
        containers: &[FakeContainer],
        now: Nanos,
        seed: u64,
    ) -> HostModel {
        HostModel {
            num_cores,
            seed,
            series: host_series(containers, now, seed),
            cgroups: HostCgroups::new(containers, now, seed),
        }
    }

    /// Container ids, in container order (the `cadvisor` container last).
    pub(crate) fn ids(&self) -> Vec<String> {
        self.series.iter().map(|s| s.id.clone()).collect()
    }

    /// The `i`th container uses `cores` from `now` on.
    pub(crate) fn set_cores_used(&mut self, i: usize, now: Nanos, cores: f64) {
        self.series[i].set_rate(now, cores);
    }

    /// The `/api/v1.3/docker/` reply at `now` to `query` (`None`: no reply, see
    /// [`StatsQuery::select`]).
    pub(crate) fn render(&self, now: Nanos, query: &StatsQuery) -> Option<String> {
        render_docker(
            self.num_cores,
            &self.series,
            now,
            SAMPLE_INTERVAL,
            Behaviour::Normal,
            query,
        )
    }

    /// The `/metrics` reply at `now` (rounded down to the ms): per-CPU series, timestamps.
    pub(crate) fn render_metrics(&self, now: Nanos) -> String {
        metrics::render(
            &metrics::Scrape {
                num_cores: self.num_cores,
                seed: self.seed,
                series: &self.series,
                cgroups: &self.cgroups,
                now,
                behaviour: Behaviour::Normal,
                cpu: CpuSeries::PerCpu,
                timestamps: true,
            },
            Exposition::Cadvisor,
        )
    }
}

/// The machine's identity, in `/api/v1.3/machine` and in the labels of `machine_*` series.
const MACHINE_ID: &str = "6f2b3c1d9e8a4b7c8d9e0f1a2b3c4d5e";
const SYSTEM_UUID: &str = "ec2a1b2c-3d4e-5f60-7182-93a4b5c6d7e8";
const BOOT_ID: &str = "0d1e2f3a-4b5c-6d7e-8f90-a1b2c3d4e5f6";

/// Memory of a fake machine with `num_cores` cores.
fn memory_capacity(num_cores: u32) -> u64 {
    4 << 30 << (num_cores.min(16) / 4)
}

/// Renders a `/api/v1.3/machine` reply for a machine with `num_cores` cores.
pub fn machine_body(num_cores: u32) -> String {
    let mem = memory_capacity(num_cores);
    let mut cores = String::new();
    for c in 0..num_cores {
        if c > 0 {
            cores.push(',');
        }
        let _ = write!(
            cores,
            r#"{{"core_id":{c},"thread_ids":[{c}],"caches":[{{"size":32768,"type":"Data","level":1}},{{"size":32768,"type":"Instruction","level":1}},{{"size":1048576,"type":"Unified","level":2}}],"uncore_caches":null,"socket_id":0}}"#
        );
    }
    format!(
        r#"{{"timestamp":"{ts}","num_cores":{num_cores},"num_physical_cores":{num_cores},"num_sockets":1,"cpu_frequency_khz":2400000,"memory_capacity":{mem},"memory_by_type":{{}},"nvm":{{"memory_mode_capacity":0,"app direct_mode_capacity":0,"avg_power_budget":0}},"hugepages":[{{"page_size":1048576,"num_pages":0}},{{"page_size":2048,"num_pages":0}}],"machine_id":"{MACHINE_ID}","system_uuid":"{SYSTEM_UUID}","boot_id":"{BOOT_ID}","filesystems":[{{"device":"/dev/nvme0n1p1","capacity":107361579008,"type":"vfs","inodes":13107200,"has_inodes":true}}],"disk_map":{{"259:0":{{"name":"nvme0n1","major":259,"minor":0,"size":107374182400,"scheduler":"none"}}}},"network_devices":[{{"name":"eth0","mac_address":"02:42:ac:11:00:02","speed":-1,"mtu":1500}}],"topology":[{{"node_id":0,"memory":{mem},"hugepages":[{{"page_size":1048576,"num_pages":0}},{{"page_size":2048,"num_pages":0}}],"cores":[{cores}],"caches":[{{"size":33554432,"type":"Unified","level":3}}],"distances":[10]}}],"cloud_provider":"Unknown","instance_type":"Unknown","instance_id":"None"}}"#,
        ts = format_rfc3339(unix_now()),
    )
}

/// Rate changes kept before older ones are folded into the base counter.
const FOLD_AFTER: usize = 1024;

/// How far back a series keeps its rate history exactly: far beyond the [`STORAGE`] samples
/// kept, at any interval the tests use.
const HISTORY_NS: Nanos = 15 * 60 * 1_000_000_000;

/// A container's CPU history: piecewise-constant rates integrated into a cumulative counter.
#[derive(Clone)]
struct Series {
    alias: String,
    labels: Vec<(String, String)>,
    id: String,
    app: bool,
    kube: KubeIdentity,
    quota_cores: Option<f64>,
    created: Nanos,
    /// Counter at `rates[0].0`.
    base: u64,
    /// (from, cores), ascending. The first rate also held before its `from`, so a fresh fake
    /// already has a full minute of history.
    rates: Vec<(Nanos, f64)>,
    /// The counter at each rate's `from`.
    counter_at: Vec<u64>,
}

impl Series {
    fn new(c: &FakeContainer, now: Nanos, host_seed: u64, app: bool) -> Series {
        let h = hash_str(&c.alias) ^ host_seed;
        let id: String = (0..4).fold(String::with_capacity(64), |mut s, i| {
            let _ = write!(s, "{:016x}", splitmix64(h.wrapping_add(i)));
            s
        });
        // Up since 1-9 hours, with a counter to match: counters in real replies are far from 0.
        let uptime_s = 3600 + splitmix64(h ^ 0xc0ffee) % (8 * 3600);
        let base = (c.cores_used.max(0.05) * uptime_s as f64 * 1e9) as u64;
        Series {
            alias: c.alias.clone(),
            labels: c.labels.clone(),
            id,
            app,
            kube: c.kube_identity(),
            quota_cores: c.quota_cores,
            created: now - Nanos::from(uptime_s) * 1_000_000_000,
            base,
            rates: vec![(now, c.cores_used.max(0.0))],
            counter_at: vec![base],
        }
    }

    fn set_rate(&mut self, now: Nanos, cores: f64) {
        // Keep `from` ascending even if the wall clock stepped back.
        let from = now.max(self.rates.last().map_or(now, |r| r.0));
        let at_from = self.usage_at(from);
        self.rates.push((from, cores.max(0.0)));
        self.counter_at.push(at_from);
        // A feed changes the rate many times a second: drop what no reply reaches back to, in
        // batches (half the history at a time), so memory stays bounded.
        if self.rates.len() > FOLD_AFTER {
            let horizon = now - HISTORY_NS;
            let k = self
                .rates
                .partition_point(|r| r.0 <= horizon)
                .saturating_sub(1);
            if k > self.rates.len() / 2 {
                self.rates.drain(..k);
                self.counter_at.drain(..k);
                self.base = self.counter_at[0];
            }
        }
    }

    /// Cumulative CPU ns at `t`: the counter at the last rate change before `t`, plus that rate
    /// since (a binary search, whatever the length of the history).
    fn usage_at(&self, t: Nanos) -> u64 {
        let (t0, r0) = self.rates[0];
        if t <= t0 {
            let before = r0 * (t0 - t) as f64;
            return (self.base as f64 - before).max(0.0) as u64;
        }
        let i = self.rates.partition_point(|r| r.0 < t) - 1;
        let (from, rate) = self.rates[i];
        self.counter_at[i].saturating_add((rate * (t - from) as f64) as u64)
    }
}

/// The app containers plus the `cadvisor` container of one host.
fn host_series(containers: &[FakeContainer], now: Nanos, seed: u64) -> Vec<Series> {
    let sidecar = FakeContainer::new(SIDECAR_ALIAS, SIDECAR_CORES).with_pod(
        "kube-system",
        SIDECAR_ALIAS,
        SIDECAR_ALIAS,
    );
    containers
        .iter()
        .map(|c| Series::new(c, now, seed, true))
        .chain(std::iter::once(Series::new(&sidecar, now, seed, false)))
        .collect()
}

/// The cgroups of a host that are no container: the root (`/`, the whole machine) and one
/// system service's. Their rates are constant: the root's is the containers' at start plus the
/// system's, so it is about as busy as the containers make it.
#[derive(Clone)]
struct HostCgroups {
    root: Series,
    system: Series,
}

/// CPU of the system service (the container runtime).
const SYSTEM_CORES: f64 = 0.04;

impl HostCgroups {
    fn new(containers: &[FakeContainer], now: Nanos, seed: u64) -> HostCgroups {
        let apps: f64 = containers.iter().map(|c| c.cores_used.max(0.0)).sum();
        let root = FakeContainer::new("/", apps + SIDECAR_CORES + SYSTEM_CORES + 0.05);
        let system = FakeContainer::new("/system.slice", SYSTEM_CORES);
        let mut root = Series::new(&root, now, seed, false);
        let mut system = Series::new(&system, now, seed, false);
        // The machine booted a few days ago: before any container started.
        let boot = now - (3 * 86_400 + (seed % 86_400) as Nanos) * 1_000_000_000;
        for (s, created) in [(&mut root, boot), (&mut system, boot + 4_000_000_000)] {
            let up_s = (now - created) as f64 / 1e9;
            s.created = created;
            s.base = (s.rates[0].1 * up_s * 1e9) as u64;
            s.counter_at[0] = s.base;
        }
        HostCgroups { root, system }
    }
}

/// `total` spread over `num_cores` CPUs unevenly, summing exactly to it, as the kernel reports
/// (the last CPU takes the remainder).
fn per_cpu_split(total: u64, num_cores: u32) -> impl Iterator<Item = u64> {
    let n = u64::from(num_cores.max(1));
    let mut left = total;
    (0..n).map(move |c| {
        let share = if c == n - 1 {
            left
        } else {
            (total / n)
                .saturating_add(total / n / 8 * (c % 2))
                .min(left)
        };
        left -= share;
        share
    })
}

/// User and system time in a total (user/system have 10 ms granularity in cgroup v1
/// `cpuacct.stat`).
fn user_system(total: u64) -> (u64, u64) {
    let user = total / 10 * 7 / 10_000_000 * 10_000_000;
    let system = total / 10 * 2 / 10_000_000 * 10_000_000;
    (user, system)
}

/// A container's resident memory (its working set).
fn rss(s: &Series) -> u64 {
    48 << 20 | (hash_str(&s.id) & 0xff_ffff)
}

/// A container's image.
fn image(s: &Series) -> &'static str {
    if s.app {
        "registry.example.com/shop/web:1.4.2"
    } else {
        "gcr.io/cadvisor/cadvisor:v0.49.1"
    }
}

/// A container's Docker labels: the ones every fake container has, then its own (a key given
/// there wins), in that order.
fn docker_labels(s: &Series) -> Vec<(&str, &str)> {
    let mut labels: Vec<(&str, &str)> = vec![
        ("com.docker.compose.project", "hatune"),
        ("com.docker.compose.service", &s.alias),
        ("maintainer", "ops@example.com"),
    ];
    for (k, v) in &s.labels {
        labels.retain(|(key, _)| key != k);
        labels.push((k, v));
    }
    labels
}

/// The counter a reply shows for `s` at its newest sample, taken at `t` (the host's own clock,
/// without a [`Behaviour::ClockAhead`] shift): the app containers' glitches apply.
fn newest_usage(s: &Series, t: Nanos, behaviour: Behaviour) -> u64 {
    match behaviour {
        Behaviour::CounterReset if s.app => RESTARTED_USAGE_NS,
        Behaviour::CounterJump if s.app => u64::MAX,
        _ => s.usage_at(t),
    }
}

/// How far a [`Behaviour::ClockAhead`] moves every timestamp.
fn clock_shift(behaviour: Behaviour) -> Nanos {
    match behaviour {
        Behaviour::ClockAhead(secs) => Nanos::from(secs) * 1_000_000_000,
        _ => 0,
    }
}

/// Timestamps of the newest `count` samples at `now`, oldest first: grid points
/// `k·interval + jitter` (jitter up to 10% of the interval, fixed per `k`) before `now`, then
/// `now` itself.
fn sample_times(now: Nanos, interval: Duration, seed: u64, count: usize) -> Vec<Nanos> {
    let step = interval.as_nanos().max(1) as Nanos;
    let jitter = |k: Nanos| (splitmix64(seed ^ k as u64) % (step as u64 / 10).max(1)) as Nanos;
    let mut k = now.div_euclid(step);
    let mut times = Vec::with_capacity(count);
    if count > 0 {
        times.push(now);
    }
    while times.len() < count {
        let t = k * step + jitter(k);
        if t < now {
            times.push(t);
        }
        k -= 1;
    }
    times.reverse();
    times
}

/// The reply to `query` over the [`STORAGE`] samples kept at `now` (`None`: no reply at all).
fn render_docker(
    num_cores: u32,
    series: &[Series],
    now: Nanos,
    interval: Duration,
    behaviour: Behaviour,
    query: &StatsQuery,
) -> Option<String> {
    let seed = series.first().map_or(0, |s| hash_str(&s.id));
    let shift = clock_shift(behaviour);
    // The host's own timestamps: what cAdvisor compares `start` and `end` with.
    let stored: Vec<Nanos> = sample_times(now, interval, seed, STORAGE)
        .into_iter()
        .map(|t| t + shift)
        .collect();
    let picked = query.select(&stored)?;
    let mut out = String::with_capacity(series.len() * (picked.len() * 1400 + 1600) + 64);
    out.push('{');
    for (i, s) in series.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        render_container(
            &mut out,
            num_cores,
            s,
            &stored,
            picked.clone(),
            shift,
            behaviour,
        );
    }
    out.push('}');
    if behaviour == Behaviour::Garbage {
        // A reply cut off mid-way, as from a proxy that gave up.
        let mut cut = out.len() / 2;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
    }
    Some(out)
}

/// One container with the samples `picked` out of `stored` (the host's timestamps, `shift`
/// included; the newest stored one is the sample at the moment of the request).
fn render_container(
    out: &mut String,
    num_cores: u32,
    s: &Series,
    stored: &[Nanos],
    picked: Range<usize>,
    shift: Nanos,
    behaviour: Behaviour,
) {
    let id = &s.id;
    let alias = json_str(&s.alias);
    let labels = format!(
        "{{{}}}",
        docker_labels(s)
            .iter()
            .map(|(k, v)| format!("{}:{}", json_str(k), json_str(v)))
            .collect::<Vec<_>>()
            .join(",")
    );
    let image = image(s);
    let mask_hi = num_cores.max(1) - 1;
    let mut cpu_spec = format!(r#"{{"limit":1024,"max_limit":0,"mask":"0-{mask_hi}""#);
    if let Some(q) = s.quota_cores {
        let quota = (q * CFS_PERIOD_US as f64).round() as u64;
        let _ = write!(cpu_spec, r#","quota":{quota},"period":{CFS_PERIOD_US}"#);
    }
    cpu_spec.push('}');
    let created = format_rfc3339(s.created);
    let _ = write!(
        out,
        r#""/docker/{id}":{{"id":"{id}","name":"/docker/{id}","aliases":[{alias},"{id}"],"namespace":"docker","labels":{labels},"spec":{{"creation_time":"{created}","labels":{labels},"envs":{{"PATH":"/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}},"has_cpu":true,"cpu":{cpu_spec},"has_memory":true,"memory":{{"limit":18446744073709551615,"reservation":18446744073709551615,"swap_limit":18446744073709551615}},"has_hugetlb":false,"has_custom_metrics":false,"has_processes":true,"processes":{{"limit":18446744073709551615}},"has_network":true,"has_filesystem":true,"has_diskio":true,"image":"{image}"}}"#
    );
    if behaviour == Behaviour::EmptyStats {
        out.push_str(r#","stats":[]}"#);
        return;
    }
    if picked.is_empty() {
        // cAdvisor's `Stats` is `omitempty`: no samples, no key.
        out.push('}');
        return;
    }
    out.push_str(r#","stats":["#);
    if behaviour == Behaviour::AncientFirstSample && s.app {
        render_sample(out, num_cores, s, 0, 1);
        out.push(',');
    }
    let newest = stored.len() - 1;
    for i in picked.clone() {
        if i > picked.start {
            out.push(',');
        }
        let t = stored[i];
        let usage = if i == newest {
            newest_usage(s, t - shift, behaviour)
        } else {
            s.usage_at(t - shift)
        };
        render_sample(out, num_cores, s, t, usage);
    }
    out.push_str("]}");
}

fn render_sample(out: &mut String, num_cores: u32, s: &Series, t: Nanos, total: u64) {
    let ts = format_rfc3339(t);
    let mut per_cpu = String::new();
    for (c, share) in per_cpu_split(total, num_cores).enumerate() {
        if c > 0 {
            per_cpu.push(',');
        }
        let _ = write!(per_cpu, "{share}");
    }
    let (user, system) = user_system(total);
    let up_s = ((t - s.created).max(0) / 1_000_000_000) as u64;
    let periods = up_s * 10;
    let rss = rss(s);
    let cache = 12 << 20;
    let rx = up_s * 18_211;
    let tx = up_s * 25_033;
    let _ = write!(
        out,
        r#"{{"timestamp":"{ts}","cpu":{{"usage":{{"total":{total},"per_cpu_usage":[{per_cpu}],"user":{user},"system":{system}}},"cfs":{{"periods":{periods},"throttled_periods":0,"throttled_time":0}},"schedstat":{{"run_time":0,"runqueue_time":0,"run_periods":0}},"load_average":0}},"diskio":{{}},"memory":{{"usage":{mem},"max_usage":{max},"cache":{cache},"rss":{rss},"swap":0,"mapped_file":0,"working_set":{rss},"failcnt":0,"container_data":{{"pgfault":{pgf},"pgmajfault":0}},"hierarchical_data":{{"pgfault":{pgf},"pgmajfault":0}}}},"network":{{"name":"eth0","rx_bytes":{rx},"rx_packets":{rxp},"rx_errors":0,"rx_dropped":0,"tx_bytes":{tx},"tx_packets":{txp},"tx_errors":0,"tx_dropped":0,"interfaces":[{{"name":"eth0","rx_bytes":{rx},"rx_packets":{rxp},"rx_errors":0,"rx_dropped":0,"tx_bytes":{tx},"tx_packets":{txp},"tx_errors":0,"tx_dropped":0}}],"tcp":{{"Established":4,"SynSent":0,"SynRecv":0,"FinWait1":0,"FinWait2":0,"TimeWait":2,"Close":0,"CloseWait":0,"LastAck":0,"Listen":1,"Closing":0}},"tcp6":{{"Established":0,"SynSent":0,"SynRecv":0,"FinWait1":0,"FinWait2":0,"TimeWait":0,"Close":0,"CloseWait":0,"LastAck":0,"Listen":0,"Closing":0}},"udp":{{"Listen":0,"Dropped":0,"RxQueued":0,"TxQueued":0}},"udp6":{{"Listen":0,"Dropped":0,"RxQueued":0,"TxQueued":0}}}},"filesystem":[{{"device":"/dev/nvme0n1p1","type":"vfs","capacity":107361579008,"usage":49152,"base_usage":24576,"available":0,"has_inodes":false,"inodes":0,"inodes_free":0,"reads_completed":0,"reads_merged":0,"sectors_read":0,"read_time":0,"writes_completed":0,"writes_merged":0,"sectors_written":0,"write_time":0,"io_in_progress":0,"io_time":0,"weighted_io_time":0}}],"task_stats":{{"nr_sleeping":0,"nr_running":0,"nr_stopped":0,"nr_uninterruptible":0,"nr_io_wait":0}},"processes":{{"process_count":3,"fd_count":17}}}}"#,
        mem = rss + cache,
        max = rss + cache + (4 << 20),
        pgf = up_s * 97,
        rxp = rx / 600,
        txp = tx / 700,
    );
}

/// A JSON string literal (quotes included).
fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// FNV-1a: stable across runs and Rust versions, unlike `DefaultHasher`.
fn hash_str(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    loop {
        let mut conn_stop = stop.clone();
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                let shared = shared.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        _ = conn_stop.wait_for(|s| *s) => {}
                        _ = serve_connection(stream, &shared) => {}
                    }
                });
            }
        }
    }
}

/// Largest request head accepted; real clients send a few hundred bytes.
const MAX_HEAD: usize = 16 * 1024;

/// Largest request body accepted; cAdvisor queries are a few dozen bytes.
const MAX_BODY: usize = 1 << 20;

/// One HTTP/1.1 request read off a connection.
pub(crate) struct RawRequest {
    pub(crate) head: String,
    pub(crate) body: Vec<u8>,
}

impl RawRequest {
    /// The request method (`GET`, `POST`, ...).
    pub(crate) fn method(&self) -> &str {
        self.head.split_whitespace().next().unwrap_or("")
    }

    /// The request target (path and query).
    pub(crate) fn target(&self) -> &str {
        self.head.split_whitespace().nth(1).unwrap_or("/")
    }

    /// Value of header `name` (case-insensitive).
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        header(&self.head, name)
    }

    /// Whether the connection stays open after the reply.
    pub(crate) fn keep_alive(&self) -> bool {
        self.head.split_whitespace().nth(2) == Some("HTTP/1.1")
            && !self
                .header("connection")
                .is_some_and(|v| v.eq_ignore_ascii_case("close"))
    }
}

enum Framed {
    /// More bytes are needed.
    Incomplete,
    /// Not a request a server would read (answered 400, as Go's `net/http` does).
    Bad,
    /// A whole request, and how many bytes of the buffer it took.
    Done(RawRequest, usize),
}

/// One request at the start of `buf`: the head, then a body of `Content-Length` bytes or
/// `Transfer-Encoding: chunked`.
fn frame_request(buf: &[u8]) -> Framed {
    let Some(i) = find(buf, b"\r\n\r\n") else {
        return if buf.len() > MAX_HEAD {
            Framed::Bad
        } else {
            Framed::Incomplete
        };
    };
    let head_end = i + 4;
    if head_end > MAX_HEAD {
        return Framed::Bad;
    }
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let chunked = header(&head, "transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    if chunked {
        let mut body = Vec::new();
        let mut at = head_end;
        loop {
            let Some(eol) = find(&buf[at..], b"\r\n") else {
                return if buf.len() - at > 1024 {
                    Framed::Bad
                } else {
                    Framed::Incomplete
                };
            };
            let line = String::from_utf8_lossy(&buf[at..at + eol]).into_owned();
            let size = line.split(';').next().unwrap_or("").trim();
            let Ok(size) = usize::from_str_radix(size, 16) else {
                return Framed::Bad;
            };
            at += eol + 2;
            if size == 0 {
                // Trailer lines, up to an empty one.
                loop {
                    let Some(eol) = find(&buf[at..], b"\r\n") else {
                        return if buf.len() - at > MAX_HEAD {
                            Framed::Bad
                        } else {
                            Framed::Incomplete
                        };
                    };
                    at += eol + 2;
                    if eol == 0 {
                        return Framed::Done(RawRequest { head, body }, at);
                    }
                }
            }
            if body.len() + size > MAX_BODY {
                return Framed::Bad;
            }
            if buf.len() < at + size + 2 {
                return Framed::Incomplete;
            }
            if &buf[at + size..at + size + 2] != b"\r\n" {
                return Framed::Bad;
            }
            body.extend_from_slice(&buf[at..at + size]);
            at += size + 2;
        }
    }
    let len = match header(&head, "content-length").map(str::parse::<usize>) {
        None => 0,
        Some(Ok(n)) if n <= MAX_BODY => n,
        Some(_) => return Framed::Bad,
    };
    if buf.len() < head_end + len {
        return Framed::Incomplete;
    }
    let body = buf[head_end..head_end + len].to_vec();
    Framed::Done(RawRequest { head, body }, head_end + len)
}

/// Reads the next request off `stream`; `buf` holds what was read past the previous one.
/// `None` when the client closed the connection, or sent what is no request (answered 400).
pub(crate) async fn read_request<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
) -> Option<RawRequest> {
    loop {
        match frame_request(buf) {
            Framed::Done(request, used) => {
                buf.drain(..used);
                return Some(request);
            }
            Framed::Bad => {
                let _ = stream
                    .write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n400 Bad Request")
                    .await;
                let _ = stream.shutdown().await;
                return None;
            }
            Framed::Incomplete => {}
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Serves requests on one connection until the client closes it or asks to.
async fn serve_connection<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, shared: &Shared) {
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    while let Some(request) = read_request(&mut stream, &mut buf).await {
        if !serve_request(&mut stream, shared, &request).await {
            let _ = stream.shutdown().await;
            return;
        }
    }
}

/// Which reply a path gets: cAdvisor's paths, or the kubelet's in kubelet mode.
fn route(path: &str, kubelet: bool) -> Route {
    match (path, kubelet) {
        ("/api/v1.3/docker/" | "/api/v1.3/docker", false) => Route::Docker,
        ("/api/v1.3/machine" | "/api/v1.3/machine/", false) => Route::Machine,
        ("/metrics" | "/metrics/", false) => Route::Metrics(Exposition::Cadvisor),
        ("/metrics/cadvisor", true) => Route::Metrics(Exposition::KubeletCadvisor),
        ("/metrics/resource", true) => Route::Metrics(Exposition::KubeletResource),
        _ => Route::NotFound,
    }
}

/// Whether `authorization` carries `token` as the kubelet's bearer-token authenticator reads
/// it (`k8s.io/apiserver` `bearertoken`): trimmed, split on spaces, the scheme `bearer` in any
/// case, the token the second field.
fn bearer_matches(authorization: Option<&str>, token: &str) -> bool {
    let Some(auth) = authorization else {
        return false;
    };
    let mut parts = auth.trim().splitn(3, ' ');
    let scheme = parts.next().unwrap_or("");
    let given = parts.next().unwrap_or("");
    scheme.eq_ignore_ascii_case("bearer") && !given.is_empty() && given == token
}

/// The kubelet's text for a request its authorizer refused (`server.go` `authorize`).
fn forbidden_text(user: &str, path: &str) -> String {
    let subresource = match path.trim_start_matches('/').split('/').next() {
        Some("metrics") => "metrics",
        Some("stats") => "stats",
        Some("logs") => "log",
        _ => "proxy",
    };
    format!("Forbidden (user={user}, verb=get, resource=nodes, subresource={subresource})")
}

/// Answers one request; whether the connection stays open for the next.
async fn serve_request<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    shared: &Shared,
    request: &RawRequest,
) -> bool {
    let method = request.method();
    let target = request.target();
    let keep_alive = request.keep_alive();
    let path = target.split('?').next().unwrap_or("/");

    shared.requests.fetch_add(1, Ordering::SeqCst);
    let route = route(path, shared.kubelet);
    let authorized = {
        let mut st = shared.state();
        *st.paths.entry(path.to_owned()).or_insert(0) += 1;
        let authorization = request.header("authorization");
        st.last_authorization = authorization.map(str::to_owned);
        st.auth
            .as_ref()
            .map(|a| (bearer_matches(authorization, &a.token), a.user.clone()))
    };
    let kind = match route {
        Route::Docker => Kind::Docker,
        Route::Metrics(_) => Kind::Metrics,
        Route::Machine | Route::NotFound => Kind::Other,
    };
    // cAdvisor decodes the body of every container request, whatever the method.
    let query = match route {
        Route::Docker => {
            shared.docker_requests.fetch_add(1, Ordering::SeqCst);
            let query = StatsQuery::from_body(&request.body);
            shared.state().last_docker = Some(InfoRequest {
                method: method.to_owned(),
                content_type: request.header("content-type").map(str::to_owned),
                body: String::from_utf8_lossy(&request.body).into_owned(),
                num_stats: query.as_ref().ok().and_then(|q| q.num_stats),
                start: query.as_ref().ok().and_then(|q| q.start),
                end: query.as_ref().ok().and_then(|q| q.end),
                error: query.as_ref().err().cloned(),
            });
            query
        }
        Route::Machine => {
            shared.machine_requests.fetch_add(1, Ordering::SeqCst);
            Ok(StatsQuery::default())
        }
        Route::Metrics(_) => {
            shared.metrics_requests.fetch_add(1, Ordering::SeqCst);
            Ok(StatsQuery::default())
        }
        Route::NotFound => Ok(StatsQuery::default()),
    };
    let (behaviour, latency) = {
        let st = shared.state();
        (st.behaviour, st.latency)
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let user = match authorized {
        // The kubelet authenticates before anything else: no token, or a wrong one, is a 401.
        Some((false, _)) if behaviour != Behaviour::Hang => {
            let reply = reply_head(401, TEXT_PLAIN, "Unauthorized".len(), keep_alive);
            let mut reply = reply.into_bytes();
            if method != "HEAD" {
                reply.extend_from_slice(b"Unauthorized");
            }
            return send_counted(stream, shared, kind, &reply).await.is_ok() && keep_alive;
        }
        Some((_, user)) => Some(user),
        None => None,
    };
    let (status, body) = match (behaviour, route) {
        (Behaviour::GetOnly, _) if method != "GET" && method != "HEAD" => {
            (405, "method not allowed\n".to_owned())
        }
        (Behaviour::Hang, _) => {
            // Hold the connection open without answering until the client gives up.
            let mut sink = [0u8; 512];
            while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
            return false;
        }
        (Behaviour::Status(code), _) => match (&user, code) {
            (Some(_), 401) => (code, "Unauthorized".to_owned()),
            (Some(user), 403) => (code, forbidden_text(user, path)),
            _ => (code, format!("status {code}\n")),
        },
        (Behaviour::RedirectTo(to), _) => {
            let scheme = if shared.kubelet { "https" } else { "http" };
            let location = format!("{scheme}://{to}{target}");
            let body = format!("moved to {location}\n");
            let reply = format!(
                "HTTP/1.1 301 Moved Permanently\r\nLocation: {location}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = send_counted(stream, shared, kind, reply.as_bytes()).await;
            return false;
        }
        (_, Route::NotFound) => (404, "404 page not found\n".to_owned()),
        (b, Route::Machine) => {
            let st = shared.state();
            let mut body = machine_body(st.num_cores);
            if b == Behaviour::Garbage {
                body.truncate(body.len() / 2);
            }
            (200, body)
        }
        // cAdvisor's `http.Error(w, err.Error(), 500)` for a body it cannot decode.
        (_, Route::Docker) if query.is_err() => {
            (500, format!("{}\n", query.err().unwrap_or_default()))
        }
        (b, Route::Docker) => {
            let query = query.unwrap_or_default();
            let rendered = {
                let st = shared.state();
                render_docker(st.num_cores, &st.series, unix_now(), st.interval, b, &query)
            };
            // A query cAdvisor's handler panics on: Go's `net/http` closes the connection.
            let Some(mut body) = rendered else {
                return false;
            };
            if let Behaviour::Oversized { bytes, chunked } = b {
                body.push_str(&" ".repeat(bytes.saturating_sub(body.len())));
                if chunked {
                    let _ = send_chunked(stream, shared, kind, "application/json", body.as_bytes())
                        .await;
                    return false;
                }
            }
            (200, body)
        }
        (b, Route::Metrics(what)) => {
            let mut body = {
                let st = shared.state();
                metrics::render(
                    &metrics::Scrape {
                        num_cores: st.num_cores,
                        seed: st.seed,
                        series: &st.series,
                        cgroups: &st.cgroups,
                        now: unix_now(),
                        behaviour: b,
                        cpu: st.cpu_series,
                        timestamps: st.timestamps,
                    },
                    what,
                )
            };
            if let Behaviour::Oversized { bytes, chunked } = b {
                metrics::pad(&mut body, bytes);
                if chunked {
                    let _ =
                        send_chunked(stream, shared, kind, METRICS_CONTENT_TYPE, body.as_bytes())
                            .await;
                    return false;
                }
            }
            (200, body)
        }
    };
    let content_type = match (status, route) {
        (200, Route::Metrics(_)) => METRICS_CONTENT_TYPE,
        (200, _) => "application/json",
        _ => TEXT_PLAIN,
    };
    let mut reply = reply_head(status, content_type, body.len(), keep_alive).into_bytes();
    // Go's `net/http` writes no body in reply to HEAD.
    if method != "HEAD" {
        reply.extend_from_slice(body.as_bytes());
    }
    send_counted(stream, shared, kind, &reply).await.is_ok() && keep_alive
}

const TEXT_PLAIN: &str = "text/plain; charset=utf-8";

fn reply_head(status: u16, content_type: &str, len: usize, keep_alive: bool) -> String {
    format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {len}\r\nConnection: {}\r\n\r\n",
        reason(status),
        if keep_alive { "keep-alive" } else { "close" },
    )
}

/// A 200 reply without a `Content-Length`: `Transfer-Encoding: chunked`, 64 KiB a chunk,
/// counting what the client's kernel took, until the client stops reading.
async fn send_chunked<S: AsyncWrite + Unpin>(
    stream: &mut S,
    shared: &Shared,
    kind: Kind,
    content_type: &str,
    body: &[u8],
) -> std::io::Result<()> {
    let head = format!("HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n");
    send_counted(stream, shared, kind, head.as_bytes()).await?;
    for chunk in body.chunks(64 << 10) {
        let mut bytes = format!("{:x}\r\n", chunk.len()).into_bytes();
        bytes.extend_from_slice(chunk);
        bytes.extend_from_slice(b"\r\n");
        send_counted(stream, shared, kind, &bytes).await?;
    }
    send_counted(stream, shared, kind, b"0\r\n\r\n").await
}

/// Which counters a reply's bytes go to, besides [`Shared::bytes_sent`].
#[derive(Clone, Copy)]
enum Kind {
    Docker,
    Metrics,
    Other,
}

/// Writes `bytes` (and flushes them, for TLS), counting them once written.
async fn send_counted<S: AsyncWrite + Unpin>(
    stream: &mut S,
    shared: &Shared,
    kind: Kind,
    bytes: &[u8],
) -> std::io::Result<()> {
    stream.write_all(bytes).await?;
    stream.flush().await?;
    let n = bytes.len() as u64;
    shared.bytes_sent.fetch_add(n, Ordering::SeqCst);
    match kind {
        Kind::Docker => shared.docker_bytes_sent.fetch_add(n, Ordering::SeqCst),
        Kind::Metrics => shared.metrics_bytes_sent.fetch_add(n, Ordering::SeqCst),
        Kind::Other => 0,
    };
    Ok(())
}

#[derive(Clone, Copy)]
enum Route {
    Docker,
    Machine,
    Metrics(Exposition),
    NotFound,
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Value of header `name` (case-insensitive) in a request head.
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|line| {
        let (k, v) = line.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::cadvisor::{parse_containers, parse_num_cores, utilisation, Window};

    #[test]
    fn the_default_reply_is_unchanged() {
        // FNV-1a of `docker_body` as rendered before requests could ask for samples.
        let containers = [
            FakeContainer::new("web1", 1.5),
            FakeContainer::new("web2", 0.25).with_quota(1.0),
        ];
        let body = docker_body(4, &containers, NOW, 42);
        assert_eq!(
            (body.len(), hash_str(&body)),
            (339_029, 0x1fc9_3f9e_9ad7_2a88)
        );
    }

    const S: Nanos = 1_000_000_000;
    const NOW: Nanos = 1_750_000_000 * S + 123_456_789;

    /// Half an hour of a feed changing the rate 50 times a second: the counter is the
    /// integral of the rates, the history kept stays bounded.
    #[test]
    fn a_long_feed_keeps_the_counter_exact_and_the_history_bounded() {
        let c = FakeContainer::new("app-1", 1.0);
        let mut s = Series::new(&c, NOW, 7, true);
        let u0 = s.usage_at(NOW);
        let step: Nanos = 20_000_000; // 20 ms
        let n: Nanos = 90_000;
        let mut want = u0 as f64 + 1.0 * step as f64; // the first rate, until the first change
        for i in 1..=n {
            let rate = 0.5 + (i % 7) as f64 / 10.0;
            s.set_rate(NOW + i * step, rate);
            if i < n {
                want += rate * step as f64;
            }
        }
        let end = NOW + n * step;
        // Float rounding per step: well under a microsecond per 20 ms step.
        assert!(
            (s.usage_at(end) as f64 - want).abs() < 1e6,
            "{} vs {want}",
            s.usage_at(end)
        );
        assert!(
            s.rates.len() <= 2 * (HISTORY_NS / step) as usize + 2,
            "{}",
            s.rates.len()
        );
        let one_s_later = s.usage_at(end + S) - s.usage_at(end);
        let last_rate = 0.5 + (n % 7) as f64 / 10.0;
        assert_eq!(one_s_later, (last_rate * S as f64) as u64);
    }

    #[test]
    fn counter_integrates_the_rate_history() {
        let mut s = Series::new(&FakeContainer::new("web", 1.0), NOW, 7, true);
        let u0 = s.usage_at(NOW);
        assert_eq!(s.usage_at(NOW - 10 * S), u0 - 10 * S as u64);
        s.set_rate(NOW + 5 * S, 3.0);
        assert_eq!(s.usage_at(NOW + 5 * S), u0 + 5 * S as u64);
        assert_eq!(s.usage_at(NOW + 7 * S), u0 + 11 * S as u64);
        s.set_rate(NOW + 7 * S, 0.0);
        assert_eq!(s.usage_at(NOW + 100 * S), u0 + 11 * S as u64);
        // Continuous at every change: no jump either side.
        assert_eq!(s.usage_at(NOW + 7 * S - 1), u0 + 11 * S as u64 - 3);
    }

    #[test]
    fn sample_grid_is_stable_and_ends_now() {
        let a = sample_times(NOW, SAMPLE_INTERVAL, 3, SAMPLES);
        let b = sample_times(NOW + 2 * S, SAMPLE_INTERVAL, 3, SAMPLES);
        // The newest of the samples kept are the same.
        let all = sample_times(NOW, SAMPLE_INTERVAL, 3, STORAGE);
        assert_eq!(all.len(), STORAGE);
        assert_eq!(all[STORAGE - SAMPLES..], a[..]);
        assert_eq!(a.len(), SAMPLES);
        assert_eq!(*a.last().unwrap(), NOW);
        assert!(a.windows(2).all(|w| w[0] < w[1]));
        let gaps: Vec<_> = a.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(gaps[..gaps.len() - 1]
            .iter()
            .all(|&g| g > S * 8 / 10 && g < S * 12 / 10));
        // The grid samples of the earlier reply reappear in the later one (cAdvisor keeps them).
        let kept: Vec<_> = a[..a.len() - 1].iter().filter(|t| b.contains(t)).collect();
        assert!(kept.len() >= SAMPLES - 4, "{}", kept.len());
    }

    #[test]
    fn rendered_body_parses_to_the_configured_rates() {
        let containers = [
            FakeContainer::new("web1", 1.5),
            FakeContainer::new("web\"2", 0.0).with_quota(0.5),
        ];
        let body = docker_body(4, &containers, NOW, 42);
        let parsed = parse_containers(body.as_bytes()).unwrap();
        assert_eq!(parsed.len(), 3);
        assert_eq!(parsed[0].aliases[0], "web1");
        assert_eq!(parsed[1].aliases[0], "web\"2");
        assert_eq!(parsed[2].aliases[0], SIDECAR_ALIAS);
        for c in &parsed {
            assert_eq!(c.aliases.len(), 2);
            assert_eq!(c.name, format!("/docker/{}", c.aliases[1]));
            assert_eq!(c.aliases[1].len(), 64);
            assert_eq!(c.samples.len(), SAMPLES);
        }
        let read =
            |i: usize| utilisation(&parsed[i], 4, Window::Span(Duration::from_secs(60))).unwrap();
        assert!((read(0).cores_used - 1.5).abs() < 1e-6);
        assert!((read(0).cpu - 1.5 / 4.0).abs() < 1e-6);
        assert_eq!(read(1).cpu, 0.0);
        assert_eq!(read(1).capacity_cores, 0.5);
        assert!((read(2).cores_used - SIDECAR_CORES).abs() < 1e-6);
        assert_eq!(read(0).to, NOW);

        // Per-CPU usage sums to the total, as the kernel's does.
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        for c in v.as_object().unwrap().values() {
            for s in c["stats"].as_array().unwrap() {
                let total = s["cpu"]["usage"]["total"].as_u64().unwrap();
                let per: u64 = s["cpu"]["usage"]["per_cpu_usage"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_u64().unwrap())
                    .sum();
                assert_eq!(per, total);
            }
        }
    }

    #[test]
    fn behaviours_shape_the_body() {
        let series = host_series(&[FakeContainer::new("web1", 1.0)], NOW, 1);
        let render =
            |b| render_docker(2, &series, NOW, SAMPLE_INTERVAL, b, &StatsQuery::default()).unwrap();
        assert!(parse_containers(render(Behaviour::Garbage).as_bytes()).is_err());
        let empty = parse_containers(render(Behaviour::EmptyStats).as_bytes()).unwrap();
        assert!(empty.iter().all(|c| c.samples.is_empty()));
        let reset = parse_containers(render(Behaviour::CounterReset).as_bytes()).unwrap();
        let w = Window::Span(Duration::from_secs(60));
        assert_eq!(
            utilisation(&reset[0], 2, w),
            Err(crate::source::cadvisor::NoReading::CounterReset)
        );
        assert!(
            utilisation(&reset[1], 2, w).is_ok(),
            "the cadvisor container did not restart"
        );
    }

    #[test]
    fn machine_body_has_num_cores() {
        for n in [1, 2, 64] {
            assert_eq!(parse_num_cores(machine_body(n).as_bytes()), Ok(n));
            let v: serde_json::Value = serde_json::from_str(&machine_body(n)).unwrap();
            assert_eq!(
                v["topology"][0]["cores"].as_array().unwrap().len(),
                n as usize
            );
        }
    }

    #[test]
    fn a_body_decodes_as_cadvisor_decodes_it() {
        let q = |body: &str| StatsQuery::from_body(body.as_bytes());
        let n = |num_stats| StatsQuery {
            num_stats: Some(num_stats),
            ..StatsQuery::default()
        };
        let t = parse_rfc3339("2025-06-15T14:00:00.5Z").unwrap();
        for (body, want) in [
            ("", StatsQuery::default()),
            (" \r\n\t", StatsQuery::default()),
            ("null", StatsQuery::default()),
            ("{}", StatsQuery::default()),
            (r#"{"num_stats": 1}"#, n(1)),
            (r#"{"num_stats": -1}"#, n(-1)),
            (r#"{"num_stats": 0}"#, n(0)),
            // Go's encoding/json: keys case-insensitive, the last duplicate wins, null skipped,
            // unknown keys ignored, nothing read after the first value.
            (r#"{"NUM_STATS": 3}"#, n(3)),
            (r#"{"num_stats": 3, "Num_Stats": 4}"#, n(4)),
            (r#"{"num_stats": 3, "num_stats": null}"#, n(3)),
            (r#"{"subcontainers": true, "num_stats": 2} trailing"#, n(2)),
            (
                r#"{"num_stats": null, "start": null}"#,
                StatsQuery::default(),
            ),
            (
                r#"{"num_stats": 5, "end": "2025-06-15T14:00:00.5Z"}"#,
                StatsQuery {
                    num_stats: Some(5),
                    end: Some(t),
                    start: None,
                },
            ),
            (
                r#"{"start": "2025-06-15T16:00:00.5+02:00"}"#,
                StatsQuery {
                    start: Some(t),
                    ..StatsQuery::default()
                },
            ),
            // Go's zero time is no time.
            (
                r#"{"start": "0001-01-01T00:00:00Z"}"#,
                StatsQuery::default(),
            ),
        ] {
            assert_eq!(q(body), Ok(want), "{body:?}");
        }
        for body in [
            "{",
            "not json",
            "[1]",
            "5",
            r#""num_stats""#,
            r#"{"num_stats": "1"}"#,
            r#"{"num_stats": 1.5}"#,
            r#"{"num_stats": 9223372036854775808}"#,
            r#"{"start": "yesterday"}"#,
            r#"{"end": 5}"#,
            "\x0c",
        ] {
            let e = q(body).unwrap_err();
            assert!(
                e.starts_with("unable to decode the json value: "),
                "{body:?}: {e}"
            );
        }
    }

    #[test]
    fn a_query_selects_as_in_time_range() {
        let times: Vec<Nanos> = (1..=10).map(|i| i * S).collect();
        let sel = |num_stats: Option<i64>, start: Option<Nanos>, end: Option<Nanos>| {
            StatsQuery {
                num_stats,
                start,
                end,
            }
            .select(&times)
        };
        assert_eq!(sel(None, None, None), Some(0..10));
        assert_eq!(sel(Some(3), None, None), Some(7..10));
        assert_eq!(sel(Some(-1), None, None), Some(0..10));
        assert_eq!(sel(Some(0), None, None), Some(10..10));
        // Both ends inclusive, then the newest num_stats of those.
        assert_eq!(sel(Some(-1), Some(3 * S), Some(6 * S)), Some(2..6));
        assert_eq!(sel(Some(2), Some(3 * S), Some(6 * S)), Some(4..6));
        assert_eq!(sel(Some(2), None, Some(6 * S - 1)), Some(3..5));
        assert_eq!(sel(Some(-1), Some(3 * S + 1), None), Some(3..10));
        // Outside every sample: nothing.
        assert_eq!(sel(None, Some(11 * S), None), Some(0..0));
        assert_eq!(sel(None, None, Some(S - 1)), Some(0..0));
        assert_eq!(sel(None, Some(3 * S + 1), Some(4 * S - 1)), Some(3..3));
        assert_eq!(StatsQuery::default().select(&[]), Some(0..0));
        // Where cAdvisor's handler panics (a negative length).
        assert_eq!(sel(Some(-2), None, None), None);
        assert_eq!(sel(None, Some(6 * S), Some(3 * S)), None);
        assert_eq!(sel(Some(-2), Some(11 * S), None), Some(0..0));
    }

    /// A fake with two app containers, and a client.
    async fn fake() -> (FakeCadvisor, reqwest::Client) {
        let fake = FakeCadvisor::start(
            2,
            vec![
                FakeContainer::new("web1", 1.0),
                FakeContainer::new("web2", 0.5),
            ],
        )
        .await
        .unwrap();
        (fake, reqwest::Client::new())
    }

    /// `METHOD /api/v1.3/docker/` with `body` (JSON) if any: status and text.
    async fn docker(
        fake: &FakeCadvisor,
        client: &reqwest::Client,
        method: reqwest::Method,
        body: Option<&str>,
    ) -> (u16, String) {
        let mut req = client.request(method, format!("{}/api/v1.3/docker/", fake.url()));
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_owned());
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.text().await.unwrap())
    }

    /// Each container's sample timestamps, in reply order.
    fn stamps(body: &str) -> Vec<Vec<Nanos>> {
        let parsed = parse_containers(body.as_bytes()).unwrap();
        assert_eq!(parsed.len(), 3);
        parsed
            .iter()
            .map(|c| c.samples.iter().map(|s| s.timestamp.unwrap()).collect())
            .collect()
    }

    #[tokio::test]
    async fn without_a_body_a_reply_has_the_newest_60_samples() {
        let (fake, client) = fake().await;
        for method in [reqwest::Method::GET, reqwest::Method::POST] {
            let (status, body) = docker(&fake, &client, method.clone(), None).await;
            assert_eq!(status, 200);
            for s in stamps(&body) {
                assert_eq!(s.len(), SAMPLES, "{method}");
                assert!(s.windows(2).all(|w| w[0] < w[1]));
            }
            let asked = fake.last_docker_request().unwrap();
            assert_eq!(asked.method, method.as_str());
            assert_eq!(
                (asked.num_stats, asked.start, asked.end),
                (None, None, None)
            );
            assert_eq!(asked.body, "");
        }
        let (status, body) = docker(&fake, &client, reqwest::Method::GET, Some("  ")).await;
        assert_eq!(status, 200);
        assert!(stamps(&body).iter().all(|s| s.len() == SAMPLES));
    }

    #[tokio::test]
    async fn num_stats_1_gives_the_newest_sample_only() {
        let (fake, client) = fake().await;
        let before = fake.docker_bytes_sent();
        let (_, all) = docker(&fake, &client, reqwest::Method::GET, None).await;
        let full = fake.docker_bytes_sent() - before;
        assert!(full > all.len() as u64, "the head is counted too");
        let asked_at = unix_now();
        let (status, one) = docker(
            &fake,
            &client,
            reqwest::Method::POST,
            Some(r#"{"num_stats":1}"#),
        )
        .await;
        assert_eq!(status, 200);
        let lean = fake.docker_bytes_sent() - before - full;
        let stamps_one = stamps(&one);
        let stamps_all = stamps(&all);
        for (one, all) in stamps_one.iter().zip(&stamps_all) {
            assert_eq!(one.len(), 1);
            // The newest: the sample at the moment of the request.
            assert!(one[0] >= asked_at && one[0] > *all.last().unwrap());
        }
        assert!(lean * 10 < full, "{lean} vs {full} bytes");
        let asked = fake.last_docker_request().unwrap();
        assert_eq!(asked.method, "POST");
        assert_eq!(asked.content_type.as_deref(), Some("application/json"));
        assert_eq!(asked.num_stats, Some(1));
        assert_eq!(asked.error, None);
        // The readings are the same from it as from a full reply over the same span.
        let parsed = parse_containers(one.as_bytes()).unwrap();
        assert!(parsed[0].samples[0].usage_total.unwrap() > 0);
        assert_eq!(fake.docker_requests(), 2);
    }

    #[tokio::test]
    async fn num_stats_minus_1_gives_every_sample_kept_and_0_none() {
        let (fake, client) = fake().await;
        let (_, body) = docker(
            &fake,
            &client,
            reqwest::Method::POST,
            Some(r#"{"num_stats":-1}"#),
        )
        .await;
        for s in stamps(&body) {
            assert_eq!(s.len(), STORAGE);
            let span = s[STORAGE - 1] - s[0];
            assert!(span > 115 * S && span < 121 * S, "{span}");
        }
        let (status, body) = docker(
            &fake,
            &client,
            reqwest::Method::POST,
            Some(r#"{"num_stats":0}"#),
        )
        .await;
        assert_eq!(status, 200);
        assert!(stamps(&body).iter().all(Vec::is_empty));
        // As cAdvisor renders it: `stats` is omitempty.
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        for c in v.as_object().unwrap().values() {
            assert!(c.get("stats").is_none(), "{c}");
            assert!(c.get("spec").is_some());
        }
    }

    #[tokio::test]
    async fn start_and_end_pick_samples_by_time() {
        let (fake, client) = fake().await;
        let (_, body) = docker(
            &fake,
            &client,
            reqwest::Method::POST,
            Some(r#"{"num_stats":-1}"#),
        )
        .await;
        let kept = stamps(&body)[0].clone();
        let t = kept[STORAGE / 2];
        let ask = format!(r#"{{"num_stats":5,"end":"{}"}}"#, format_rfc3339(t));
        let (status, body) = docker(&fake, &client, reqwest::Method::POST, Some(&ask)).await;
        assert_eq!(status, 200);
        for s in stamps(&body) {
            assert_eq!(
                s,
                kept[STORAGE / 2 - 4..=STORAGE / 2],
                "the 5 newest up to T"
            );
        }
        assert_eq!(fake.last_docker_request().unwrap().end, Some(t));
        // Just before T: T is not in it.
        let ask = format!(r#"{{"num_stats":5,"end":"{}"}}"#, format_rfc3339(t - 1));
        let (_, body) = docker(&fake, &client, reqwest::Method::POST, Some(&ask)).await;
        assert_eq!(stamps(&body)[1], kept[STORAGE / 2 - 5..STORAGE / 2]);
        // From T on (num_stats 60 still applies).
        let ask = format!(r#"{{"start":"{}"}}"#, format_rfc3339(t));
        let (_, body) = docker(&fake, &client, reqwest::Method::GET, Some(&ask)).await;
        let from_t = &stamps(&body)[2];
        assert_eq!(from_t[0], t);
        assert!(from_t.len() >= STORAGE / 2 - 2 && from_t.len() <= STORAGE / 2 + 1);
        // Outside every sample: every container's list is empty.
        let later = format!(r#"{{"start":"{}"}}"#, format_rfc3339(unix_now() + 3600 * S));
        let earlier = r#"{"num_stats":-1,"end":"1970-01-01T00:00:01Z"}"#;
        for ask in [later.as_str(), earlier] {
            let (status, body) = docker(&fake, &client, reqwest::Method::POST, Some(ask)).await;
            assert_eq!(status, 200, "{ask}");
            assert!(stamps(&body).iter().all(Vec::is_empty), "{ask}");
        }
    }

    #[tokio::test]
    async fn a_body_that_is_not_json_gets_a_500() {
        let (fake, client) = fake().await;
        for bad in ["num_stats=1", r#"{"num_stats": "1"}"#, "[]"] {
            let (status, text) = docker(&fake, &client, reqwest::Method::POST, Some(bad)).await;
            assert_eq!(status, 500, "{bad}");
            assert!(
                text.starts_with("unable to decode the json value: "),
                "{bad}: {text}"
            );
            let asked = fake.last_docker_request().unwrap();
            assert_eq!(asked.body, bad);
            assert!(asked.error.is_some());
        }
        // The connection and the fake still work.
        let (status, _) = docker(&fake, &client, reqwest::Method::GET, None).await;
        assert_eq!(status, 200);
        // A query cAdvisor panics on: no reply, the connection closed.
        let r = client
            .post(format!("{}/api/v1.3/docker/", fake.url()))
            .body(r#"{"num_stats":-2}"#)
            .send()
            .await;
        assert!(r.is_err(), "{r:?}");
        assert_eq!(fake.docker_requests(), 5);
    }

    #[tokio::test]
    async fn machine_is_answered_whatever_the_method_and_body() {
        let (fake, client) = fake().await;
        let r = client
            .post(format!("{}/api/v1.3/machine", fake.url()))
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        assert_eq!(parse_num_cores(&r.bytes().await.unwrap()), Ok(2));
        assert_eq!(fake.docker_bytes_sent(), 0);
        assert!(fake.bytes_sent() > 0);
        assert!(fake.last_docker_request().is_none());
    }

    #[test]
    fn a_chunked_request_body_is_read() {
        let req = b"POST /api/v1.3/docker/ HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"num\r\na;ext=1\r\n_stats\":1}\r\n0\r\n\r\nGET /";
        for cut in 0..req.len() - 5 {
            assert!(
                matches!(frame_request(&req[..cut]), Framed::Incomplete),
                "{cut}"
            );
        }
        let Framed::Done(r, used) = frame_request(req) else {
            panic!("not framed")
        };
        assert_eq!(r.body, br#"{"num_stats":1}"#);
        assert_eq!(&req[used..], b"GET /");
        assert_eq!(r.method(), "POST");
        let bad = b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n";
        assert!(matches!(frame_request(bad), Framed::Bad));
    }
}
