//! A fleet of fake cAdvisor hosts in one process, for benchmarks: N listeners on 127.0.0.1,
//! each answering `/api/v1.3/docker/` and `/api/v1.3/machine` after a fixed latency, with the
//! real-shaped replies of [`super::cadvisor`] (a few containers, [`SAMPLES`] samples each).
//!
//! Rendering a 450 KB reply per request for 1,000 hosts would cost the fleet more CPU than
//! hatune spends parsing it, and the machine has 2 cores. So the fleet renders ONE reply (a
//! template) and serves it to every host with the host's number spliced in: container aliases
//! are `app{host:05}-{c:02}` and container ids start with the host number, so every host
//! reports distinct containers, at the cost of a few `writev` slices per reply. With
//! [`FleetSpec::refresh`] the template is re-rendered periodically, so a daemon ticking over
//! the fleet sees fresh samples (and, with `rotate_loads`, loads that move between containers,
//! so weights keep changing).
//!
//! Backends for a fleet: host `h` belongs to group `h / 10`; `^app{group:04}` matches the
//! aliases of its 10 hosts (see [`group_pattern`]).

use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::cadvisor::{docker_body, machine_body, unix_now, FakeContainer, SAMPLES};
use crate::source::cadvisor::parse_containers;

/// Placeholder for the host number in the template: 5 characters, like `{host:05}`.
const SLOT: &[u8] = b"@@@@@";

/// What the fleet looks like.
#[derive(Debug, Clone)]
pub struct FleetSpec {
    pub hosts: usize,
    /// App containers per host (each host also runs the `cadvisor` container).
    pub containers_per_host: usize,
    pub num_cores: u32,
    /// Delay before every reply.
    pub latency: Duration,
    /// Re-render the samples this often (`None`: once, at start).
    pub refresh: Option<Duration>,
    /// On each refresh, shift which container carries which load.
    pub rotate_loads: bool,
}

impl Default for FleetSpec {
    fn default() -> Self {
        FleetSpec {
            hosts: 10,
            containers_per_host: 3,
            num_cores: 4,
            latency: Duration::from_millis(100),
            refresh: None,
            rotate_loads: false,
        }
    }
}

/// The alias of container `c` on host `h` (and the HAProxy server name it stands for).
pub fn alias(host: usize, c: usize) -> String {
    format!("app{host:05}-{c:02}")
}

/// Number of groups (backends) for `hosts` hosts: 10 hosts per group.
pub fn groups(hosts: usize) -> usize {
    hosts.div_ceil(10)
}

/// Backend name of group `g`.
pub fn group_backend(g: usize) -> String {
    format!("be{g:04}")
}

/// The pattern matching the aliases of group `g`'s hosts.
pub fn group_pattern(g: usize) -> String {
    format!("^app{g:04}")
}

/// HAProxy backends for the fleet: one per group, one server per container, all pointing at a
/// closed port (no traffic needed). `balance roundrobin` takes any weight.
pub fn haproxy_backends(spec: &FleetSpec) -> String {
    let mut cfg = String::new();
    for g in 0..groups(spec.hosts) {
        cfg.push_str(&format!(
            "backend {}\n    balance roundrobin\n",
            group_backend(g)
        ));
        for h in (g * 10)..((g + 1) * 10).min(spec.hosts) {
            for c in 0..spec.containers_per_host {
                cfg.push_str(&format!(
                    "    server {} 127.0.0.1:9 weight 100\n",
                    alias(h, c)
                ));
            }
        }
    }
    cfg
}

/// A hatune config (JSON) for the fleet: one backend per group, `timeout` as given (`"5s"`),
/// `extra` appended inside the top-level object (e.g. `, "interval": "200ms"`).
pub fn hatune_config(
    spec: &FleetSpec,
    urls: &[String],
    haproxy: &str,
    timeout: &str,
    extra: &str,
) -> String {
    let backends: Vec<String> = (0..groups(spec.hosts))
        .map(|g| {
            format!(
                r#"{{"name": "{}", "pattern": "{}"}}"#,
                group_backend(g),
                group_pattern(g)
            )
        })
        .collect();
    let urls: Vec<String> = urls.iter().map(|u| format!("\"{u}\"")).collect();
    format!(
        r#"{{"haproxy": ["{haproxy}"], "cadvisor": [{}], "timeout": "{timeout}", "window": "60s", "backends": [{}]{extra}}}"#,
        urls.join(", "),
        backends.join(", ")
    )
}

/// The docker reply, cut at every host-number slot.
struct Template {
    parts: Vec<Vec<u8>>,
    len: usize,
}

impl Template {
    fn render(spec: &FleetSpec, round: usize) -> Template {
        let n = spec.containers_per_host;
        let containers: Vec<FakeContainer> = (0..n)
            .map(|c| {
                // Loads from 0.2 to 1.0 cores spread over the containers, shifted each round.
                let k = if spec.rotate_loads {
                    (c + round) % n
                } else {
                    c
                };
                let cores = 0.2 + 0.8 * k as f64 / n.max(2).saturating_sub(1) as f64;
                FakeContainer::new(format!("app@@@@@-{c:02}"), cores)
            })
            .collect();
        let body = docker_body(spec.num_cores, &containers, unix_now(), 7);
        // Container ids are the same in every rendering: make their first 5 hex digits the
        // host number too (digits are hex), so ids differ between hosts.
        let parsed = parse_containers(body.as_bytes()).expect("the fake renders valid JSON");
        let mut body = body;
        for c in &parsed {
            if let Some(id) = c.aliases.get(1) {
                body = body.replace(id.as_str(), &format!("@@@@@{}", &id[5..]));
            }
        }
        let bytes = body.into_bytes();
        let mut parts = vec![];
        let mut rest = &bytes[..];
        while let Some(at) = rest.windows(SLOT.len()).position(|w| w == SLOT) {
            parts.push(rest[..at].to_vec());
            rest = &rest[at + SLOT.len()..];
        }
        parts.push(rest.to_vec());
        let len = bytes.len();
        debug_assert_eq!(
            parts.iter().map(Vec::len).sum::<usize>() + (parts.len() - 1) * SLOT.len(),
            len
        );
        Template { parts, len }
    }
}

struct Shared {
    spec: FleetSpec,
    template: Mutex<Arc<Template>>,
    machine: Vec<u8>,
    requests: AtomicU64,
}

/// A running fleet; stops (listeners and open connections) when dropped.
pub struct Fleet {
    urls: Vec<String>,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
}

impl Fleet {
    /// Binds one listener per host and starts serving. Needs about one file descriptor per
    /// host plus one per open connection: raise the soft limit first for 1,000 hosts.
    pub async fn start(spec: FleetSpec) -> io::Result<Fleet> {
        let shared = Arc::new(Shared {
            template: Mutex::new(Arc::new(Template::render(&spec, 0))),
            machine: machine_body(spec.num_cores).into_bytes(),
            requests: AtomicU64::new(0),
            spec: spec.clone(),
        });
        let (stop, stop_rx) = watch::channel(false);
        let mut urls = Vec::with_capacity(spec.hosts);
        for host in 0..spec.hosts {
            let listener = TcpListener::bind("127.0.0.1:0").await?;
            urls.push(format!("http://{}", listener.local_addr()?));
            tokio::spawn(accept_loop(listener, host, shared.clone(), stop_rx.clone()));
        }
        if let Some(every) = spec.refresh {
            let shared = shared.clone();
            let mut stop_rx = stop_rx.clone();
            tokio::spawn(async move {
                let mut round = 0;
                loop {
                    tokio::select! {
                        _ = stop_rx.wait_for(|s| *s) => return,
                        _ = tokio::time::sleep(every) => {}
                    }
                    round += 1;
                    let t = Arc::new(Template::render(&shared.spec, round));
                    *shared.template.lock().unwrap_or_else(|p| p.into_inner()) = t;
                }
            });
        }
        Ok(Fleet { urls, shared, stop })
    }

    /// Base URLs, one per host, in host order.
    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    /// Bytes of one docker reply (the same for every host).
    pub fn docker_reply_len(&self) -> usize {
        self.template().len
    }

    /// Samples per container in a reply.
    pub fn samples(&self) -> usize {
        SAMPLES
    }

    /// Requests answered or in progress so far.
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::Relaxed)
    }

    fn template(&self) -> Arc<Template> {
        self.shared
            .template
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

async fn accept_loop(
    listener: TcpListener,
    host: usize,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let mut conn_stop = stop.clone();
        let accepted = tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((stream, _)) = accepted else {
            // Out of descriptors: back off instead of spinning.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = conn_stop.wait_for(|s| *s) => {}
                _ = serve(stream, host, &shared) => {}
            }
        });
    }
}

async fn serve(mut stream: TcpStream, host: usize, shared: &Shared) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let number = format!("{host:05}");
    let mut buf: Vec<u8> = Vec::with_capacity(512);
    loop {
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if buf.len() > 16 * 1024 {
                return Ok(());
            }
            let mut chunk = [0u8; 1024];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        buf.drain(..head_end);
        shared.requests.fetch_add(1, Ordering::Relaxed);
        let path = head.split_whitespace().nth(1).unwrap_or("/");
        let close = head.to_ascii_lowercase().contains("connection: close");
        tokio::time::sleep(shared.spec.latency).await;
        let conn = if close { "close" } else { "keep-alive" };
        if path.starts_with("/api/v1.3/docker") {
            let t = shared
                .template
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            let header = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: {conn}\r\n\r\n",
                t.len
            );
            let mut slices: Vec<&[u8]> = Vec::with_capacity(t.parts.len() * 2 + 1);
            slices.push(header.as_bytes());
            for (i, part) in t.parts.iter().enumerate() {
                if i > 0 {
                    slices.push(number.as_bytes());
                }
                slices.push(part);
            }
            write_all_vectored(&mut stream, &slices).await?;
        } else if path.starts_with("/api/v1.3/machine") {
            let header = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: {conn}\r\n\r\n",
                shared.machine.len()
            );
            write_all_vectored(&mut stream, &[header.as_bytes(), &shared.machine]).await?;
        } else {
            let msg = b"page not found\n";
            let header = format!(
                "HTTP/1.1 404 Not Found\r\nContent-Length: {}\r\nConnection: {conn}\r\n\r\n",
                msg.len()
            );
            write_all_vectored(&mut stream, &[header.as_bytes(), msg]).await?;
        }
        if close {
            return Ok(());
        }
    }
}

/// `write_all` over several slices with `writev`, resuming after partial writes.
async fn write_all_vectored(stream: &mut TcpStream, slices: &[&[u8]]) -> io::Result<()> {
    let mut i = 0;
    let mut offset = 0;
    while i < slices.len() {
        // Built inside the poll: an IoSlice is not Send, so it must not live across an await.
        let mut n = std::future::poll_fn(|cx| {
            let io: Vec<IoSlice<'_>> = std::iter::once(IoSlice::new(&slices[i][offset..]))
                .chain(slices[i + 1..].iter().take(63).map(|s| IoSlice::new(s)))
                .collect();
            std::pin::Pin::new(&mut *stream).poll_write_vectored(cx, &io)
        })
        .await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        while i < slices.len() && n >= slices[i].len() - offset {
            n -= slices[i].len() - offset;
            i += 1;
            offset = 0;
        }
        offset += n;
    }
    Ok(())
}

/// The local address of a fleet URL (for tests of the fleet itself).
pub fn addr_of(url: &str) -> Option<SocketAddr> {
    url.strip_prefix("http://")?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::cadvisor::{Client, Window};

    #[tokio::test]
    async fn every_host_reports_its_own_containers() {
        let spec = FleetSpec {
            hosts: 3,
            containers_per_host: 2,
            latency: Duration::from_millis(1),
            ..FleetSpec::default()
        };
        let fleet = Fleet::start(spec).await.unwrap();
        let client = Client::new(Duration::from_secs(5));
        let polls = client
            .poll_all(fleet.urls(), |_| Window::Span(Duration::from_secs(60)))
            .await;
        for (h, poll) in polls.iter().enumerate() {
            let host = poll.as_ref().unwrap();
            assert_eq!(host.num_cores, 4);
            let aliases: Vec<&str> = host
                .containers
                .iter()
                .map(|c| c.aliases[0].as_str())
                .collect();
            assert_eq!(aliases, [alias(h, 0), alias(h, 1), "cadvisor".into()]);
            for c in &host.containers {
                assert!(c.aliases[1].starts_with(&format!("{h:05}")));
                assert!(c.reading.is_ok(), "{c:?}");
            }
        }
        assert!(addr_of(&fleet.urls()[0]).is_some());
        assert!(fleet.docker_reply_len() > 100_000);
    }
}
