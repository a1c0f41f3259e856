//! A real Prometheus server (Debian's 2.42 here) in its own temp dir, scraping the targets a test
//! serves, for tests of hatune's Prometheus source and of the alert rules.
//!
//! Each instance writes its `prometheus.yml` (one job, `cadvisor`, with static targets and
//! `honor_timestamps: true`) and keeps its TSDB and `prometheus.log` in a fresh directory, and
//! listens on its own loopback port, so tests may run in parallel. The API is async (the
//! targets are usually served by tasks on the test's runtime, which a blocking wait would
//! starve); dropping the value stops the server (SIGTERM, then SIGKILL after
//! [`EXITS_WITHIN`]), reaps it and removes the directory.
//!
//! Targets are first scraped about 5 s after the start (Prometheus hands static targets to its
//! scrape manager on a 5 s tick), then every `scrape_interval`.
//!
//! The process cannot outlive the test process either: it is started and reaped by a thread of
//! its own, under `setpriv --pdeathsig KILL` (util-linux), so it gets SIGKILL when that thread
//! ends, even when the test binary is killed and no destructor runs.
//!
//! ```no_run
//! # async fn f() -> std::io::Result<()> {
//! use std::time::Duration;
//! use hatune::testkit::prometheus::Prometheus;
//!
//! let prometheus =
//!     Prometheus::start(&["127.0.0.1:8080".into()], Duration::from_secs(1), "/metrics").await?;
//! prometheus.await_targets_up(Duration::from_secs(10)).await?;
//! let data = prometheus.query("up").await?;
//! assert_eq!(data["result"][0]["value"][1], "1");
//! # Ok(()) }
//! ```

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::haproxy::free_port;

/// The scrape job's name.
pub const JOB: &str = "cadvisor";
/// How long Prometheus may take to answer `/-/ready` with 200.
const READY_WITHIN: Duration = Duration::from_secs(30);
/// How long Prometheus may take to exit after SIGTERM before it gets SIGKILL.
pub const EXITS_WITHIN: Duration = Duration::from_secs(10);
/// Longest scrape timeout: a longer interval still times a scrape out after this.
const MAX_SCRAPE_TIMEOUT: Duration = Duration::from_secs(10);
/// Polling interval of the waits below (within their deadlines; not synchronisation sleeps).
const POLL: Duration = Duration::from_millis(20);
/// Bound on one HTTP exchange with Prometheus.
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);

/// Scraping HTTPS targets, as a kubelet is scraped: `scheme: https`, the bearer token read from
/// `credentials_file` (`authorization`), the server's certificate checked against `ca_file`
/// (`tls_config`). Relative paths are taken from the current directory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Https {
    /// A file holding the bearer token (`authorization: {credentials_file}`).
    pub credentials_file: Option<PathBuf>,
    /// PEM CA certificates the targets' certificates must chain to (`tls_config: {ca_file}`);
    /// none: the system roots.
    pub ca_file: Option<PathBuf>,
    /// The name the certificates must be valid for, when not the target's host
    /// (`tls_config: {server_name}`).
    pub server_name: Option<String>,
}

/// A running Prometheus scraping the job [`JOB`].
#[derive(Debug)]
pub struct Prometheus {
    dir: PathBuf,
    port: u16,
    pid: u32,
    targets: usize,
    http: reqwest::Client,
    keeper: Keeper,
}

impl Prometheus {
    /// Starts Prometheus scraping `targets` (`host:port`) over HTTP every `scrape_interval`
    /// at `metrics_path`. Returns once `/-/ready` answers 200 (targets may not be scraped yet:
    /// see [`await_targets_up`](Self::await_targets_up)).
    pub async fn start(
        targets: &[String],
        scrape_interval: Duration,
        metrics_path: &str,
    ) -> io::Result<Prometheus> {
        Prometheus::start_with(targets, scrape_interval, metrics_path, None).await
    }

    /// [`start`](Self::start), scraping over HTTPS as `https` says when given.
    pub async fn start_with(
        targets: &[String],
        scrape_interval: Duration,
        metrics_path: &str,
        https: Option<&Https>,
    ) -> io::Result<Prometheus> {
        let binary = find_prometheus()?;
        let config = render_config(targets, scrape_interval, metrics_path, https)?;
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(HTTP_TIMEOUT)
            .build()
            .map_err(io::Error::other)?;
        let mut last_error = None;
        // A port picked free may be taken by another process before Prometheus binds it: retry
        // with a fresh one (and a fresh dir: a failed attempt's Drop removes its own).
        for _ in 0..3 {
            let dir = make_temp_dir()?;
            if let Err(e) = fs::write(dir.join("prometheus.yml"), &config) {
                let _ = fs::remove_dir_all(&dir);
                return Err(e);
            }
            let port = free_port();
            let keeper = match Keeper::spawn(&binary, &dir, port) {
                Ok(keeper) => keeper,
                Err(e) => {
                    let _ = fs::remove_dir_all(&dir);
                    return Err(e);
                }
            };
            let prometheus = Prometheus {
                dir,
                port,
                pid: keeper.pid,
                targets: targets.len(),
                http: http.clone(),
                keeper,
            };
            match prometheus.wait_ready().await {
                Ok(()) => return Ok(prometheus),
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => last_error = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last_error.unwrap_or_else(|| io::Error::other("Prometheus did not start")))
    }

    /// `http://127.0.0.1:PORT`, Prometheus's web UI and API.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The server's pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The directory holding `prometheus.yml`, the TSDB (`data/`) and `prometheus.log`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What Prometheus logged so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// Waits until every target is scraped and `up` (`/api/v1/targets`: as many active targets
    /// as configured, all with `health` `up`). On timeout the error holds each target's health
    /// and last error.
    pub async fn await_targets_up(&self, within: Duration) -> io::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let seen = self
                .get_data("/api/v1/targets", &[("state", "active")])
                .await;
            if let Ok(data) = &seen {
                let active = data["activeTargets"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                if active.len() == self.targets && active.iter().all(|t| t["health"] == "up") {
                    return Ok(());
                }
            }
            if let Some(status) = self.keeper.exited() {
                return Err(self.died(status));
            }
            if Instant::now() >= deadline {
                let seen = match seen {
                    Ok(data) => data["activeTargets"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|t| {
                            format!(
                                "{} {} {}",
                                t["scrapeUrl"].as_str().unwrap_or("?"),
                                t["health"].as_str().unwrap_or("?"),
                                t["lastError"].as_str().unwrap_or("")
                            )
                        })
                        .collect::<Vec<_>>()
                        .join("\n"),
                    Err(e) => e.to_string(),
                };
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "{} target(s) not all up within {within:?}; Prometheus sees:\n{seen}",
                        self.targets
                    ),
                ));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// An instant query (`/api/v1/query`) at the server's now: the reply's `data`
    /// (`{"resultType": ..., "result": [...]}`), or an error with Prometheus's `error`.
    pub async fn query(&self, q: &str) -> io::Result<Value> {
        self.get_data("/api/v1/query", &[("query", q)]).await
    }

    /// GET `path` with `params`; the `data` of a `"status": "success"` reply.
    async fn get_data(&self, path: &str, params: &[(&str, &str)]) -> io::Result<Value> {
        let url = reqwest::Url::parse_with_params(&format!("{}{path}", self.url()), params)
            .map_err(io::Error::other)?;
        let reply = self
            .http
            .get(url.clone())
            .send()
            .await
            .map_err(io::Error::other)?;
        let status = reply.status();
        let body = reply.bytes().await.map_err(io::Error::other)?;
        let mut value: Value = serde_json::from_slice(&body).map_err(|e| {
            io::Error::other(format!(
                "{url}: HTTP {status}, not JSON ({e}): {}",
                String::from_utf8_lossy(&body)
            ))
        })?;
        if value["status"] != "success" {
            return Err(io::Error::other(format!(
                "{url}: HTTP {status}: {} {}",
                value["errorType"], value["error"]
            )));
        }
        Ok(value["data"].take())
    }

    /// Polls `/-/ready` until 200, then checks that the answering server is ours (another
    /// process may hold the port, and ours then exits).
    async fn wait_ready(&self) -> io::Result<()> {
        let deadline = Instant::now() + READY_WITHIN;
        let ready = format!("{}/-/ready", self.url());
        loop {
            if let Some(status) = self.keeper.exited() {
                return Err(self.died(status));
            }
            let answer = self.http.get(&ready).send().await;
            if answer.is_ok_and(|r| r.status().is_success()) {
                let flags = self.get_data("/api/v1/status/flags", &[]).await?;
                let ours = self.dir.join("data");
                if flags["storage.tsdb.path"].as_str() == ours.to_str() {
                    return Ok(());
                }
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("another Prometheus answers on port {}", self.port),
                ));
            }
            if Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "Prometheus was not ready within {READY_WITHIN:?}; its log:\n{}",
                        self.log()
                    ),
                ));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    fn died(&self, status: ExitStatus) -> io::Error {
        let log = self.log();
        let kind = if log.contains("address already in use") {
            io::ErrorKind::AddrInUse
        } else {
            io::ErrorKind::Other
        };
        io::Error::new(
            kind,
            format!("Prometheus exited ({status}); its log:\n{log}"),
        )
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        self.keeper.stop();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// The thread that starts Prometheus (so `--pdeathsig` is tied to it), notes when it exits,
/// and stops and reaps it when told to or when the [`Prometheus`] is gone.
#[derive(Debug)]
struct Keeper {
    pid: u32,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    exited: Arc<Mutex<Option<ExitStatus>>>,
}

impl Keeper {
    fn spawn(binary: &Path, dir: &Path, port: u16) -> io::Result<Keeper> {
        let mut cmd = command(binary, dir, port)?;
        let (stop, stopped) = mpsc::channel::<()>();
        let (started_tx, started) = mpsc::channel::<io::Result<u32>>();
        let exited = Arc::new(Mutex::new(None));
        let noted = exited.clone();
        let thread = std::thread::Builder::new()
            .name("prometheus-keeper".into())
            .spawn(move || {
                let mut child = match cmd.spawn() {
                    Ok(child) => child,
                    Err(e) => {
                        let _ = started_tx.send(Err(e));
                        return;
                    }
                };
                let _ = started_tx.send(Ok(child.id()));
                // Until told to stop (or the handle is gone), note the exit of a child that
                // ends on its own.
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(POLL) {
                    let mut noted = noted.lock().unwrap_or_else(|e| e.into_inner());
                    if noted.is_none() {
                        *noted = child.try_wait().ok().flatten();
                    }
                }
                terminate(&mut child);
            })?;
        match started.recv() {
            Ok(Ok(pid)) => Ok(Keeper {
                pid,
                stop: Some(stop),
                thread: Some(thread),
                exited,
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(io::Error::new(
                    e.kind(),
                    format!("cannot run {}: {e}", binary.display()),
                ))
            }
            Err(_) => {
                let _ = thread.join();
                Err(io::Error::other("the Prometheus keeper thread died"))
            }
        }
    }

    /// How the process ended, if it did on its own.
    fn exited(&self) -> Option<ExitStatus> {
        *self.exited.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stops the process and waits until it is reaped.
    fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Keeper {
    fn drop(&mut self) {
        self.stop();
    }
}

/// SIGTERM, up to [`EXITS_WITHIN`] to exit, then SIGKILL; reaps the child either way.
fn terminate(child: &mut Child) {
    if let Ok(None) = child.try_wait() {
        // std sends only SIGKILL; the shell's builtin `kill` sends SIGTERM. The pid is still
        // ours: the child is not reaped yet.
        let _ = Command::new("sh")
            .args(["-c", "kill -s TERM \"$1\"", "sh"])
            .arg(child.id().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + EXITS_WITHIN;
        while let Ok(None) = child.try_wait() {
            if Instant::now() >= deadline {
                let _ = child.kill();
                break;
            }
            std::thread::sleep(POLL);
        }
    }
    let _ = child.wait();
}

/// `[setpriv --pdeathsig KILL --] prometheus --config.file … --storage.tsdb.path …
/// --web.listen-address 127.0.0.1:PORT`, logging to `prometheus.log`.
fn command(binary: &Path, dir: &Path, port: u16) -> io::Result<Command> {
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("prometheus.log"))?;
    let setpriv = Path::new("/usr/bin/setpriv");
    let mut cmd = if setpriv.is_file() {
        let mut cmd = Command::new(setpriv);
        cmd.args(["--pdeathsig", "KILL", "--"]).arg(binary);
        cmd
    } else {
        Command::new(binary)
    };
    cmd.arg(format!(
        "--config.file={}",
        dir.join("prometheus.yml").display()
    ))
    .arg(format!(
        "--storage.tsdb.path={}",
        dir.join("data").display()
    ))
    .arg(format!("--web.listen-address=127.0.0.1:{port}"))
    .stdin(Stdio::null())
    .stdout(log.try_clone()?)
    .stderr(log);
    Ok(cmd)
}

/// `prometheus.yml`, as JSON (which YAML reads): every string quoted, whatever it holds.
fn render_config(
    targets: &[String],
    scrape_interval: Duration,
    metrics_path: &str,
    https: Option<&Https>,
) -> io::Result<String> {
    if scrape_interval < Duration::from_millis(1) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the scrape interval must be at least 1 ms",
        ));
    }
    let interval = prometheus_duration(scrape_interval);
    let timeout = prometheus_duration(scrape_interval.min(MAX_SCRAPE_TIMEOUT));
    let mut job = json!({
        "job_name": JOB,
        "honor_timestamps": true,
        "scrape_interval": interval,
        "scrape_timeout": timeout,
        "metrics_path": metrics_path,
        "scheme": "http",
        "static_configs": [{"targets": targets}],
    });
    if let Some(https) = https {
        job["scheme"] = json!("https");
        if let Some(file) = &https.credentials_file {
            job["authorization"] = json!({"type": "Bearer", "credentials_file": absolute(file)?});
        }
        let mut tls = json!({});
        if let Some(file) = &https.ca_file {
            tls["ca_file"] = json!(absolute(file)?);
        }
        if let Some(name) = &https.server_name {
            tls["server_name"] = json!(name);
        }
        job["tls_config"] = tls;
    }
    let config = json!({
        "global": {
            "scrape_interval": interval,
            "scrape_timeout": timeout,
            "evaluation_interval": interval,
        },
        "scrape_configs": [job],
    });
    Ok(serde_json::to_string_pretty(&config).expect("a JSON value serialises") + "\n")
}

/// Prometheus's duration syntax, in whole milliseconds.
fn prometheus_duration(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

/// Prometheus reads paths relative to its config file: give it absolute ones.
fn absolute(path: &Path) -> io::Result<String> {
    let path = std::path::absolute(path)?;
    path.to_str().map(str::to_string).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not UTF-8", path.display()),
        )
    })
}

/// `HATUNE_PROMETHEUS`, else `/usr/bin/prometheus` (Debian's), else `prometheus` on PATH.
fn find_prometheus() -> io::Result<PathBuf> {
    if let Some(path) = std::env::var_os("HATUNE_PROMETHEUS") {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("HATUNE_PROMETHEUS={} is not a file", path.display()),
            ))
        };
    }
    let path_dirs = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    std::iter::once(PathBuf::from("/usr/bin/prometheus"))
        .chain(path_dirs.into_iter().map(|d| d.join("prometheus")))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                "prometheus is not installed: `apt-get install --no-install-recommends \
                 prometheus` (Debian's package; or set HATUNE_PROMETHEUS)",
            )
        })
}

/// `$TMPDIR/hatune-prometheus-<pid>-<n>`, created atomically. (The `tempfile` crate is only a
/// dev-dependency, and this module is part of the library.)
fn make_temp_dir() -> io::Result<PathBuf> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("hatune-prometheus-{}-{n}", std::process::id()));
        match fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            // Left over by an earlier process that had our pid: try the next number.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_names_the_job_targets_and_https_options() {
        let https = Https {
            credentials_file: Some("/etc/token".into()),
            ca_file: Some("/etc/ca.pem".into()),
            server_name: Some("kubelet".into()),
        };
        let text = render_config(
            &["127.0.0.1:10250".into()],
            Duration::from_millis(1500),
            "/metrics/cadvisor",
            Some(&https),
        )
        .unwrap();
        let config: Value = serde_json::from_str(&text).unwrap();
        let job = &config["scrape_configs"][0];
        assert_eq!(job["job_name"], "cadvisor");
        assert_eq!(job["honor_timestamps"], true);
        assert_eq!(job["scrape_interval"], "1500ms");
        assert_eq!(job["scrape_timeout"], "1500ms");
        assert_eq!(job["metrics_path"], "/metrics/cadvisor");
        assert_eq!(job["scheme"], "https");
        assert_eq!(job["authorization"]["credentials_file"], "/etc/token");
        assert_eq!(job["tls_config"]["ca_file"], "/etc/ca.pem");
        assert_eq!(job["tls_config"]["server_name"], "kubelet");
        assert_eq!(job["static_configs"][0]["targets"][0], "127.0.0.1:10250");
        let plain = render_config(&[], Duration::from_secs(60), "/metrics", None).unwrap();
        let plain: Value = serde_json::from_str(&plain).unwrap();
        assert_eq!(plain["scrape_configs"][0]["scheme"], "http");
        assert_eq!(plain["scrape_configs"][0]["scrape_timeout"], "10000ms");
        assert!(plain["scrape_configs"][0].get("tls_config").is_none());
    }
}
