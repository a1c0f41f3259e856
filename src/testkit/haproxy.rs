//! A real HAProxy (Debian's 2.6 here) in its own short temp dir, for tests, the demo and
//! benchmarks.
//!
//! Each instance gets its own directory under `/tmp` (unix socket paths are limited to 107
//! bytes, so the path stays short) and its own loopback port, so tests may run in parallel.
//! The process runs in the foreground (`-db`) as our child; dropping the value kills it.
//!
//! ```no_run
//! # fn main() -> std::io::Result<()> {
//! let haproxy = hatune::testkit::haproxy::Haproxy::start(
//!     "backend app\n    balance roundrobin\n    server a1 127.0.0.1:1 weight 10\n",
//! )?;
//! let socket = haproxy.admin_socket();
//! # Ok(()) }
//! ```

use std::collections::HashSet;
use std::fs;
use std::io::{self, Read, Write};
use std::net::TcpListener;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::sink::haproxy::Address;

/// How long HAProxy may take to answer `show info` after a start or reload.
const READY_WITHIN: Duration = Duration::from_secs(10);
/// How long an old process may take to leave after `-sf`.
const OLD_EXITS_WITHIN: Duration = Duration::from_secs(10);

/// A running HAProxy with an admin unix socket, a `level user` unix socket and an admin TCP
/// socket on a loopback port.
#[derive(Debug)]
pub struct Haproxy {
    dir: PathBuf,
    binary: PathBuf,
    config: PathBuf,
    tcp_port: u16,
    child: Child,
}

impl Haproxy {
    /// Starts `haproxy -db -f CFG` where CFG is a `global` section with the stats sockets, a
    /// `defaults` section (mode http, short timeouts), then `backends_cfg` as given.
    /// Returns once `show info` answers on the admin socket.
    pub fn start(backends_cfg: &str) -> io::Result<Haproxy> {
        let binary = find_haproxy()?;
        let mut last_error = None;
        // A port picked free may be taken by another test before HAProxy binds it: retry with
        // a fresh one (and a fresh dir: a failed attempt's Drop removes its own).
        for _ in 0..3 {
            let dir = make_short_temp_dir()?;
            let config = dir.join("haproxy.cfg");
            let tcp_port = free_port();
            if let Err(e) = fs::write(&config, render_config(&dir, tcp_port, backends_cfg)) {
                let _ = fs::remove_dir_all(&dir);
                return Err(e);
            }
            let child = match spawn(&binary, &config, &dir, None) {
                Ok(child) => child,
                Err(e) => {
                    let _ = fs::remove_dir_all(&dir);
                    return Err(e);
                }
            };
            let mut haproxy = Haproxy {
                dir,
                binary: binary.clone(),
                config,
                tcp_port,
                child,
            };
            match haproxy.wait_ready() {
                Ok(()) => return Ok(haproxy),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| io::Error::other("HAProxy did not start")))
    }

    /// `stats socket <dir>/admin.sock level admin`.
    pub fn admin_socket(&self) -> Address {
        Address::Unix(self.dir.join("admin.sock"))
    }

    /// `stats socket <dir>/user.sock level user`: `set weight` gets `Permission denied`.
    pub fn user_socket(&self) -> Address {
        Address::Unix(self.dir.join("user.sock"))
    }

    /// `stats socket ipv4@127.0.0.1:PORT level admin`.
    pub fn tcp_socket(&self) -> Option<Address> {
        Some(Address::Tcp(format!("127.0.0.1:{}", self.tcp_port)))
    }

    /// The pid of the current process (changes on [`reload`](Self::reload)).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The directory holding the config, sockets and `haproxy.log`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A real reload: starts `haproxy -db -f CFG -sf OLDPID` (optionally with new backends),
    /// waits until the new process answers `show info` with its own pid, then until the old
    /// one has left. Runtime changes such as weights are gone afterwards, as in production.
    pub fn reload(&mut self, new_backends_cfg: Option<&str>) -> io::Result<()> {
        if let Some(backends) = new_backends_cfg {
            fs::write(
                &self.config,
                render_config(&self.dir, self.tcp_port, backends),
            )?;
        }
        let old_pid = self.child.id();
        let new = spawn(&self.binary, &self.config, &self.dir, Some(old_pid))?;
        let mut old = std::mem::replace(&mut self.child, new);
        let ready = self.wait_ready();
        // The old process stops on its own once its listeners are handed over; reap it either
        // way so no zombie outlives the test.
        let deadline = Instant::now() + OLD_EXITS_WITHIN;
        loop {
            match old.try_wait()? {
                Some(_) => break,
                None if Instant::now() >= deadline => {
                    let _ = old.kill();
                    let _ = old.wait();
                    break;
                }
                None => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        ready
    }

    /// Polls `show info` on the admin socket until it reports the current child's pid.
    fn wait_ready(&mut self) -> io::Result<()> {
        let socket = self.dir.join("admin.sock");
        let want = format!("\nPid: {}\n", self.child.id());
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Err(io::Error::other(format!(
                    "haproxy exited ({status}) before it was ready; its log:\n{}",
                    self.log()
                )));
            }
            if let Ok(reply) = show_info(&socket) {
                if reply.contains(&want) {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "haproxy did not answer `show info` within {READY_WITHIN:?}; its log:\n{}",
                        self.log()
                    ),
                ));
            }
            // Polling interval, not a synchronisation sleep: we wait for a condition.
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.join("haproxy.log")).unwrap_or_default()
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A loopback TCP port that was free a moment ago and that this process has not handed out
/// before (HAProxy 2.6 refuses `bind :0`, so a port must be chosen up front).
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    let given = given.get_or_insert_with(HashSet::new);
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("cannot bind a loopback port");
        if given.insert(port) {
            return port;
        }
    }
}

fn render_config(dir: &Path, tcp_port: u16, backends_cfg: &str) -> String {
    let dir = dir.display();
    format!(
        "global\n\
         \x20   stats socket {dir}/admin.sock level admin\n\
         \x20   stats socket {dir}/user.sock level user\n\
         \x20   stats socket ipv4@127.0.0.1:{tcp_port} level admin\n\
         \x20   stats timeout 30s\n\
         \n\
         defaults\n\
         \x20   mode http\n\
         \x20   timeout connect 1s\n\
         \x20   timeout client 30s\n\
         \x20   timeout server 30s\n\
         \n\
         {backends_cfg}\n"
    )
}

fn spawn(binary: &Path, config: &Path, dir: &Path, old_pid: Option<u32>) -> io::Result<Child> {
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("haproxy.log"))?;
    let mut cmd = Command::new(binary);
    cmd.arg("-db").arg("-f").arg(config);
    if let Some(pid) = old_pid {
        cmd.arg("-sf").arg(pid.to_string());
    }
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
}

/// `HATUNE_HAPROXY`, else `haproxy` on PATH, else the usual sbin paths (PATH often lacks
/// them for non-root users).
fn find_haproxy() -> io::Result<PathBuf> {
    if let Some(path) = std::env::var_os("HATUNE_HAPROXY") {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("HATUNE_HAPROXY={} is not a file", path.display()),
            ))
        };
    }
    let path_dirs = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    path_dirs
        .into_iter()
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join("haproxy"))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                "haproxy is not installed: `apt-get install haproxy` (or set HATUNE_HAPROXY)",
            )
        })
}

/// `/tmp/hatune-<pid>-<n>`: short, unique within the machine, created atomically.
/// Always under `/tmp`, not `$TMPDIR`, to keep socket paths far below 107 bytes. (The
/// `tempfile` crate is only a dev-dependency, and this module is part of the library.)
fn make_short_temp_dir() -> io::Result<PathBuf> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = PathBuf::from(format!("/tmp/hatune-{}-{n}", std::process::id()));
        match fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            // Left over by an earlier process that had our pid: try the next number.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
}

fn show_info(socket: &Path) -> io::Result<String> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(Duration::from_secs(1)))?;
    stream.set_write_timeout(Some(Duration::from_secs(1)))?;
    stream.write_all(b"show info\n")?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply)?;
    Ok(reply)
}
