//! A Prometheus server as the source: one query per tick for every host's container CPU.
//!
//! The query is a range selector over the raw series (not `rate()`), so each container's
//! reading comes from the series' own sample timestamps through the rate rules every source
//! shares ([`crate::source::rate`]):
//!
//! `{__name__=~"container_cpu_usage_seconds_total|container_spec_cpu_quota|container_spec_cpu_period|machine_cpu_cores",SELECTOR}[RANGE]`
//!
//! at `/api/v1/query`. Series are grouped by their host label (`instance`); a host's cores are
//! its `machine_cpu_cores`. The first poll (and every poll of `hatune once`, which needs no
//! history of its own here) reads the config's `window`; the daemon's later polls read from
//! each container's sample at the last poll, so a reading covers what the last change did.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use futures::future::BoxFuture;
use serde::Deserialize;
use tracing::{debug, warn};

use super::http::{self, now_nanos, Http};
use super::marks::MARKS_EXPIRE_AFTER_WINDOWS;
use super::rate::{newest_mark, utilisation_at, Mark, Window};
use super::series::{Containers, LabelKeys, Naming, CORES, USAGE};
use super::{ContainerReading, HostError, HostHealth, HostPoll, HostReading, Nanos, Source};
use crate::config::Config;

/// The query for `selector` over the last `range`.
pub fn query(selector: &str, range: Duration) -> String {
    let names = [
        USAGE,
        "container_spec_cpu_quota",
        "container_spec_cpu_period",
        CORES,
    ]
    .join("|");
    let sep = if selector.is_empty() { "" } else { "," };
    format!(
        "{{__name__=~\"{names}\"{sep}{selector}}}[{}ms]",
        range.as_millis().max(1)
    )
}

/// `/api/v1/query`'s reply, as far as a matrix goes.
#[derive(Debug, Deserialize)]
struct Reply<'a> {
    status: &'a str,
    #[serde(default, borrow)]
    error: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    data: Option<Data>,
}

#[derive(Debug, Deserialize)]
struct Data {
    #[serde(rename = "resultType")]
    result_type: String,
    #[serde(default)]
    result: Vec<Series>,
}

#[derive(Debug, Deserialize)]
struct Series {
    metric: BTreeMap<String, String>,
    #[serde(default)]
    values: Vec<(f64, String)>,
}

/// Hosts in a reply, each with the containers of its series.
#[derive(Debug, Default)]
pub struct Hosts {
    /// By host label value, in the order first seen.
    pub hosts: Vec<(String, Vec<super::rate::ContainerInfo>, Option<u32>)>,
}

/// Reads a query reply into hosts. Fails when the reply is not JSON, reports an error, or is
/// no matrix.
pub fn parse(body: &[u8], host_label: &str, keep: &LabelKeys) -> Result<Hosts, String> {
    let reply: Reply =
        serde_json::from_slice(body).map_err(|e| format!("not a query reply: {e}"))?;
    if reply.status != "success" {
        return Err(format!(
            "the query failed: {}",
            reply.error.as_deref().unwrap_or("(no error given)")
        ));
    }
    let data = reply.data.ok_or("a success without data")?;
    if data.result_type != "matrix" {
        return Err(format!(
            "a {} where a matrix was asked for",
            data.result_type
        ));
    }
    let mut order: Vec<String> = vec![];
    let mut by_host: HashMap<String, Containers<'_>> = HashMap::new();
    for series in &data.result {
        let Some(host) = series.metric.get(host_label) else {
            continue;
        };
        let name = series.metric.get("__name__").map_or("", String::as_str);
        let labels: Vec<(&str, std::borrow::Cow<'_, str>)> = series
            .metric
            .iter()
            .map(|(k, v)| (k.as_str(), std::borrow::Cow::Borrowed(v.as_str())))
            .collect();
        let containers = by_host.entry(host.clone()).or_insert_with(|| {
            order.push(host.clone());
            Containers::new(Naming::Cadvisor, keep)
        });
        for (t, v) in &series.values {
            let Ok(v) = v.parse::<f64>() else { continue };
            if !t.is_finite() {
                continue;
            }
            containers.add(name, &labels, v, (t * 1000.0).round() as i64);
        }
    }
    Ok(Hosts {
        hosts: order
            .into_iter()
            .filter_map(|h| {
                let c = by_host.remove(&h)?;
                let cores = c.num_cores();
                Some((h, c.finish(), cores))
            })
            .collect(),
    })
}

/// A Prometheus server, as one source whose hosts are those its series name.
#[derive(Debug)]
pub struct PrometheusSource {
    http: Http,
    setup: Option<String>,
    spec: crate::config::Prometheus,
    window: Duration,
    keep: LabelKeys,
    resolve: bool,
    /// The hosts of the last poll (the server's URL when the query failed).
    hosts: Vec<String>,
    /// Each container's newest sample at the last poll, by host then container.
    marks: HashMap<String, HashMap<String, Mark>>,
    health: HostHealth,
}

impl PrometheusSource {
    pub fn new(config: &Config, spec: &crate::config::Prometheus) -> PrometheusSource {
        if spec.tls.insecure {
            warn!(
                source = "Prometheus",
                "insecure_skip_verify: the server's certificate is not checked"
            );
        }
        let (http, setup) = match Http::build(
            config.timeout,
            config.max_reply,
            &spec.tls,
            spec.auth.clone(),
        ) {
            Ok(h) => (h, None),
            Err(e) => (Http::new(config.timeout, config.max_reply), Some(e)),
        };
        PrometheusSource {
            http,
            setup,
            spec: spec.clone(),
            window: config.window,
            keep: LabelKeys::new(&config.label_keys()),
            resolve: config.maps_by_address(),
            hosts: vec![spec.url.clone()],
            marks: HashMap::new(),
            health: HostHealth::default(),
        }
    }

    /// How far back to ask: the window (and half again, so a sample at or before its start is
    /// there at a scrape interval of up to half the window), or from the oldest mark.
    fn range(&self, fresh: bool, now: Nanos) -> Duration {
        let span = self.window + self.window / 2;
        let oldest = self
            .marks
            .values()
            .flat_map(|m| m.values())
            .map(|m| m.t)
            .min();
        match oldest {
            Some(t) if !fresh => {
                let back = Duration::from_nanos(u64::try_from(now.saturating_sub(t)).unwrap_or(0));
                // From the mark, with room for the mark itself; never past what marks may span.
                (back + Duration::from_secs(5))
                    .min(self.window.saturating_mul(MARKS_EXPIRE_AFTER_WINDOWS))
                    .max(Duration::from_secs(1))
            }
            _ => span,
        }
    }

    /// One query: the hosts it named, and each one's reading. `fresh`: as a first poll.
    async fn query_hosts(
        &self,
        fresh: bool,
    ) -> (
        Vec<String>,
        Vec<HostPoll>,
        HashMap<String, HashMap<String, Mark>>,
    ) {
        let server = self.spec.url.clone();
        let fail = |e| (vec![server.clone()], vec![Err(e)], HashMap::new());
        if let Some(e) = &self.setup {
            return fail(HostError::Unreachable(format!("{server}: {e}")));
        }
        let now = now_nanos();
        let q = query(&self.spec.selector, self.range(fresh, now));
        let mut url = match reqwest::Url::parse(&format!("{server}/api/v1/query")) {
            Ok(u) => u,
            Err(e) => return fail(HostError::Unreachable(format!("{server}: {e}"))),
        };
        let secs = now as f64 / 1e9;
        url.query_pairs_mut()
            .append_pair("query", &q)
            .append_pair("time", &format!("{secs:.3}"));
        debug!(query = %q, "asking Prometheus");
        let body = match self.http.get_any(url.as_str()).await {
            Ok((200, body)) => body,
            // Prometheus says why it refused a query (a bad selector, say).
            Ok((status @ (400 | 422 | 503), body)) => {
                let why = serde_json::from_slice::<Reply>(&body)
                    .ok()
                    .and_then(|r| r.error.map(|e| e.into_owned()))
                    .unwrap_or_else(|| format!("HTTP status {status}"));
                return fail(HostError::Garbled {
                    url: server.clone(),
                    detail: format!("Prometheus refused the query: {why}"),
                });
            }
            Ok((status, _)) => {
                return fail(HostError::Status {
                    url: url.to_string(),
                    status,
                })
            }
            Err(e) => return fail(e),
        };
        let parsed = match parse(&body, &self.spec.host_label, &self.keep) {
            Ok(p) => p,
            Err(detail) => {
                return fail(HostError::Garbled {
                    url: server.clone(),
                    detail,
                })
            }
        };
        drop(body);
        let mut hosts = vec![];
        let mut polls = vec![];
        let mut marks = HashMap::new();
        for (host, containers, cores) in parsed.hosts {
            let num_cores = cores.unwrap_or(0);
            let last = if fresh { None } else { self.marks.get(&host) };
            let (name, literal, port) = http::host_of(&format!("http://{host}"));
            let addresses = if self.resolve {
                http::resolve(&name, literal, port, self.http.timeout()).await
            } else {
                vec![]
            };
            let mut host_marks = HashMap::new();
            let readings = containers
                .into_iter()
                .map(|c| {
                    let window = match last.and_then(|m| m.get(&c.name)) {
                        Some(m) => Window::Since(m.t),
                        None => Window::Span(self.window),
                    };
                    let reading = utilisation_at(&c, num_cores, window, now);
                    if let Some(m) = newest_mark(&c, now) {
                        host_marks.insert(c.name.clone(), m);
                    }
                    ContainerReading {
                        reading,
                        labels: c.labels,
                        name: c.name,
                        aliases: c.aliases,
                    }
                })
                .collect();
            marks.insert(host.clone(), host_marks);
            polls.push(Ok(HostReading {
                host: host.clone(),
                name,
                addresses,
                num_cores,
                containers: readings,
            }));
            hosts.push(host);
        }
        if hosts.is_empty() {
            return fail(HostError::Garbled {
                url: server.clone(),
                detail: format!(
                    "no series matched {}: check `prometheus.selector` and that Prometheus scrapes cAdvisor",
                    query(&self.spec.selector, self.window)
                ),
            });
        }
        (hosts, polls, marks)
    }
}

impl Source for PrometheusSource {
    fn kind(&self) -> &'static str {
        "Prometheus"
    }

    fn hosts(&self) -> &[String] {
        &self.hosts
    }

    fn poll(&mut self) -> BoxFuture<'_, Vec<HostPoll>> {
        Box::pin(async move {
            let (hosts, polls, marks) = self.query_hosts(false).await;
            if polls.iter().all(|p| p.is_err()) {
                self.marks.clear();
            } else {
                self.marks = marks;
            }
            let now_hosts: HashSet<&str> = hosts.iter().map(String::as_str).collect();
            for (h, p) in hosts.iter().zip(&polls) {
                self.health.note(h, p);
            }
            self.health.retain(|h| now_hosts.contains(h));
            self.hosts = hosts;
            polls
        })
    }

    fn reconfigure(&mut self, config: &Config) {
        if let Some(spec) = &config.prometheus {
            let marks = std::mem::take(&mut self.marks);
            *self = PrometheusSource::new(config, spec);
            self.marks = marks;
        }
    }

    fn probe(&self) -> BoxFuture<'_, Vec<(String, HostPoll)>> {
        Box::pin(async move {
            let (hosts, polls, _) = self.query_hosts(true).await;
            hosts.into_iter().zip(polls).collect()
        })
    }
}
