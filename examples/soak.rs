//! The soak: the real daemon (`hatune run`, a child process) against the closed-loop plant of
//! `examples/fleet.rs` ([`hatune::testkit::plant`]: a real HAProxy, one tiny HTTP backend per
//! server, one fake cAdvisor per host whose CPU follows the requests served, a constant request
//! load) for a bounded time, with random events from a seeded generator, checking after every
//! tick that hatune keeps its promises.
//!
//! ```text
//! cargo run --release --example soak -- [--minutes 30] [--seed 1] [--tick-ms 1000]
//!     [--rate 600] [--events 0.25] [--reapply 0.5] [--hatune PATH] [--log FILE]
//!     [--naming alias|nomad|compose]
//! ```
//!
//! **The binary.** `--hatune PATH` (or `HATUNE_BIN`) runs that binary. Otherwise the soak runs
//! `cargo build --bin hatune` (with `--release` when the soak itself is a release build) in
//! this crate and takes the executable cargo reports: the daemon is always the current source,
//! built as users build it (without the `testkit` feature). It runs as
//! `hatune -v --log-format json run --config F` with `MALLOC_ARENA_MAX=1`, as
//! `systemd/hatune.service` runs it; the config has `interval` = `--tick-ms`, `min_weight` 2,
//! `max_weight` 200 and `metrics_listen` on a free loopback port.
//!
//! **The plant.** Five hosts of 1, 1, 2, 4 and 2 cores, servers `app-1`..`app-5` in backend `app`,
//! `app-5` out of HAProxy's config at the start (it joins when an event says so), 2% noise.
//! `--naming` names servers and containers as that kind of fleet would (see
//! `hatune::testkit::plant::Naming`), with the hatune backend that maps them: `nomad` by
//! address, each host on its own 127.0.1.N; `compose` by a `server` template. The soak's own
//! messages call server N `app-N` whatever the naming.
//!
//! **Events** (each tick starts one with probability `--events`; ends are scheduled when it
//! starts): a host's cAdvisor down (503) or answering junk for 3-20 ticks; a host losing half
//! its cores for 10-60 ticks; an operator draining or MAINT-ing a server for 3-30 ticks, then
//! `ready`; an operator setting a weight (0-256) for 3-30 ticks, then handing it back by setting
//! it back to the weight hatune expects, or by SIGHUP; HAProxy reloads; a server leaving
//! HAProxy's config for 5-40 ticks, or joining; SIGHUP to the daemon (half of them switching
//! `controller.mode` between halfway and capacity). A reload forgets the operator's DRAIN, MAINT
//! and weights; after half of the reloads (`--reapply`) the operator sets them again at once,
//! before hatune's next tick (as `load-server-state-from-file` would), after the others they
//! are gone. The operator acts between ticks: the soak stops the daemon
//! (SIGSTOP) while it changes HAProxy and continues it (SIGCONT) after, so that no tick reads
//! HAProxy before an operator's command and writes after it (a race no client of HAProxy's
//! runtime API can close, as it has no compare-and-set; it is not what is checked here). The
//! last ticks (a sixth of the run, 20 to 60) are quiet: every event is ended at their start.
//!
//! **Checks**, after every tick (the daemon's `tick done` debug line):
//! - HAProxy's `show stat`: every server hatune tunes has a weight within min..max (a weight
//!   hatune inherited, an operator's handed back or the config's after a reload, is accepted
//!   until it changes); a drained or MAINT server's weight is the one it had when the operator
//!   took it out; a weight an operator set is unchanged until it is handed back;
//! - the daemon's JSON logs: every `weight changed` is within min..max and is not for a server
//!   an operator has taken out or weighted;
//! - its `/metrics`: `hatune_server_weight` of the servers it tunes within min..max, and
//!   `hatune_ticks_total` equal to the ticks logged;
//! - zero failed requests through HAProxy (checked again once the load has stopped);
//! - the daemon is alive, ticks at least every 10 s, and exits 0 on SIGTERM at the end.
//!
//! It also samples the daemon's RSS and open file descriptors from `/proc/PID` each minute, and
//! notes what looks wrong without breaking a promise (anomalies: a takeover logged for a server
//! no operator touched, `hatune_overridden_servers` not matching the operator's servers, a
//! SIGHUP not acknowledged). It prints a summary and exits 1 on any violation.
//!
//! Everything it starts stops when it ends: on a violation, a panic, Ctrl-C or SIGTERM (the
//! daemon is also told to die with the soak by `PR_SET_PDEATHSIG`; HAProxy is killed when the
//! plant drops). Only a SIGKILL of the soak can leave HAProxy running.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use hatune::testkit::cadvisor::Behaviour;
use hatune::testkit::haproxy::free_port;
use hatune::testkit::plant::{Error, Naming, Plant, PlantSpec, Rng, CONFIG_WEIGHT};

const CORES: [f64; 5] = [1.0, 1.0, 2.0, 4.0, 2.0];
const MIN_WEIGHT: u32 = 2;
const MAX_WEIGHT: u32 = 200;
const NOISE: f64 = 0.02;
/// Servers the operator leaves serving, at least (of 5).
const KEEP_SERVING: usize = 3;
/// A daemon that has not ticked for this long has stalled.
const STALL: Duration = Duration::from_secs(10);
/// Log lines kept to show with a violation.
const RECENT_LINES: usize = 60;

// Linux signal numbers and prctl option (the soak talks to the kernel directly rather than
// through `kill(1)`, which a bare Debian machine does not have without procps).
const SIGHUP: i32 = 1;
const SIGKILL: i32 = 9;
const SIGTERM: i32 = 15;
const SIGCONT: i32 = 18;
const SIGSTOP: i32 = 19;
const PR_SET_PDEATHSIG: i32 = 1;

extern "C" {
    fn kill(pid: i32, sig: i32) -> i32;
    fn prctl(option: i32, ...) -> i32;
}

fn signal(pid: u32, sig: i32) -> std::io::Result<()> {
    // SAFETY: kill(2) with a pid this process spawned and a valid signal number.
    if unsafe { kill(pid as i32, sig) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

// ---------------------------------------------------------------------------------------------
// Arguments
// ---------------------------------------------------------------------------------------------

struct Args {
    minutes: f64,
    seed: u64,
    tick: Duration,
    rate: f64,
    events: f64,
    reapply: f64,
    hatune: Option<PathBuf>,
    log: Option<PathBuf>,
    naming: Naming,
}

fn args() -> Result<Args, Error> {
    let mut a = Args {
        minutes: 30.0,
        seed: 1,
        tick: Duration::from_millis(1000),
        rate: 600.0,
        events: 0.25,
        reapply: 0.5,
        hatune: std::env::var_os("HATUNE_BIN").map(PathBuf::from),
        log: None,
        naming: Naming::Alias,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--minutes" => a.minutes = value()?.parse::<f64>()?.clamp(0.1, 24.0 * 60.0),
            "--seed" => a.seed = value()?.parse()?,
            "--tick-ms" => a.tick = Duration::from_millis(value()?.parse::<u64>()?.max(300)),
            "--rate" => a.rate = value()?.parse::<f64>()?.clamp(10.0, 2000.0),
            "--events" => a.events = value()?.parse::<f64>()?.clamp(0.0, 1.0),
            "--reapply" => a.reapply = value()?.parse::<f64>()?.clamp(0.0, 1.0),
            "--hatune" => a.hatune = Some(value()?.into()),
            "--log" => a.log = Some(value()?.into()),
            "--naming" => a.naming = value()?.parse()?,
            _ => {
                return Err(format!(
                    "unknown flag {flag}; see the doc at the top of examples/soak.rs"
                )
                .into())
            }
        }
    }
    Ok(a)
}

/// `cargo build --bin hatune` in this crate, in the soak's own profile; the executable's path.
fn build_hatune() -> Result<PathBuf, Error> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = std::process::Command::new(cargo);
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "build",
            "--bin",
            "hatune",
            "--message-format=json-render-diagnostics",
        ])
        .stderr(Stdio::inherit());
    if !cfg!(debug_assertions) {
        cmd.arg("--release");
    }
    eprintln!("soak: building the daemon: {cmd:?}");
    let out = cmd.output()?;
    if !out.status.success() {
        return Err(format!("cargo build --bin hatune failed: {}", out.status).into());
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["reason"] == "compiler-artifact" && v["target"]["name"] == "hatune")
        .find_map(|v| v["executable"].as_str().map(PathBuf::from))
        .ok_or_else(|| "cargo reported no hatune executable".into())
}

// ---------------------------------------------------------------------------------------------
// The daemon
// ---------------------------------------------------------------------------------------------

/// A line the daemon printed.
struct Line {
    text: String,
}

struct Daemon {
    child: Child,
    pid: u32,
}

impl Daemon {
    fn start(bin: &Path, config: &Path) -> Result<(Daemon, mpsc::UnboundedReceiver<Line>), Error> {
        let mut cmd = Command::new(bin);
        cmd.args(["-v", "--log-format", "json", "run", "--config"])
            .arg(config)
            .env("MALLOC_ARENA_MAX", "1")
            .env_remove("RUST_LOG")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec. The
        // signal comes when the spawning thread exits: this is the runtime's main thread, which
        // lives as long as the soak.
        unsafe {
            cmd.pre_exec(|| {
                if prctl(PR_SET_PDEATHSIG, SIGKILL as std::ffi::c_ulong) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn()?;
        let pid = child.id().ok_or("the daemon exited at once")?;
        let (tx, rx) = mpsc::unbounded_channel();
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let stderr = child.stderr.take().ok_or("no stderr")?;
        for out in [
            Box::new(stdout) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
            Box::new(stderr),
        ] {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(out).lines();
                while let Ok(Some(text)) = lines.next_line().await {
                    if tx.send(Line { text }).is_err() {
                        break;
                    }
                }
            });
        }
        Ok((Daemon { child, pid }, rx))
    }

    /// RSS in kB and open file descriptors, from /proc.
    fn sample(&self) -> Option<(u64, usize)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).ok()?;
        let rss = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        let fds = std::fs::read_dir(format!("/proc/{}/fd", self.pid))
            .ok()?
            .count();
        Some((rss, fds))
    }

    /// SIGTERM, then the exit status within `within` (else SIGKILL and `None`).
    async fn stop(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let _ = signal(self.pid, SIGCONT);
        let _ = signal(self.pid, SIGTERM);
        match tokio::time::timeout(within, self.child.wait()).await {
            Ok(Ok(status)) => Some(status),
            _ => {
                let _ = self.child.kill().await;
                None
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// What the soak knows of each server
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Not in HAProxy's config.
    Absent,
    /// hatune's to tune.
    Tuned,
    /// Drained or in MAINT by the operator, at this weight.
    Out { maint: bool, weight: u32 },
    /// Weighted by the operator: `weight` set over `before`.
    Held { weight: u32, before: u32 },
}

#[derive(Debug, Clone)]
struct Server {
    state: State,
    /// A weight that is not hatune's (an operator's handed back, the config's): accepted out of
    /// min..max until it changes.
    inherited: Option<u32>,
    /// What hatune's takeover line says to set back.
    expected: Option<u32>,
    /// The weight HAProxy held at the last tick the server was hatune's: what a reload has
    /// hatune restore.
    last_tuned: Option<u32>,
}

/// Something scheduled to end an event.
#[derive(Debug, Clone, Copy, PartialEq)]
enum End {
    HostBack(usize),
    RegainCores(usize),
    Ready(usize),
    HandBack(usize),
    Rejoin(usize),
    Hup,
}

#[derive(Default)]
struct Tally {
    checks: u64,
    violations: Vec<String>,
    violations_by_kind: BTreeMap<&'static str, u64>,
    anomalies: Vec<String>,
    anomalies_by_kind: BTreeMap<&'static str, u64>,
}

impl Tally {
    fn check(&mut self, ok: bool, kind: &'static str, what: impl FnOnce() -> String) {
        self.checks += 1;
        if !ok {
            let what = what();
            eprintln!("VIOLATION [{kind}] {what}");
            *self.violations_by_kind.entry(kind).or_default() += 1;
            if self.violations.len() < 50 {
                self.violations.push(format!("[{kind}] {what}"));
            }
        }
    }

    fn anomaly(&mut self, kind: &'static str, what: String) {
        *self.anomalies_by_kind.entry(kind).or_default() += 1;
        if self.anomalies_by_kind[kind] <= 3 {
            eprintln!("anomaly [{kind}] {what}");
            self.anomalies.push(format!("[{kind}] {what}"));
        }
    }
}

struct Soak {
    a: Args,
    plant: Plant,
    daemon: Daemon,
    lines: mpsc::UnboundedReceiver<Line>,
    config_path: PathBuf,
    metrics_url: String,
    http: reqwest::Client,
    rng: Rng,
    servers: Vec<Server>,
    hosts_busy: Vec<bool>,
    losing: Vec<bool>,
    pending: Vec<(u64, End)>,
    mode: &'static str,
    modes_seen: BTreeSet<&'static str>,
    tally: Tally,
    events: BTreeMap<&'static str, u64>,
    ticks: u64,
    ratios: Vec<f64>,
    samples: Vec<(Duration, u64, usize)>,
    started: Instant,
    last_tick: Instant,
    hup_pending: Option<(u64, usize)>,
    /// The tick after which HAProxy was last reloaded.
    reloaded_at: Option<u64>,
    stopped_for: Duration,
    stops: u64,
    recent: VecDeque<String>,
    levels: BTreeMap<String, u64>,
    messages: BTreeMap<String, u64>,
    log_file: Option<std::fs::File>,
    tick_ms: Vec<u64>,
}

// ---------------------------------------------------------------------------------------------
// Main
// ---------------------------------------------------------------------------------------------

#[tokio::main]
async fn main() {
    let code = match run().await {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(e) => {
            eprintln!("soak: error: {e}");
            2
        }
    };
    // Everything `run` started has been stopped and dropped by now.
    std::process::exit(code);
}

/// Whether every check held.
async fn run() -> Result<bool, Error> {
    let a = args()?;
    let bin = match &a.hatune {
        Some(p) => p.clone(),
        None => tokio::task::spawn_blocking(build_hatune).await??,
    };
    let dir = tempfile::tempdir()?;
    let plant = Plant::start(&PlantSpec {
        cores: CORES.to_vec(),
        rate: a.rate,
        absent: BTreeSet::from([5]),
        naming: a.naming,
        kubelet: false,
        ..PlantSpec::default()
    })
    .await?;
    let backend = a.naming.backend();
    let metrics_port = free_port();
    let config_path = dir.path().join("hatune.json");
    let (socket, urls, tick_ms) = (
        plant.admin_socket().to_string(),
        plant.cadvisor_urls(),
        a.tick.as_millis(),
    );
    let mut soak_config = move |mode: &str| {
        serde_json::json!({
            "haproxy": [socket],
            "cadvisor": urls,
            "timeout": "500ms",
            "window": format!("{tick_ms}ms"),
            "interval": format!("{tick_ms}ms"),
            "metrics_listen": format!("127.0.0.1:{metrics_port}"),
            "backends": [backend],
            "controller": {"mode": mode, "min_weight": MIN_WEIGHT, "max_weight": MAX_WEIGHT},
        })
        .to_string()
    };
    std::fs::write(&config_path, soak_config("halfway"))?;
    let (daemon, lines) = Daemon::start(&bin, &config_path)?;
    println!(
        "soak: {} min, seed {}, daemon {} (pid {}), HAProxy {} on :{}, hosts of {:?} cores, \
         {} req/s, a tick every {} ms, weights {MIN_WEIGHT}..{MAX_WEIGHT}",
        a.minutes,
        a.seed,
        bin.display(),
        daemon.pid,
        plant.haproxy_pid().unwrap_or(0),
        plant.front(),
        CORES,
        a.rate,
        a.tick.as_millis()
    );
    let log_file = match &a.log {
        Some(p) => Some(std::fs::File::create(p)?),
        None => None,
    };
    let n = plant.len();
    let mut soak = Soak {
        rng: Rng::new(a.seed),
        plant,
        daemon,
        lines,
        config_path,
        metrics_url: format!("http://127.0.0.1:{metrics_port}/metrics"),
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()?,
        servers: (1..=n)
            .map(|s| Server {
                state: if s == 5 { State::Absent } else { State::Tuned },
                inherited: Some(CONFIG_WEIGHT),
                expected: None,
                last_tuned: None,
            })
            .collect(),
        hosts_busy: vec![false; n],
        losing: vec![false; n],
        pending: vec![],
        mode: "halfway",
        modes_seen: BTreeSet::from(["halfway"]),
        tally: Tally::default(),
        events: BTreeMap::new(),
        ticks: 0,
        ratios: vec![],
        samples: vec![],
        started: Instant::now(),
        last_tick: Instant::now(),
        hup_pending: None,
        reloaded_at: None,
        stopped_for: Duration::ZERO,
        stops: 0,
        recent: VecDeque::new(),
        levels: BTreeMap::new(),
        messages: BTreeMap::new(),
        log_file,
        tick_ms: vec![],
        a,
    };
    let result = soak.run(&mut soak_config).await;
    // Stop everything, whatever happened.
    let exit = soak.daemon.stop(Duration::from_secs(5)).await;
    soak.plant.stop().await;
    let failed = soak.plant.failed();
    soak.tally.check(failed == 0, "failed-requests", || {
        format!(
            "{failed} requests failed through HAProxy: {:?}",
            soak.plant.failures()
        )
    });
    soak.tally
        .check(exit.is_some_and(|s| s.success()), "daemon-exit", || {
            format!("the daemon did not exit 0 within 5 s of SIGTERM: {exit:?}")
        });
    // Lines logged while stopping.
    while let Ok(line) = soak.lines.try_recv() {
        soak.on_line(line);
    }
    if let Err(e) = &result {
        soak.tally.check(false, "soak-stopped", || {
            format!("the soak stopped early: {e}")
        });
    }
    soak.summary();
    let ok = soak.tally.violations.is_empty();
    drop(soak);
    drop(dir);
    Ok(ok)
}

impl Soak {
    async fn run(&mut self, config: &mut impl FnMut(&str) -> String) -> Result<(), Error> {
        let duration = Duration::from_secs_f64(self.a.minutes * 60.0);
        let total_ticks = (duration.as_secs_f64() / self.a.tick.as_secs_f64()) as u64;
        let quiet_from = total_ticks.saturating_sub((total_ticks / 6).clamp(20, 60));
        let mut quiet = false;
        let mut next_sample = Duration::ZERO;
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        self.started = Instant::now();
        self.last_tick = Instant::now();
        loop {
            let line = tokio::select! {
                line = self.lines.recv() => line.ok_or("the daemon closed its output")?,
                _ = tokio::signal::ctrl_c() => return Err("interrupted (SIGINT)".into()),
                _ = term.recv() => return Err("terminated (SIGTERM)".into()),
                _ = hup.recv() => return Err("hung up (SIGHUP)".into()),
                _ = tokio::time::sleep_until((self.last_tick + STALL).into()) => {
                    return Err(format!("no tick for {STALL:?}").into());
                }
                status = self.daemon.child.wait() => {
                    return Err(format!("the daemon exited: {status:?}").into());
                }
            };
            if !self.on_line(line) {
                continue;
            }
            // A tick is done.
            self.ticks += 1;
            self.last_tick = Instant::now();
            self.after_tick().await?;
            let elapsed = self.started.elapsed();
            if elapsed >= next_sample {
                self.sample(elapsed);
                next_sample += Duration::from_secs(60);
            }
            if elapsed >= duration {
                self.sample(elapsed);
                return Ok(());
            }
            if !quiet && self.ticks >= quiet_from {
                quiet = true;
                println!("tick {:4}: quiet from here: every event ends", self.ticks);
                let all: Vec<End> = self.pending.drain(..).map(|(_, e)| e).collect();
                if self.end_events(all).await? {
                    self.sighup(false, config)?;
                }
                self.all_back().await?;
                // Once hatune has seen those weights: every operator's server back to it.
                self.pending.push((self.ticks + 2, End::Hup));
            } else {
                let due: Vec<End> = self
                    .pending
                    .iter()
                    .filter(|(t, _)| *t <= self.ticks)
                    .map(|(_, e)| *e)
                    .collect();
                self.pending.retain(|(t, _)| *t > self.ticks);
                if self.end_events(due).await? {
                    self.sighup(false, config)?;
                }
                if !quiet && self.rng.chance(self.a.events) {
                    self.start_event(config).await?;
                }
            }
            let noise = (0..self.plant.len())
                .map(|_| 1.0 + NOISE * self.rng.normal())
                .collect();
            self.plant.set_noise(noise);
        }
    }

    /// Reads one line; true when it is the end of a tick.
    fn on_line(&mut self, line: Line) -> bool {
        if let Some(f) = &mut self.log_file {
            use std::io::Write;
            let _ = writeln!(f, "{}", line.text);
        }
        self.recent.push_back(line.text.clone());
        if self.recent.len() > RECENT_LINES {
            self.recent.pop_front();
        }
        let Ok(v) = serde_json::from_str::<Value>(&line.text) else {
            self.tally.anomaly(
                "non-json-line",
                format!("the daemon printed {:?}", line.text),
            );
            return false;
        };
        let level = v["level"].as_str().unwrap_or("?").to_string();
        let message = v["message"].as_str().unwrap_or("").to_string();
        *self.levels.entry(level.clone()).or_default() += 1;
        if level == "WARN" || level == "ERROR" {
            // Messages that carry a value in their text are counted by their first words.
            let key: String = message.split(':').next().unwrap_or("").to_string();
            *self.messages.entry(format!("{level} {key}")).or_default() += 1;
        }
        let server_index = v["server"]
            .as_str()
            .and_then(|s| s.strip_prefix(self.plant.naming().prefix()))
            .and_then(|s| s.parse::<usize>().ok())
            .filter(|s| (1..=self.servers.len()).contains(s));
        match message.as_str() {
            "tick done" => {
                if let Some(ms) = v["took_ms"].as_u64() {
                    self.tick_ms.push(ms);
                }
                return true;
            }
            "weight changed" => {
                let new = v["new"].as_u64().unwrap_or(u64::MAX);
                let server = v["server"].as_str().unwrap_or("?").to_string();
                self.tally.check(
                    (u64::from(MIN_WEIGHT)..=u64::from(MAX_WEIGHT)).contains(&new),
                    "weight-bounds",
                    || format!("tick {}: logged {server} → {new}", self.ticks + 1),
                );
                if let Some(s) = server_index {
                    let state = self.servers[s - 1].state;
                    // Logged during the tick after the one that ended at `self.ticks`.
                    let kind = if self.reloaded_at == Some(self.ticks) {
                        "operator-server-written-after-reload"
                    } else {
                        "operator-server-written"
                    };
                    self.tally.check(matches!(state, State::Tuned), kind, || {
                        format!(
                            "tick {}: logged {server} {} → {new} while {state:?}",
                            self.ticks + 1,
                            v["old"]
                        )
                    });
                }
            }
            m if m.starts_with("weight changed outside hatune") => {
                if let Some(s) = server_index {
                    let server = &mut self.servers[s - 1];
                    server.expected = v["expected"].as_u64().map(|e| e as u32);
                    if !matches!(server.state, State::Held { .. }) {
                        let state = server.state;
                        self.tally.anomaly(
                            "unexpected-takeover",
                            format!(
                                "tick {}: takeover of app-{s} ({state:?}), expected {}, found {}",
                                self.ticks + 1,
                                v["expected"],
                                v["found"]
                            ),
                        );
                    }
                }
            }
            "config reloaded" | "config reload failed: keeping the old config" => {
                if message != "config reloaded" {
                    self.tally.anomaly(
                        "config-reload-failed",
                        format!("tick {}: {}", self.ticks, line.text),
                    );
                }
                if let Some((_, handed)) = self.hup_pending.take() {
                    let resumed = v["resumed"].as_u64().unwrap_or(0) as usize;
                    if resumed != handed {
                        self.tally.anomaly(
                            "sighup-resumed",
                            format!(
                                "tick {}: SIGHUP handed back {handed} operator's servers, the \
                                 daemon resumed {resumed}",
                                self.ticks
                            ),
                        );
                    }
                }
            }
            _ => {}
        }
        false
    }

    /// The checks after a tick: HAProxy's weights and states, and the metrics.
    async fn after_tick(&mut self) -> Result<(), Error> {
        let m = self.plant.measure().await?;
        // Metrics first: they judge inherited weights as they were during the tick.
        self.check_metrics().await;
        // The first tick after a reload: what hatune restores.
        let after_reload = self.reloaded_at == Some(self.ticks.saturating_sub(1));
        for (i, row) in m.rows.iter().enumerate() {
            let name = self.plant.naming().server(i);
            let t = self.ticks;
            let server = &mut self.servers[i];
            let present = row.status != "absent";
            self.tally.check(
                present == (server.state != State::Absent),
                "soak-model",
                || {
                    format!(
                        "tick {t}: {name} is {} in HAProxy, {:?} here",
                        row.status, server.state
                    )
                },
            );
            match server.state {
                State::Absent => {}
                State::Tuned => {
                    server.last_tuned = Some(row.weight);
                    if server.inherited != Some(row.weight) {
                        server.inherited = None;
                        self.tally.check(
                            (MIN_WEIGHT..=MAX_WEIGHT).contains(&row.weight),
                            "weight-bounds",
                            || format!("tick {t}: {name} has weight {} in HAProxy", row.weight),
                        );
                    } else {
                        self.tally.checks += 1;
                    }
                }
                State::Out { maint, weight } => {
                    let want = if maint { "MAINT" } else { "DRAIN" };
                    self.tally
                        .check(row.status.starts_with(want), "soak-model", || {
                            format!("tick {t}: {name} is {} in HAProxy, {want} here", row.status)
                        });
                    let kind = if after_reload {
                        "operator-out-weight-after-reload"
                    } else {
                        "operator-out-weight"
                    };
                    self.tally.check(row.weight == weight, kind, || {
                        format!(
                            "tick {t}: {name}, {want} at weight {weight}, has weight {}",
                            row.weight
                        )
                    });
                    if row.weight != weight {
                        server.state = State::Out {
                            maint,
                            weight: row.weight,
                        };
                    }
                }
                State::Held { weight, .. } => {
                    let kind = if after_reload {
                        "operator-weight-after-reload"
                    } else {
                        "operator-weight"
                    };
                    self.tally.check(row.weight == weight, kind, || {
                        format!(
                            "tick {t}: {name}, set to {weight} by the operator, has weight {}",
                            row.weight
                        )
                    });
                    if row.weight != weight {
                        // The operator's weight is gone: reported once, then hatune's again.
                        server.state = State::Tuned;
                        server.inherited = Some(row.weight);
                    }
                }
            }
        }
        self.ratios.push(m.ratio);
        Ok(())
    }

    async fn check_metrics(&mut self) {
        let t = self.ticks;
        let body = match self.http.get(&self.metrics_url).send().await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(e) => {
                self.tally
                    .check(false, "metrics", || format!("tick {t}: GET /metrics: {e}"));
                return;
            }
        };
        let mut ticks_total = None;
        let mut overridden = None;
        for line in body.lines() {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            if series == "hatune_ticks_total" {
                ticks_total = Some(value as u64);
            } else if series == "hatune_overridden_servers" {
                overridden = Some(value as usize);
            } else if let Some(labels) = series.strip_prefix("hatune_server_weight{") {
                let Some(s) = labels
                    .split(&format!("server=\"{}", self.plant.naming().prefix()))
                    .nth(1)
                    .and_then(|r| r.split('"').next())
                    .and_then(|n| n.parse::<usize>().ok())
                    .filter(|s| (1..=self.servers.len()).contains(s))
                else {
                    continue;
                };
                let server = &self.servers[s - 1];
                if server.state == State::Tuned {
                    let w = value as u32;
                    self.tally.check(
                        server.inherited == Some(w) || (MIN_WEIGHT..=MAX_WEIGHT).contains(&w),
                        "weight-bounds",
                        || format!("tick {t}: /metrics says app-{s} weight {value}"),
                    );
                }
            }
        }
        self.tally.check(ticks_total == Some(t), "metrics", || {
            format!("tick {t}: /metrics says hatune_ticks_total {ticks_total:?}")
        });
        let held = self
            .servers
            .iter()
            .filter(|s| matches!(s.state, State::Held { .. }))
            .count();
        // A weight of 0 is the operator's drain either way: hatune may count it or not.
        let held_nonzero = self
            .servers
            .iter()
            .filter(|s| matches!(s.state, State::Held { weight, .. } if weight > 0))
            .count();
        if self.hup_pending.is_none()
            && !overridden.is_some_and(|o| (held_nonzero..=held).contains(&o))
        {
            let states: Vec<String> = self
                .servers
                .iter()
                .enumerate()
                .map(|(i, s)| format!("app-{} {:?}", i + 1, s.state))
                .collect();
            self.tally.anomaly(
                "overridden-gauge",
                format!(
                    "tick {t}: hatune_overridden_servers {overridden:?}, the operator holds \
                     {held} ({})",
                    states.join(", ")
                ),
            );
        }
        if let Some((sent, _)) = self.hup_pending {
            if t > sent + 2 {
                self.tally.anomaly(
                    "sighup-unanswered",
                    format!("tick {t}: no `config reloaded` since the SIGHUP at tick {sent}"),
                );
                self.hup_pending = None;
            }
        }
    }

    fn sample(&mut self, at: Duration) {
        if let Some((rss, fds)) = self.daemon.sample() {
            self.samples.push((at, rss, fds));
        }
    }

    fn count(&mut self, kind: &'static str) {
        *self.events.entry(kind).or_default() += 1;
    }

    fn note(&self, what: String) {
        println!("tick {:4}: {what}", self.ticks);
    }

    /// Stops the daemon while the operator changes HAProxy; [`resume`](Self::resume) after.
    fn pause(&mut self) -> Result<Instant, Error> {
        signal(self.daemon.pid, SIGSTOP)?;
        self.stops += 1;
        Ok(Instant::now())
    }

    /// Continues the daemon, and passes on what the operator's work gave.
    fn resume<T>(&mut self, since: Instant, result: Result<T, Error>) -> Result<T, Error> {
        let resumed = signal(self.daemon.pid, SIGCONT);
        self.stopped_for += since.elapsed();
        resumed?;
        result
    }

    /// Weight and status of `app-S` in HAProxy now.
    async fn stat(&self, s: usize) -> Result<(u32, String), Error> {
        let stat = self.plant.admin().show_stat().await?;
        let name = self.plant.naming().server(s.saturating_sub(1));
        stat.servers
            .iter()
            .find(|r| r.backend == "app" && r.server == name)
            .map(|r| (r.user_weight(), r.status.clone()))
            .ok_or_else(|| format!("{name} is not in HAProxy").into())
    }

    fn schedule(&mut self, lo: u64, hi: u64, end: End) -> u64 {
        let d = lo + self.rng.next_u64() % (hi - lo + 1);
        self.pending.push((self.ticks + d, end));
        d
    }

    fn serving(&self) -> usize {
        self.servers
            .iter()
            .filter(|s| {
                (s.state == State::Tuned && s.inherited != Some(0))
                    || matches!(s.state, State::Held { weight, .. } if weight > 0)
            })
            .count()
    }

    fn pick(&mut self, from: &[usize]) -> Option<usize> {
        (!from.is_empty()).then(|| from[self.rng.range(0, from.len() - 1)])
    }

    /// Starts one random event (some kinds may find nothing to act on: then nothing happens).
    async fn start_event(&mut self, config: &mut impl FnMut(&str) -> String) -> Result<(), Error> {
        let n = self.plant.len();
        let tuned: Vec<usize> = (1..=n)
            .filter(|&s| self.servers[s - 1].state == State::Tuned)
            .collect();
        let may_take_out = self.serving() > KEEP_SERVING;
        let free_hosts: Vec<usize> = (0..n).filter(|&i| !self.hosts_busy[i]).collect();
        let whole_hosts: Vec<usize> = (0..n).filter(|&i| !self.losing[i]).collect();
        let rejoining: Vec<usize> = self
            .pending
            .iter()
            .filter_map(|(_, e)| match e {
                End::Rejoin(s) => Some(*s),
                _ => None,
            })
            .collect();
        let joinable: Vec<usize> = (1..=n)
            .filter(|&s| self.servers[s - 1].state == State::Absent && !rejoining.contains(&s))
            .collect();
        match self.rng.range(0, 10) {
            0 | 1 => {
                let Some(i) = self.pick(&free_hosts) else {
                    return Ok(());
                };
                let junk = self.rng.chance(0.5);
                self.plant.set_host_behaviour(
                    i,
                    if junk {
                        Behaviour::Garbage
                    } else {
                        Behaviour::Status(503)
                    },
                );
                self.hosts_busy[i] = true;
                let d = self.schedule(3, 20, End::HostBack(i));
                let kind = if junk { "junk" } else { "down" };
                self.count(kind);
                self.note(format!("host {} {kind} for {d} ticks", i + 1));
            }
            2 => {
                let Some(i) = self.pick(&whole_hosts) else {
                    return Ok(());
                };
                self.plant.set_cost_factor(i, 2.0);
                self.losing[i] = true;
                let d = self.schedule(10, 60, End::RegainCores(i));
                self.count("lose-cores");
                self.note(format!("host {} loses half its cores for {d} ticks", i + 1));
            }
            3 | 4 if may_take_out => {
                let Some(s) = self.pick(&tuned) else {
                    return Ok(());
                };
                let maint = self.rng.chance(0.5);
                let state = if maint { "maint" } else { "drain" };
                let since = self.pause()?;
                let done = async {
                    self.plant.set_state(s, state).await?;
                    Ok(self.stat(s).await?.0)
                }
                .await;
                let weight = self.resume(since, done)?;
                self.servers[s - 1].state = State::Out { maint, weight };
                let d = self.schedule(3, 30, End::Ready(s));
                self.count(if maint { "maint" } else { "drain" });
                self.note(format!(
                    "operator: app-{s} {state} at weight {weight} for {d} ticks"
                ));
            }
            5 | 6 => {
                let Some(s) = self.pick(&tuned) else {
                    return Ok(());
                };
                let zero = may_take_out && self.rng.chance(0.15);
                let weight = if zero {
                    0
                } else {
                    self.rng.range(1, 256) as u32
                };
                // Never hatune's own weight: the runtime API says nothing of who set a weight,
                // so an operator's equal to hatune's (after a reload, the one it restores)
                // cannot be told from it.
                let hatunes = self.servers[s - 1].last_tuned;
                let since = self.pause()?;
                let done = async {
                    let before = self.stat(s).await?.0;
                    let mut weight = weight;
                    while weight == before || Some(weight) == hatunes {
                        weight = weight % 256 + 1;
                    }
                    self.plant.set_weight(s, weight).await?;
                    Ok((before, weight))
                }
                .await;
                let (before, weight) = self.resume(since, done)?;
                self.servers[s - 1].state = State::Held { weight, before };
                self.servers[s - 1].expected = None;
                let d = self.schedule(3, 30, End::HandBack(s));
                self.count("weight");
                self.note(format!(
                    "operator: app-{s} weight {before} → {weight} for {d} ticks"
                ));
            }
            7 => {
                self.reload(None).await?;
            }
            8 if may_take_out || !joinable.is_empty() => {
                if let Some(s) = self.pick(&joinable) {
                    self.reload(Some((s, true))).await?;
                } else if let Some(s) = self.pick(&tuned) {
                    self.reload(Some((s, false))).await?;
                    let d = self.schedule(5, 40, End::Rejoin(s));
                    self.note(format!("app-{s} back in {d} ticks"));
                }
            }
            _ => {
                let flip = self.rng.chance(0.5);
                self.sighup(flip, config)?;
            }
        }
        Ok(())
    }

    /// A HAProxy reload, with `app-S` joining (true) or leaving (false). Half the time the
    /// operator sets its DRAIN, MAINT and weights again right after.
    async fn reload(&mut self, change: Option<(usize, bool)>) -> Result<(), Error> {
        let reapply = self.rng.chance(self.a.reapply);
        let kind = match change {
            None => "reload",
            Some((_, true)) => "join",
            Some((_, false)) => "leave",
        };
        let took = Instant::now();
        let since = self.pause()?;
        let done = async {
            match change {
                None => self.plant.reload().await?,
                Some((s, true)) => self.plant.join(s).await?,
                Some((s, false)) => self.plant.leave(s).await?,
            }
            let mut states = vec![];
            for s in 1..=self.servers.len() {
                let server = &self.servers[s - 1];
                let state = match (change, server.state) {
                    (Some((c, join)), _) if c == s => {
                        if join {
                            State::Tuned
                        } else {
                            State::Absent
                        }
                    }
                    (_, State::Absent) => State::Absent,
                    (_, State::Tuned) => State::Tuned,
                    (_, _) if !reapply => State::Tuned,
                    (_, State::Out { maint, .. }) => {
                        self.plant
                            .set_state(s, if maint { "maint" } else { "drain" })
                            .await?;
                        State::Out {
                            maint,
                            weight: self.stat(s).await?.0,
                        }
                    }
                    (_, State::Held { weight, before }) => {
                        self.plant.set_weight(s, weight).await?;
                        State::Held { weight, before }
                    }
                };
                states.push(state);
            }
            Ok(states)
        }
        .await;
        let states = self.resume(since, done)?;
        for (server, state) in self.servers.iter_mut().zip(states) {
            // Every weight is the config's now, except those the operator set again.
            server.inherited = Some(CONFIG_WEIGHT);
            server.state = state;
        }
        self.count(kind);
        self.reloaded_at = Some(self.ticks);
        let what = match change {
            None => "HAProxy reload".to_string(),
            Some((s, true)) => format!("app-{s} joins (HAProxy reload)"),
            Some((s, false)) => format!("app-{s} leaves (HAProxy reload)"),
        };
        let operator = if reapply {
            "the operator sets its servers again"
        } else {
            "the operator's states and weights are gone"
        };
        self.note(format!(
            "{what} in {} ms; {operator}",
            took.elapsed().as_millis()
        ));
        Ok(())
    }

    /// SIGHUP to the daemon (with `controller.mode` switched when `flip`): every server the
    /// operator weighted is handed back.
    fn sighup(&mut self, flip: bool, config: &mut impl FnMut(&str) -> String) -> Result<(), Error> {
        if flip {
            self.mode = if self.mode == "halfway" {
                "capacity"
            } else {
                "halfway"
            };
            self.modes_seen.insert(self.mode);
            std::fs::write(&self.config_path, config(self.mode))?;
        }
        let mut handed = 0;
        for server in &mut self.servers {
            if let State::Held { weight, .. } = server.state {
                server.state = State::Tuned;
                server.inherited = Some(weight);
                handed += 1;
            }
        }
        self.pending.retain(|(_, e)| !matches!(e, End::HandBack(_)));
        signal(self.daemon.pid, SIGHUP)?;
        self.hup_pending = Some((self.ticks, handed));
        self.count(if flip { "sighup+mode" } else { "sighup" });
        self.note(format!(
            "SIGHUP{}: {handed} operator's servers handed back",
            if flip {
                format!(" (mode {})", self.mode)
            } else {
                String::new()
            }
        ));
        Ok(())
    }

    /// Ends events; true when a hand-back is to be a SIGHUP.
    async fn end_events(&mut self, ends: Vec<End>) -> Result<bool, Error> {
        let mut hup = false;
        for end in ends {
            match end {
                End::HostBack(i) => {
                    self.plant.set_host_behaviour(i, Behaviour::Normal);
                    self.hosts_busy[i] = false;
                    self.count("host-back");
                    self.note(format!("host {} answers again", i + 1));
                }
                End::RegainCores(i) => {
                    self.plant.set_cost_factor(i, 1.0);
                    self.losing[i] = false;
                    self.count("regain-cores");
                    self.note(format!("host {} has all its cores again", i + 1));
                }
                End::Ready(s) => {
                    // A reload may have ended it already.
                    if !matches!(self.servers[s - 1].state, State::Out { .. }) {
                        continue;
                    }
                    let since = self.pause()?;
                    let done = self.plant.set_state(s, "ready").await;
                    self.resume(since, done)?;
                    self.servers[s - 1].state = State::Tuned;
                    self.count("ready");
                    self.note(format!("operator: app-{s} ready"));
                }
                End::HandBack(s) => {
                    let State::Held { weight, before } = self.servers[s - 1].state else {
                        continue;
                    };
                    if weight > 0 && self.rng.chance(0.3) {
                        hup = true;
                        continue;
                    }
                    let back = self.servers[s - 1].expected.unwrap_or(before);
                    let since = self.pause()?;
                    let done = self.plant.set_weight(s, back).await;
                    self.resume(since, done)?;
                    let server = &mut self.servers[s - 1];
                    server.state = State::Tuned;
                    server.inherited = Some(back);
                    self.count("set-back");
                    self.note(format!("operator: app-{s} weight set back to {back}"));
                }
                End::Hup => hup = true,
                End::Rejoin(s) => {
                    if self.servers[s - 1].state == State::Absent {
                        self.reload(Some((s, true))).await?;
                    }
                }
            }
        }
        Ok(hup)
    }

    /// For the quiet end: a server left at weight 0 (the operator's drain, handed back by a
    /// SIGHUP as it was) gets the config's weight back; hatune takes that for an operator's
    /// weight, and the SIGHUP two ticks later hands it back.
    async fn all_back(&mut self) -> Result<(), Error> {
        for s in 1..=self.servers.len() {
            if self.servers[s - 1].state != State::Tuned || self.stat(s).await?.0 != 0 {
                continue;
            }
            let since = self.pause()?;
            let done = self.plant.set_weight(s, CONFIG_WEIGHT).await;
            self.resume(since, done)?;
            self.servers[s - 1].inherited = Some(CONFIG_WEIGHT);
            self.count("set-back");
            self.note(format!("operator: app-{s} weight 0 → {CONFIG_WEIGHT}"));
        }
        Ok(())
    }

    fn summary(&self) {
        let elapsed = self.started.elapsed();
        let mut s = String::new();
        let _ = writeln!(s, "== soak summary");
        let _ = writeln!(
            s,
            "duration: {:.1} min, {} ticks of {} ms (tick wall time median {} ms, max {} ms), \
             seed {}, reapply {}, modes {:?}",
            elapsed.as_secs_f64() / 60.0,
            self.ticks,
            self.a.tick.as_millis(),
            percentile(&self.tick_ms, 0.5),
            self.tick_ms.iter().max().copied().unwrap_or(0),
            self.a.seed,
            self.a.reapply,
            self.modes_seen
        );
        let total: u64 = self.events.values().sum();
        let by_kind: Vec<String> = self
            .events
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        let _ = writeln!(s, "events: {total}: {}", by_kind.join(", "));
        let _ = writeln!(
            s,
            "daemon stopped (SIGSTOP) while the operator acted: {} times, {:.1} s in all",
            self.stops,
            self.stopped_for.as_secs_f64()
        );
        if let (Some(first), Some(last)) = (self.samples.first(), self.samples.last()) {
            let max_rss = self.samples.iter().map(|x| x.1).max().unwrap_or(0);
            let max_fds = self.samples.iter().map(|x| x.2).max().unwrap_or(0);
            let _ = writeln!(
                s,
                "daemon RSS: first {:.1} MB, last {:.1} MB, max {:.1} MB; open fds: first {}, \
                 last {}, max {} ({} samples, one a minute)",
                first.1 as f64 / 1024.0,
                last.1 as f64 / 1024.0,
                max_rss as f64 / 1024.0,
                first.2,
                last.2,
                max_fds,
                self.samples.len()
            );
            let series: Vec<String> = self
                .samples
                .iter()
                .map(|(at, rss, fds)| {
                    format!(
                        "{:.0}m {:.1}MB/{fds}",
                        at.as_secs_f64() / 60.0,
                        *rss as f64 / 1024.0
                    )
                })
                .collect();
            let _ = writeln!(s, "  samples (RSS/fds): {}", series.join(" "));
        }
        let by_kind: Vec<String> = self
            .tally
            .violations_by_kind
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        let _ = writeln!(
            s,
            "checks: {} run, {} violations{}",
            self.tally.checks,
            self.tally.violations_by_kind.values().sum::<u64>(),
            if by_kind.is_empty() {
                String::new()
            } else {
                format!(" ({})", by_kind.join(", "))
            }
        );
        for v in &self.tally.violations {
            let _ = writeln!(s, "  {v}");
        }
        let _ = writeln!(
            s,
            "requests: ok {}, failed {}",
            self.plant.ok(),
            self.plant.failed()
        );
        let tail = &self.ratios[self.ratios.len().saturating_sub(10)..];
        if let Some(last) = tail.last() {
            let _ = writeln!(
                s,
                "balance at the end: max/mean {last:.3} at the last tick; over the last {} \
                 ticks mean {:.3}, max {:.3}",
                tail.len(),
                tail.iter().sum::<f64>() / tail.len() as f64,
                tail.iter().cloned().fold(0.0, f64::max)
            );
        }
        let levels: Vec<String> = self
            .levels
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        let _ = writeln!(s, "daemon log: {}", levels.join(", "));
        for (m, c) in &self.messages {
            let _ = writeln!(s, "  {c:5} × {m}");
        }
        if !self.tally.anomalies_by_kind.is_empty() {
            let by_kind: Vec<String> = self
                .tally
                .anomalies_by_kind
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            let _ = writeln!(s, "anomalies (not violations): {}", by_kind.join(", "));
            for a in &self.tally.anomalies {
                let _ = writeln!(s, "  {a}");
            }
        }
        if !self.tally.violations.is_empty() {
            let _ = writeln!(s, "the daemon's last {} log lines:", self.recent.len());
            for l in &self.recent {
                let _ = writeln!(s, "  {l}");
            }
        }
        let _ = writeln!(
            s,
            "result: {}",
            if self.tally.violations.is_empty() {
                "PASS"
            } else {
                "FAIL"
            }
        );
        print!("{s}");
    }
}

fn percentile(v: &[u64], p: f64) -> u64 {
    let mut v = v.to_vec();
    v.sort_unstable();
    v.get(((v.len() as f64 - 1.0) * p).round() as usize)
        .copied()
        .unwrap_or(0)
}
