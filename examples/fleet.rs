//! The closed-loop fleet: a real HAProxy, one tiny HTTP backend per server, one fake cAdvisor
//! per simulated host, a constant-rate HTTP load through HAProxy, and hatune ticking against it.
//!
//! Each backend counts the requests it serves; its host's app container burns a fixed CPU cost
//! per request (fed to the fake cAdvisor every 20 ms), so a host with more cores needs more
//! traffic to be as busy: utilisation = requests × cost / cores. Each host also runs a `db-N`
//! container and cAdvisor itself, which the pattern `^app-` must not take for the app. The CPU
//! reading carries measurement noise, drawn per host and tick. hatune runs in-process in daemon
//! mode (`Tuner::daemon`: the CPU window is the time since the last tick).
//!
//! One line per tick: max/mean of the true utilisation (from the backends' own counts) over the
//! serving servers, then each server's utilisation and weight during that tick. Tick 0 is the
//! starting weights; tick n follows hatune's n-th decision.
//!
//! ```text
//! cargo run --release --example fleet -- [--mode halfway|capacity] [--cores 1,1,2,4]
//!     [--ticks 12] [--tick-ms 1000] [--rate 600] [--noise 0.02] [--absent 5]
//!     [--event TICK:KIND[:SERVER[:TICKS]]]...
//! ```
//! KIND: `lose-cores` (the host keeps half its cores), `down` / `junk` (its cAdvisor answers
//! 503 / garbage for TICKS ticks, default 10), `drain`, `maint`, `ready` (operator),
//! `reload` (HAProxy reload), `join` / `leave` (the server enters / leaves HAProxy's config,
//! with a reload). SERVER counts from 1. `--absent 5` starts with server 5 out of the config.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hatune::config::Config;
use hatune::sink::haproxy;
use hatune::testkit::cadvisor::{Behaviour, FakeCadvisor, FakeContainer};
use hatune::testkit::haproxy::{free_port, Haproxy};
use hatune::tick::Tuner;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// How often the per-request CPU cost is fed to the fake hosts: the CPU counter lags the
/// requests by about this much.
const FEED: Duration = Duration::from_millis(20);
/// The fake cAdvisors' sample spacing (cAdvisor's is 1-2 s; ticks here are 1 s, not 30 s).
const SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// Mean utilisation the request cost is chosen for.
const TARGET_UTILISATION: f64 = 0.5;

struct Args {
    mode: String,
    cores: Vec<f64>,
    ticks: usize,
    tick: Duration,
    rate: f64,
    noise: f64,
    absent: BTreeSet<usize>,
    events: Vec<(usize, String, usize, usize)>,
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
        events: vec![],
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
            "--absent" => {
                a.absent.insert(value()?.parse()?);
            }
            "--event" => {
                let v = value()?;
                let p: Vec<&str> = v.split(':').collect();
                let n = |i: usize, d: usize| -> Result<usize, Error> {
                    Ok(p.get(i).map(|s| s.parse()).transpose()?.unwrap_or(d))
                };
                a.events.push((
                    n(0, 0)?,
                    p.get(1).unwrap_or(&"").to_string(),
                    n(2, 1)?,
                    n(3, 10)?,
                ));
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
    Ok(a)
}

/// A tiny HTTP/1.1 server with keep-alive that answers every request `200 ok` and counts them.
async fn backend(served: Arc<AtomicU64>) -> Result<u16, Error> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
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
    Ok(port)
}

fn backend_cfg(front: u16, ports: &[u16], present: &BTreeSet<usize>) -> String {
    let mut cfg = format!(
        // idle-close-on-response: on a reload the old process closes an idle keep-alive
        // connection only after answering a request on it, so no request races the close.
        "frontend fe\n    bind 127.0.0.1:{front}\n    option idle-close-on-response\n    \
         default_backend app\n\n\
         backend app\n    balance roundrobin\n    retries 3\n    option redispatch\n"
    );
    for (i, port) in ports.iter().enumerate() {
        if present.contains(&(i + 1)) {
            cfg += &format!("    server app-{} 127.0.0.1:{port} weight 100\n", i + 1);
        }
    }
    cfg
}

fn normal(state: &mut u64) -> f64 {
    let mut uniform = || {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        ((*state >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    let (u, v) = (uniform(), uniform());
    (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let a = args()?;
    let n = a.cores.len();
    let total_cores: f64 = a.cores.iter().sum();
    // Core-seconds per request so that the fleet is TARGET_UTILISATION busy on average.
    let cost = TARGET_UTILISATION * total_cores / a.rate;

    let served: Vec<Arc<AtomicU64>> = (0..n).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let mut ports = vec![];
    for s in &served {
        ports.push(backend(s.clone()).await?);
    }
    let mut present: BTreeSet<usize> = (1..=n).filter(|i| !a.absent.contains(i)).collect();
    let front = free_port();
    let mut lb = Some(Haproxy::start(&backend_cfg(front, &ports, &present))?);
    let socket = lb.as_ref().map(|l| l.admin_socket()).ok_or("no HAProxy")?;
    let admin = haproxy::Client::new(socket.clone(), Duration::from_secs(2));

    let mut hosts = vec![];
    for (i, cores) in a.cores.iter().enumerate() {
        let containers = vec![
            FakeContainer::new(format!("app-{}", i + 1), 0.0),
            FakeContainer::new(format!("db-{}", i + 1), 0.25 * cores),
        ];
        // The fake reports whole cores; fractional capacities are rounded up.
        let host = FakeCadvisor::start(cores.ceil() as u32, containers).await?;
        host.set_sample_interval(SAMPLE_EVERY);
        hosts.push(host);
    }
    // Per host: CPU cost multiplier (2 after losing half its cores) and this tick's noise.
    let cost_factor = Arc::new(Mutex::new(vec![1.0f64; n]));
    let noise = Arc::new(Mutex::new(vec![1.0f64; n]));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));

    // The feed: each host's app container burns `cost` per request served.
    let feeder = {
        let (served, hosts, cost_factor, noise, stop) = (
            served.clone(),
            hosts.clone(),
            cost_factor.clone(),
            noise.clone(),
            stop.clone(),
        );
        tokio::spawn(async move {
            let mut last: Vec<u64> = served.iter().map(|s| s.load(Ordering::SeqCst)).collect();
            let mut at = Instant::now();
            let mut every = tokio::time::interval(FEED);
            while !stop.load(Ordering::SeqCst) {
                every.tick().await;
                let dt = at.elapsed().as_secs_f64().max(1e-3);
                at = Instant::now();
                let f = cost_factor.lock().unwrap().clone();
                let z = noise.lock().unwrap().clone();
                for i in 0..served.len() {
                    let now = served[i].load(Ordering::SeqCst);
                    let rate = (now - last[i]) as f64 / dt;
                    last[i] = now;
                    let cores = (rate * cost * f[i] * z[i]).max(0.0);
                    hosts[i].set_cores_used(&format!("app-{}", i + 1), cores);
                }
            }
        })
    };

    // The load: a constant request rate through HAProxy.
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let load = {
        let (ok, failed, stop) = (ok.clone(), failed.clone(), stop.clone());
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .pool_max_idle_per_host(64)
            .build()?;
        let url = format!("http://127.0.0.1:{front}/");
        let rate = a.rate;
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut inflight = tokio::task::JoinSet::new();
            while !stop.load(Ordering::SeqCst) {
                every.tick().await;
                let (client, url, ok, failed) =
                    (client.clone(), url.clone(), ok.clone(), failed.clone());
                inflight.spawn(async move {
                    match client.get(&url).send().await {
                        Ok(r) if r.status().is_success() => ok.fetch_add(1, Ordering::SeqCst),
                        Ok(r) => {
                            eprintln!("request failed: HTTP {}", r.status());
                            failed.fetch_add(1, Ordering::SeqCst)
                        }
                        Err(e) => {
                            eprintln!("request failed: {e}");
                            failed.fetch_add(1, Ordering::SeqCst)
                        }
                    };
                });
                while inflight.try_join_next().is_some() {}
            }
            while inflight.join_next().await.is_some() {}
        })
    };

    let config_text = serde_json::json!({
        "haproxy": [socket.to_string()],
        "cadvisor": hosts.iter().map(FakeCadvisor::url).collect::<Vec<_>>(),
        "timeout": "500ms",
        "window": format!("{}ms", a.tick.as_millis()),
        "backends": [{"name": "app", "pattern": "^app-"}],
        "controller": {"mode": a.mode},
    })
    .to_string();
    let config = Config::parse(&config_text)?;
    let mut tuner = Tuner::daemon(&config, false);
    println!(
        "fleet: HAProxy {front}, {n} servers on hosts of {:?} cores, {} req/s, {:.0}% noise, \
         hatune mode {} in daemon mode (Tuner::daemon, window since the last tick), \
         a tick every {} ms",
        a.cores,
        a.rate,
        a.noise * 100.0,
        a.mode,
        a.tick.as_millis()
    );

    let mut rng = 0x2545_F491_4F6C_DD1D_u64;
    let mut down_until: Vec<Option<usize>> = vec![None; n];
    let mut serving: Vec<bool> = (1..=n).map(|i| present.contains(&i)).collect();
    let mut last: Vec<u64> = served.iter().map(|s| s.load(Ordering::SeqCst)).collect();
    let mut at = Instant::now();
    let mut ratios = vec![];
    tokio::time::sleep(a.tick).await;
    for t in 0..=a.ticks {
        // The truth over the tick just ended, at the weights of the tick before.
        let dt = at.elapsed().as_secs_f64();
        at = Instant::now();
        let stat = admin.show_stat().await?;
        let f = cost_factor.lock().unwrap().clone();
        let mut cells = vec![];
        let mut live = vec![];
        for i in 0..n {
            let now = served[i].load(Ordering::SeqCst);
            let util = (now - last[i]) as f64 * cost * f[i] / (dt * a.cores[i]);
            last[i] = now;
            let row = stat
                .servers
                .iter()
                .find(|s| s.server == format!("app-{}", i + 1));
            let (w, status) = row.map_or((0, "absent".to_string()), |s| {
                (s.user_weight(), s.status.clone())
            });
            let mark = if status == "UP" || status == "no check" {
                String::new()
            } else {
                format!(" {status}")
            };
            // Serving as HAProxy sees it (a reload forgets an operator's DRAIN).
            serving[i] = status == "UP" || status == "no check";
            if serving[i] {
                live.push(util);
            }
            cells.push(format!("app-{} {:5.1}% w{w:<3}{mark}", i + 1, util * 100.0));
        }
        let mean = live.iter().sum::<f64>() / live.len().max(1) as f64;
        let ratio = live.iter().cloned().fold(0.0, f64::max) / mean;
        ratios.push(ratio);
        println!("tick {t:2}: max/mean {ratio:.3} | {}", cells.join(" | "));
        if t == a.ticks {
            break;
        }

        // Events due now.
        for (_, kind, s, len) in a.events.iter().filter(|e| e.0 == t) {
            let (s, len) = (*s, *len);
            let i = s.saturating_sub(1).min(n - 1);
            let server = format!("app/app-{s}");
            let reload = matches!(kind.as_str(), "reload" | "join" | "leave");
            match kind.as_str() {
                "lose-cores" => cost_factor.lock().unwrap()[i] *= 2.0,
                "down" => {
                    hosts[i].set_behaviour(Behaviour::Status(503));
                    down_until[i] = Some(t + len);
                }
                "junk" => {
                    hosts[i].set_behaviour(Behaviour::Garbage);
                    down_until[i] = Some(t + len);
                }
                "drain" | "maint" | "ready" => {
                    admin
                        .command(&format!("set server {server} state {kind}"))
                        .await?;
                    serving[i] = kind == "ready";
                }
                "join" => {
                    present.insert(s);
                    serving[i] = true;
                }
                "leave" => {
                    present.remove(&s);
                    serving[i] = false;
                }
                "reload" => {}
                other => return Err(format!("unknown event {other}").into()),
            }
            if reload {
                let cfg = backend_cfg(front, &ports, &present);
                let mut h = lb.take().ok_or("no HAProxy")?;
                lb = Some(
                    tokio::task::spawn_blocking(move || h.reload(Some(&cfg)).map(|_| h)).await??,
                );
            }
            println!(
                "         event: {kind} {}",
                if reload && kind == "reload" {
                    String::new()
                } else {
                    format!("app-{s}")
                }
            );
        }
        for (i, until) in down_until.iter_mut().enumerate() {
            if *until == Some(t) {
                hosts[i].set_behaviour(Behaviour::Normal);
                *until = None;
            }
        }

        let report = tuner.tick(&config, tokio::time::Instant::now()).await;
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
        // Fresh measurement noise for the next window.
        *noise.lock().unwrap() = (0..n).map(|_| 1.0 + a.noise * normal(&mut rng)).collect();
        let next = at + a.tick;
        tokio::time::sleep_until(next.into()).await;
    }

    stop.store(true, Ordering::SeqCst);
    let _ = tokio::time::timeout(Duration::from_secs(10), load).await;
    feeder.abort();
    let settled = (0..ratios.len()).find(|&k| ratios[k..].iter().all(|&r| r <= 1.05));
    let tail = &ratios[ratios.len().saturating_sub(5)..];
    println!(
        "summary: start {:.3}; max/mean ≤ 1.05 from tick {} on; mean of the last {} ticks {:.4}; \
         requests ok {}, failed {}",
        ratios[0],
        settled.map_or("-".to_string(), |k| k.to_string()),
        tail.len(),
        tail.iter().sum::<f64>() / tail.len() as f64,
        ok.load(Ordering::SeqCst),
        failed.load(Ordering::SeqCst)
    );
    drop(lb);
    if failed.load(Ordering::SeqCst) > 0 {
        std::process::exit(1);
    }
    Ok(())
}
