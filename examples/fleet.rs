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

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use hatune::config::Config;
use hatune::testkit::cadvisor::Behaviour;
use hatune::testkit::plant::{Error, Event, Naming, Plant, PlantSpec, Rng, KUBELET_TOKEN};
use hatune::testkit::prometheus::Prometheus;
use hatune::tick::Tuner;

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
    events: Vec<(usize, Event, usize, usize)>,
    /// Run each tick as `hatune once --state FILE` does: a fresh tuner that restores FILE,
    /// ticks and saves it again.
    state: Option<std::path::PathBuf>,
    source: String,
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
            "--event" => {
                let v = value()?;
                let p: Vec<&str> = v.split(':').collect();
                let n = |i: usize, d: usize| -> Result<usize, Error> {
                    Ok(p.get(i).map(|s| s.parse()).transpose()?.unwrap_or(d))
                };
                a.events.push((
                    n(0, 0)?,
                    p.get(1).unwrap_or(&"").parse()?,
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
    if !["json", "metrics", "kubelet", "prometheus"].contains(&a.source.as_str()) {
        return Err("--source is json, metrics, kubelet or prometheus".into());
    }
    Ok(a)
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
    if a.check {
        let path = std::path::Path::new("(the fleet's config)");
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

    let mut rng = Rng::new(0x2545_F491_4F6C_DD1D);
    let mut down_until: Vec<Option<usize>> = vec![None; n];
    let mut ratios = vec![];
    tokio::time::sleep(a.tick).await;
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
        if t == a.ticks {
            break;
        }

        // Events due now.
        for &(_, kind, s, len) in a.events.iter().filter(|e| e.0 == t) {
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
        // Fresh measurement noise for the next window.
        plant.set_noise((0..n).map(|_| 1.0 + a.noise * rng.normal()).collect());
        let next = at + a.tick;
        tokio::time::sleep_until(next.into()).await;
    }

    drop(prometheus);
    plant.stop().await;
    let (ok, failed) = (plant.ok(), plant.failed());
    drop(plant);
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
    if failed > 0 {
        std::process::exit(1);
    }
    Ok(())
}
