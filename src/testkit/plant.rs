//! The closed-loop plant of `examples/fleet.rs` and `examples/soak.rs`: a real HAProxy (or
//! several, each a balancer in front of the same servers), one tiny HTTP backend per server, one
//! fake cAdvisor per simulated host, and a constant-rate HTTP load through HAProxy.
//!
//! Each backend counts the requests it serves; its host's app container burns a fixed CPU cost
//! per request (fed to the fake cAdvisor every [`FEED`]), so a host with more cores needs more
//! traffic to be as busy: utilisation = requests × cost / cores. The cost is chosen so that the
//! fleet is [`TARGET_UTILISATION`] busy on average. Each host also runs a `db-N` container and
//! cAdvisor itself, which the pattern `^app-` must not take for the app. The CPU reading carries
//! a noise factor per host that the caller draws ([`Plant::set_noise`]).
//!
//! Servers are `app-1`..`app-N` in backend `app`; host `i` (from 0) runs `app-{i+1}`.
//! [`Plant::measure`] gives the true utilisation of each server since the previous measurement,
//! from the backends' own request counts, with its weight and status in HAProxy.
//!
//! **Balancers.** [`PlantSpec::balancers`] HAProxy instances (one by default) serve the same
//! servers, each on its own front port with its own admin socket, and each may start at its own
//! config weights ([`PlantSpec::start_weights`]). The load sends each its share of the rate
//! ([`PlantSpec::shares`]). [`Plant::fail_balancer`] stops one whole; its share moves to the
//! balancers still up, in proportion to their shares, as keepalived would move its VIP. The VIP
//! moves first and the HAProxy is killed once its requests in flight are answered, so the move
//! itself loses no request. The utilisation rows are what the hosts saw from all balancers
//! together; [`Measure::weights`] has each live balancer's weights.
//!
//! Everything the plant starts stops when it is dropped (every HAProxy is killed, the tasks are
//! aborted); [`Plant::stop`] also lets the requests in flight finish.

use std::collections::BTreeSet;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::cadvisor::{Behaviour, FakeCadvisor, FakeContainer};
use super::haproxy::{free_port, Haproxy};
use crate::sink::haproxy::{Address, Client};

pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// How often the per-request CPU cost is fed to the fake hosts: the CPU counter lags the
/// requests by about this much.
pub const FEED: Duration = Duration::from_millis(20);
/// The fake cAdvisors' sample spacing (cAdvisor's is 1-2 s; ticks here are 1 s, not 30 s).
pub const SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// Mean utilisation the request cost is chosen for.
pub const TARGET_UTILISATION: f64 = 0.5;
/// Cores each host's `db-N` container uses, as a share of the host's.
const DB_SHARE: f64 = 0.25;
/// The weight every server has in HAProxy's config (and so after a reload or a join).
pub const CONFIG_WEIGHT: u32 = 100;
/// Failure messages kept (the count goes on).
const FAILURES_KEPT: usize = 20;

/// What the plant looks like.
#[derive(Debug, Clone)]
pub struct PlantSpec {
    /// Cores of each host, one server per host.
    pub cores: Vec<f64>,
    /// Requests per second through HAProxy.
    pub rate: f64,
    /// Servers (from 1) left out of HAProxy's config at the start.
    pub absent: BTreeSet<usize>,
    /// How servers and containers are named.
    pub naming: Naming,
    /// Serve each host as a kubelet (HTTPS, a bearer token) rather than as cAdvisor.
    pub kubelet: bool,
    /// HAProxy instances in front of the same servers; 0 or 1: one.
    pub balancers: usize,
    /// Each balancer's share of `rate` (normalised: `[3.0, 2.0]` is `[0.6, 0.4]`); empty:
    /// equal shares. Otherwise one positive share per balancer.
    pub shares: Vec<f64>,
    /// The weights balancer `b`'s HAProxy config gives the servers, in host order (`None` or
    /// past the end of the list: [`CONFIG_WEIGHT`] each). A reload or a join goes back to
    /// these.
    pub start_weights: Vec<Option<Vec<u32>>>,
}

impl Default for PlantSpec {
    /// The fleet's default: hosts of 1, 1, 2 and 4 cores, 600 req/s, one balancer.
    fn default() -> PlantSpec {
        PlantSpec {
            cores: vec![1.0, 1.0, 2.0, 4.0],
            rate: 600.0,
            absent: BTreeSet::new(),
            naming: Naming::Alias,
            kubelet: false,
            balancers: 1,
            shares: vec![],
            start_weights: vec![],
        }
    }
}

/// The bearer token a kubelet plant's hosts want.
pub const KUBELET_TOKEN: &str = "fleet-token";

/// How the plant names its servers and containers, as one kind of fleet would.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Naming {
    /// Server `app-N`, container `app-N`, every host on 127.0.0.1 (the 2015 tool's rule).
    #[default]
    Alias,
    /// Nomad + consul-template: server `srvN` at its host's own address (127.0.1.N, where
    /// its backend and its fake cAdvisor listen), container `web-<alloc id>` with Nomad's
    /// labels. Only the address ties them.
    Nomad,
    /// docker compose: server `web_N`, container `proj_web_N` with compose's labels.
    Compose,
}

impl Naming {
    pub const ALL: [Naming; 3] = [Naming::Alias, Naming::Nomad, Naming::Compose];

    pub fn name(self) -> &'static str {
        match self {
            Naming::Alias => "alias",
            Naming::Nomad => "nomad",
            Naming::Compose => "compose",
        }
    }

    /// What every server's name starts with: the server of host `i` is this and `i + 1`.
    pub fn prefix(self) -> &'static str {
        match self {
            Naming::Alias => "app-",
            Naming::Nomad => "srv",
            Naming::Compose => "web_",
        }
    }

    /// The HAProxy server of host `i` (from 0).
    pub fn server(self, i: usize) -> String {
        match self {
            Naming::Alias => server_name(i),
            Naming::Nomad => format!("srv{}", i + 1),
            Naming::Compose => format!("web_{}", i + 1),
        }
    }

    /// The app container on host `i`, with its labels.
    pub fn container(self, i: usize) -> FakeContainer {
        match self {
            Naming::Alias => FakeContainer::new(server_name(i), 0.0),
            Naming::Nomad => {
                let alloc = format!(
                    "{:08x}-7c1d-4e2a-9b3f-{:012x}",
                    0x0a11_0c00 + i,
                    i * 104_729
                );
                FakeContainer::new(format!("web-{alloc}"), 0.0)
                    .with_label("com.hashicorp.nomad.task_name", "web")
                    .with_label("com.hashicorp.nomad.alloc_id", alloc)
            }
            Naming::Compose => FakeContainer::new(format!("proj_web_{}", i + 1), 0.0)
                .with_label("com.docker.compose.project", "proj")
                .with_label("com.docker.compose.service", "web")
                .with_label("com.docker.compose.container-number", (i + 1).to_string()),
        }
    }

    /// Where host `i`'s backend and fake cAdvisor listen.
    pub fn ip(self, i: usize) -> std::net::IpAddr {
        match self {
            Naming::Nomad => std::net::IpAddr::from([127, 0, 1, (i + 1) as u8]),
            _ => std::net::IpAddr::from([127, 0, 0, 1]),
        }
    }

    /// The hatune backend (`backends[0]` of a config) that finds this naming's servers.
    pub fn backend(self) -> serde_json::Value {
        match self {
            Naming::Alias => serde_json::json!({"name": "app", "pattern": "^app-"}),
            Naming::Nomad => {
                serde_json::json!({"name": "app", "pattern": "^web-", "match": "address"})
            }
            Naming::Compose => serde_json::json!({
                "name": "app",
                "pattern": "^proj_web_",
                "server": "web_{label:com.docker.compose.container-number}"
            }),
        }
    }
}

impl FromStr for Naming {
    type Err = String;
    fn from_str(s: &str) -> Result<Naming, String> {
        Naming::ALL
            .into_iter()
            .find(|n| n.name() == s)
            .ok_or_else(|| format!("unknown naming {s} (alias, nomad or compose)"))
    }
}

/// Something that happens to the plant (see `examples/fleet.rs` for the command-line form).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Event {
    /// The host keeps half its cores: each request costs twice the CPU.
    LoseCores,
    /// The host's cAdvisor answers 503.
    Down,
    /// The host's cAdvisor answers 200 with a body that is not JSON.
    Junk,
    /// Operator: `set server app/app-N state drain`.
    Drain,
    /// Operator: `set server app/app-N state maint`.
    Maint,
    /// Operator: `set server app/app-N state ready`.
    Ready,
    /// A real HAProxy reload (runtime weights and states are forgotten).
    Reload,
    /// The server enters HAProxy's config, with a reload.
    Join,
    /// The server leaves HAProxy's config, with a reload.
    Leave,
}

impl Event {
    pub const ALL: [Event; 9] = [
        Event::LoseCores,
        Event::Down,
        Event::Junk,
        Event::Drain,
        Event::Maint,
        Event::Ready,
        Event::Reload,
        Event::Join,
        Event::Leave,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Event::LoseCores => "lose-cores",
            Event::Down => "down",
            Event::Junk => "junk",
            Event::Drain => "drain",
            Event::Maint => "maint",
            Event::Ready => "ready",
            Event::Reload => "reload",
            Event::Join => "join",
            Event::Leave => "leave",
        }
    }

    /// Whether the event reloads HAProxy.
    pub fn reloads(self) -> bool {
        matches!(self, Event::Reload | Event::Join | Event::Leave)
    }
}

impl FromStr for Event {
    type Err = String;
    fn from_str(s: &str) -> Result<Event, String> {
        Event::ALL
            .into_iter()
            .find(|e| e.name() == s)
            .ok_or_else(|| format!("unknown event {s}"))
    }
}

impl std::fmt::Display for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One server as [`Plant::measure`] saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// `app-N`.
    pub server: String,
    /// True utilisation since the previous measurement, as a share of the host's cores.
    pub utilisation: f64,
    /// User weight in HAProxy (0 when absent).
    pub weight: u32,
    /// HAProxy's status column, or `absent` when the server is not in its config.
    pub status: String,
}

impl Row {
    /// Serving as HAProxy sees it (a reload forgets an operator's DRAIN).
    pub fn serving(&self) -> bool {
        self.status == "UP" || self.status == "no check"
    }
}

/// The truth over the time since the previous measurement.
#[derive(Debug, Clone)]
pub struct Measure {
    /// Utilisation from all balancers' traffic; weight and status as the first balancer still
    /// up has them.
    pub rows: Vec<Row>,
    /// max/mean of the utilisation over the serving servers.
    pub ratio: f64,
    /// Per balancer: each server's user weight in its HAProxy (0 when absent), in host order;
    /// `None` once the balancer has failed.
    pub weights: Vec<Option<Vec<u32>>>,
}

/// A xorshift64 generator: the same seed gives the same run of numbers.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        // xorshift is stuck at 0.
        Rng(if seed == 0 {
            0x9E37_79B9_7F4A_7C15
        } else {
            seed
        })
    }

    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.0;
        *s ^= *s << 13;
        *s ^= *s >> 7;
        *s ^= *s << 17;
        *s
    }

    /// Uniform in (0, 1).
    pub fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next_u64() % (hi - lo + 1) as u64) as usize
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        self.uniform() < p
    }
}

/// One HAProxy in front of the servers.
struct Balancer {
    /// `None` once failed (or stopped).
    lb: Option<Haproxy>,
    front: u16,
    socket: Address,
    admin: Client,
    /// The weights its config gives the servers, in host order (`None`: CONFIG_WEIGHT).
    weights: Option<Vec<u32>>,
    /// Failed: no traffic, no HAProxy.
    failed: bool,
}

/// Which balancer the load sends each request to: smooth weighted round robin over the shares
/// of the balancers up.
struct Route {
    shares: Vec<f64>,
    up: Vec<bool>,
    credit: Vec<f64>,
}

impl Route {
    fn pick(&mut self) -> usize {
        let mut total = 0.0;
        let mut best: Option<usize> = None;
        for b in 0..self.shares.len() {
            if !self.up[b] {
                continue;
            }
            total += self.shares[b];
            self.credit[b] += self.shares[b];
            if best.map_or(true, |k| self.credit[b] > self.credit[k]) {
                best = Some(b);
            }
        }
        // The plant never fails its last balancer; 0 keeps the load going regardless.
        let best = best.unwrap_or(0);
        self.credit[best] -= total;
        best
    }
}

/// Tasks aborted when dropped.
struct Tasks(Vec<JoinHandle<()>>);

impl Tasks {
    fn abort(&self) {
        self.0.iter().for_each(JoinHandle::abort);
    }
}

impl Drop for Tasks {
    fn drop(&mut self) {
        self.abort();
    }
}

/// Per balancer: requests sent through it so far, and requests in flight through it.
struct Traffic {
    sent: Vec<AtomicU64>,
    inflight: Vec<AtomicU64>,
}

/// The running plant.
pub struct Plant {
    naming: Naming,
    cores: Vec<f64>,
    cost: f64,
    served: Vec<Arc<AtomicU64>>,
    ports: Vec<u16>,
    /// The backends' accept loops.
    servers: Tasks,
    present: BTreeSet<usize>,
    balancers: Vec<Balancer>,
    route: Arc<Mutex<Route>>,
    traffic: Arc<Traffic>,
    hosts: Vec<FakeCadvisor>,
    /// A kubelet plant's CA certificates (PEM), one per host.
    ca_pems: Vec<String>,
    cost_factor: Arc<Mutex<Vec<f64>>>,
    noise: Arc<Mutex<Vec<f64>>>,
    stop: Arc<AtomicBool>,
    feeder: JoinHandle<()>,
    load: Option<JoinHandle<()>>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    last: Vec<u64>,
    at: Instant,
}

impl Plant {
    /// Starts the backends, the HAProxy of every balancer, the fake hosts, the CPU feed and
    /// the load.
    pub async fn start(spec: &PlantSpec) -> Result<Plant, Error> {
        let n = spec.cores.len();
        if n == 0 {
            return Err("the plant needs at least one host".into());
        }
        let nb = spec.balancers.max(1);
        let shares = if spec.shares.is_empty() {
            vec![1.0; nb]
        } else if spec.shares.len() != nb {
            return Err(format!(
                "{} shares for {nb} balancers: give one per balancer, or none",
                spec.shares.len()
            )
            .into());
        } else if spec.shares.iter().any(|s| !s.is_finite() || *s <= 0.0) {
            return Err(format!("shares must be positive: {:?}", spec.shares).into());
        } else {
            spec.shares.clone()
        };
        if spec.start_weights.len() > nb {
            return Err(format!(
                "start weights for {} balancers, and there are {nb}",
                spec.start_weights.len()
            )
            .into());
        }
        for (b, w) in spec.start_weights.iter().enumerate() {
            match w {
                Some(w) if w.len() != n => {
                    return Err(format!(
                        "balancer {}'s start weights name {} servers, and there are {n}",
                        b + 1,
                        w.len()
                    )
                    .into())
                }
                Some(w) if w.iter().any(|&x| x > 256) => {
                    return Err(format!(
                        "balancer {}'s start weights {w:?}: HAProxy's weights go up to 256",
                        b + 1
                    )
                    .into())
                }
                _ => {}
            }
        }
        let total_cores: f64 = spec.cores.iter().sum();
        // Core-seconds per request so that the fleet is TARGET_UTILISATION busy on average.
        let cost = TARGET_UTILISATION * total_cores / spec.rate;

        let served: Vec<Arc<AtomicU64>> = (0..n).map(|_| Arc::new(AtomicU64::new(0))).collect();
        let naming = spec.naming;
        let mut ports = vec![];
        // From here on, whatever fails drops what was started: the accept loops with
        // `servers`, the HAProxys with `balancers`.
        let mut servers = Tasks(vec![]);
        for (i, s) in served.iter().enumerate() {
            let (port, task) = backend(naming.ip(i), s.clone()).await?;
            ports.push(port);
            servers.0.push(task);
        }
        let present: BTreeSet<usize> = (1..=n).filter(|i| !spec.absent.contains(i)).collect();
        let mut balancers = vec![];
        for b in 0..nb {
            let front = free_port();
            let weights = spec.start_weights.get(b).cloned().flatten();
            let cfg = backend_cfg(naming, front, &ports, &present, weights.as_deref());
            let lb = tokio::task::spawn_blocking(move || Haproxy::start(&cfg)).await??;
            let socket = lb.admin_socket();
            balancers.push(Balancer {
                admin: Client::new(socket.clone(), Duration::from_secs(2)),
                lb: Some(lb),
                front,
                socket,
                weights,
                failed: false,
            });
        }

        let mut hosts = vec![];
        let mut ca_pems = vec![];
        for (i, cores) in spec.cores.iter().enumerate() {
            let containers = vec![
                naming.container(i),
                FakeContainer::new(format!("db-{}", i + 1), DB_SHARE * cores),
            ];
            // The fake reports whole cores; fractional capacities are rounded up.
            let whole = cores.ceil() as u32;
            let host = if spec.kubelet {
                let options = super::cadvisor::KubeletOptions::new(KUBELET_TOKEN);
                let node = super::cadvisor::FakeKubelet::start_on(
                    naming.ip(i),
                    whole,
                    containers,
                    options,
                )
                .await?;
                ca_pems.push(node.ca_pem());
                node.cadvisor().clone()
            } else {
                FakeCadvisor::start_on(naming.ip(i), whole, containers).await?
            };
            host.set_sample_interval(SAMPLE_EVERY);
            hosts.push(host);
        }
        // Per host: CPU cost multiplier (2 after losing half its cores) and this window's noise.
        let cost_factor = Arc::new(Mutex::new(vec![1.0f64; n]));
        let noise = Arc::new(Mutex::new(vec![1.0f64; n]));
        let stop = Arc::new(AtomicBool::new(false));
        // A machine saturates: its app container can use at most the cores the fake reports.
        // More demand than that is queueing, not CPU (and a reading far above the machine is
        // one hatune rightly calls impossible: an overloaded small host in a soak stayed
        // without data, and so overloaded, for good).
        let apps: Vec<(String, f64)> = spec
            .cores
            .iter()
            .enumerate()
            .map(|(i, c)| (naming.container(i).alias, c.ceil()))
            .collect();
        let feeder = tokio::spawn(feed(
            apps,
            served.clone(),
            hosts.clone(),
            cost,
            cost_factor.clone(),
            noise.clone(),
            stop.clone(),
        ));

        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(Mutex::new(vec![]));
        let route = Arc::new(Mutex::new(Route {
            credit: vec![0.0; nb],
            up: vec![true; nb],
            shares,
        }));
        let traffic = Arc::new(Traffic {
            sent: (0..nb).map(|_| AtomicU64::new(0)).collect(),
            inflight: (0..nb).map(|_| AtomicU64::new(0)).collect(),
        });
        let load = match load(
            balancers
                .iter()
                .map(|b| format!("http://127.0.0.1:{}/", b.front))
                .collect(),
            route.clone(),
            traffic.clone(),
            spec.rate,
            ok.clone(),
            failed.clone(),
            failures.clone(),
            stop.clone(),
        ) {
            Ok(load) => tokio::spawn(load),
            Err(e) => {
                stop.store(true, Ordering::SeqCst);
                feeder.abort();
                return Err(e);
            }
        };

        let last = served.iter().map(|s| s.load(Ordering::SeqCst)).collect();
        Ok(Plant {
            naming,
            cores: spec.cores.clone(),
            cost,
            served,
            ports,
            servers,
            present,
            balancers,
            route,
            traffic,
            hosts,
            ca_pems,
            cost_factor,
            noise,
            stop,
            feeder,
            load: Some(load),
            ok,
            failed,
            failures,
            last,
            at: Instant::now(),
        })
    }

    /// How its servers and containers are named.
    pub fn naming(&self) -> Naming {
        self.naming
    }

    /// Number of servers (present or not).
    pub fn len(&self) -> usize {
        self.cores.len()
    }

    /// Always false: a plant has at least one server.
    pub fn is_empty(&self) -> bool {
        self.cores.is_empty()
    }

    /// Cores of each host.
    pub fn cores(&self) -> &[f64] {
        &self.cores
    }

    /// The first balancer's frontend port.
    pub fn front(&self) -> u16 {
        self.balancers[0].front
    }

    /// Every balancer's frontend port.
    pub fn fronts(&self) -> Vec<u16> {
        self.balancers.iter().map(|b| b.front).collect()
    }

    /// The first balancer's admin socket.
    pub fn admin_socket(&self) -> Address {
        self.balancers[0].socket.clone()
    }

    /// Every balancer's admin socket, failed ones among them.
    pub fn admin_sockets(&self) -> Vec<Address> {
        self.balancers.iter().map(|b| b.socket.clone()).collect()
    }

    /// A client on the first balancer's admin socket.
    pub fn admin(&self) -> &Client {
        &self.balancers[0].admin
    }

    /// A client on balancer `b`'s admin socket (from 0).
    pub fn admin_of(&self, b: usize) -> &Client {
        &self.balancers[b].admin
    }

    /// The first balancer's HAProxy pid (changes with every reload).
    pub fn haproxy_pid(&self) -> Option<u32> {
        self.balancers[0].lb.as_ref().map(Haproxy::pid)
    }

    /// Number of balancers (failed or not).
    pub fn balancers(&self) -> usize {
        self.balancers.len()
    }

    /// Whether balancer `b` (from 0) is up: not failed.
    pub fn balancer_up(&self, b: usize) -> bool {
        self.balancers.get(b).is_some_and(|b| !b.failed)
    }

    /// Requests the load has sent through each balancer so far.
    pub fn balancer_requests(&self) -> Vec<u64> {
        self.traffic
            .sent
            .iter()
            .map(|s| s.load(Ordering::SeqCst))
            .collect()
    }

    /// Fails balancer `b` (from 0) whole: from now on its share of the load goes to the
    /// balancers still up (in proportion to their shares), and its HAProxy is killed once the
    /// requests in flight through it are answered (2 s at most). The last balancer up cannot
    /// fail.
    pub async fn fail_balancer(&mut self, b: usize) -> Result<(), Error> {
        let nb = self.balancers.len();
        if b >= nb {
            return Err(format!("no balancer {} (there are {nb})", b + 1).into());
        }
        if self.balancers[b].failed {
            return Err(format!("balancer {} has already failed", b + 1).into());
        }
        if self.balancers.iter().filter(|x| !x.failed).count() == 1 {
            return Err(format!("balancer {} is the last one up", b + 1).into());
        }
        {
            let mut route = lock(&self.route);
            route.up[b] = false;
            route.credit.iter_mut().for_each(|c| *c = 0.0);
        }
        self.balancers[b].failed = true;
        let deadline = Instant::now() + Duration::from_secs(2);
        while self.traffic.inflight[b].load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        if let Some(lb) = self.balancers[b].lb.take() {
            // Killing and reaping it blocks a moment.
            tokio::task::spawn_blocking(move || drop(lb)).await?;
        }
        Ok(())
    }

    /// A kubelet plant's CA certificates (PEM), one per host; empty for cAdvisor hosts.
    pub fn ca_pems(&self) -> &[String] {
        &self.ca_pems
    }

    /// The fake cAdvisor base URLs (`https://` for kubelets), in host order.
    pub fn cadvisor_urls(&self) -> Vec<String> {
        self.hosts.iter().map(FakeCadvisor::url).collect()
    }

    /// Whether server `s` (from 1) is in HAProxy's config.
    pub fn is_present(&self, s: usize) -> bool {
        self.present.contains(&s)
    }

    /// The true utilisation of every server since the previous call (or the start), with its
    /// weight and status in HAProxy now (the first balancer up's), and every live balancer's
    /// weights.
    pub async fn measure(&mut self) -> Result<Measure, Error> {
        let dt = self.at.elapsed().as_secs_f64().max(1e-6);
        self.at = Instant::now();
        let mut stats = vec![];
        for b in &self.balancers {
            stats.push(match b.failed {
                true => None,
                false => Some(b.admin.show_stat().await?),
            });
        }
        let weights: Vec<Option<Vec<u32>>> = stats
            .iter()
            .map(|stat| {
                let stat = stat.as_ref()?;
                Some(
                    (0..self.cores.len())
                        .map(|i| {
                            let name = self.naming.server(i);
                            stat.servers
                                .iter()
                                .find(|s| s.backend == "app" && s.server == name)
                                .map_or(0, |s| s.user_weight())
                        })
                        .collect(),
                )
            })
            .collect();
        let stat = stats
            .into_iter()
            .flatten()
            .next()
            .ok_or("no balancer is up")?;
        let f = lock(&self.cost_factor).clone();
        let mut rows = vec![];
        for (i, factor) in f.iter().enumerate() {
            let now = self.served[i].load(Ordering::SeqCst);
            let utilisation =
                (now - self.last[i]) as f64 * self.cost * factor / (dt * self.cores[i]);
            self.last[i] = now;
            let name = self.naming.server(i);
            let row = stat
                .servers
                .iter()
                .find(|s| s.backend == "app" && s.server == name);
            let (weight, status) = row.map_or((0, "absent".to_string()), |s| {
                (s.user_weight(), s.status.clone())
            });
            rows.push(Row {
                server: name,
                utilisation,
                weight,
                status,
            });
        }
        let live: Vec<f64> = rows
            .iter()
            .filter(|r| r.serving())
            .map(|r| r.utilisation)
            .collect();
        let mean = live.iter().sum::<f64>() / live.len().max(1) as f64;
        let ratio = live.iter().cloned().fold(0.0, f64::max) / mean;
        Ok(Measure {
            rows,
            ratio,
            weights,
        })
    }

    /// The noise factor of each host's CPU readings from now on (1.0: none).
    pub fn set_noise(&self, factors: Vec<f64>) {
        *lock(&self.noise) = factors;
    }

    /// CPU cost multiplier of host `i` (from 0): 2.0 once it has lost half its cores.
    pub fn cost_factor(&self, i: usize) -> f64 {
        lock(&self.cost_factor)[i]
    }

    /// Sets host `i`'s CPU cost multiplier (1.0 restores it).
    pub fn set_cost_factor(&self, i: usize, factor: f64) {
        lock(&self.cost_factor)[i] = factor;
    }

    /// How host `i`'s cAdvisor answers from now on.
    pub fn set_host_behaviour(&self, i: usize, b: Behaviour) {
        self.hosts[i].set_behaviour(b);
    }

    /// `set server app/SERVER state STATE` (`ready`, `drain`, `maint`) for server `s` (from
    /// 1), on every balancer up, as an operator would; the first one's reply.
    pub async fn set_state(&self, s: usize, state: &str) -> Result<String, Error> {
        let server = self.naming.server(s.saturating_sub(1));
        self.on_every_balancer(&format!("set server app/{server} state {state}"))
            .await
    }

    /// `set server app/SERVER weight W` for server `s` (from 1), as an operator, on every
    /// balancer up; the first one's reply.
    pub async fn set_weight(&self, s: usize, weight: u32) -> Result<String, Error> {
        let server = self.naming.server(s.saturating_sub(1));
        self.on_every_balancer(&format!("set server app/{server} weight {weight}"))
            .await
    }

    /// `command` on every balancer up; the first one's reply.
    async fn on_every_balancer(&self, command: &str) -> Result<String, Error> {
        let mut first = None;
        for b in self.balancers.iter().filter(|b| !b.failed) {
            let reply = b.admin.command(command).await?;
            first.get_or_insert(reply);
        }
        first.ok_or_else(|| "no balancer is up".into())
    }

    /// A real HAProxy reload of every balancer up, all at once (as a config push would), with
    /// the current set of servers (each at its config's weights again).
    pub async fn reload(&mut self) -> Result<(), Error> {
        let mut reloads = vec![];
        let mut result: Result<(), Error> = Ok(());
        for b in self.balancers.iter_mut().filter(|b| !b.failed) {
            let cfg = backend_cfg(
                self.naming,
                b.front,
                &self.ports,
                &self.present,
                b.weights.as_deref(),
            );
            let Some(mut h) = b.lb.take() else {
                result = result.and(Err("no HAProxy".into()));
                continue;
            };
            let reload = tokio::task::spawn_blocking(move || h.reload(Some(&cfg)).map(|_| h));
            reloads.push((b, reload));
        }
        for (b, reload) in reloads {
            // A HAProxy whose reload failed is gone (its Drop killed it).
            match reload.await {
                Ok(Ok(h)) => b.lb = Some(h),
                Ok(Err(e)) => result = result.and(Err(e.into())),
                Err(e) => result = result.and(Err(e.into())),
            }
        }
        result
    }

    /// Server `s` (from 1) enters HAProxy's config, with a reload.
    pub async fn join(&mut self, s: usize) -> Result<(), Error> {
        self.present.insert(s);
        self.reload().await
    }

    /// Server `s` (from 1) leaves HAProxy's config, with a reload.
    pub async fn leave(&mut self, s: usize) -> Result<(), Error> {
        self.present.remove(&s);
        self.reload().await
    }

    /// Applies `event` to server / host `s` (from 1; ignored by `reload`).
    pub async fn apply(&mut self, event: Event, s: usize) -> Result<(), Error> {
        let i = s.saturating_sub(1).min(self.len() - 1);
        match event {
            Event::LoseCores => lock(&self.cost_factor)[i] *= 2.0,
            Event::Down => self.hosts[i].set_behaviour(Behaviour::Status(503)),
            Event::Junk => self.hosts[i].set_behaviour(Behaviour::Garbage),
            Event::Drain => drop(self.set_state(s, "drain").await?),
            Event::Maint => drop(self.set_state(s, "maint").await?),
            Event::Ready => drop(self.set_state(s, "ready").await?),
            Event::Reload => self.reload().await?,
            Event::Join => self.join(s).await?,
            Event::Leave => self.leave(s).await?,
        }
        Ok(())
    }

    /// Requests answered 2xx so far.
    pub fn ok(&self) -> u64 {
        self.ok.load(Ordering::SeqCst)
    }

    /// Requests failed so far (an error or a status other than 2xx).
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::SeqCst)
    }

    /// The first failures' messages.
    pub fn failures(&self) -> Vec<String> {
        lock(&self.failures).clone()
    }

    /// Stops the load and lets the requests in flight finish (10 s at most), then stops the
    /// feed, every HAProxy and the backends. [`ok`](Self::ok) and [`failed`](Self::failed)
    /// are final afterwards.
    pub async fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(mut load) = self.load.take() {
            if tokio::time::timeout(Duration::from_secs(10), &mut load)
                .await
                .is_err()
            {
                load.abort();
            }
        }
        self.feeder.abort();
        for b in &mut self.balancers {
            b.lb.take();
        }
        self.servers.abort();
    }
}

impl Drop for Plant {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.feeder.abort();
        if let Some(load) = &self.load {
            load.abort();
        }
        // The accept loops stop with `servers`, and every balancer's `lb` drops with the
        // plant: its HAProxy is killed and its directory removed.
    }
}

/// `app-{i+1}`: the server on host `i` (from 0).
pub fn server_name(i: usize) -> String {
    format!("app-{}", i + 1)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A tiny HTTP/1.1 server with keep-alive that answers every request `200 ok` and counts them.
/// Its port and its accept loop (a connection ends when its peer closes it).
async fn backend(
    ip: std::net::IpAddr,
    served: Arc<AtomicU64>,
) -> Result<(u16, JoinHandle<()>), Error> {
    let listener = TcpListener::bind((ip, 0)).await?;
    let port = listener.local_addr()?.port();
    let task = tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let served = served.clone();
            tokio::spawn(async move {
                let mut buf = Vec::with_capacity(1024);
                let mut chunk = [0u8; 1024];
                loop {
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        served.fetch_add(1, Ordering::SeqCst);
                        let reply = b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n";
                        if conn.write_all(reply).await.is_err() {
                            return;
                        }
                    }
                    match conn.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    Ok((port, task))
}

/// A balancer's backends config: the servers present, at `weights` (in host order) or else
/// CONFIG_WEIGHT.
fn backend_cfg(
    naming: Naming,
    front: u16,
    ports: &[u16],
    present: &BTreeSet<usize>,
    weights: Option<&[u32]>,
) -> String {
    let mut cfg = format!(
        // idle-close-on-response: on a reload the old process closes an idle keep-alive
        // connection only after answering a request on it, so no request races the close.
        "frontend fe\n    bind 127.0.0.1:{front}\n    option idle-close-on-response\n    \
         default_backend app\n\n\
         backend app\n    balance roundrobin\n    retries 3\n    option redispatch\n"
    );
    for (i, port) in ports.iter().enumerate() {
        if present.contains(&(i + 1)) {
            let weight = weights
                .and_then(|w| w.get(i))
                .copied()
                .unwrap_or(CONFIG_WEIGHT);
            cfg += &format!(
                "    server {} {}:{port} weight {weight}\n",
                naming.server(i),
                naming.ip(i)
            );
        }
    }
    cfg
}

/// The feed: each host's app container burns `cost` per request served.
/// `apps`: each host's app container and the most cores it can use.
async fn feed(
    apps: Vec<(String, f64)>,
    served: Vec<Arc<AtomicU64>>,
    hosts: Vec<FakeCadvisor>,
    cost: f64,
    cost_factor: Arc<Mutex<Vec<f64>>>,
    noise: Arc<Mutex<Vec<f64>>>,
    stop: Arc<AtomicBool>,
) {
    let mut last: Vec<u64> = served.iter().map(|s| s.load(Ordering::SeqCst)).collect();
    let mut at = Instant::now();
    let mut every = tokio::time::interval(FEED);
    while !stop.load(Ordering::SeqCst) {
        every.tick().await;
        let dt = at.elapsed().as_secs_f64().max(1e-3);
        at = Instant::now();
        let f = lock(&cost_factor).clone();
        let z = lock(&noise).clone();
        for i in 0..served.len() {
            let now = served[i].load(Ordering::SeqCst);
            let rate = (now - last[i]) as f64 / dt;
            last[i] = now;
            let (alias, cap) = &apps[i];
            let cores = (rate * cost * f[i] * z.get(i).copied().unwrap_or(1.0)).clamp(0.0, *cap);
            hosts[i].set_cores_used(alias, cores);
        }
    }
}

/// The load: a constant request rate, each request through the balancer `route` picks (at
/// `urls[b]`). Returns the task to spawn.
#[allow(clippy::too_many_arguments)]
fn load(
    urls: Vec<String>,
    route: Arc<Mutex<Route>>,
    traffic: Arc<Traffic>,
    rate: f64,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
) -> Result<impl std::future::Future<Output = ()>, Error> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .pool_max_idle_per_host(64)
        .build()?;
    Ok(async move {
        let mut every = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut inflight = tokio::task::JoinSet::new();
        while !stop.load(Ordering::SeqCst) {
            every.tick().await;
            let b = lock(&route).pick();
            traffic.sent[b].fetch_add(1, Ordering::SeqCst);
            traffic.inflight[b].fetch_add(1, Ordering::SeqCst);
            let (client, url, ok, failed, failures, traffic) = (
                client.clone(),
                urls[b].clone(),
                ok.clone(),
                failed.clone(),
                failures.clone(),
                traffic.clone(),
            );
            inflight.spawn(async move {
                let reply = client.get(&url).send().await;
                traffic.inflight[b].fetch_sub(1, Ordering::SeqCst);
                let error = match reply {
                    Ok(r) if r.status().is_success() => {
                        ok.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                    Ok(r) => format!("HTTP {}", r.status()),
                    Err(e) => e.to_string(),
                };
                eprintln!("request failed: {error}");
                failed.fetch_add(1, Ordering::SeqCst);
                let mut kept = lock(&failures);
                if kept.len() < FAILURES_KEPT {
                    kept.push(error);
                }
            });
            while inflight.try_join_next().is_some() {}
        }
        while inflight.join_next().await.is_some() {}
    })
}
