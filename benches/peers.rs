//! Peers: how far apart in time two balancers take each new weight set the leader publishes.
//!
//! `cargo bench --bench peers` (`HATUNE_PEERS_CHANGES=N`: measure N weight changes, default
//! 30; the run stops after ~55 s whatever it got) prints one table.
//!
//! Two hatune daemons run in this process ([`hatune::daemon::run`], `peers` through a real
//! one-node etcd from the testkit, names lb-1 and lb-2, lease 2 s, interval 500 ms, window
//! 2 s), each with its own real HAProxy (backend `app`, servers app-1..4), both reading the
//! same four fake cAdvisor hosts (1, 1, 2 and 4 cores). The load keeps the weights moving:
//! 2 cores of work split by the last published weights, plus 0.6 core on one host that moves
//! to the next host every 1.5 s, so the leader publishes a new set most ticks.
//!
//! What is timed, on this process's monotonic clock:
//! - each balancer, polled by a thread of its own with `show stat` (hatune's client) every
//!   ~1 ms: the instant (reply received) it first shows each new weight vector of `app`;
//! - the publish: the instant this process's own etcd watch on `PREFIX/weights` delivered the
//!   put (the same kind of watch the follower waits on).
//!
//! For each of the N sets published after the first two (warm-up) the bench finds, in each
//! balancer's sequence of weight vectors, the first time it shows the set's weights in full
//! (sets published during the last second's wait are not measured). Skew is
//! |t(lb-2) − t(lb-1)| for the same set; publish → balancer is t(balancer) − t(watch),
//! negative when the balancer wrote the set before this process's watch heard of it (the
//! leader writes its own set as soon as etcd acknowledges the put). Each instant is late by up
//! to one poll period (its median is printed). A set a balancer never shows in full before
//! the next set's publish + 1 s is "missed"; a vector that is in no published set is "torn"
//! (seen mid-apply).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use tokio::sync::mpsc;

use hatune::config::Config;
use hatune::daemon::{self, Control};
use hatune::sink::haproxy::{Address, Client};
use hatune::testkit::cadvisor::{FakeCadvisor, FakeContainer};
use hatune::testkit::etcd::Etcd;
use hatune::testkit::haproxy::Haproxy;

/// Cores of the four fake hosts.
const CORES: [u32; 4] = [1, 1, 2, 4];
/// The work split by weight, in cores.
const WORK_CORES: f64 = 2.0;
/// The extra load on one host, and how long it stays on one before moving to the next.
const BIAS_CORES: f64 = 0.6;
const BIAS_MOVES: Duration = Duration::from_millis(1500);
const INTERVAL: Duration = Duration::from_millis(500);
const PREFIX: &str = "/hatune/bench";
/// Published sets not measured: the first leaves the configured weights (100).
const WARM_UP: usize = 2;
/// The whole run, start to figures, stays under this.
const RUN_LIMIT: Duration = Duration::from_secs(55);
/// How often each balancer is read.
const POLL_EVERY: Duration = Duration::from_millis(1);
/// A set not shown in full by the next set's publish + this is missed.
const MISS_AFTER: Duration = Duration::from_secs(1);
const NAMES: [&str; 2] = ["lb-1", "lb-2"];

type Vector = Vec<u32>;

fn alias(i: usize) -> String {
    format!("app-{}", i + 1)
}

/// A published set, as this process's watch delivered it.
#[derive(Clone)]
struct Publish {
    seen: Instant,
    /// The watch's wall clock, ms since the epoch, against the set's `at_ms`.
    seen_ms: u64,
    revision: i64,
    leader: String,
    at_ms: u64,
    weights: Vector,
}

/// What one balancer showed: each new weight vector of `app` and when it was first seen.
#[derive(Default)]
struct PollLog {
    changes: Vec<(Instant, Vector)>,
    /// Between consecutive replies.
    periods: Vec<Duration>,
    errors: usize,
}

fn main() {
    let changes: usize = std::env::var("HATUNE_PEERS_CHANGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(30);
    match std::env::var("HATUNE_PEERS_CHANGES") {
        Ok(v) => println!("HATUNE_PEERS_CHANGES={v} cargo bench --bench peers"),
        Err(_) => println!("cargo bench --bench peers"),
    }
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let started = Instant::now();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "machine: {} cores; {}; {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        first_line("haproxy", "-v"),
        first_line("etcd", "--version")
    );

    let etcd = runtime.block_on(Etcd::start()).expect("cannot start etcd");
    let lbs: Vec<Haproxy> = (0..2)
        .map(|_| Haproxy::start(&four_servers()).expect("cannot start HAProxy"))
        .collect();
    let hosts: Vec<FakeCadvisor> = runtime.block_on(async {
        let mut hosts = vec![];
        for (i, cores) in CORES.iter().enumerate() {
            let share = WORK_CORES / 4.0;
            let host = FakeCadvisor::start(*cores, vec![FakeContainer::new(alias(i), share)])
                .await
                .expect("fake cAdvisor");
            host.set_sample_interval(Duration::from_millis(100));
            hosts.push(host);
        }
        hosts
    });
    let dir = tempfile::tempdir().expect("temp dir");

    // Watch and polls first: nothing the daemons do is missed.
    let stop = Arc::new(AtomicBool::new(false));
    let published: Arc<Mutex<Vec<Publish>>> = Arc::default();
    let watcher = {
        let (endpoint, stop, published) = (etcd.endpoint(), stop.clone(), published.clone());
        let (ready_tx, ready) = std::sync::mpsc::channel();
        let handle = std::thread::spawn(move || watch(endpoint, stop, published, ready_tx));
        ready
            .recv_timeout(Duration::from_secs(10))
            .expect("the etcd watch did not start");
        handle
    };
    let pollers: Vec<_> = lbs
        .iter()
        .map(|lb| {
            let (addr, stop) = (lb.admin_socket(), stop.clone());
            std::thread::spawn(move || poll(addr, stop))
        })
        .collect();

    // The daemons.
    let mut controls = vec![];
    let mut daemons = vec![];
    for (i, lb) in lbs.iter().enumerate() {
        let config = json!({
            "haproxy": [lb.admin_socket().to_string()],
            "cadvisor": hosts.iter().map(FakeCadvisor::url).collect::<Vec<_>>(),
            "timeout": "1s",
            "window": "2s",
            "interval": format!("{}ms", INTERVAL.as_millis()),
            "backends": [{"name": "app", "pattern": "^app-"}],
            "peers": {
                "etcd": [etcd.endpoint()],
                "prefix": PREFIX,
                "lease": "2s",
                "name": NAMES[i],
            },
        });
        let path = dir.path().join(format!("{}.json", NAMES[i]));
        std::fs::write(&path, config.to_string()).expect("write config");
        let config = Config::parse(&config.to_string()).expect("config");
        let (tx, rx) = mpsc::channel(4);
        controls.push(tx);
        daemons.push(runtime.spawn(daemon::run(path, config, false, rx)));
    }

    // The load: the work split by the newest published weights, plus the moving bias.
    let load = {
        let (hosts, published) = (hosts.clone(), published.clone());
        runtime.spawn(async move {
            let t0 = Instant::now();
            loop {
                let weights = published.lock().unwrap().last().map(|p| p.weights.clone());
                let w: Vec<f64> = weights
                    .unwrap_or_else(|| vec![100; 4])
                    .into_iter()
                    .map(f64::from)
                    .collect();
                let total = w.iter().sum::<f64>().max(1.0);
                let biased = (t0.elapsed().as_millis() / BIAS_MOVES.as_millis()) as usize % 4;
                for (i, host) in hosts.iter().enumerate() {
                    let bias = if i == biased { BIAS_CORES } else { 0.0 };
                    host.set_cores_used(&alias(i), w[i] / total * WORK_CORES + bias);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };

    // Until WARM_UP + `changes` sets are published (and a second for the last to land).
    let mut complete = false;
    while started.elapsed() < RUN_LIMIT - Duration::from_secs(3) {
        if published.lock().unwrap().len() >= WARM_UP + changes {
            complete = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_secs(1));

    // Everything stops, whatever was measured.
    load.abort();
    runtime.block_on(async {
        for tx in &controls {
            let _ = tx.send(Control::Shutdown).await;
        }
        for (i, d) in daemons.into_iter().enumerate() {
            match tokio::time::timeout(Duration::from_secs(5), d).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => eprintln!("{}: {e}", NAMES[i]),
                Ok(Err(e)) => eprintln!("{}: {e}", NAMES[i]),
                Err(_) => eprintln!("{} did not stop within 5 s", NAMES[i]),
            }
        }
    });
    stop.store(true, Ordering::Relaxed);
    let logs: Vec<PollLog> = pollers
        .into_iter()
        .map(|p| p.join().expect("poller"))
        .collect();
    watcher.join().expect("watcher");
    drop(hosts);
    drop(lbs);
    drop(etcd);
    let published = published.lock().unwrap().clone();

    report(&published, &logs, changes, complete);
}

fn four_servers() -> String {
    let mut cfg = "backend app\n    balance roundrobin\n".to_string();
    for i in 0..4 {
        // A closed port: setting weights needs no traffic.
        cfg.push_str(&format!("    server {} 127.0.0.1:1 weight 100\n", alias(i)));
    }
    cfg
}

/// The weights of app-1..4 in a `show stat`.
fn vector_of(stat: &hatune::sink::haproxy::Stat) -> Option<Vector> {
    (0..4)
        .map(|i| {
            stat.servers
                .iter()
                .find(|s| s.backend == "app" && s.server == alias(i))
                .map(|s| s.user_weight())
        })
        .collect()
}

/// Reads one balancer every POLL_EVERY until `stop`, on a thread and runtime of its own.
fn poll(addr: Address, stop: Arc<AtomicBool>) -> PollLog {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("poller runtime");
    let client = Client::new(addr, Duration::from_secs(1));
    let mut log = PollLog::default();
    let mut last_reply: Option<Instant> = None;
    while !stop.load(Ordering::Relaxed) {
        let asked = Instant::now();
        let stat = rt.block_on(client.show_stat());
        let replied = Instant::now();
        match stat.ok().as_ref().and_then(vector_of) {
            Some(v) => {
                if log.changes.last().map(|(_, w)| w) != Some(&v) {
                    log.changes.push((replied, v));
                }
                if let Some(prev) = last_reply {
                    log.periods.push(replied - prev);
                }
                last_reply = Some(replied);
            }
            None => log.errors += 1,
        }
        if let Some(rest) = POLL_EVERY.checked_sub(asked.elapsed()) {
            std::thread::sleep(rest);
        }
    }
    log
}

/// Records every put of `PREFIX/weights` until `stop`; says on `ready` once watching.
fn watch(
    endpoint: String,
    stop: Arc<AtomicBool>,
    published: Arc<Mutex<Vec<Publish>>>,
    ready: std::sync::mpsc::Sender<()>,
) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("watcher runtime");
    rt.block_on(async {
        let mut client = tokio::time::timeout(
            Duration::from_secs(5),
            etcd_client::Client::connect([endpoint], None),
        )
        .await
        .expect("connecting to etcd timed out")
        .expect("connecting to etcd");
        let mut stream = tokio::time::timeout(
            Duration::from_secs(5),
            client.watch(format!("{PREFIX}/weights"), None),
        )
        .await
        .expect("etcd watch timed out")
        .expect("etcd watch");
        let _ = ready.send(());
        while !stop.load(Ordering::Relaxed) {
            let Ok(msg) = tokio::time::timeout(Duration::from_millis(100), stream.message()).await
            else {
                continue;
            };
            let Some(msg) = msg.expect("etcd watch message") else {
                break;
            };
            let seen = Instant::now();
            let seen_ms = wall_ms();
            for ev in msg.events() {
                let (etcd_client::EventType::Put, Some(kv)) = (ev.event_type(), ev.kv()) else {
                    continue;
                };
                let v: Value = serde_json::from_slice(kv.value()).expect("a weight set");
                let weights: Option<Vector> = (0..4)
                    .map(|i| {
                        v["weights"]["app"][alias(i)]
                            .as_u64()
                            .and_then(|w| u32::try_from(w).ok())
                    })
                    .collect();
                published.lock().unwrap().push(Publish {
                    seen,
                    seen_ms,
                    revision: kv.mod_revision(),
                    leader: v["leader"].as_str().unwrap_or_default().to_string(),
                    at_ms: v["at_ms"].as_u64().unwrap_or(0),
                    weights: weights.expect("app-1..4 in the published set"),
                });
            }
        }
    });
}

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// When each measured set first shows in full on one balancer (`None`: missed), in order.
fn landed(published: &[Publish], measured: usize, log: &PollLog) -> Vec<Option<Instant>> {
    let mut next = 0;
    (WARM_UP..WARM_UP + measured)
        .map(|r| {
            let until = published
                .get(r + 1)
                .map_or(Instant::now(), |p| p.seen + MISS_AFTER);
            let at = log.changes[next..]
                .iter()
                .take_while(|(t, _)| *t <= until)
                .position(|(_, v)| *v == published[r].weights)?;
            next += at + 1;
            Some(log.changes[next - 1].0)
        })
        .collect()
}

fn report(published: &[Publish], logs: &[PollLog], wanted: usize, complete: bool) {
    if published.len() <= WARM_UP {
        println!(
            "no weight set measured: {} published in {RUN_LIMIT:?}",
            published.len()
        );
        return;
    }
    // Sets published during the last second's wait are not measured (but bound the one before).
    let measured = &published[WARM_UP..published.len().min(WARM_UP + wanted)];
    let leaders: HashSet<&str> = measured.iter().map(|p| p.leader.as_str()).collect();
    let leader = NAMES.iter().position(|n| leaders.contains(n)).unwrap_or(0);
    let follower = 1 - leader;
    let span = measured.last().unwrap().seen - measured[0].seen;
    println!(
        "2 daemons in-process (lb-1, lb-2), one real HAProxy each (4 servers), 4 fake cAdvisor \
         hosts; interval {}ms, window 2s, lease 2s",
        INTERVAL.as_millis()
    );
    println!(
        "leader: {}; measured {} sets (revisions {}..{}), published over {:.1} s = {:.0} ticks{}",
        leaders.iter().copied().collect::<Vec<_>>().join(", "),
        measured.len(),
        measured[0].revision,
        measured.last().unwrap().revision,
        span.as_secs_f64(),
        span.as_secs_f64() / INTERVAL.as_secs_f64() + 1.0,
        if complete {
            String::new()
        } else {
            format!(" (wanted {wanted}: the run hit its {RUN_LIMIT:?} limit)")
        }
    );
    for (i, log) in logs.iter().enumerate() {
        let mut periods = log.periods.clone();
        periods.sort();
        println!(
            "{}: polled every {} median ({} p90), {} polls, {} failed",
            NAMES[i],
            ms(periods.get(periods.len() / 2).copied().unwrap_or_default()),
            ms(percentile(&periods, 0.9)),
            log.periods.len() + 1,
            log.errors
        );
    }

    let at: Vec<Vec<Option<Instant>>> = logs
        .iter()
        .map(|l| landed(published, measured.len(), l))
        .collect();
    let signed = |a: Instant, b: Instant| -> f64 {
        if a >= b {
            (a - b).as_secs_f64() * 1e3
        } else {
            -((b - a).as_secs_f64() * 1e3)
        }
    };
    let mut skew = vec![];
    let mut lag = vec![];
    for (a, b) in at[leader].iter().zip(&at[follower]) {
        if let (Some(a), Some(b)) = (a, b) {
            skew.push(signed(*b, *a).abs());
            lag.push(signed(*b, *a));
        }
    }
    let to = |i: usize| -> Vec<f64> {
        at[i]
            .iter()
            .zip(measured)
            .filter_map(|(t, p)| t.map(|t| signed(t, p.seen)))
            .collect()
    };
    let decided: Vec<f64> = measured
        .iter()
        .filter(|p| p.at_ms > 0)
        .map(|p| p.seen_ms as f64 - p.at_ms as f64)
        .collect();

    println!();
    println!(
        "{:<40} {:>9} {:>9} {:>9} {:>4}",
        "per weight set (ms)", "median", "p90", "max", "N"
    );
    let row = |label: String, mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        if v.is_empty() {
            println!("{label:<40} {:>9} {:>9} {:>9} {:>4}", "-", "-", "-", 0);
            return;
        }
        println!(
            "{label:<40} {:>9.2} {:>9.2} {:>9.2} {:>4}",
            v[v.len() / 2],
            percentile(&v, 0.9),
            v[v.len() - 1],
            v.len()
        );
    };
    let (l, f) = (NAMES[leader], NAMES[follower]);
    row(format!("skew |t({f}) - t({l})|"), skew);
    row(format!("  signed, {f} (follower) - {l}"), lag);
    row(format!("publish seen -> {l} (leader)"), to(leader));
    row(format!("publish seen -> {f} (follower)"), to(follower));
    row("set decided (at_ms) -> publish seen".into(), decided);

    let known: HashSet<&Vector> = published.iter().map(|p| &p.weights).collect();
    for (i, log) in logs.iter().enumerate() {
        let missed: Vec<i64> = at[i]
            .iter()
            .zip(measured)
            .filter(|(t, _)| t.is_none())
            .map(|(_, p)| p.revision)
            .collect();
        let torn: Vec<usize> = (0..log.changes.len())
            .filter(|&k| {
                let v = &log.changes[k].1;
                !known.contains(v) && *v != vec![100; 4]
            })
            .collect();
        // Mid-apply: each weight is the one before or the one after.
        let mixes = torn
            .iter()
            .filter(|&&k| {
                let (Some(before), Some(after)) = (
                    k.checked_sub(1).map(|j| &log.changes[j].1),
                    log.changes.get(k + 1).map(|c| &c.1),
                ) else {
                    return false;
                };
                (0..4).all(|s| {
                    let w = log.changes[k].1[s];
                    w == before[s] || w == after[s]
                })
            })
            .count();
        println!(
            "{}: missed {} sets{}; {} torn vectors (in no published set), {} of them a mix of \
             the sets before and after{}",
            NAMES[i],
            missed.len(),
            if missed.is_empty() {
                String::new()
            } else {
                format!(" (revisions {missed:?})")
            },
            torn.len(),
            mixes,
            if torn.is_empty() {
                String::new()
            } else {
                let shown: Vec<String> = torn
                    .iter()
                    .map(|&k| {
                        let around = |j: Option<usize>| {
                            j.and_then(|j| log.changes.get(j))
                                .map_or("-".to_string(), |c| format!("{:?}", c.1))
                        };
                        format!(
                            "{} -> {:?} -> {}",
                            around(k.checked_sub(1)),
                            log.changes[k].1,
                            around(Some(k + 1))
                        )
                    })
                    .collect();
                format!(": {}", shown.join("; "))
            }
        );
    }
}

/// Nearest rank.
fn percentile<T: Copy + Default>(sorted: &[T], p: f64) -> T {
    if sorted.is_empty() {
        return T::default();
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn first_line(cmd: &str, arg: &str) -> String {
    std::process::Command::new(cmd)
        .arg(arg)
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(str::to_string))
        .unwrap_or_else(|| format!("{cmd} (version unknown)"))
}
