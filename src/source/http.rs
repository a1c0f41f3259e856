//! HTTP for every source: one client per source, each exchange under the source's timeout and
//! `max_reply`, TLS from the config's CA file, a bearer token or basic auth, and the errors a
//! host's failure is reported with. The sources say what to ask and how to read the reply.
//!
//! Bodies are read in *body slots*: there are two per core, and a host holding one reads,
//! parses and reduces its reply to a few numbers per container, then frees it. Bodies waiting
//! for a slot stay in the kernel's socket buffers (and on the sender's side), not in hatune's
//! memory. A body is bounded by `max_reply`: a reply whose `Content-Length` is larger is
//! refused before it waits for a slot, and one without a length is read chunk by chunk and
//! dropped once it passes the cap.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::{Semaphore, SemaphorePermit};

use super::HostError;
use crate::config::format_size;

/// The most of a body's announced length reserved before it arrives; it grows from there.
const PREALLOCATE_MOST: u64 = 8 << 20;

/// How a source's HTTPS is verified.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tls {
    /// PEM file of the CAs to trust (the only roots: no bundled or system store).
    pub ca_file: Option<PathBuf>,
    /// Accept any certificate (the config's `insecure_skip_verify`; warned about at start).
    pub insecure: bool,
    /// PEM file holding a client certificate and its key, when the server asks for one.
    pub identity_file: Option<PathBuf>,
}

/// How a source proves who it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    /// `Authorization: Bearer <the file's content, trimmed>`; the file is read again when its
    /// modification time changes (a rotated service-account token).
    BearerFile(PathBuf),
    /// Basic auth, the password read from a file (never from the config itself).
    Basic {
        username: String,
        password_file: PathBuf,
    },
}

/// A token or password read from a file, with the modification time it was read at.
#[derive(Debug, Default)]
struct Secret {
    read_at: Option<SystemTime>,
    value: Option<String>,
}

/// An HTTP client for one source. Clones share the connection settings and the body slots.
#[derive(Debug, Clone)]
pub struct Http {
    client: reqwest::Client,
    timeout: Duration,
    max_reply: u64,
    bodies: Arc<Semaphore>,
    auth: Option<Auth>,
    secret: Arc<Mutex<Secret>>,
}

impl Http {
    /// A plain-HTTP client (cAdvisor's usual set-up), each exchange within `timeout`.
    pub fn new(timeout: Duration, max_reply: u64) -> Http {
        Http::build(timeout, max_reply, &Tls::default(), None)
            // Without a CA or identity file, nothing can fail but the TLS backend's start.
            .unwrap_or_else(|_| Http::from_client(reqwest::Client::new(), timeout, max_reply))
    }

    /// A client verifying TLS as `tls` says and authenticating as `auth` says. Fails, naming
    /// the file, when a CA or identity file cannot be read or holds no certificate.
    pub fn build(
        timeout: Duration,
        max_reply: u64,
        tls: &Tls,
        auth: Option<Auth>,
    ) -> Result<Http, String> {
        let mut builder = reqwest::Client::builder()
            // No idle connections between ticks. hyper grows a connection's read buffer while
            // it reads a large reply (up to ~400 KB) and keeps it while the connection idles in
            // the pool: measured, 1,000 idle connections held ~440 MB of a daemon's 520 MB RSS
            // (1.2 MB replies). Reconnecting costs one round trip per tick; on loopback, nothing.
            .pool_max_idle_per_host(0)
            // A host answers for itself: one that redirects elsewhere would report another
            // host's containers as its own (each then seen twice, as a duplicate alias). A
            // redirect is that host's failure, never followed.
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(timeout)
            .tcp_nodelay(true)
            .use_rustls_tls()
            .tls_built_in_root_certs(false);
        if let Some(path) = &tls.ca_file {
            let pem = read_file(path)?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| format!("{}: not PEM certificates: {e}", path.display()))?;
            if certs.is_empty() {
                return Err(format!("{}: holds no PEM certificate", path.display()));
            }
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        if let Some(path) = &tls.identity_file {
            let pem = read_file(path)?;
            let identity = reqwest::Identity::from_pem(&pem).map_err(|e| {
                format!(
                    "{}: not a PEM certificate with its private key: {e}",
                    path.display()
                )
            })?;
            builder = builder.identity(identity);
        }
        if tls.insecure {
            builder = builder.danger_accept_invalid_certs(true);
        }
        let client = builder
            .build()
            .map_err(|e| format!("cannot set up HTTPS: {}", error_chain(&e)))?;
        let mut http = Http::from_client(client, timeout, max_reply);
        http.auth = auth;
        Ok(http)
    }

    fn from_client(client: reqwest::Client, timeout: Duration, max_reply: u64) -> Http {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Http {
            client,
            timeout,
            max_reply,
            bodies: Arc::new(Semaphore::new(2 * cores)),
            auth: None,
            secret: Arc::default(),
        }
    }

    /// The per-exchange timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The largest body read, in bytes.
    pub fn max_reply(&self) -> u64 {
        self.max_reply
    }

    /// One GET, or a POST of a JSON `body`, to a 2xx response whose body is not read yet. A
    /// redirect is an error (it is not followed); so is a token or password file that cannot
    /// be read (nothing is sent then).
    pub async fn send(
        &self,
        url: &str,
        body: Option<String>,
    ) -> Result<reqwest::Response, HostError> {
        let resp = self.request(url, body).await?;
        let status = resp.status();
        if !status.is_success() {
            return Err(HostError::Status {
                url: url.to_owned(),
                status: status.as_u16(),
            });
        }
        // Refused before it waits for a body slot: nothing of it is read.
        if let Some(n) = resp.content_length().filter(|&n| n > self.max_reply) {
            return Err(self.too_large(url, format!("its Content-Length is {n} bytes; not read")));
        }
        Ok(resp)
    }

    /// GET `url`: its status and whole body (an API's error replies carry why), within the
    /// timeout. Redirects, 401 and 403 are errors as with [`send`](Http::send).
    pub async fn get_any(&self, url: &str) -> Result<(u16, Vec<u8>), HostError> {
        let exchange = async {
            let resp = self.request(url, None).await?;
            if let Some(n) = resp.content_length().filter(|&n| n > self.max_reply) {
                return Err(
                    self.too_large(url, format!("its Content-Length is {n} bytes; not read"))
                );
            }
            let status = resp.status().as_u16();
            Ok((status, self.read_body(url, resp).await?))
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| HostError::Timeout(self.timeout))?
    }

    /// The request sent, with its credentials; a redirect, 401 or 403 is an error.
    async fn request(
        &self,
        url: &str,
        body: Option<String>,
    ) -> Result<reqwest::Response, HostError> {
        let mut request = match body {
            None => self.client.get(url),
            Some(body) => self
                .client
                .post(url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body),
        };
        match &self.auth {
            None => {}
            Some(Auth::BearerFile(path)) => {
                let token = self.secret(path).map_err(HostError::Unreachable)?;
                request = request.bearer_auth(token);
            }
            Some(Auth::Basic {
                username,
                password_file,
            }) => {
                let password = self.secret(password_file).map_err(HostError::Unreachable)?;
                request = request.basic_auth(username, Some(password));
            }
        }
        let resp = request.send().await.map_err(|e| self.error(url, e))?;
        let status = resp.status();
        if status.is_redirection() {
            let location = resp.headers().get(reqwest::header::LOCATION).map(|v| {
                String::from_utf8_lossy(v.as_bytes())
                    .chars()
                    .take(200)
                    .collect()
            });
            return Err(HostError::Redirect {
                url: url.to_owned(),
                status: status.as_u16(),
                location,
            });
        }
        if let Some(why) = denied(status.as_u16(), self.auth.is_some()) {
            return Err(HostError::Denied {
                url: url.to_owned(),
                status: status.as_u16(),
                why,
            });
        }
        Ok(resp)
    }

    /// A body slot: held while a body is read and reduced (see the module doc).
    pub async fn body_slot(&self) -> Option<SemaphorePermit<'_>> {
        self.bodies.acquire().await.ok()
    }

    /// The body of a reply that [`send`](Http::send) let through, chunk by chunk, never
    /// holding more than `max_reply` bytes of it: a reply without a `Content-Length` that goes
    /// past it is dropped there, unread beyond.
    pub async fn read_body(
        &self,
        url: &str,
        mut resp: reqwest::Response,
    ) -> Result<Vec<u8>, HostError> {
        // Room for what it announced (at most `max_reply`, checked in `send`), but no more
        // than a generous real reply up front: a peer's header is no reason to reserve 4 GiB.
        let announced = resp.content_length().unwrap_or(0).min(PREALLOCATE_MOST);
        let mut body = Vec::with_capacity(usize::try_from(announced).unwrap_or(0));
        while let Some(chunk) = resp.chunk().await.map_err(|e| self.error(url, e))? {
            if (body.len() + chunk.len()) as u64 > self.max_reply {
                return Err(self.too_large(
                    url,
                    format!(
                        "more than {} bytes arrived (no Content-Length); the rest was not read",
                        self.max_reply
                    ),
                ));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    fn too_large(&self, url: &str, detail: String) -> HostError {
        HostError::TooLarge {
            url: url.to_owned(),
            limit: format_size(self.max_reply),
            detail,
        }
    }

    /// A reqwest error as the host's failure.
    pub fn error(&self, url: &str, e: reqwest::Error) -> HostError {
        if e.is_timeout() {
            HostError::Timeout(self.timeout)
        } else if e.is_decode() {
            HostError::Garbled {
                url: url.to_owned(),
                detail: error_chain(&e),
            }
        } else {
            HostError::Unreachable(format!("{url}: {}", explain(&error_chain(&e))))
        }
    }

    /// The token or password in `path`, read again when the file's modification time changed.
    fn secret(&self, path: &Path) -> Result<String, String> {
        let modified = std::fs::metadata(path)
            .and_then(|m| m.modified())
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let mut secret = self.secret.lock().unwrap_or_else(|p| p.into_inner());
        if secret.read_at != Some(modified) || secret.value.is_none() {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            let value = text.trim().to_string();
            if value.is_empty() {
                return Err(format!("{} is empty", path.display()));
            }
            *secret = Secret {
                read_at: Some(modified),
                value: Some(value),
            };
        }
        Ok(secret.value.clone().unwrap_or_default())
    }
}

/// What a 401 or 403 means, in words an operator can act on.
fn denied(status: u16, authenticated: bool) -> Option<&'static str> {
    match (status, authenticated) {
        (401, true) => Some("the token or password was refused (expired, or not this cluster's?): check the file the config names"),
        (401, false) => Some("it wants credentials: give a token_file (or basic auth)"),
        (403, true) => Some("the credentials are valid but may not read this (the kubelet needs RBAC `get` on `nodes/metrics`)"),
        (403, false) => Some("forbidden"),
        _ => None,
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// A TLS failure in words an operator can act on (etcd's client says its own the same way).
pub fn explain(cause: &str) -> String {
    if cause.contains("UnknownIssuer") || cause.contains("unknown issuer") {
        format!("{cause} (the server's certificate is not signed by a CA in `ca_file`)")
    } else if cause.contains("certificate: Expired")
        || cause.contains("CertificateExpired")
        || cause.contains("certificate has expired")
        || cause.contains("certificate expired")
    {
        // Not a bare "expired": gRPC's own "Timeout expired" is no certificate's.
        format!("{cause} (the server's certificate has expired, or this machine's clock is off)")
    } else if cause.contains("NotValidForName") {
        format!("{cause} (the server's certificate does not name the host in the URL)")
    } else if cause.contains("BadCertificate") || cause.contains("CertificateRequired") {
        format!("{cause} (the server wants a client certificate it accepts: `client_cert_file`)")
    } else {
        cause.to_string()
    }
}

/// A base URL's host as written (brackets of an IPv6 address dropped), the IP when it is
/// one, and its port.
pub fn host_of(base: &str) -> (String, Option<IpAddr>, u16) {
    let Ok(url) = reqwest::Url::parse(base) else {
        return (base.to_owned(), None, 0);
    };
    let port = url.port_or_known_default().unwrap_or(0);
    let host = url
        .host_str()
        .unwrap_or(base)
        .trim_start_matches('[')
        .trim_end_matches(']');
    (host.to_owned(), host.parse().ok(), port)
}

/// The addresses of `name` (the IP itself when it is one), within `timeout`; none when the
/// lookup fails.
pub async fn resolve(
    name: &str,
    literal: Option<IpAddr>,
    port: u16,
    timeout: Duration,
) -> Vec<IpAddr> {
    if let Some(ip) = literal {
        return vec![ip];
    }
    let found = tokio::time::timeout(timeout, tokio::net::lookup_host((name, port))).await;
    let mut ips: Vec<IpAddr> = match found {
        Ok(Ok(addrs)) => addrs.map(|a| a.ip()).collect(),
        _ => vec![],
    };
    ips.dedup();
    ips
}

/// reqwest's top-level message is terse ("error sending request for url (…)") and each layer
/// repeats the one below; the innermost cause says why ("Connection refused (os error 111)").
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut root = e;
    while let Some(c) = root.source() {
        root = c;
    }
    root.to_string()
}

/// hatune's own clock, in ns since the epoch: samples dated far ahead of it are not believed.
pub fn now_nanos() -> super::Nanos {
    SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| {
            super::Nanos::try_from(d.as_nanos()).unwrap_or(super::Nanos::MAX)
        })
}

/// The most hosts a source polls at once, whatever the file descriptor limit.
///
/// Each host in flight costs about 28 KB in the HTTP client (measured with massif: hyper's
/// request channel ~9 KB, its write buffer 8 KB and read buffer 8 KB, the tasks), whatever its
/// reply. 1,024 keeps a tick of 1,000 hosts at one round trip; at 10,000 hosts it held RSS at
/// 103 MB instead of 135 MB (4,096) for 1.74 s instead of 1.56 s (`cargo bench --bench poll --
/// --scale`, lean reads, 100 ms latency), the fake fleet's own serving being most of that time.
pub const MAX_HOSTS_IN_FLIGHT: usize = 1024;

/// Descriptors left for everything else (HAProxy sockets, metrics, logs, the runtime).
const FD_RESERVE: u64 = 64;

/// How many hosts a source polls at once: [`MAX_HOSTS_IN_FLIGHT`], or fewer when the soft
/// `RLIMIT_NOFILE` is low. A host needs up to two connections while it is polled (its reply
/// and `/machine` the first time), so with the usual soft limit of 1,024 this is 480; `hatune`
/// raises the soft limit to the hard one at start.
pub fn max_hosts_in_flight() -> usize {
    let soft = rlimit::Resource::NOFILE
        .get_soft()
        .unwrap_or(1024)
        .max(FD_RESERVE + 32);
    usize::try_from((soft - FD_RESERVE) / 2)
        .unwrap_or(usize::MAX)
        .clamp(16, MAX_HOSTS_IN_FLIGHT)
}

/// Runs `poll(i, host)` for every host at once (at most [`max_hosts_in_flight`] at a time),
/// each in its own task; results come in the order of `hosts`, `None` for a poll that was
/// cancelled. One host's failure never affects another's. Dropping the future aborts the polls
/// still running; a poll that panicked panics here.
pub async fn poll_each<T, F, Fut>(hosts: &[String], poll: F) -> Vec<Option<T>>
where
    T: Send + 'static,
    F: Fn(usize, &str) -> Fut,
    Fut: std::future::Future<Output = T> + Send + 'static,
{
    // A task per host in flight, no more: a poll's future is several KB before it has sent
    // anything, so spawning every host at once (each waiting its turn) cost more memory than
    // the polls themselves at 10,000 hosts.
    let limit = max_hosts_in_flight().max(1);
    let mut tasks = tokio::task::JoinSet::new();
    let mut out: Vec<Option<T>> = (0..hosts.len()).map(|_| None).collect();
    let mut next = hosts.iter().enumerate();
    loop {
        while tasks.len() < limit {
            let Some((i, host)) = next.next() else { break };
            let fut = poll(i, host);
            tasks.spawn(async move { (i, fut.await) });
        }
        let Some(joined) = tasks.join_next().await else {
            break;
        };
        match joined {
            Ok((i, r)) => out[i] = Some(r),
            // A poll that panicked: re-raise here rather than report a made-up error.
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => {}
        }
    }
    out
}
