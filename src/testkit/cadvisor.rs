//! A fake cAdvisor: a real HTTP/1.1 server on loopback serving `/api/v1.3/docker/` and
//! `/api/v1.3/machine` with replies shaped like real ones (see the v1.2 capture in the shared
//! fixtures), generated from a configured CPU rate per container.
//!
//! Each container's cumulative `cpu.usage.total` is a continuous function of wall-clock time:
//! the integral of its rate history, so a rate change via [`FakeCadvisor::set_cores_used`] shows
//! up in the following samples and never makes the counter jump. Samples sit on a fixed grid about
//! one interval apart (with a small jitter that is the same in every reply, as cAdvisor keeps its
//! samples), plus one sample at the moment of the request; every reply holds the newest
//! [`SAMPLES`]. Every host also runs a `cadvisor` container that is not an app.
//!
//! [`docker_body`] and [`machine_body`] render the same replies without a server (for benchmarks).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::source::cadvisor::{format_rfc3339, Nanos};

/// Samples per container in a reply (cAdvisor's default for the v1 API).
pub const SAMPLES: usize = 60;

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
}

impl FakeContainer {
    /// An unlimited container using `cores_used` cores.
    pub fn new(alias: impl Into<String>, cores_used: f64) -> FakeContainer {
        FakeContainer {
            alias: alias.into(),
            cores_used,
            quota_cores: None,
            labels: vec![],
        }
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
    bytes_sent: AtomicU64,
    requests: AtomicU64,
    docker_requests: AtomicU64,
    machine_requests: AtomicU64,
}

struct State {
    num_cores: u32,
    seed: u64,
    series: Vec<Series>,
    behaviour: Behaviour,
    latency: Duration,
    interval: Duration,
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
        let addr = listener.local_addr()?;
        let now = unix_now();
        let seed = u64::from(addr.port()) ^ (now as u64).rotate_left(17);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                num_cores,
                seed,
                series: host_series(&containers, now, seed),
                behaviour: Behaviour::Normal,
                latency: Duration::ZERO,
                interval: SAMPLE_INTERVAL,
            }),
            bytes_sent: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            docker_requests: AtomicU64::new(0),
            machine_requests: AtomicU64::new(0),
        });
        let (stop_tx, stop_rx) = watch::channel(false);
        tokio::spawn(accept_loop(listener, shared.clone(), stop_rx));
        Ok(FakeCadvisor {
            addr,
            shared,
            _stop: Arc::new(StopOnDrop(stop_tx)),
        })
    }

    /// Base URL, `http://127.0.0.1:PORT`, as it would appear in a config.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
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

    /// Requests received so far (every path, counted when the request head is read, including
    /// requests that hang or fail).
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// Bytes of replies (heads and bodies) written to clients so far; a reply the client
    /// stopped reading counts what the kernel took before the connection closed.
    pub fn bytes_sent(&self) -> u64 {
        self.shared.bytes_sent.load(Ordering::SeqCst)
    }

    /// Requests for `/api/v1.3/docker/` so far.
    pub fn docker_requests(&self) -> u64 {
        self.shared.docker_requests.load(Ordering::SeqCst)
    }

    /// Requests for `/api/v1.3/machine` so far.
    pub fn machine_requests(&self) -> u64 {
        self.shared.machine_requests.load(Ordering::SeqCst)
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
/// rates have been constant: [`SAMPLES`] samples about [`SAMPLE_INTERVAL`] apart ending at `now`.
/// `host_seed` varies container ids and jitter between hosts.
pub fn docker_body(
    num_cores: u32,
    containers: &[FakeContainer],
    now: Nanos,
    host_seed: u64,
) -> String {
    let series = host_series(containers, now, host_seed);
    render_docker(num_cores, &series, now, SAMPLE_INTERVAL, Behaviour::Normal)
}

/// Renders a `/api/v1.3/machine` reply for a machine with `num_cores` cores.
pub fn machine_body(num_cores: u32) -> String {
    let mem: u64 = 4 << 30 << (num_cores.min(16) / 4);
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
        r#"{{"timestamp":"{ts}","num_cores":{num_cores},"num_physical_cores":{num_cores},"num_sockets":1,"cpu_frequency_khz":2400000,"memory_capacity":{mem},"memory_by_type":{{}},"nvm":{{"memory_mode_capacity":0,"app direct_mode_capacity":0,"avg_power_budget":0}},"hugepages":[{{"page_size":1048576,"num_pages":0}},{{"page_size":2048,"num_pages":0}}],"machine_id":"6f2b3c1d9e8a4b7c8d9e0f1a2b3c4d5e","system_uuid":"ec2a1b2c-3d4e-5f60-7182-93a4b5c6d7e8","boot_id":"0d1e2f3a-4b5c-6d7e-8f90-a1b2c3d4e5f6","filesystems":[{{"device":"/dev/nvme0n1p1","capacity":107361579008,"type":"vfs","inodes":13107200,"has_inodes":true}}],"disk_map":{{"259:0":{{"name":"nvme0n1","major":259,"minor":0,"size":107374182400,"scheduler":"none"}}}},"network_devices":[{{"name":"eth0","mac_address":"02:42:ac:11:00:02","speed":-1,"mtu":1500}}],"topology":[{{"node_id":0,"memory":{mem},"hugepages":[{{"page_size":1048576,"num_pages":0}},{{"page_size":2048,"num_pages":0}}],"cores":[{cores}],"caches":[{{"size":33554432,"type":"Unified","level":3}}],"distances":[10]}}],"cloud_provider":"Unknown","instance_type":"Unknown","instance_id":"None"}}"#,
        ts = format_rfc3339(unix_now()),
    )
}

/// Rate changes kept before older ones are folded into the base counter.
const FOLD_AFTER: usize = 1024;

/// How far back a series keeps its rate history exactly: far beyond the newest [`SAMPLES`]
/// samples at any interval the tests use.
const HISTORY_NS: Nanos = 15 * 60 * 1_000_000_000;

/// A container's CPU history: piecewise-constant rates integrated into a cumulative counter.
struct Series {
    alias: String,
    labels: Vec<(String, String)>,
    id: String,
    app: bool,
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
    let sidecar = FakeContainer::new(SIDECAR_ALIAS, SIDECAR_CORES);
    containers
        .iter()
        .map(|c| Series::new(c, now, seed, true))
        .chain(std::iter::once(Series::new(&sidecar, now, seed, false)))
        .collect()
}

/// Timestamps of the newest [`SAMPLES`] samples at `now`: grid points `k·interval + jitter`
/// (jitter up to 10% of the interval, fixed per `k`) before `now`, then `now` itself.
fn sample_times(now: Nanos, interval: Duration, seed: u64) -> Vec<Nanos> {
    let step = interval.as_nanos().max(1) as Nanos;
    let jitter = |k: Nanos| (splitmix64(seed ^ k as u64) % (step as u64 / 10).max(1)) as Nanos;
    let mut k = now.div_euclid(step);
    let mut times = Vec::with_capacity(SAMPLES);
    times.push(now);
    while times.len() < SAMPLES {
        let t = k * step + jitter(k);
        if t < now {
            times.push(t);
        }
        k -= 1;
    }
    times.reverse();
    times
}

fn render_docker(
    num_cores: u32,
    series: &[Series],
    now: Nanos,
    interval: Duration,
    behaviour: Behaviour,
) -> String {
    let seed = series.first().map_or(0, |s| hash_str(&s.id));
    let times = sample_times(now, interval, seed);
    let mut out = String::with_capacity(series.len() * SAMPLES * 1400 + 64);
    out.push('{');
    for (i, s) in series.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        render_container(&mut out, num_cores, s, &times, behaviour);
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
    out
}

fn render_container(
    out: &mut String,
    num_cores: u32,
    s: &Series,
    times: &[Nanos],
    behaviour: Behaviour,
) {
    let id = &s.id;
    let alias = json_str(&s.alias);
    let mut labels: Vec<(&str, &str)> = vec![
        ("com.docker.compose.project", "hatune"),
        ("com.docker.compose.service", &s.alias),
        ("maintainer", "ops@example.com"),
    ];
    for (k, v) in &s.labels {
        labels.retain(|(key, _)| key != k);
        labels.push((k, v));
    }
    let labels = format!(
        "{{{}}}",
        labels
            .iter()
            .map(|(k, v)| format!("{}:{}", json_str(k), json_str(v)))
            .collect::<Vec<_>>()
            .join(",")
    );
    let image = if s.app {
        "registry.example.com/shop/web:1.4.2"
    } else {
        "gcr.io/cadvisor/cadvisor:v0.49.1"
    };
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
        r#""/docker/{id}":{{"id":"{id}","name":"/docker/{id}","aliases":[{alias},"{id}"],"namespace":"docker","labels":{labels},"spec":{{"creation_time":"{created}","labels":{labels},"envs":{{"PATH":"/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}},"has_cpu":true,"cpu":{cpu_spec},"has_memory":true,"memory":{{"limit":18446744073709551615,"reservation":18446744073709551615,"swap_limit":18446744073709551615}},"has_hugetlb":false,"has_custom_metrics":false,"has_processes":true,"processes":{{"limit":18446744073709551615}},"has_network":true,"has_filesystem":true,"has_diskio":true,"image":"{image}"}},"stats":["#
    );
    if behaviour != Behaviour::EmptyStats {
        let restarted = behaviour == Behaviour::CounterReset && s.app;
        let jumped = behaviour == Behaviour::CounterJump && s.app;
        let shift = match behaviour {
            Behaviour::ClockAhead(secs) => Nanos::from(secs) * 1_000_000_000,
            _ => 0,
        };
        if behaviour == Behaviour::AncientFirstSample && s.app {
            render_sample(out, num_cores, s, 0, 1);
            out.push(',');
        }
        for (i, &t) in times.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let newest = i == times.len() - 1;
            let usage = match (restarted, jumped) {
                (true, _) if newest => RESTARTED_USAGE_NS,
                (_, true) if newest => u64::MAX,
                _ => s.usage_at(t),
            };
            render_sample(out, num_cores, s, t + shift, usage);
        }
    }
    out.push_str("]}");
}

fn render_sample(out: &mut String, num_cores: u32, s: &Series, t: Nanos, total: u64) {
    let ts = format_rfc3339(t);
    let n = u64::from(num_cores.max(1));
    // Spread the total over the CPUs unevenly, summing exactly to it, as the kernel reports.
    let mut per_cpu = String::new();
    let mut left = total;
    for c in 0..n {
        let share = if c == n - 1 {
            left
        } else {
            (total / n)
                .saturating_add(total / n / 8 * (c % 2))
                .min(left)
        };
        left -= share;
        if c > 0 {
            per_cpu.push(',');
        }
        let _ = write!(per_cpu, "{share}");
    }
    // user/system have 10 ms granularity in cgroup v1 cpuacct.stat.
    let user = total / 10 * 7 / 10_000_000 * 10_000_000;
    let system = total / 10 * 2 / 10_000_000 * 10_000_000;
    let up_s = ((t - s.created).max(0) / 1_000_000_000) as u64;
    let periods = up_s * 10;
    let rss = 48 << 20 | (hash_str(&s.id) & 0xff_ffff);
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

/// Serves requests on one connection until the client closes it or asks to.
async fn serve_connection(mut stream: TcpStream, shared: &Shared) {
    let _ = stream.set_nodelay(true);
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    loop {
        // Read one request head (and skip its body, if any).
        let head_end = loop {
            if let Some(i) = find(&buf, b"\r\n\r\n") {
                break i + 4;
            }
            if buf.len() > MAX_HEAD {
                return;
            }
            let mut chunk = [0u8; 2048];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let body_len = header(&head, "content-length")
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(0);
        while buf.len() < head_end + body_len {
            let mut chunk = [0u8; 2048];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..head_end + body_len);

        let mut words = head.split_whitespace();
        let (method, target, version) = (words.next(), words.next(), words.next());
        let keep_alive = version == Some("HTTP/1.1")
            && !header(&head, "connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let path = target.unwrap_or("/").split('?').next().unwrap_or("/");

        shared.requests.fetch_add(1, Ordering::SeqCst);
        let route = match path {
            "/api/v1.3/docker/" | "/api/v1.3/docker" => Route::Docker,
            "/api/v1.3/machine" | "/api/v1.3/machine/" => Route::Machine,
            _ => Route::NotFound,
        };
        match route {
            Route::Docker => shared.docker_requests.fetch_add(1, Ordering::SeqCst),
            Route::Machine => shared.machine_requests.fetch_add(1, Ordering::SeqCst),
            Route::NotFound => 0,
        };
        let (behaviour, latency) = {
            let st = shared.state();
            (st.behaviour, st.latency)
        };
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        let (status, body) = match (behaviour, route) {
            (Behaviour::Hang, _) => {
                // Hold the connection open without answering until the client gives up.
                let mut sink = [0u8; 512];
                while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
                return;
            }
            (Behaviour::Status(code), _) => (code, format!("status {code}\n")),
            (Behaviour::RedirectTo(to), _) => {
                let location = format!("http://{to}{}", target.unwrap_or("/"));
                let body = format!("moved to {location}\n");
                let reply = format!(
                    "HTTP/1.1 301 Moved Permanently\r\nLocation: {location}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(reply.as_bytes()).await;
                let _ = stream.shutdown().await;
                return;
            }
            (_, _) if method != Some("GET") => (405, "method not allowed\n".to_owned()),
            (_, Route::NotFound) => (404, "page not found\n".to_owned()),
            (b, Route::Machine) => {
                let st = shared.state();
                let mut body = machine_body(st.num_cores);
                if b == Behaviour::Garbage {
                    body.truncate(body.len() / 2);
                }
                (200, body)
            }
            (b, Route::Docker) => {
                let mut body = {
                    let st = shared.state();
                    render_docker(st.num_cores, &st.series, unix_now(), st.interval, b)
                };
                if let Behaviour::Oversized { bytes, chunked } = b {
                    body.push_str(&" ".repeat(bytes.saturating_sub(body.len())));
                    if chunked {
                        let _ = send_chunked(&mut stream, shared, body.as_bytes()).await;
                        let _ = stream.shutdown().await;
                        return;
                    }
                }
                (200, body)
            }
        };
        let mut reply = format!(
            "HTTP/1.1 {status} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: {}\r\n\r\n",
            reason(status),
            if status == 200 { "application/json" } else { "text/plain; charset=utf-8" },
            body.len(),
            if keep_alive { "keep-alive" } else { "close" },
        )
        .into_bytes();
        reply.extend_from_slice(body.as_bytes());
        if stream.write_all(&reply).await.is_err() || !keep_alive {
            let _ = stream.shutdown().await;
            return;
        }
        shared
            .bytes_sent
            .fetch_add(reply.len() as u64, Ordering::SeqCst);
    }
}

/// A 200 JSON reply without a `Content-Length`: `Transfer-Encoding: chunked`, 64 KiB a chunk,
/// counting what the client's kernel took, until the client stops reading.
async fn send_chunked(stream: &mut TcpStream, shared: &Shared, body: &[u8]) -> std::io::Result<()> {
    let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
    send_counted(stream, shared, head.as_bytes()).await?;
    for chunk in body.chunks(64 << 10) {
        let mut bytes = format!("{:x}\r\n", chunk.len()).into_bytes();
        bytes.extend_from_slice(chunk);
        bytes.extend_from_slice(b"\r\n");
        send_counted(stream, shared, &bytes).await?;
    }
    send_counted(stream, shared, b"0\r\n\r\n").await
}

async fn send_counted(
    stream: &mut TcpStream,
    shared: &Shared,
    bytes: &[u8],
) -> std::io::Result<()> {
    stream.write_all(bytes).await?;
    shared
        .bytes_sent
        .fetch_add(bytes.len() as u64, Ordering::SeqCst);
    Ok(())
}

#[derive(Clone, Copy)]
enum Route {
    Docker,
    Machine,
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
        let a = sample_times(NOW, SAMPLE_INTERVAL, 3);
        let b = sample_times(NOW + 2 * S, SAMPLE_INTERVAL, 3);
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
        let render = |b| render_docker(2, &series, NOW, SAMPLE_INTERVAL, b);
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
}
