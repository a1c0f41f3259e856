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
//! samples each (~450 KB per reply). Each figure is the median of 5 runs (min in brackets).
//! Rows at 0 ms latency give the CPU floor (no waiting at all); the last row adds one host
//! that accepts and never answers, with a 1 s timeout.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hatune::sink::haproxy::Address;
use hatune::testkit::fleet::{self, Fleet, FleetSpec};
use hatune::testkit::haproxy::Haproxy;

const RUNS: usize = 5;

fn main() {
    let (soft, hard) = rlimit::Resource::NOFILE.get().expect("getrlimit");
    let raised = rlimit::increase_nofile_limit(u64::MAX).expect("raise RLIMIT_NOFILE");
    eprintln!("bench process: RLIMIT_NOFILE soft {soft} -> {raised} (hard {hard})");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let bin = env!("CARGO_BIN_EXE_hatune");
    // `cargo bench --bench poll -- --serve HOSTS LATENCY_MS`: keep one fleet and its HAProxy up
    // (for 10 minutes at most) and print the config path, to run or profile hatune by hand.
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--serve") {
        let hosts: usize = args.get(i + 1).and_then(|v| v.parse().ok()).unwrap_or(1000);
        let latency: u64 = args.get(i + 2).and_then(|v| v.parse().ok()).unwrap_or(100);
        let spec = FleetSpec {
            hosts,
            containers_per_host: 3,
            latency: Duration::from_millis(latency),
            ..FleetSpec::default()
        };
        let fleet = runtime.block_on(Fleet::start(spec.clone())).expect("fleet");
        let haproxy = Haproxy::start(&fleet::haproxy_backends(&spec)).expect("haproxy");
        let Address::Unix(sock) = haproxy.admin_socket() else {
            unreachable!()
        };
        let config =
            fleet::hatune_config(&spec, fleet.urls(), &sock.display().to_string(), "5s", "");
        let path = dir.path().join("serve.json");
        std::fs::write(&path, config).expect("write config");
        println!(
            "serving {hosts} hosts at {latency} ms; config: {}",
            path.display()
        );
        runtime.block_on(async { tokio::time::sleep(Duration::from_secs(600)).await });
        return;
    }
    println!(
        "machine: {} cores, {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model()
    );
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
        let mut times: Vec<Duration> = (0..RUNS).map(|_| run_once(bin, &path)).collect();
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

/// One `hatune once --dry-run`, spawn to exit. Panics if it fails (exit code 1 would mean a
/// socket or a weight failed; dry-run sets none).
fn run_once(bin: &str, config: &Path) -> Duration {
    let start = Instant::now();
    let status = Command::new(bin)
        .args(["once", "--dry-run", "--config"])
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("spawn hatune");
    let took = start.elapsed();
    assert!(status.success(), "hatune once failed: {status}");
    took
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
