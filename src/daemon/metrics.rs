//! The daemon's own metrics, in Prometheus text on `/metrics` (prometheus-client encodes them).

use std::sync::atomic::AtomicU64;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::debug;

use crate::report::TickReport;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServerLabels {
    backend: String,
    server: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HostLabels {
    host: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SocketLabels {
    socket: String,
}

#[derive(Default)]
struct PeerGauges {
    leader: Gauge,
    revision: Gauge,
    etcd_up: Gauge,
}

/// Every series hatune exports.
pub struct Metrics {
    registry: Registry,
    utilisation: Family<ServerLabels, Gauge<f64, AtomicU64>>,
    weight: Family<ServerLabels, Gauge>,
    ticks: Counter,
    tick_duration: Histogram,
    skipped_hosts: Family<HostLabels, Counter>,
    write_errors: Family<SocketLabels, Counter>,
    reloads: Family<SocketLabels, Counter>,
    socket_up: Family<SocketLabels, Gauge>,
    overridden: Gauge,
    last_success: Gauge<f64, AtomicU64>,
    tick_interval: Gauge<f64, AtomicU64>,
    /// Only with `peers`: no series without them, so the no-leader alert stays quiet.
    peers: Option<PeerGauges>,
    /// Serialises observe and encode so a scrape never sees half a tick.
    lock: Mutex<()>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("hatune");
        let utilisation = Family::<ServerLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "server_utilisation",
            "CPU utilisation of the server's container, as a share of its capacity",
            utilisation.clone(),
        );
        let weight = Family::<ServerLabels, Gauge>::default();
        registry.register(
            "server_weight",
            "User weight of the server in HAProxy after the tick",
            weight.clone(),
        );
        let ticks = Counter::default();
        registry.register("ticks", "Ticks run", ticks.clone());
        let tick_duration = Histogram::new(exponential_buckets(0.005, 2.0, 14));
        registry.register(
            "tick_duration_seconds",
            "Wall time of one tick",
            tick_duration.clone(),
        );
        let skipped_hosts = Family::<HostLabels, Counter>::default();
        registry.register(
            "skipped_hosts",
            "cAdvisor hosts skipped in a tick, by reason",
            skipped_hosts.clone(),
        );
        let write_errors = Family::<SocketLabels, Counter>::default();
        registry.register(
            "haproxy_write_errors",
            "Weights HAProxy refused or could not be sent",
            write_errors.clone(),
        );
        let reloads = Family::<SocketLabels, Counter>::default();
        registry.register(
            "haproxy_reloads",
            "HAProxy reloads noticed (weights re-applied)",
            reloads.clone(),
        );
        let socket_up = Family::<SocketLabels, Gauge>::default();
        registry.register(
            "haproxy_socket_up",
            "1 when the HAProxy socket was read in the last tick, else 0",
            socket_up.clone(),
        );
        let overridden = Gauge::default();
        registry.register(
            "overridden_servers",
            "Servers left alone because someone else changed their weight",
            overridden.clone(),
        );
        let last_success = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "last_successful_tick_timestamp_seconds",
            "Unix time of the last tick that read a HAProxy socket and had no weight refused",
            last_success.clone(),
        );
        let tick_interval = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "tick_interval_seconds",
            "Configured time between ticks; for a cron schedule, from the last fire to the next",
            tick_interval.clone(),
        );
        Metrics {
            registry,
            utilisation,
            weight,
            ticks,
            tick_duration,
            skipped_hosts,
            write_errors,
            reloads,
            socket_up,
            overridden,
            last_success,
            tick_interval,
            peers: None,
            lock: Mutex::new(()),
        }
    }

    /// Exports the peer group's series (`hatune_peer_leader`, `hatune_peer_revision`,
    /// `hatune_peer_etcd_up`), before the first scrape.
    pub fn with_peers(mut self) -> Metrics {
        let gauges = PeerGauges::default();
        self.registry.register(
            "peer_leader",
            "1 while this instance leads its peer group, else 0",
            gauges.leader.clone(),
        );
        self.registry.register(
            "peer_revision",
            "The etcd revision of the weight set this instance applied last (0: none yet)",
            gauges.revision.clone(),
        );
        self.registry.register(
            "peer_etcd_up",
            "1 when etcd answered this instance's last call, else 0",
            gauges.etcd_up.clone(),
        );
        self.peers = Some(gauges);
        self
    }

    /// Records the peer group as this instance sees it now.
    pub fn observe_peers(&self, leader: bool, revision: i64, etcd_up: bool) {
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(g) = &self.peers {
            g.leader.set(i64::from(leader));
            g.revision.set(revision);
            g.etcd_up.set(i64::from(etcd_up));
        }
    }

    /// Records one tick.
    pub fn observe(&self, report: &TickReport, took: Duration, overridden: usize) {
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.ticks.inc();
        self.tick_duration.observe(took.as_secs_f64());
        // Servers come and go: this tick's set replaces the last one.
        self.utilisation.clear();
        self.weight.clear();
        for b in &report.backends {
            for s in &b.servers {
                let labels = ServerLabels {
                    backend: b.name.clone(),
                    server: s.server.clone(),
                };
                if let Some(cpu) = s.cpu {
                    self.utilisation.get_or_create(&labels).set(cpu);
                }
                let weight = if s.errors.is_empty() && !report.dry_run {
                    s.proposed
                } else {
                    s.current
                };
                self.weight.get_or_create(&labels).set(i64::from(weight));
            }
        }
        for h in &report.hosts {
            if let Some(kind) = &h.kind {
                self.skipped_hosts
                    .get_or_create(&HostLabels {
                        host: h.url.clone(),
                        reason: kind.clone(),
                    })
                    .inc();
            }
        }
        // Sockets removed from the config lose their series.
        self.socket_up.clear();
        for s in &report.sockets {
            let labels = SocketLabels {
                socket: s.address.clone(),
            };
            if s.refused > 0 {
                self.write_errors
                    .get_or_create(&labels)
                    .inc_by(s.refused as u64);
            }
            if s.reloaded {
                self.reloads.get_or_create(&labels).inc();
            }
            self.socket_up
                .get_or_create(&labels)
                .set(i64::from(s.error.is_none()));
        }
        self.overridden.set(overridden as i64);
        // Successful: HAProxy was read and nothing was refused. A second socket that is down
        // has its own series (and logs); it does not stop this clock.
        let read = report.sockets.iter().any(|s| s.error.is_none());
        let refused = report.sockets.iter().any(|s| s.refused > 0);
        if read && !refused {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            self.last_success.set(now.as_secs_f64());
        }
    }

    /// Sets `hatune_tick_interval_seconds`: alerts measure the age of the last successful tick
    /// in intervals.
    pub fn set_tick_interval(&self, interval: Duration) {
        self.tick_interval.set(interval.as_secs_f64());
    }

    /// The metrics in Prometheus text format.
    pub fn encode(&self) -> String {
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// Serves `GET /metrics` until the task is dropped. Anything else gets a 404.
pub async fn serve(listener: TcpListener, metrics: std::sync::Arc<Metrics>) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            if let Err(e) = answer(stream, &metrics).await {
                debug!(%peer, error = %e, "metrics request failed");
            }
        });
    }
}

async fn answer(mut stream: TcpStream, metrics: &Metrics) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    let read = async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        Ok::<_, std::io::Error>(())
    };
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .map_err(|_| std::io::Error::other("request head timed out"))??;
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next(), parts.next());
    let (status, content_type, body) = match (method, path) {
        (Some("GET"), Some(p)) if p == "/metrics" || p.starts_with("/metrics?") => (
            "200 OK",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.encode(),
        ),
        _ => (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "hatune serves /metrics\n".to_string(),
        ),
    };
    let reply = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(reply.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{Action, BackendReport, HostStatus, ServerRow, SocketStatus};

    fn report() -> TickReport {
        TickReport {
            dry_run: false,
            backends: vec![BackendReport {
                name: "app".into(),
                error: None,
                servers: vec![ServerRow {
                    server: "app-1".into(),
                    host: Some("http://h1".into()),
                    container: None,
                    cpu: Some(0.25),
                    current: 100,
                    proposed: 128,
                    action: Action::Set,
                    reason: None,
                    errors: vec![],
                }],
                unmatched_containers: vec![],
            }],
            hosts: vec![HostStatus {
                url: "http://h2".into(),
                containers: None,
                error: Some("no reply".into()),
                kind: Some("timeout".into()),
            }],
            sockets: vec![SocketStatus {
                address: "/s".into(),
                error: None,
                applied: 1,
                refused: 0,
                reloaded: true,
                restored: 3,
            }],
        }
    }

    #[test]
    fn a_tick_shows_in_the_series() {
        let m = Metrics::new();
        m.observe(&report(), Duration::from_millis(12), 2);
        m.set_tick_interval(Duration::from_millis(2500));
        let text = m.encode();
        for line in [
            r#"hatune_server_utilisation{backend="app",server="app-1"} 0.25"#,
            r#"hatune_server_weight{backend="app",server="app-1"} 128"#,
            "hatune_ticks_total 1",
            r#"hatune_skipped_hosts_total{host="http://h2",reason="timeout"} 1"#,
            r#"hatune_haproxy_reloads_total{socket="/s"} 1"#,
            "hatune_overridden_servers 2",
            r#"hatune_haproxy_socket_up{socket="/s"} 1"#,
            "hatune_tick_duration_seconds_count 1",
            "hatune_tick_interval_seconds 2.5",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
        assert!(text.contains("hatune_last_successful_tick_timestamp_seconds 1"));
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn servers_that_left_lose_their_series() {
        let m = Metrics::new();
        m.observe(&report(), Duration::from_millis(1), 0);
        let mut r = report();
        r.backends[0].servers[0].server = "app-2".into();
        m.observe(&r, Duration::from_millis(1), 0);
        let text = m.encode();
        assert!(!text.contains(r#"server="app-1""#), "{text}");
        assert!(text.contains(r#"server="app-2""#));
    }
}
