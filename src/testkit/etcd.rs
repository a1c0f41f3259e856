//! A real etcd server (Debian's `etcd-server` 3.4 here), one node in its own temp dir, for tests
//! of what hatune keeps in etcd and of how it copes when etcd stops, restarts or hangs.
//!
//! Each instance keeps its data dir (`data/`) and `etcd.log` (stdout and stderr) in a fresh
//! directory and listens on its own loopback client and peer ports, so tests may run in
//! parallel. The API is async (clients under test are usually tasks on the test's runtime,
//! which a blocking wait would starve). [`stop`](Etcd::stop) keeps the data dir and
//! [`restart`](Etcd::restart) starts etcd again on the same dir and ports, so a client keeps
//! its endpoint; [`freeze`](Etcd::freeze) (SIGSTOP) makes it hang with its ports open: requests
//! are accepted by the kernel and never answered. Dropping the value stops the server (SIGCONT,
//! SIGTERM, then SIGKILL after [`EXITS_WITHIN`]), reaps it and removes the directory.
//!
//! etcd is ready (the start and restart return) once `/health` answers 200 with
//! `{"health":"true"}`: a single node elects itself in well under a second (raft's timeouts are
//! a tenth of etcd's defaults, or a restart would take over a second). Keys are read and
//! written through etcd's v3 JSON gateway (`/v3/kv/range`, `/v3/kv/put`), no gRPC client
//! needed.
//!
//! [`start_tls`](Etcd::start_tls) runs it as production etcds are: https on the client port with
//! `--client-cert-auth`, certificates made at start (rcgen) beside `data/`:
//! [`ca_file`](Etcd::ca_file), [`client_cert_file`](Etcd::client_cert_file) (certificate and key
//! in one PEM), and [`other_ca_file`](Etcd::other_ca_file), a CA that signed nothing. Every
//! connection to the client port needs the client certificate, `/health` included. etcd 3.4
//! serves gRPC and HTTP on that one TLS port (ALPN `h2` only, but Go lets a client offering
//! only `http/1.1`, or nothing, in without ALPN; one offering neither is refused). Its JSON
//! gateway is a gRPC client of that port presenting the serving certificate, which must thus
//! be good for client auth too: else `/health` is fine and every `/v3/…` answers 503.
//!
//! The process cannot outlive the test process either: it is started and reaped by a thread of
//! its own, under `setpriv --pdeathsig KILL` (util-linux), so it gets SIGKILL when that thread
//! ends, even when the test binary is killed and no destructor runs.
//!
//! ```no_run
//! # async fn f() -> std::io::Result<()> {
//! use hatune::testkit::etcd::Etcd;
//!
//! let mut etcd = Etcd::start().await?;
//! etcd.put("/hatune/weights", "42").await?;
//! etcd.restart().await?;
//! assert_eq!(etcd.get("/hatune/weights").await?.as_deref(), Some("42"));
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

use super::cadvisor::make_ca_named;
use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, KeyPair, KeyUsagePurpose,
};
use serde_json::{json, Value};

use super::haproxy::free_port;

/// How long etcd may take to answer `/health` with 200 after it is started.
const READY_WITHIN: Duration = Duration::from_secs(30);
/// How long etcd may take to exit after SIGTERM before it gets SIGKILL.
pub const EXITS_WITHIN: Duration = Duration::from_secs(10);
/// Polling interval of the waits below (within their deadlines; not synchronisation sleeps).
const POLL: Duration = Duration::from_millis(20);
/// Bound on one HTTP exchange with etcd (a frozen etcd never answers).
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on one `/health` probe while waiting for etcd to be ready.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Raft's heartbeat and election timeout, in ms: a tenth of etcd's defaults (100, 1000). A
/// restarted node waits one election timeout before it leads (a new one skips most of it), so
/// with the defaults a restart takes over 1 s to be ready; this way well under one. A single
/// voter cannot lose its leadership to slow heartbeats.
const HEARTBEAT_MS: u32 = 10;
const ELECTION_MS: u32 = 100;
/// How many of the log's last lines an error quotes.
const LOG_TAIL: usize = 20;

/// A one-node etcd on loopback ports of its own. Dropping it stops etcd and removes its
/// directory.
#[derive(Debug)]
pub struct Etcd {
    binary: PathBuf,
    dir: PathBuf,
    client_port: u16,
    peer_port: u16,
    http: reqwest::Client,
    /// The certificate files of a [`start_tls`](Etcd::start_tls) etcd; `None` for plain http.
    tls: Option<TlsFiles>,
    /// `None` while stopped.
    keeper: Option<Keeper>,
}

impl Etcd {
    /// Starts etcd in a fresh directory on fresh ports; returns once `/health` answers 200 with
    /// `{"health":"true"}` (within 30 s, else an error quoting the end of `etcd.log`).
    pub async fn start() -> io::Result<Etcd> {
        Etcd::start_with(None).await
    }

    /// etcd serving https on its client port, requiring a client certificate signed by its CA
    /// (`--client-cert-auth`), as a production etcd is run: [`ca_file`](Self::ca_file) signed
    /// its serving certificate (for `127.0.0.1` and `localhost`) and the client certificate of
    /// [`client_cert_file`](Self::client_cert_file). The CA is new, of a name of its own, for
    /// each instance. The peer port stays plain http. Otherwise as [`start`](Self::start): the
    /// harness's own requests (readiness, [`get`](Self::get), [`put`](Self::put)) go over https
    /// with that CA as the only root and that client certificate.
    pub async fn start_tls() -> io::Result<Etcd> {
        let pems = TlsPems::make()
            .map_err(|e| io::Error::other(format!("cannot make etcd's certificates: {e}")))?;
        Etcd::start_with(Some(pems)).await
    }

    async fn start_with(pems: Option<TlsPems>) -> io::Result<Etcd> {
        let binary = find_etcd()?;
        let mut http = reqwest::Client::builder().no_proxy().timeout(HTTP_TIMEOUT);
        if let Some(pems) = &pems {
            let ca =
                reqwest::Certificate::from_pem(pems.ca.as_bytes()).map_err(io::Error::other)?;
            let identity =
                reqwest::Identity::from_pem(pems.client.as_bytes()).map_err(io::Error::other)?;
            http = http
                .tls_built_in_root_certs(false)
                .add_root_certificate(ca)
                .identity(identity)
                .https_only(true);
        }
        let http = http.build().map_err(io::Error::other)?;
        let mut last_error = None;
        // A port picked free may be taken by another process before etcd binds it: retry with
        // fresh ones (and a fresh dir: a failed attempt's Drop removes its own).
        for _ in 0..3 {
            let mut etcd = Etcd {
                binary: binary.clone(),
                dir: make_temp_dir()?,
                client_port: free_port(),
                peer_port: free_port(),
                http: http.clone(),
                tls: None,
                keeper: None,
            };
            // Written before anything can fail, so that the value's Drop removes the dir.
            if let Some(pems) = &pems {
                etcd.tls = Some(pems.write(&etcd.dir)?);
            }
            match etcd.launch().await {
                Ok(()) => return Ok(etcd),
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => last_error = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last_error.unwrap_or_else(|| io::Error::other("etcd did not start")))
    }

    /// `http://127.0.0.1:PORT` (`https://…` for a [`start_tls`](Self::start_tls) etcd), the
    /// client URL (the same across [`restart`](Self::restart)s).
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    /// The PEM of the CA that signed etcd's serving certificate and the client certificate
    /// (`DIR/ca.pem`); `None` for a plain (http) etcd.
    pub fn ca_file(&self) -> Option<PathBuf> {
        self.tls.as_ref().map(|t| t.ca.clone())
    }

    /// A PEM file holding a client certificate (CN `hatune`, signed by
    /// [`ca_file`](Self::ca_file)'s CA) followed by its private key (PKCS#8), as etcd requires
    /// of every client (`DIR/client.pem`); `None` for a plain (http) etcd.
    pub fn client_cert_file(&self) -> Option<PathBuf> {
        self.tls.as_ref().map(|t| t.client.clone())
    }

    /// The PEM of another CA, which signed nothing here (`DIR/other-ca.pem`), of a name of its
    /// own too (not that of [`ca_file`](Self::ca_file)'s): a client trusting only it fails the
    /// handshake with etcd. `None` for a plain (http) etcd.
    pub fn other_ca_file(&self) -> Option<PathBuf> {
        self.tls.as_ref().map(|t| t.other_ca.clone())
    }

    /// The server's pid; `None` while stopped (or once it exited on its own).
    pub fn pid(&self) -> Option<u32> {
        self.keeper
            .as_ref()
            .filter(|k| k.exited().is_none())
            .map(|k| k.pid)
    }

    /// The directory holding the data dir (`data/`) and `etcd.log`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What etcd logged so far, over all its runs in this directory.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("etcd.log")).unwrap_or_default()
    }

    /// SIGSTOP: etcd keeps its ports but answers nothing (requests hang) until
    /// [`thaw`](Self::thaw)ed. An error if it is not running.
    pub fn freeze(&self) -> io::Result<()> {
        self.running()?.signal("STOP")
    }

    /// SIGCONT: a [`freeze`](Self::freeze)d etcd goes on (and answers what waited). An error if
    /// it is not running.
    pub fn thaw(&self) -> io::Result<()> {
        self.running()?.signal("CONT")
    }

    /// Stops etcd (thawed if frozen, SIGTERM, SIGKILL after [`EXITS_WITHIN`]) and reaps it; the
    /// directory and its data are kept for [`restart`](Self::restart). Nothing to do if stopped.
    pub async fn stop(&mut self) -> io::Result<()> {
        if let Some(mut keeper) = self.keeper.take() {
            // Up to EXITS_WITHIN of waiting: off the runtime's threads.
            tokio::task::spawn_blocking(move || keeper.stop())
                .await
                .map_err(io::Error::other)?;
        }
        Ok(())
    }

    /// Stops etcd if it runs, then starts it again on the same data dir and ports; returns once
    /// it is ready. Should another process have taken a port meanwhile, the error's kind is
    /// `AddrInUse` and etcd stays stopped (the ports are not changed: clients keep the
    /// endpoint).
    pub async fn restart(&mut self) -> io::Result<()> {
        self.stop().await?;
        self.launch().await
    }

    /// The value of `key` (`/v3/kv/range`), `None` if there is no such key.
    pub async fn get(&self, key: &str) -> io::Result<Option<String>> {
        let reply = self
            .post(
                "/v3/kv/range",
                json!({ "key": base64_encode(key.as_bytes()) }),
            )
            .await?;
        let Some(kv) = reply["kvs"].as_array().and_then(|kvs| kvs.first()) else {
            return Ok(None);
        };
        // The gateway leaves out empty fields: no "value" is the empty value.
        let value = base64_decode(kv["value"].as_str().unwrap_or(""))?;
        String::from_utf8(value)
            .map(Some)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{key}: {e}")))
    }

    /// Sets `key` to `value` (`/v3/kv/put`).
    pub async fn put(&self, key: &str, value: &str) -> io::Result<()> {
        self.post(
            "/v3/kv/put",
            json!({
                "key": base64_encode(key.as_bytes()),
                "value": base64_encode(value.as_bytes()),
            }),
        )
        .await
        .map(drop)
    }

    /// Deletes `key` (as an operator's `etcdctl del` would), through `/v3/kv/deleterange`.
    pub async fn delete(&self, key: &str) -> io::Result<()> {
        self.post(
            "/v3/kv/deleterange",
            json!({"key": base64_encode(key.as_bytes())}),
        )
        .await
        .map(drop)
    }

    /// POSTs `body` as JSON to the gateway's `path`; the JSON reply of a 2xx answer.
    async fn post(&self, path: &str, body: Value) -> io::Result<Value> {
        let url = format!("{}{path}", self.endpoint());
        let reply = self
            .http
            .post(&url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_string())
            .send()
            .await
            .map_err(|e| http_error(&url, e))?;
        let status = reply.status();
        let body = reply.bytes().await.map_err(|e| http_error(&url, e))?;
        if !status.is_success() {
            return Err(io::Error::other(format!(
                "{url}: HTTP {status}: {}",
                String::from_utf8_lossy(&body)
            )));
        }
        serde_json::from_slice(&body).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{url}: HTTP {status}, not JSON ({e}): {}",
                    String::from_utf8_lossy(&body)
                ),
            )
        })
    }

    fn running(&self) -> io::Result<&Keeper> {
        self.keeper
            .as_ref()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotConnected, "etcd is stopped"))
    }

    /// Starts etcd on this value's dir and ports and waits until it is ready; on failure it is
    /// stopped again.
    async fn launch(&mut self) -> io::Result<()> {
        debug_assert!(self.keeper.is_none());
        // Where this run's lines start: the log is appended to across restarts.
        let since = fs::metadata(self.dir.join("etcd.log")).map_or(0, |m| m.len());
        let cmd = command(
            &self.binary,
            &self.dir,
            self.client_port,
            self.peer_port,
            self.tls.as_ref(),
        )?;
        let keeper = Keeper::spawn(cmd, &self.binary)?;
        self.keeper = Some(keeper);
        let ready = self.wait_ready(since).await;
        if ready.is_err() {
            self.stop().await?;
        }
        ready
    }

    /// Polls `/health` until it answers 200 with `{"health":"true"}` and this run's log says it
    /// serves clients on our port (else another process answers there, and ours will exit).
    async fn wait_ready(&self, since: u64) -> io::Result<()> {
        let deadline = Instant::now() + READY_WITHIN;
        let health = format!("{}/health", self.endpoint());
        // etcd 3.4 (capnslog) logs either line once its client port is served.
        let serving = format!(
            "serving {}client requests on 127.0.0.1:{}",
            if self.tls.is_some() { "" } else { "insecure " },
            self.client_port
        );
        loop {
            let keeper = self.running()?;
            if let Some(status) = keeper.exited() {
                return Err(self.died(status, since));
            }
            let (last, foreign) = match self.http.get(&health).timeout(PROBE_TIMEOUT).send().await {
                Ok(reply) => {
                    let status = reply.status();
                    let body = reply.bytes().await.unwrap_or_default();
                    let healthy = status.is_success()
                        && serde_json::from_slice::<Value>(&body)
                            .is_ok_and(|v| v["health"] == "true");
                    if healthy && self.log_since(since).contains(&serving) {
                        return Ok(());
                    }
                    // Healthy but not ours (yet): another etcd may hold the port.
                    let last = format!("HTTP {status}: {}", String::from_utf8_lossy(&body));
                    (last, healthy)
                }
                Err(e) => (http_error(&health, e).to_string(), false),
            };
            if Instant::now() >= deadline {
                let (kind, whose) = if foreign {
                    (
                        io::ErrorKind::AddrInUse,
                        ", but etcd.log does not say ours serves there: another process holds \
                         the port?",
                    )
                } else {
                    (io::ErrorKind::TimedOut, "")
                };
                return Err(io::Error::new(
                    kind,
                    format!(
                        "etcd was not ready within {READY_WITHIN:?} (last probe of {health}: \
                         {last}{whose}); the end of its log:\n{}",
                        self.log_tail()
                    ),
                ));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// What this run logged (from byte `since` of `etcd.log`).
    fn log_since(&self, since: u64) -> String {
        let log = fs::read(self.dir.join("etcd.log")).unwrap_or_default();
        let start = usize::try_from(since).unwrap_or(usize::MAX).min(log.len());
        String::from_utf8_lossy(&log[start..]).into_owned()
    }

    /// The log's last [`LOG_TAIL`] lines.
    fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(LOG_TAIL)..].join("\n")
    }

    fn died(&self, status: ExitStatus, since: u64) -> io::Error {
        let kind = if self.log_since(since).contains("address already in use") {
            io::ErrorKind::AddrInUse
        } else {
            io::ErrorKind::Other
        };
        io::Error::new(
            kind,
            format!(
                "etcd exited ({status}) before it was ready; the end of its log:\n{}",
                self.log_tail()
            ),
        )
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        // Keeper::stop thaws a frozen etcd before SIGTERM (which it would ignore until then).
        if let Some(mut keeper) = self.keeper.take() {
            keeper.stop();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// `url: error`, with the causes reqwest keeps in its source chain (connection refused, …).
fn http_error(url: &str, e: reqwest::Error) -> io::Error {
    let kind = if e.is_timeout() {
        io::ErrorKind::TimedOut
    } else {
        io::ErrorKind::Other
    };
    let mut text = format!("{url}: {e}");
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        text += &format!(": {cause}");
        source = cause.source();
    }
    io::Error::new(kind, text)
}

/// What the [`Keeper`] thread is told.
#[derive(Debug)]
enum Order {
    /// Send the signal (`kill -s` name) and answer how it went.
    Signal(&'static str, mpsc::Sender<io::Result<()>>),
    /// Stop and reap the process, then end.
    Stop,
}

/// The thread that starts etcd (so `--pdeathsig` is tied to it), notes when it exits, signals
/// it (while it is not reaped, so its pid cannot be anyone else's), and stops and reaps it when
/// told to or when the [`Etcd`] is gone.
#[derive(Debug)]
struct Keeper {
    pid: u32,
    orders: Option<mpsc::Sender<Order>>,
    thread: Option<JoinHandle<()>>,
    exited: Arc<Mutex<Option<ExitStatus>>>,
}

impl Keeper {
    /// Runs `cmd` (which runs `binary`) on a keeper thread of its own.
    fn spawn(mut cmd: Command, binary: &Path) -> io::Result<Keeper> {
        let (orders, inbox) = mpsc::channel::<Order>();
        let (started_tx, started) = mpsc::channel::<io::Result<u32>>();
        let exited = Arc::new(Mutex::new(None));
        let noted = exited.clone();
        let thread = std::thread::Builder::new()
            .name("etcd-keeper".into())
            .spawn(move || {
                let mut child = match cmd.spawn() {
                    Ok(child) => child,
                    Err(e) => {
                        let _ = started_tx.send(Err(e));
                        return;
                    }
                };
                let _ = started_tx.send(Ok(child.id()));
                let note = |child: &mut Child| {
                    let mut noted = noted.lock().unwrap_or_else(|e| e.into_inner());
                    if noted.is_none() {
                        *noted = child.try_wait().ok().flatten();
                    }
                    *noted
                };
                // Until told to stop (or the handle is gone), note the exit of a child that
                // ends on its own, and signal it as told.
                loop {
                    match inbox.recv_timeout(POLL) {
                        Err(RecvTimeoutError::Timeout) => {
                            note(&mut child);
                        }
                        Ok(Order::Signal(signal, answer)) => {
                            let sent = match note(&mut child) {
                                Some(status) => Err(io::Error::new(
                                    io::ErrorKind::NotConnected,
                                    format!("etcd exited ({status})"),
                                )),
                                None => kill(child.id(), signal),
                            };
                            let _ = answer.send(sent);
                        }
                        Ok(Order::Stop) | Err(RecvTimeoutError::Disconnected) => break,
                    }
                }
                terminate(&mut child);
            })?;
        match started.recv() {
            Ok(Ok(pid)) => Ok(Keeper {
                pid,
                orders: Some(orders),
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
                Err(io::Error::other("the etcd keeper thread died"))
            }
        }
    }

    /// How the process ended, if it did on its own.
    fn exited(&self) -> Option<ExitStatus> {
        *self.exited.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Has the keeper send `signal` (a `kill -s` name) to the process, if it still runs.
    fn signal(&self, signal: &'static str) -> io::Result<()> {
        let (answer, answered) = mpsc::channel();
        let gone = || io::Error::new(io::ErrorKind::NotConnected, "etcd is stopped");
        self.orders
            .as_ref()
            .ok_or_else(gone)?
            .send(Order::Signal(signal, answer))
            .map_err(|_| gone())?;
        answered.recv().map_err(|_| gone())?
    }

    /// Stops the process and waits until it is reaped.
    fn stop(&mut self) {
        if let Some(orders) = self.orders.take() {
            let _ = orders.send(Order::Stop);
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

/// `kill -s SIGNAL PID` (std sends only SIGKILL; the shell's builtin `kill` sends any).
fn kill(pid: u32, signal: &str) -> io::Result<()> {
    let out = Command::new("sh")
        .args(["-c", "kill -s \"$1\" \"$2\"", "sh", signal])
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "kill -s {signal} {pid}: {} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// SIGCONT (a stopped process ignores SIGTERM until continued), SIGTERM, up to
/// [`EXITS_WITHIN`] to exit, then SIGKILL; reaps the child either way.
fn terminate(child: &mut Child) {
    if let Ok(None) = child.try_wait() {
        // The pid is still ours: the child is not reaped yet.
        let _ = kill(child.id(), "CONT");
        let _ = kill(child.id(), "TERM");
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

/// `[setpriv --pdeathsig KILL --] etcd --name default --data-dir DIR/data …` on
/// `127.0.0.1:CLIENT_PORT` and `127.0.0.1:PEER_PORT`, with short raft timeouts, logging to
/// `etcd.log`; with `tls`, https and client certificates on the client port. The data dir is a
/// subdirectory: etcd wants its data dir to be `0700` and holding only its own files.
fn command(
    binary: &Path,
    dir: &Path,
    client_port: u16,
    peer_port: u16,
    tls: Option<&TlsFiles>,
) -> io::Result<Command> {
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("etcd.log"))?;
    let setpriv = Path::new("/usr/bin/setpriv");
    let mut cmd = if setpriv.is_file() {
        let mut cmd = Command::new(setpriv);
        cmd.args(["--pdeathsig", "KILL", "--"]).arg(binary);
        cmd
    } else {
        Command::new(binary)
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let client = format!("{scheme}://127.0.0.1:{client_port}");
    let peer = format!("http://127.0.0.1:{peer_port}");
    cmd.args(["--name", "default", "--data-dir"])
        .arg(dir.join("data"))
        .args(["--listen-client-urls", &client])
        .args(["--advertise-client-urls", &client])
        .args(["--listen-peer-urls", &peer])
        .args(["--initial-advertise-peer-urls", &peer])
        .args(["--initial-cluster", &format!("default={peer}")])
        .arg(format!("--heartbeat-interval={HEARTBEAT_MS}"))
        .arg(format!("--election-timeout={ELECTION_MS}"));
    if let Some(tls) = tls {
        cmd.arg("--cert-file")
            .arg(&tls.server_cert)
            .arg("--key-file")
            .arg(&tls.server_key)
            .arg("--trusted-ca-file")
            .arg(&tls.ca)
            .arg("--client-cert-auth");
    }
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // etcd reads ETCD_* variables as flags (and refuses ones that a flag shadows): none of the
    // environment's may change this server.
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("ETCD_") {
            cmd.env_remove(name);
        }
    }
    Ok(cmd)
}

/// The PEMs of a TLS etcd, made once per [`Etcd::start_tls`] (all its attempts share them).
struct TlsPems {
    /// The CA's certificate.
    ca: String,
    /// etcd's serving certificate and its key.
    server_cert: String,
    server_key: String,
    /// The client certificate followed by its key.
    client: String,
    /// A CA that signed nothing.
    other_ca: String,
}

/// Where [`TlsPems::write`] put them, in the instance's directory (beside `data/`, not in it).
#[derive(Debug, Clone)]
struct TlsFiles {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client: PathBuf,
    other_ca: PathBuf,
}

impl TlsPems {
    /// A new CA (of a name no other instance's has: rustls, given a bundle of CAs of one name,
    /// picked the wrong one), the serving certificate it signs for `127.0.0.1` and `localhost`,
    /// the client certificate for `hatune`, and another CA.
    fn make() -> Result<TlsPems, rcgen::Error> {
        static SERIAL: AtomicU32 = AtomicU32::new(0);
        let n = SERIAL.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let (ca, issuer) = make_ca_named(format!("hatune test etcd CA {pid}-{n}"))?;
        let (other_ca, _) = make_ca_named(format!("hatune test etcd other CA {pid}-{n}"))?;

        let mut server = CertificateParams::new(["127.0.0.1".to_owned(), "localhost".to_owned()])?;
        server.distinguished_name = DistinguishedName::new();
        server.distinguished_name.push(DnType::CommonName, "etcd");
        server.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        // ClientAuth too: etcd 3.4's JSON gateway is a gRPC client of its own port, presenting
        // the serving certificate, which `--client-cert-auth` checks like any client's.
        server.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        server.use_authority_key_identifier_extension = true;
        let server_key = KeyPair::generate()?;
        let server_cert = server.signed_by(&server_key, &issuer)?;

        let mut client = CertificateParams::new(Vec::<String>::new())?;
        client.distinguished_name = DistinguishedName::new();
        client.distinguished_name.push(DnType::CommonName, "hatune");
        client.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        client.use_authority_key_identifier_extension = true;
        let client_key = KeyPair::generate()?;
        let client_cert = client.signed_by(&client_key, &issuer)?;

        Ok(TlsPems {
            ca,
            server_cert: server_cert.pem(),
            server_key: server_key.serialize_pem(),
            client: client_cert.pem() + &client_key.serialize_pem(),
            other_ca,
        })
    }

    /// Writes the files into `dir` (the keys readable by the owner only).
    fn write(&self, dir: &Path) -> io::Result<TlsFiles> {
        let files = TlsFiles {
            ca: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server-key.pem"),
            client: dir.join("client.pem"),
            other_ca: dir.join("other-ca.pem"),
        };
        for (path, pem, private) in [
            (&files.ca, &self.ca, false),
            (&files.server_cert, &self.server_cert, false),
            (&files.server_key, &self.server_key, true),
            (&files.client, &self.client, true),
            (&files.other_ca, &self.other_ca, false),
        ] {
            use std::io::Write as _;
            use std::os::unix::fs::OpenOptionsExt as _;
            fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(if private { 0o600 } else { 0o644 })
                .open(path)?
                .write_all(pem.as_bytes())?;
        }
        Ok(files)
    }
}

/// `HATUNE_ETCD`, else `/usr/bin/etcd` (Debian's), else `etcd` on PATH.
fn find_etcd() -> io::Result<PathBuf> {
    if let Some(path) = std::env::var_os("HATUNE_ETCD") {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("HATUNE_ETCD={} is not a file", path.display()),
            ))
        };
    }
    let path_dirs = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    std::iter::once(PathBuf::from("/usr/bin/etcd"))
        .chain(path_dirs.into_iter().map(|d| d.join("etcd")))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                "etcd is not installed: `apt-get install --no-install-recommends etcd-server` \
                 (Debian's package; or set HATUNE_ETCD)",
            )
        })
}

/// `$TMPDIR/hatune-etcd-<pid>-<n>`, created atomically. (The `tempfile` crate is only a
/// dev-dependency, and this module is part of the library.)
fn make_temp_dir() -> io::Result<PathBuf> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("hatune-etcd-{}-{n}", std::process::id()));
        match fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            // Left over by an earlier process that had our pid: try the next number.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
}

const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding, as the gateway's JSON carries `bytes` fields.
fn base64_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(BASE64[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The inverse of [`base64_encode`]; padding optional, anything else outside the alphabet an
/// error.
fn base64_decode(text: &str) -> io::Result<Vec<u8>> {
    let invalid = || io::Error::new(io::ErrorKind::InvalidData, format!("not base64: {text:?}"));
    let digits = text.trim_end_matches('=').as_bytes();
    if text.len() - digits.len() > 2 || digits.len() % 4 == 1 {
        return Err(invalid());
    }
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            let v = BASE64.iter().position(|&a| a == c).ok_or_else(invalid)? as u32;
            n |= v << (18 - 6 * i);
        }
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips_and_matches_the_standard_alphabet() {
        for (plain, coded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
            ("/hatune/\u{e9}?>", "L2hhdHVuZS/DqT8+"),
        ] {
            assert_eq!(base64_encode(plain.as_bytes()), coded, "{plain:?}");
            assert_eq!(base64_decode(coded).unwrap(), plain.as_bytes(), "{coded:?}");
        }
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(base64_decode(&base64_encode(&all)).unwrap(), all);
        assert_eq!(base64_decode("Zm8").unwrap(), b"fo");
        for bad in ["Z", "Zm9v!", "Zg===", "Z m9v"] {
            assert!(base64_decode(bad).is_err(), "{bad:?}");
        }
    }
}
