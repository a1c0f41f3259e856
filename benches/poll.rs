//! Polling: the wall time of one tick, `hatune once --dry-run`, over a fleet of fake cAdvisor
//! hosts on loopback, each answering after a fixed latency.
//!
//! `cargo bench --bench poll` prints a table "hosts, latency, wall time, ratio".
//!
//! The real binary runs as a child process (`hatune once --dry-run --config F`, its output to
//! /dev/null); the wall time is spawn to exit, so it includes process start, reading the config,
//! `show stat` from a real HAProxy (one server per app container) and the dry-run report. The
//! fleet ([`hatune::testkit::fleet`]) is served by this bench process, on the same 2 cores:
//! one listener per host on 127.0.0.1, 3 app containers + the `cadvisor` one per host, 60
//! samples each (~450 KB per reply) when asked without a body. Each figure is the median of 5
//! runs (min in brackets). Rows at 0 ms latency give the CPU floor (no waiting at all); the last
//! row adds one host that accepts and never answers, with a 1 s timeout.
//!
//! `cargo bench --bench poll -- --scale` prints the scale targets instead: 1,000 hosts × 10
//! app containers (10,000 servers in 100 backends of 100) and 10,000 hosts × 1 container
//! (10,000 servers in 1,000 backends of 10), both at 100 ms. Besides the wall time it prints
//! the peak RSS of the hatune child (`ru_maxrss` from `wait4`), the `/api/v1.3/docker/` bytes
//! the fleet served per host per run, and the requests per run. When `hatune once --help`
//! offers `--state`, each target is also run with `--state DIR/state.json`: one run to start
//! the state (not timed), then 5 timed runs that each read and rewrite it, each after the fleet
//! moved to a newer sample ([`Fleet::refresh`], as a real host's 1 s housekeeping would).
//!
//! `HATUNE_BIN=/path/to/hatune` times that binary instead of this build's (an older build, for
//! a before/after comparison).

use std::ffi::OsString;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hatune::sink::haproxy::Address;
use hatune::testkit::fleet::{self, Fleet, FleetSpec};
use hatune::testkit::haproxy::Haproxy;

const RUNS: usize = 5;

fn main() {
    let (soft, hard) = rlimit::Resource::NOFILE.get().expect("getrlimit");
    // 10,000 hosts take a listener each plus one connection per host in flight: more than a
    // hard limit of 20,000 leaves room for. Raise the hard limit where allowed (root).
    let want: u64 = 65_536;
    if hard < want {
        let _ = rlimit::Resource::NOFILE.set(want, want);
    }
    let raised = rlimit::increase_nofile_limit(u64::MAX).expect("raise RLIMIT_NOFILE");
    eprintln!(
        "bench process: RLIMIT_NOFILE soft {soft} -> {raised} (hard {hard} -> {})",
        rlimit::Resource::NOFILE.get().map_or(0, |l| l.1)
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let bin = std::env::var("HATUNE_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_hatune").into());
    // `cargo bench --bench poll -- --serve HOSTS LATENCY_MS [CONTAINERS]`: keep one fleet (3
    // app containers per host unless given) and its HAProxy up (for 10 minutes at most) and
    // print the config path, to run or profile hatune by hand.
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--serve") {
        let hosts: usize = args.get(i + 1).and_then(|v| v.parse().ok()).unwrap_or(1000);
        let latency: u64 = args.get(i + 2).and_then(|v| v.parse().ok()).unwrap_or(100);
        let containers: usize = args.get(i + 3).and_then(|v| v.parse().ok()).unwrap_or(3);
        let spec = FleetSpec {
            hosts,
            containers_per_host: containers,
            latency: Duration::from_millis(latency),
            ..FleetSpec::default()
        };
        let path = dir.path().join("serve.json");
        let (_fleet, haproxy) = fleet_and_haproxy(&runtime, &spec, &path);
        println!(
            "serving {hosts} hosts at {latency} ms; config: {}",
            path.display()
        );
        // Until 10 minutes pass or SIGINT/SIGTERM: either way HAProxy is stopped below (a
        // signal's default action would leave it running).
        runtime.block_on(async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(600)) => {}
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        });
        drop(haproxy);
        return;
    }
    println!(
        "machine: {} cores, {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model()
    );
    println!("hatune: {bin}");
    if args.iter().any(|a| a == "--scale") {
        scale(&runtime, &bin, dir.path());
        return;
    }
    println!(
        "{:>6}  {:>8}  {:>10}  {:>10}  {:>6}  {:>9}  {:>9}",
        "hosts", "latency", "reply", "wall", "(min)", "ratio", "requests"
    );
    for &(hosts, latency_ms, hung) in &[
        (10, 100, false),
        (100, 100, false),
        (1000, 100, false),
        (10, 0, false),
        (100, 0, false),
        (1000, 0, false),
        (1000, 100, true),
    ] {
        let latency = Duration::from_millis(latency_ms);
        let spec = FleetSpec {
            hosts,
            containers_per_host: 3,
            latency,
            ..FleetSpec::default()
        };
        let fleet = runtime.block_on(Fleet::start(spec.clone())).expect("fleet");
        let mut urls = fleet.urls().to_vec();
        let _hung = if hung {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            urls.push(format!("http://{}", l.local_addr().expect("addr")));
            Some(l)
        } else {
            None
        };
        let haproxy = Haproxy::start(&fleet::haproxy_backends(&spec)).expect("haproxy");
        let Address::Unix(sock) = haproxy.admin_socket() else {
            unreachable!()
        };
        let timeout = if hung { "1s" } else { "5s" };
        let config = fleet::hatune_config(&spec, &urls, &sock.display().to_string(), timeout, "");
        let path = dir
            .path()
            .join(format!("poll-{hosts}-{latency_ms}-{hung}.json"));
        std::fs::write(&path, config).expect("write config");
        let before = fleet.requests();
        let mut times: Vec<Duration> = (0..RUNS)
            .map(|_| run_once(&bin, &once_args(&path, None), dir.path()).wall)
            .collect();
        let requests = (fleet.requests() - before) / RUNS as u64;
        times.sort();
        let median = times[RUNS / 2];
        let ratio = if latency.is_zero() {
            "-".to_string()
        } else {
            format!("{:.2}x", median.as_secs_f64() / latency.as_secs_f64())
        };
        println!(
            "{:>6}  {:>6}ms  {:>8}KB  {:>8.3}s  {:>6.3}  {:>9}  {:>9}{}",
            urls.len(),
            latency_ms,
            fleet.docker_reply_len() / 1000,
            median.as_secs_f64(),
            times[0].as_secs_f64(),
            ratio,
            requests,
            if hung {
                "  (+1 hung host, timeout 1s)"
            } else {
                ""
            }
        );
        drop(haproxy);
        runtime.block_on(async { drop(fleet) });
    }
}

/// The scale targets, each without and (if this hatune has `--state`) with a state file.
fn scale(runtime: &tokio::runtime::Runtime, bin: &str, dir: &Path) {
    let help = Command::new(bin)
        .args(["once", "--help"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .expect("run hatune once --help");
    let has_state = String::from_utf8_lossy(&help.stdout).contains("--state");
    println!(
        "scale: median of {RUNS} runs (min); peak RSS of the hatune child (ru_maxrss), median and \
         max; /api/v1.3/docker/ (or with HATUNE_POLL_SOURCE=metrics, /metrics) bytes the fleet \
         served per host per run; requests per run"
    );
    println!(
        "{:>6}  {:>4}  {:>7}  {:>7}  {:>8}  {:>6}  {:>9}  {:>7}  {:>11}  {:>8}  {:>5}",
        "hosts",
        "c/h",
        "servers",
        "latency",
        "wall",
        "(min)",
        "peak RSS",
        "(max)",
        "docker/host",
        "requests",
        "state"
    );
    let mut skipped = false;
    for &(hosts, per_host, latency_ms) in &[(1000, 10, 100), (10_000, 1, 100)] {
        let spec = FleetSpec {
            hosts,
            containers_per_host: per_host,
            latency: Duration::from_millis(latency_ms),
            ..FleetSpec::default()
        };
        let path = dir.join(format!("scale-{hosts}-{per_host}.json"));
        let (fleet, haproxy) = fleet_and_haproxy(runtime, &spec, &path);
        let row = |state: Option<&Path>| {
            let (bytes0, requests0) = (source_bytes(&fleet), fleet.requests());
            let runs: Vec<Run> = (0..RUNS)
                .map(|_| {
                    if state.is_some() {
                        // A newer sample for every run, as a real host has a second later.
                        fleet.refresh();
                    }
                    run_once(bin, &once_args(&path, state), dir)
                })
                .collect();
            let bytes = (source_bytes(&fleet) - bytes0) as f64 / RUNS as f64 / hosts as f64;
            let requests = (fleet.requests() - requests0) / RUNS as u64;
            let mut walls: Vec<Duration> = runs.iter().map(|r| r.wall).collect();
            walls.sort();
            let mut rss: Vec<u64> = runs.iter().map(|r| r.max_rss_kb).collect();
            rss.sort();
            println!(
                "{:>6}  {:>4}  {:>7}  {:>5}ms  {:>7.3}s  {:>6.3}  {:>7.1}MB  {:>7.1}  {:>9.1}KB  {:>8}  {:>5}",
                hosts,
                per_host,
                hosts * per_host,
                latency_ms,
                walls[RUNS / 2].as_secs_f64(),
                walls[0].as_secs_f64(),
                rss[RUNS / 2] as f64 / 1024.0,
                rss[RUNS - 1] as f64 / 1024.0,
                bytes / 1000.0,
                requests,
                if state.is_some() { "yes" } else { "no" }
            );
        };
        row(None);
        if has_state {
            let state = dir.join(format!("state-{hosts}-{per_host}.json"));
            // Starts the state: reads the whole window (not timed).
            fleet.refresh();
            run_once(bin, &once_args(&path, Some(&state)), dir);
            row(Some(&state));
        } else {
            skipped = true;
        }
        drop(haproxy);
        runtime.block_on(async { drop(fleet) });
    }
    if skipped {
        println!("state rows skipped: `{bin} once --help` offers no --state");
    }
}

/// `HATUNE_POLL_SOURCE=metrics`: the scale rows read the fleet's `/metrics` instead of its
/// JSON API.
fn metrics_source() -> bool {
    std::env::var("HATUNE_POLL_SOURCE").is_ok_and(|v| v == "metrics")
}

/// Bytes the fleet served to the source the rows read.
fn source_bytes(fleet: &Fleet) -> u64 {
    if metrics_source() {
        fleet.metrics_bytes_sent()
    } else {
        fleet.docker_bytes_sent()
    }
}

/// `once --dry-run [--state STATE] --config CONFIG`.
/// Starts the fleet `spec` describes and a real HAProxy with a server per app container, and
/// writes hatune's config for them (every host, a 5 s timeout) to `path`.
fn fleet_and_haproxy(
    runtime: &tokio::runtime::Runtime,
    spec: &FleetSpec,
    path: &Path,
) -> (Fleet, Haproxy) {
    let fleet = runtime.block_on(Fleet::start(spec.clone())).expect("fleet");
    let haproxy = Haproxy::start(&fleet::haproxy_backends(spec)).expect("haproxy");
    let Address::Unix(sock) = haproxy.admin_socket() else {
        unreachable!()
    };
    let config = if metrics_source() {
        // The same fleet read through cAdvisor's /metrics: one scrape per host per run with
        // --state, two (`second_scrape` apart) without.
        let urls: Vec<String> = fleet
            .urls()
            .iter()
            .map(|u| format!("{u}/metrics"))
            .collect();
        let text = fleet::hatune_config(spec, &urls, &sock.display().to_string(), "5s", "");
        let mut v: serde_json::Value = serde_json::from_str(&text).expect("the fleet's config");
        v["second_scrape"] = "1s".into();
        v.to_string()
    } else {
        fleet::hatune_config(spec, fleet.urls(), &sock.display().to_string(), "5s", "")
    };
    std::fs::write(path, config).expect("write config");
    (fleet, haproxy)
}

fn once_args(config: &Path, state: Option<&Path>) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec!["once".into(), "--dry-run".into()];
    if let Some(s) = state {
        args.push("--state".into());
        args.push(s.into());
    }
    args.push("--config".into());
    args.push(config.into());
    args
}

/// One run of the hatune child.
struct Run {
    /// Spawn to exit.
    wall: Duration,
    /// Its peak RSS, KB (`ru_maxrss` as `wait4` reports it).
    max_rss_kb: u64,
}

/// One `hatune ARGS`, spawn to exit, reaped with `wait4` for its peak RSS. Panics if it fails
/// (exit code 1 would mean a socket or a weight failed; dry-run sets none), with the end of
/// its log.
fn run_once(bin: &str, args: &[OsString], dir: &Path) -> Run {
    let log = dir.join("hatune.log");
    let stderr = std::fs::File::create(&log).expect("log file");
    let start = Instant::now();
    let child = Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("spawn hatune");
    let pid = libc::pid_t::try_from(child.id()).expect("a pid");
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is plain data; wait4 fills it in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let reaped = loop {
        // SAFETY: valid pointers to locals; the pid is our own unreaped child.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if r == -1 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        break r;
    };
    let wall = start.elapsed();
    assert_eq!(reaped, pid, "wait4: {}", std::io::Error::last_os_error());
    // Reaped already: dropping the handle neither waits nor kills.
    drop(child);
    let ok = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    if !ok {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(20).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        panic!(
            "hatune {args:?} failed (wait status {status:#x}):\n{}",
            tail.join("\n")
        );
    }
    Run {
        wall,
        max_rss_kb: u64::try_from(usage.ru_maxrss).unwrap_or(0),
    }
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}
