//! The closed-loop fleet: a real HAProxy, one tiny HTTP backend per server, one fake cAdvisor
//! per simulated host, a constant-rate HTTP load through HAProxy, and hatune ticking against it.
//!
//! The plant is [`hatune::testkit::plant`] (shared with `examples/soak.rs`): each backend counts
//! the requests it serves; its host's app container burns a fixed CPU cost per request (fed to
//! the fake cAdvisor every 20 ms), so a host with more cores needs more traffic to be as busy:
//! utilisation = requests × cost / cores. Each host also runs a `db-N` container and cAdvisor
//! itself, which the pattern `^app-` must not take for the app. The CPU reading carries
//! measurement noise, drawn per host and tick. hatune runs in-process in daemon mode
//! (`Tuner::daemon`: the CPU window is the time since the last tick).
//!
//! One line per tick: max/mean of the true utilisation (from the backends' own counts) over the
//! serving servers, then each server's utilisation and weight during that tick. Tick 0 is the
//! starting weights; tick n follows hatune's n-th decision.
//!
//! ```text
//! cargo run --release --example fleet -- [--mode halfway|capacity] [--cores 1,1,2,4]
//!     [--ticks 12] [--tick-ms 1000] [--rate 600] [--noise 0.02] [--absent 5]
//!     [--naming alias|nomad|compose] [--check] [--event TICK:KIND[:SERVER[:TICKS]]]...
//!     [--state FILE] [--source json|metrics|kubelet|prometheus]
//!     [--balancers N] [--shares 0.6,0.4] [--start-weights B:W1,W2,..]... [--peers etcd|none]
//!     [--standalone-after DURATION]
//! ```
//! `--source`: where hatune reads CPU: cAdvisor's JSON API (the default), its `/metrics`, each
//! host as a kubelet (HTTPS with a CA bundle and a bearer token; containers named
//! `default/app-N/app`, mapped to the servers by the pod), or a real Prometheus (Debian's
//! `prometheus`, started here) scraping every host's `/metrics` four times a tick.
//! `--naming`: how servers and containers are named ([`Naming`]): `alias` (server `app-N` =
//! container `app-N`), `nomad` (server `srvN` at its host's own address 127.0.1.N, container
//! `web-<alloc id>`, mapped with `"match": "address"`), `compose` (server `web_N`, container
//! `proj_web_N`, mapped with a `server` template over compose's number label). The server
//! column shows HAProxy's names. `--check` prints what `hatune check` says of the plant (its
//! mapping table among it) before the first tick.
//! `--state FILE` runs each tick as `hatune once --state FILE` would (cron mode): a fresh
//! `Tuner::once_with_state` that restores FILE, ticks and saves it, instead of one daemon
//! tuner.
//! KIND: `lose-cores` (the host keeps half its cores), `down` / `junk` (its cAdvisor answers
//! 503 / garbage for TICKS ticks, default 10), `drain`, `maint`, `ready` (operator),
//! `reload` (HAProxy reload), `join` / `leave` (the server enters / leaves HAProxy's config,
//! with a reload). SERVER counts from 1. `--absent 5` starts with server 5 out of the config.
//!
//! **Several balancers.** `--balancers N` (1 to 3) puts N HAProxys in front of the same
//! servers, each with its own front port and admin socket; the load sends each its share of
//! the rate (`--shares`, one per balancer, normalised; equal by default). `--start-weights
//! B:W1,W2,..` starts balancer B's HAProxy config at those weights (one per server) instead of
//! 100 each. With N > 1 each balancer gets its own hatune daemon (`hatune::daemon::run`, its
//! `interval` the tick, its config in a temp file), each in a Tokio runtime of its own, as if
//! each ran on its balancer's machine. `--peers etcd` (the default when N > 1) starts one real
//! etcd and gives each config `"peers": {"etcd": [URL], "prefix": "/hatune/fleet", "lease":
//! "2s", "name": "lb-B"}`, so they agree on one set of weights; `--peers none` runs each
//! standalone (and shows the drift that peers fix). The example no longer ticks hatune itself:
//! the daemons tick on their own clocks, and each line is measured a tenth of a tick before
//! their next tick, so line n still follows their n-th decision. Each line is followed by each
//! live balancer's weights, whether they are identical, and the leader (the key
//! `/hatune/fleet/leader`). KIND `balancer-fail` (`--event TICK:balancer-fail:B`, B from 1, or
//! `leader`: whichever leads then) fails balancer B whole: its hatune is killed abruptly, its
//! HAProxy stopped, and its share of the load moves to the balancers still up, as keepalived
//! would move the VIP. Killed means its runtime is shut down, every task in it at once: aborting
//! the daemon's task alone would drop its `Peers`, whose agent task (spawned apart) would then
//! give the lease up cleanly, and the lease must lapse as it would after a crash. The time from
//! the failure to the leader key naming another instance is printed when known (polled every
//! 50 ms, 30 s at most). The summary then adds on how many ticks the weights were identical on
//! every balancer, max/mean on each tick after the first failure, and each failover's time.
//! KIND `etcd-freeze` (`--event TICK:etcd-freeze:TICKS`, with peers) freezes etcd (SIGSTOP)
//! for TICKS ticks, then thaws it: the balancers keep the last set meanwhile, or, with
//! `--standalone-after DURATION` (the peers' `standalone_after`), decide alone after that long.
//! `RUST_LOG=hatune=info` shows the daemons' logs on stderr, each under its balancer's span.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hatune::config::Config;
use hatune::daemon::Control;
use hatune::testkit::cadvisor::Behaviour;
use hatune::testkit::etcd::Etcd;
use hatune::testkit::plant::{Error, Event, Naming, Plant, PlantSpec, Rng, KUBELET_TOKEN};
use hatune::testkit::prometheus::Prometheus;
use hatune::tick::Tuner;

/// The peers' etcd prefix.
const PREFIX: &str = "/hatune/fleet";
/// The most balancers a fleet has.
const MAX_BALANCERS: usize = 3;
/// How often, and how long at most, the failover watch reads the leader key.
const FAILOVER_POLL: Duration = Duration::from_millis(50);
const FAILOVER_WITHIN: Duration = Duration::from_secs(30);

/// What an `--event` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Plant(Event),
    /// The balancer (SERVER is its number, from 1) fails whole: HAProxy and hatune.
    BalancerFail,
    /// etcd is frozen (SIGSTOP) for TICKS ticks (`TICK:etcd-freeze:TICKS`), then thawed.
    EtcdFreeze,
}

impl std::str::FromStr for Kind {
    type Err = String;
    fn from_str(s: &str) -> Result<Kind, String> {
        match s {
            "balancer-fail" => Ok(Kind::BalancerFail),
            "etcd-freeze" => Ok(Kind::EtcdFreeze),
            _ => s.parse().map(Kind::Plant),
        }
    }
}

struct Args {
    mode: String,
    cores: Vec<f64>,
    ticks: usize,
    tick: Duration,
    rate: f64,
    noise: f64,
    absent: BTreeSet<usize>,
    naming: Naming,
    check: bool,
    events: Vec<(usize, Kind, usize, usize)>,
    /// Run each tick as `hatune once --state FILE` does: a fresh tuner that restores FILE,
    /// ticks and saves it again.
    state: Option<std::path::PathBuf>,
    source: String,
    balancers: usize,
    shares: Vec<f64>,
    /// Per balancer (from 0), the weights its HAProxy config starts at.
    start_weights: Vec<Option<Vec<u32>>>,
    /// `Some(true)`: etcd; `Some(false)`: none; `None`: etcd when there are several
    /// balancers.
    peers: Option<bool>,
    /// `peers.standalone_after`, when given.
    standalone_after: Option<String>,
}

impl Args {
    /// Whether the balancers run hatune daemons of their own (rather than the example ticking
    /// one tuner).
    fn daemons(&self) -> bool {
        self.balancers > 1 || self.peers == Some(true)
    }

    fn peers(&self) -> bool {
        self.peers.unwrap_or(self.balancers > 1)
    }
}

fn args() -> Result<Args, Error> {
    let mut a = Args {
        mode: "halfway".into(),
        cores: vec![1.0, 1.0, 2.0, 4.0],
        ticks: 12,
        tick: Duration::from_millis(1000),
        rate: 600.0,
        noise: 0.02,
        absent: BTreeSet::new(),
        naming: Naming::Alias,
        check: false,
        events: vec![],
        state: None,
        source: "json".into(),
        balancers: 1,
        shares: vec![],
        start_weights: vec![],
        peers: None,
        standalone_after: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--mode" => a.mode = value()?,
            "--cores" => {
                a.cores = value()?
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()?
            }
            "--ticks" => a.ticks = value()?.parse::<usize>()?.min(200),
            "--tick-ms" => a.tick = Duration::from_millis(value()?.parse::<u64>()?.max(200)),
            "--rate" => a.rate = value()?.parse::<f64>()?.clamp(10.0, 2000.0),
            "--noise" => a.noise = value()?.parse()?,
            "--naming" => a.naming = value()?.parse()?,
            "--check" => a.check = true,
            "--state" => a.state = Some(value()?.into()),
            "--source" => a.source = value()?,
            "--absent" => {
                a.absent.insert(value()?.parse()?);
            }
            "--balancers" => a.balancers = value()?.parse()?,
            "--shares" => {
                a.shares = value()?
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()?
            }
            "--start-weights" => {
                let v = value()?;
                let (b, w) = v
                    .split_once(':')
                    .ok_or("--start-weights is B:W1,W2,.. (B the balancer, from 1)")?;
                let b: usize = b.parse()?;
                if b == 0 {
                    return Err("--start-weights: balancers count from 1".into());
                }
                if a.start_weights.len() < b {
                    a.start_weights.resize(b, None);
                }
                a.start_weights[b - 1] =
                    Some(w.split(',').map(str::parse).collect::<Result<_, _>>()?);
            }
            "--standalone-after" => a.standalone_after = Some(value()?),
            "--peers" => {
                a.peers = Some(match value()?.as_str() {
                    "etcd" => true,
                    "none" => false,
                    _ => return Err("--peers is etcd or none".into()),
                })
            }
            "--event" => {
                let v = value()?;
                let p: Vec<&str> = v.split(':').collect();
                let n = |i: usize, d: usize| -> Result<usize, Error> {
                    Ok(p.get(i).map(|s| s.parse()).transpose()?.unwrap_or(d))
                };
                let kind: Kind = p.get(1).unwrap_or(&"").parse()?;
                // `balancer-fail:leader`: whichever balancer leads then (0 here).
                let s = match (kind, p.get(2)) {
                    (Kind::BalancerFail, Some(&"leader")) => 0,
                    (Kind::EtcdFreeze, _) => 0,
                    _ => n(2, 1)?,
                };
                // `etcd-freeze:TICKS`: its third field is how long.
                let len = match kind {
                    Kind::EtcdFreeze => n(2, 5)?,
                    _ => n(3, 10)?,
                };
                a.events.push((n(0, 0)?, kind, s, len));
            }
            _ => {
                return Err(format!(
                    "unknown flag {flag}; see the doc at the top of examples/fleet.rs"
                )
                .into())
            }
        }
    }
    if a.mode != "halfway" && a.mode != "capacity" {
        return Err("--mode is halfway or capacity".into());
    }
    if !["json", "metrics", "kubelet", "prometheus"].contains(&a.source.as_str()) {
        return Err("--source is json, metrics, kubelet or prometheus".into());
    }
    if !(1..=MAX_BALANCERS).contains(&a.balancers) {
        return Err(format!("--balancers is 1 to {MAX_BALANCERS}").into());
    }
    if a.start_weights.len() > a.balancers {
        return Err(format!(
            "--start-weights {}: there are {} balancers",
            a.start_weights.len(),
            a.balancers
        )
        .into());
    }
    if a.daemons() && a.state.is_some() {
        return Err("--state goes with one balancer and no peers (the example's own tuner)".into());
    }
    for &(t, kind, b, _) in &a.events {
        if kind == Kind::EtcdFreeze && !(a.daemons() && a.peers()) {
            return Err(format!("event {t}:etcd-freeze needs peers").into());
        }
        if kind == Kind::BalancerFail {
            if !a.daemons() {
                return Err("balancer-fail needs --balancers 2 or more".into());
            }
            if b == 0 && !a.peers() {
                return Err(format!("event {t}:balancer-fail:leader needs peers").into());
            }
            if b > a.balancers {
                return Err(format!("event {t}:balancer-fail:{b}: no balancer {b}").into());
            }
        }
    }
    Ok(a)
}

/// One balancer's hatune daemon, in a Tokio runtime of its own, as if it ran on its own machine:
/// killing it shuts the runtime down, every task the daemon started with it.
struct Daemon {
    name: String,
    runtime: Option<tokio::runtime::Runtime>,
    control: tokio::sync::mpsc::Sender<Control>,
    task: Option<tokio::task::JoinHandle<Result<(), hatune::daemon::StartError>>>,
    /// Its config file (the daemon re-reads it on a reload only).
    _config: tempfile::NamedTempFile,
}

impl Daemon {
    fn start(name: String, config_text: &str, span: tracing::Span) -> Result<Daemon, Error> {
        use std::io::Write;
        use tracing::Instrument;
        let mut file = tempfile::NamedTempFile::new()?;
        file.write_all(config_text.as_bytes())?;
        file.flush()?;
        let config = Config::parse(config_text)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(name.clone())
            .enable_all()
            .build()?;
        let (control, rx) = tokio::sync::mpsc::channel(8);
        let run = hatune::daemon::run(file.path().to_path_buf(), config, false, rx);
        let task = runtime.spawn(run.instrument(span));
        Ok(Daemon {
            name,
            runtime: Some(runtime),
            control,
            task: Some(task),
            _config: file,
        })
    }

    fn alive(&self) -> bool {
        self.runtime.is_some()
    }

    /// Abruptly: the runtime stops without waiting; no clean stop of anything.
    fn kill(&mut self) {
        self.task.take();
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }

    /// `Control::Shutdown`, then waits (10 s at most) for the daemon to stop; what it
    /// returned, if anything went wrong.
    async fn shutdown(&mut self) -> Option<String> {
        let task = self.task.take()?;
        let _ = self.control.send(Control::Shutdown).await;
        let said = match tokio::time::timeout(Duration::from_secs(10), task).await {
            Ok(Ok(Ok(()))) => None,
            Ok(Ok(Err(e))) => Some(format!("it stopped with an error: {e}")),
            Ok(Err(e)) => Some(format!("its task failed: {e}")),
            Err(_) => Some("it did not stop within 10 s of the shutdown".to_string()),
        };
        self.kill();
        said
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The instance a leader key's value names: the value itself, or its `name` if it is a JSON
/// object with one.
fn leader_name(value: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(value) {
        Ok(serde_json::Value::Object(o)) => match o.get("name").and_then(|n| n.as_str()) {
            Some(n) => n.to_string(),
            None => value.to_string(),
        },
        _ => value.trim().to_string(),
    }
}

/// Polls the leader key until it names an instance other than `failed` (every
/// FAILOVER_POLL, FAILOVER_WITHIN at most): the time since `since` and the new leader.
async fn watch_failover(
    etcd: Arc<Etcd>,
    failed: String,
    since: Instant,
) -> Option<(Duration, String)> {
    let key = format!("{PREFIX}/leader");
    loop {
        if let Ok(Some(v)) = etcd.get(&key).await {
            let name = leader_name(&v);
            if name != failed {
                return Some((since.elapsed(), name));
            }
        }
        if since.elapsed() >= FAILOVER_WITHIN {
            return None;
        }
        tokio::time::sleep(FAILOVER_POLL).await;
    }
}

/// A `balancer-fail` event and the failover it caused.
struct Failure {
    tick: usize,
    name: String,
    /// The leader just before.
    leader: Option<String>,
    /// Reading the leader key until it names another instance.
    watch: Option<tokio::task::JoinHandle<Option<(Duration, String)>>>,
    /// `Some(None)`: no other leader within FAILOVER_WITHIN.
    result: Option<Option<(Duration, String)>>,
}

impl Failure {
    /// Whether the failed balancer led (the failover is then the time to a new leader).
    fn led(&self) -> bool {
        self.leader.as_deref() == Some(self.name.as_str())
    }

    /// The failover in words.
    fn failover(&self) -> String {
        match (&self.result, &self.leader) {
            (Some(Some((took, leader))), _) if self.led() => format!(
                "the leader key names {leader} {:.2} s after {} failed",
                took.as_secs_f64(),
                self.name
            ),
            (Some(Some((took, leader))), None) => format!(
                "the leader key names {leader} {:.2} s after {} failed (there was no leader)",
                took.as_secs_f64(),
                self.name
            ),
            (Some(None), _) => format!(
                "the leader key names no other instance {} s after {} failed",
                FAILOVER_WITHIN.as_secs(),
                self.name
            ),
            (_, Some(leader)) if !self.led() => {
                format!("none needed ({} did not lead; {leader} did)", self.name)
            }
            _ => "not watched (no peers)".to_string(),
        }
    }
}

/// `111/95/159/256`.
fn weights_text(w: &[u32]) -> String {
    w.iter().map(u32::to_string).collect::<Vec<_>>().join("/")
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let a = args()?;
    let n = a.cores.len();
    let mut plant = Plant::start(&PlantSpec {
        cores: a.cores.clone(),
        rate: a.rate,
        absent: a.absent.clone(),
        naming: a.naming,
        kubelet: a.source == "kubelet",
        balancers: a.balancers,
        shares: a.shares.clone(),
        start_weights: a.start_weights.clone(),
    })
    .await?;
    let front = plant.front();

    let dir = tempfile::tempdir()?;
    let mut prometheus = None;
    let mut backend = a.naming.backend();
    let source = match a.source.as_str() {
        "json" => serde_json::json!({"cadvisor": plant.cadvisor_urls()}),
        "metrics" => {
            let urls: Vec<String> = plant
                .cadvisor_urls()
                .iter()
                .map(|u| format!("{u}/metrics"))
                .collect();
            serde_json::json!({"cadvisor": urls, "second_scrape": "200ms"})
        }
        "kubelet" => {
            let ca = dir.path().join("kubelets-ca.pem");
            std::fs::write(&ca, plant.ca_pems().concat())?;
            let token = dir.path().join("token");
            std::fs::write(&token, KUBELET_TOKEN)?;
            // The kubelet names containers namespace/pod/container; the servers are the pods.
            if a.naming != Naming::Alias {
                return Err("--source kubelet goes with --naming alias".into());
            }
            backend = serde_json::json!({"name": "app", "pattern": "^default/(app-\\d+)/app$", "server": "{1}"});
            serde_json::json!({"kubelet": {"urls": plant.cadvisor_urls(), "ca_file": ca, "token_file": token, "second_scrape": "200ms"}})
        }
        _ => {
            let targets: Vec<String> = plant
                .cadvisor_urls()
                .iter()
                .map(|u| u.trim_start_matches("http://").to_string())
                .collect();
            let p = Prometheus::start(&targets, a.tick / 4, "/metrics").await?;
            p.await_targets_up(Duration::from_secs(30)).await?;
            let url = p.url();
            prometheus = Some(p);
            serde_json::json!({"prometheus": {"url": url, "selector": "job=\"cadvisor\""}})
        }
    };
    let mut config_json = serde_json::json!({
        "haproxy": [plant.admin_socket().to_string()],
        "timeout": "500ms",
        "window": format!("{}ms", a.tick.as_millis()),
        "backends": [backend],
        "controller": {"mode": a.mode},
    });
    for (k, v) in source.as_object().into_iter().flatten() {
        config_json[k] = v.clone();
    }
    let config_text = config_json.to_string();
    let config = Config::parse(&config_text)?;

    // Several balancers: one etcd (with peers), and one daemon per balancer.
    let etcd = match a.daemons() && a.peers() {
        true => Some(Arc::new(Etcd::start().await?)),
        false => None,
    };
    let mut daemons: Vec<Daemon> = vec![];
    let mut daemon_configs = vec![];
    if a.daemons() {
        if std::env::var_os("RUST_LOG").is_some() {
            tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
                .with_writer(std::io::stderr)
                .init();
        }
        for (b, socket) in plant.admin_sockets().iter().enumerate() {
            let name = format!("lb-{}", b + 1);
            let mut c = config_json.clone();
            c["haproxy"] = serde_json::json!([socket.to_string()]);
            c["interval"] = serde_json::json!(format!("{}ms", a.tick.as_millis()));
            if let Some(etcd) = &etcd {
                c["peers"] = serde_json::json!({
                    "etcd": [etcd.endpoint()],
                    "prefix": PREFIX,
                    "lease": "2s",
                    "name": name,
                });
                if let Some(after) = &a.standalone_after {
                    c["peers"]["standalone_after"] = serde_json::json!(after);
                }
            }
            daemon_configs.push(c.to_string());
        }
        // Every config parses before any daemon starts.
        for c in &daemon_configs {
            Config::parse(c)?;
        }
    }
    if a.check {
        let path = std::path::Path::new("(the fleet's config)");
        let config = match daemon_configs.first() {
            Some(c) => Config::parse(c)?,
            None => config.clone(),
        };
        print!("{}", hatune::check::check(path, &config).await.render());
    }
    let mut tuner = Tuner::daemon(&config, false);
    let how = match &a.state {
        None => "in daemon mode (Tuner::daemon, window since the last tick)".to_string(),
        Some(path) => {
            let _ = std::fs::remove_file(path);
            format!(
                "as `once --state {}` (a fresh tuner each tick, its state through the file)",
                path.display()
            )
        }
    };
    let how = match a.daemons() {
        false => how,
        true => format!(
            "as one daemon per balancer (hatune::daemon::run, interval = the tick), peers {}",
            match &etcd {
                Some(e) => format!("through etcd {} (prefix {PREFIX})", e.endpoint()),
                None => "none (each standalone)".to_string(),
            }
        ),
    };
    let front = match a.balancers {
        1 => front.to_string(),
        _ => {
            let total: f64 = match a.shares.is_empty() {
                true => a.balancers as f64,
                false => a.shares.iter().sum(),
            };
            plant
                .fronts()
                .iter()
                .enumerate()
                .map(|(b, port)| {
                    let share = a.shares.get(b).copied().unwrap_or(1.0) / total;
                    let start = match a.start_weights.get(b).cloned().flatten() {
                        Some(w) => format!(", starting at {}", weights_text(&w)),
                        None => String::new(),
                    };
                    format!("lb-{} :{port} ({:.0}%{start})", b + 1, share * 100.0)
                })
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    println!(
        "fleet: HAProxy {front}, {n} servers on hosts of {:?} cores, {} req/s, {:.0}% noise, \
         hatune mode {} {how}, a tick every {} ms, {} naming, source {}",
        a.cores,
        a.rate,
        a.noise * 100.0,
        a.mode,
        a.tick.as_millis(),
        a.naming.name(),
        a.source
    );
    // The daemons tick at once (a baseline, no decision), then every tick; the lines are
    // measured a tenth of a tick before their ticks, so that line n shows their n-th decision
    // (in force over nine tenths of its window) and no line catches a set half applied.
    let daemons_at = Instant::now();
    for (b, c) in daemon_configs.iter().enumerate() {
        let span = tracing::info_span!(target: "hatune::fleet", "lb", n = b + 1);
        daemons.push(Daemon::start(format!("lb-{}", b + 1), c, span)?);
    }
    let lead = a.tick / 10;
    let leader_key = format!("{PREFIX}/leader");
    let mut identical_ticks = 0usize;
    let mut failures: Vec<Failure> = vec![];
    let mut after_failure: Vec<(usize, f64)> = vec![];
    let mut daemon_trouble: Vec<String> = vec![];

    let mut rng = Rng::new(0x2545_F491_4F6C_DD1D);
    let mut down_until: Vec<Option<usize>> = vec![None; n];
    // While set, etcd is frozen until this tick.
    let mut frozen_until: Option<usize> = None;
    let mut ratios = vec![];
    match a.daemons() {
        true => tokio::time::sleep_until((daemons_at + a.tick - lead).into()).await,
        false => tokio::time::sleep(a.tick).await,
    }
    for t in 0..=a.ticks {
        // The truth over the tick just ended, at the weights of the tick before.
        let at = Instant::now();
        let m = plant.measure().await?;
        let cells: Vec<String> = m
            .rows
            .iter()
            .map(|r| {
                let mark = if r.serving() {
                    String::new()
                } else {
                    format!(" {}", r.status)
                };
                format!(
                    "{} {:5.1}% w{:<3}{mark}",
                    r.server,
                    r.utilisation * 100.0,
                    r.weight
                )
            })
            .collect();
        ratios.push(m.ratio);
        println!(
            "tick {t:2}: max/mean {:.3} | {}",
            m.ratio,
            cells.join(" | ")
        );
        if a.daemons() {
            let live: Vec<&Vec<u32>> = m.weights.iter().flatten().collect();
            let identical = live.windows(2).all(|w| w[0] == w[1]);
            identical_ticks += usize::from(identical);
            let each: Vec<String> = m
                .weights
                .iter()
                .enumerate()
                .map(|(b, w)| match w {
                    Some(w) => format!("lb-{} {}", b + 1, weights_text(w)),
                    None => format!("lb-{} failed", b + 1),
                })
                .collect();
            let leader = match &etcd {
                // A frozen etcd would hold the line for the harness's HTTP timeout.
                Some(_) if frozen_until.is_some() => " · leader unknown (etcd frozen)".to_string(),
                Some(etcd) => match etcd.get(&leader_key).await {
                    Ok(Some(v)) => format!(" · leader {}", leader_name(&v)),
                    Ok(None) => " · no leader".to_string(),
                    Err(e) => format!(" · leader unknown ({e})"),
                },
                None => String::new(),
            };
            println!(
                "         {} · {}{leader}",
                each.join(" · "),
                if identical { "identical" } else { "differ" }
            );
            if !failures.is_empty() {
                after_failure.push((t, m.ratio));
            }
        }
        for f in &mut failures {
            if let Some(done) = f.watch.take_if(|w| w.is_finished()) {
                f.result = Some(done.await?);
                println!("         failover: {}", f.failover());
            }
        }
        for d in daemons.iter_mut().filter(|d| d.alive()) {
            if d.task.as_ref().is_some_and(|t| t.is_finished()) {
                let said = d.shutdown().await.unwrap_or_default();
                let line = format!("{}'s daemon stopped on its own {said}", d.name);
                println!("         {line}");
                daemon_trouble.push(line);
            }
        }
        if t == a.ticks {
            break;
        }

        // Events due now.
        for &(_, kind, s, len) in a.events.iter().filter(|e| e.0 == t) {
            let kind = match kind {
                Kind::Plant(kind) => kind,
                Kind::EtcdFreeze => {
                    if let Some(etcd) = &etcd {
                        etcd.freeze()?;
                        frozen_until = Some(t + len.max(1));
                        println!(
                            "         event: etcd frozen (SIGSTOP) for {} ticks",
                            len.max(1)
                        );
                    }
                    continue;
                }
                Kind::BalancerFail => {
                    let leader = match &etcd {
                        Some(etcd) => etcd.get(&leader_key).await.ok().flatten(),
                        None => None,
                    }
                    .map(|v| leader_name(&v));
                    let b = match s {
                        0 => {
                            let leads = |d: &Daemon| Some(&d.name) == leader.as_ref();
                            match daemons.iter().position(leads) {
                                Some(b) => b,
                                None => {
                                    println!(
                                        "         event: balancer-fail leader: no balancer \
                                         leads (the leader key names {})",
                                        leader.as_deref().unwrap_or("nobody")
                                    );
                                    continue;
                                }
                            }
                        }
                        s => s - 1,
                    };
                    let name = daemons[b].name.clone();
                    if !daemons[b].alive() {
                        println!("         event: balancer-fail {name}: it has already failed");
                        continue;
                    }
                    let since = Instant::now();
                    daemons[b].kill();
                    plant.fail_balancer(b).await?;
                    let lost = since.elapsed();
                    let mut f = Failure {
                        tick: t,
                        name: name.clone(),
                        leader,
                        watch: None,
                        result: None,
                    };
                    // A follower's failure needs no failover; nor does a fleet without peers.
                    if let Some(etcd) = etcd.as_ref().filter(|_| f.led() || f.leader.is_none()) {
                        f.watch = Some(tokio::spawn(watch_failover(etcd.clone(), name, since)));
                    }
                    println!(
                        "         event: balancer-fail {} (its hatune killed, its HAProxy \
                         stopped in {} ms; the leader was {})",
                        f.name,
                        lost.as_millis(),
                        f.leader.as_deref().unwrap_or("-")
                    );
                    failures.push(f);
                    continue;
                }
            };
            let i = s.saturating_sub(1).min(n - 1);
            plant.apply(kind, s).await?;
            if matches!(kind, Event::Down | Event::Junk) {
                down_until[i] = Some(t + len);
            }
            println!(
                "         event: {kind} {}",
                if kind == Event::Reload {
                    String::new()
                } else {
                    format!("app-{s}")
                }
            );
        }
        for (i, until) in down_until.iter_mut().enumerate() {
            if *until == Some(t) {
                plant.set_host_behaviour(i, Behaviour::Normal);
                *until = None;
            }
        }
        if let (Some(etcd), true) = (&etcd, frozen_until == Some(t)) {
            etcd.thaw()?;
            frozen_until = None;
            println!("         event: etcd thawed (SIGCONT)");
        }

        if !a.daemons() {
            let report = match &a.state {
                // What `hatune once --state` does, in-process: lock, restore, tick, save.
                Some(path) => hatune::tick::once(&config, false, Some(path))
                    .await
                    .ok_or("the state file is held by another run")?,
                None => tuner.tick(&config, tokio::time::Instant::now()).await,
            };
            for s in &report.sockets {
                if let Some(e) = &s.error {
                    println!("         socket: {e}");
                }
            }
            for h in report.hosts.iter().filter(|h| h.error.is_some()) {
                println!(
                    "         host {}: {}",
                    h.url,
                    h.error.as_deref().unwrap_or("")
                );
            }
        }
        // Fresh measurement noise for the next window.
        plant.set_noise((0..n).map(|_| 1.0 + a.noise * rng.normal()).collect());
        let next = match a.daemons() {
            // On the daemons' clock: no drift against their ticks.
            true => daemons_at + a.tick * (t as u32 + 2) - lead,
            false => at + a.tick,
        };
        tokio::time::sleep_until(next.into()).await;
    }

    // A failover may still be under way: wait for its watch (bounded by its deadline).
    for f in &mut failures {
        if let Some(watch) = f.watch.take() {
            f.result = Some(watch.await?);
            println!("         failover: {}", f.failover());
        }
    }
    for d in daemons.iter_mut().filter(|d| d.alive()) {
        if let Some(said) = d.shutdown().await {
            let line = format!("{}'s daemon at the shutdown: {said}", d.name);
            println!("         {line}");
            daemon_trouble.push(line);
        }
    }
    drop(daemons);
    drop(prometheus);
    plant.stop().await;
    let per_balancer = plant.balancer_requests();
    let (ok, failed) = (plant.ok(), plant.failed());
    drop(plant);
    drop(etcd);
    let settled = (0..ratios.len()).find(|&k| ratios[k..].iter().all(|&r| r <= 1.05));
    let tail = &ratios[ratios.len().saturating_sub(5)..];
    println!(
        "summary: start {:.3}; max/mean ≤ 1.05 from tick {} on; mean of the last {} ticks {:.4}; \
         requests ok {}, failed {}",
        ratios[0],
        settled.map_or("-".to_string(), |k| k.to_string()),
        tail.len(),
        tail.iter().sum::<f64>() / tail.len() as f64,
        ok,
        failed
    );
    if a.daemons() {
        let mut parts = vec![format!(
            "weights identical on every balancer on {identical_ticks} of {} ticks",
            ratios.len()
        )];
        if let Some(first) = failures.first() {
            let max = after_failure.iter().map(|x| x.1).fold(0.0, f64::max);
            let each: Vec<String> = after_failure
                .iter()
                .map(|(t, r)| format!("{t} {r:.3}"))
                .collect();
            parts.push(format!(
                "after {} failed (tick {}): max/mean on tick {}; max {max:.3}",
                first.name,
                first.tick,
                each.join(", ")
            ));
            for f in &failures {
                parts.push(match &f.result {
                    Some(Some((took, leader))) if f.led() => format!(
                        "failover {:.2} s ({} failed at tick {}, leading; then {leader} led)",
                        took.as_secs_f64(),
                        f.name,
                        f.tick
                    ),
                    _ => format!("failover of {} (tick {}): {}", f.name, f.tick, f.failover()),
                });
            }
        }
        let requests: Vec<String> = per_balancer
            .iter()
            .enumerate()
            .map(|(b, r)| format!("lb-{} {r}", b + 1))
            .collect();
        parts.push(format!("requests through {}", requests.join(", ")));
        println!("         {}", parts.join("; "));
    }
    if failed > 0 || !daemon_trouble.is_empty() {
        std::process::exit(1);
    }
    Ok(())
}
