//! Memory: peak RSS of `hatune run` ticking over 1,000 fake cAdvisor hosts and a real HAProxy
//! with 10,000 servers, and whether RSS grows tick after tick.
//!
//! `cargo bench --bench memory` (optional arguments: `-- HOSTS CONTAINERS_PER_HOST TICKS`,
//! default `1000 10 40`; the figures in the README used `1000 10 100`, ~4 min; up to 10,000
//! hosts, e.g. `-- 10000 1 100`). `HATUNE_BIN=/path/to/hatune` runs that binary instead of this
//! build's.
//!
//! The daemon runs as a child (`hatune run --config F`, `interval` 200 ms, logs to /dev/null)
//! against a fleet served by this process (10 app containers per host = one HAProxy server
//! each, 100 backends × 100 servers, 60 samples per container, ~1.2 MB per reply, no added
//! latency, samples re-rendered every second with the loads moving between containers so that
//! weights keep changing). Ticks are counted on its `/metrics` (`hatune_ticks_total`); VmRSS is
//! read from /proc/PID/status after tick 10 and after the last tick, and VmHWM (peak RSS) at
//! the end. It also prints the `/api/v1.3/docker/` bytes the fleet served per host per tick
//! over the run (the fleet's counter / ticks / hosts), and the requests per tick.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hatune::sink::haproxy::Address;
use hatune::testkit::fleet::{self, Fleet, FleetSpec};
use hatune::testkit::haproxy::{free_port, Haproxy};

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let hosts = args.first().copied().unwrap_or(1000);
    let per_host = args.get(1).copied().unwrap_or(10);
    let ticks = args.get(2).copied().unwrap_or(40) as u64;
    // 10,000 hosts take a listener each plus one connection per host in flight: raise the hard
    // limit where allowed (root), then the soft one to it.
    if rlimit::Resource::NOFILE.get().map_or(0, |l| l.1) < 65_536 {
        let _ = rlimit::Resource::NOFILE.set(65_536, 65_536);
    }
    rlimit::increase_nofile_limit(u64::MAX).expect("raise RLIMIT_NOFILE");
    let bin = std::env::var("HATUNE_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_hatune").into());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let spec = FleetSpec {
        hosts,
        containers_per_host: per_host,
        latency: Duration::ZERO,
        refresh: Some(Duration::from_secs(1)),
        rotate_loads: true,
        ..FleetSpec::default()
    };
    let fleet = runtime.block_on(Fleet::start(spec.clone())).expect("fleet");
    let haproxy = Haproxy::start(&fleet::haproxy_backends(&spec)).expect("haproxy");
    let Address::Unix(sock) = haproxy.admin_socket() else {
        unreachable!()
    };
    let metrics = format!("127.0.0.1:{}", free_port());
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("run.json");
    let config = fleet::hatune_config(
        &spec,
        fleet.urls(),
        &sock.display().to_string(),
        "5s",
        &format!(r#", "interval": "200ms", "metrics_listen": "{metrics}""#),
    );
    std::fs::write(&path, config).expect("write config");
    println!(
        "machine: {} cores; {} hosts × {} containers = {} servers in {} backends; reply {} KB",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        hosts,
        per_host,
        hosts * per_host,
        fleet::groups(hosts),
        fleet.docker_reply_len() / 1000
    );
    println!("hatune: {bin}");

    let started = Instant::now();
    let mut child = Command::new(&bin)
        .args(["run", "--config"])
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn hatune run");
    let pid = child.id();
    let deadline = started + Duration::from_secs(600);
    let mut rss_at_10 = None;
    let mut last_tick = 0;
    let mut tick_times = vec![];
    // The fleet's docker bytes and requests when the last tick was seen.
    let served = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            panic!("hatune run exited early: {status}");
        }
        assert!(Instant::now() < deadline, "too slow: {last_tick} ticks");
        let n = ticks_total(&metrics).unwrap_or(0);
        if n > last_tick {
            tick_times.push((n, started.elapsed()));
            last_tick = n;
            if n >= 10 && rss_at_10.is_none() {
                rss_at_10 = Some(status_kb(pid, "VmRSS"));
            }
            if n >= ticks {
                break (fleet.docker_bytes_sent(), fleet.requests());
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let rss_end = status_kb(pid, "VmRSS");
    let hwm = status_kb(pid, "VmHWM");
    let took = started.elapsed();
    let _ = child.kill();
    let _ = child.wait();
    let (n10, t10) = tick_times
        .iter()
        .find(|(n, _)| *n >= 10)
        .copied()
        .unwrap_or((0, Duration::ZERO));
    println!(
        "ticks {last_tick} in {:.1} s ({:.2} s per tick after tick {n10})",
        took.as_secs_f64(),
        (took - t10).as_secs_f64() / (last_tick - n10).max(1) as f64
    );
    println!(
        "VmRSS after tick {n10}: {:.1} MB; after tick {last_tick}: {:.1} MB; VmHWM (peak): {:.1} MB",
        rss_at_10.unwrap_or(0) as f64 / 1024.0,
        rss_end as f64 / 1024.0,
        hwm as f64 / 1024.0
    );
    let ticked = last_tick.max(1) as f64;
    println!(
        "docker bytes served per host per tick: {:.1} KB ({:.1} MB per tick over {hosts} hosts); requests per tick: {:.0}",
        served.0 as f64 / ticked / hosts as f64 / 1000.0,
        served.0 as f64 / ticked / 1e6,
        served.1 as f64 / ticked
    );
    drop(haproxy);
    runtime.block_on(async { drop(fleet) });
}

/// `hatune_ticks_total` from the daemon's `/metrics`, if it answers.
fn ticks_total(addr: &str) -> Option<u64> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    body.lines()
        .find_map(|l| l.strip_prefix("hatune_ticks_total "))
        .and_then(|v| v.trim().parse().ok())
}

fn status_kb(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}
