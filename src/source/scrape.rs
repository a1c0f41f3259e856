//! Sources that scrape Prometheus text from every host at once: cAdvisor's `/metrics`, and the
//! kubelet's `/metrics/resource` or `/metrics/cadvisor` over HTTPS with a bearer token.
//!
//! A scrape gives one sample per container (its newest, with its timestamp), so a reading needs
//! two: each container's sample of the host's last scrape is its [`Mark`], and the reading runs
//! from there to the newest, through [`utilisation_from_mark`] (the rules every source shares).
//! A host without marks (new, back from a failure, every host in `hatune once` without
//! `--state`) is scraped twice, `second_scrape` apart, and read over that gap.
//!
//! The kubelet's `/metrics/resource` has no `machine_cpu_cores`: each node's cores are read once
//! from its `/metrics/cadvisor` (and again after the node fails).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use tracing::{debug, info, warn};

use super::exposition::samples_of;
use super::http::{self, host_of, now_nanos, poll_each, Auth, Http, Tls};
use super::marks::{self, Marks};
use super::rate::{newest_mark, utilisation_from_mark, ContainerInfo};
use super::series::{Containers, LabelKeys, Naming, CORES, WANTED};
use super::{ContainerReading, HostError, HostHealth, HostPoll, HostReading, Nanos, Source};
use crate::config::{Config, Kubelet};

/// Which hosts, and how they are read.
#[derive(Debug, Clone, PartialEq)]
pub struct ScrapeSpec {
    /// `cAdvisor /metrics` or `kubelet`: the source's name in logs, `hatune check` and the
    /// state file.
    pub kind: &'static str,
    /// The URLs scraped, each a whole URL (`http://h:8080/metrics`, `https://node:10250/metrics/resource`).
    pub urls: Vec<String>,
    pub naming: Naming,
    pub tls: Tls,
    pub auth: Option<Auth>,
    /// Where a host's cores are read when its scrape has no `machine_cpu_cores` (the
    /// kubelet's resource endpoint): this path on the same host.
    pub cores_path: Option<String>,
    /// The wait between a host's two scrapes when it has no marks.
    pub second_scrape: Duration,
    pub timeout: Duration,
    pub max_reply: u64,
    /// Window a mark stays usable across runs (the config's `window`).
    pub window: Duration,
    pub labels: HashSet<String>,
    pub resolve: bool,
}

impl ScrapeSpec {
    /// cAdvisor hosts the config lists by a `/metrics` URL.
    pub fn cadvisor(config: &Config) -> ScrapeSpec {
        ScrapeSpec {
            kind: "cAdvisor /metrics",
            urls: config.cadvisor_metrics.clone(),
            naming: Naming::Cadvisor,
            tls: Tls::default(),
            auth: None,
            cores_path: None,
            second_scrape: config.second_scrape,
            timeout: config.timeout,
            max_reply: config.max_reply,
            window: config.window,
            labels: config.label_keys(),
            resolve: config.maps_by_address(),
        }
    }

    /// The config's kubelets.
    pub fn kubelet(config: &Config, k: &Kubelet) -> ScrapeSpec {
        ScrapeSpec {
            kind: "kubelet",
            urls: k.urls.iter().map(|u| format!("{u}{}", k.path)).collect(),
            naming: Naming::Kubernetes,
            tls: k.tls.clone(),
            auth: k.token_file.clone().map(Auth::BearerFile),
            cores_path: (k.path != "/metrics/cadvisor").then(|| "/metrics/cadvisor".to_string()),
            second_scrape: k.second_scrape,
            timeout: config.timeout,
            max_reply: config.max_reply,
            window: config.window,
            labels: config.label_keys(),
            resolve: config.maps_by_address(),
        }
    }
}

/// What one host's scrape gave: its containers' readings, and the marks the next starts from.
type Scraped = (HostReading, Marks);

#[derive(Debug)]
struct Shared {
    http: Http,
    /// Why the TLS set-up failed, if it did: every poll fails with it.
    setup: Option<String>,
    spec: ScrapeSpec,
    keep: LabelKeys,
    /// Cores by URL, once known (from the scrape itself, or the cores path).
    cores: Mutex<HashMap<String, u32>>,
}

/// Hosts scraped for Prometheus text, as one source.
#[derive(Debug)]
pub struct ScrapeSource {
    shared: Arc<Shared>,
    marks: HashMap<String, Arc<Marks>>,
    health: HostHealth,
}

impl ScrapeSource {
    /// A TLS set-up that cannot be read (a CA file gone since the config was checked) makes
    /// every poll fail with why.
    pub fn new(spec: ScrapeSpec) -> ScrapeSource {
        if spec.tls.insecure {
            warn!(
                source = spec.kind,
                "insecure_skip_verify: the hosts' certificates are not checked; anyone on the path can feed hatune readings"
            );
        }
        let (http, setup) =
            match Http::build(spec.timeout, spec.max_reply, &spec.tls, spec.auth.clone()) {
                Ok(http) => (http, None),
                Err(e) => (Http::new(spec.timeout, spec.max_reply), Some(e)),
            };
        ScrapeSource {
            shared: Arc::new(Shared {
                http,
                setup,
                keep: LabelKeys::new(&spec.labels),
                spec,
                cores: Mutex::default(),
            }),
            marks: HashMap::new(),
            health: HostHealth::default(),
        }
    }

    /// Every host at once, each from its marks (none when `fresh`: a probe), in host order.
    async fn poll_hosts(&self, fresh: bool) -> Vec<Result<Scraped, HostError>> {
        let hosts = &self.shared.spec.urls;
        let polls = poll_each(hosts, |_, url| {
            let shared = self.shared.clone();
            let marks = if fresh {
                None
            } else {
                self.marks.get(url).cloned()
            };
            let url = url.to_owned();
            async move { shared.poll(&url, marks).await }
        })
        .await;
        polls
            .into_iter()
            .zip(hosts)
            .map(|(r, h)| {
                r.unwrap_or_else(|| Err(HostError::Unreachable(format!("{h}: poll cancelled"))))
            })
            .collect()
    }
}

impl Shared {
    /// One host: from its marks when it has them, else two scrapes `second_scrape` apart.
    async fn poll(&self, url: &str, marks: Option<Arc<Marks>>) -> Result<Scraped, HostError> {
        if let Some(e) = &self.setup {
            return Err(HostError::Unreachable(format!("{url}: {e}")));
        }
        let result = match marks {
            Some(marks) => self.scrape(url, &marks).await,
            None => {
                let (_, first) = self.scrape(url, &Marks::new()).await?;
                tokio::time::sleep(self.spec.second_scrape).await;
                self.scrape(url, &first).await
            }
        };
        if result.is_err() {
            // A node that comes back (possibly resized) is asked for its cores again.
            self.cores
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(url);
        }
        result
    }

    /// One scrape of `url`, each container read from its mark in `last`.
    async fn scrape(&self, url: &str, last: &Marks) -> Result<Scraped, HostError> {
        let (name, literal, port) = host_of(url);
        let timeout = self.http.timeout();
        let resolve = async {
            if self.spec.resolve {
                http::resolve(&name, literal, port, timeout).await
            } else {
                vec![]
            }
        };
        let cores = async {
            let known = self.known_cores(url);
            match (&self.spec.cores_path, known) {
                (_, Some(n)) => Ok(Some(n)),
                (None, None) => Ok(None),
                (Some(path), None) => self.cores_from(url, path).await.map(Some),
            }
        };
        let exchange = async {
            let resp = self.http.send(url, None).await?;
            let _slot = self.http.body_slot().await;
            let body = self.http.read_body(url, resp).await?;
            Ok::<_, HostError>(body)
        };
        let (body, cores, addresses) = tokio::join!(
            async { tokio::time::timeout(timeout, exchange).await },
            async { tokio::time::timeout(timeout, cores).await },
            resolve
        );
        let body = body.map_err(|_| HostError::Timeout(timeout))??;
        let cores = cores.map_err(|_| HostError::Timeout(timeout))??;
        let now = now_nanos();
        let text = std::str::from_utf8(&body).map_err(|e| HostError::Garbled {
            url: url.to_owned(),
            detail: format!("not UTF-8 text: {e}"),
        })?;
        let parsed = parse(text, self.spec.naming, &self.keep, now);
        let containers = parsed.map_err(|detail| HostError::Garbled {
            url: url.to_owned(),
            detail,
        })?;
        if containers.untimed > 0 {
            debug!(host = %url, samples = containers.untimed, "samples without a timestamp: dated by the time of the scrape");
        }
        let num_cores = match cores.or(containers.num_cores) {
            Some(n) => {
                self.cores
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(url.to_owned(), n);
                n
            }
            None => 0,
        };
        let mut marks = Marks::with_capacity(containers.list.len());
        let readings = containers
            .list
            .into_iter()
            .map(|c| {
                let mark = last.get(&c.name).copied();
                let reading = utilisation_from_mark(&c, mark, num_cores, now);
                if let Some(m) = newest_mark(&c, now).or(mark) {
                    marks.insert(c.name.clone(), m);
                }
                ContainerReading {
                    reading,
                    labels: c.labels,
                    name: c.name,
                    aliases: c.aliases,
                }
            })
            .collect();
        Ok((
            HostReading {
                host: url.to_owned(),
                name,
                addresses,
                num_cores,
                containers: readings,
            },
            marks,
        ))
    }

    fn known_cores(&self, url: &str) -> Option<u32> {
        self.cores
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(url)
            .copied()
    }

    /// A node's cores from `machine_cpu_cores` at `path` on the same host.
    async fn cores_from(&self, url: &str, path: &str) -> Result<u32, HostError> {
        let mut at =
            reqwest::Url::parse(url).map_err(|e| HostError::Unreachable(format!("{url}: {e}")))?;
        at.set_path(path);
        let at = at.to_string();
        let resp = self.http.send(&at, None).await?;
        let body = self.http.read_body(&at, resp).await?;
        let text = String::from_utf8_lossy(&body);
        for sample in samples_of(&text, &[CORES]).flatten() {
            let mut c = Containers::new(Naming::Cadvisor, &self.keep);
            c.add(sample.name, &sample.labels, sample.value, 0);
            if let Some(n) = c.num_cores() {
                return Ok(n);
            }
        }
        Err(HostError::Garbled {
            url: at,
            detail: "no machine_cpu_cores sample: the node's cores are unknown".into(),
        })
    }
}

/// A scrape reduced to containers.
#[derive(Debug)]
pub struct Parsed {
    pub list: Vec<ContainerInfo>,
    pub num_cores: Option<u32>,
    /// Usage samples without a timestamp, dated `scraped_at`.
    pub untimed: usize,
}

/// The containers of one scrape, dated by their samples' timestamps (or `scraped_at` for those
/// without one). Families a reading does not use are passed over unread, whatever they hold.
/// It fails when a line of a family it reads cannot be read, or the reply ends mid-line: a
/// reply cut off in the middle of a container's per-CPU series would sum to too little, and no
/// weight is set from a reading that may be wrong.
pub fn parse(
    text: &str,
    naming: Naming,
    keep: &LabelKeys,
    scraped_at: Nanos,
) -> Result<Parsed, String> {
    let scraped_ms = i64::try_from(scraped_at / 1_000_000).unwrap_or(i64::MAX);
    let mut containers = Containers::new(naming, keep);
    if !text.is_empty() && !text.ends_with('\n') {
        let last = text.lines().count();
        return Err(format!("the reply ends mid-line (line {last}): cut off?"));
    }
    let mut untimed = 0usize;
    for sample in samples_of(text, WANTED) {
        match sample {
            Ok(s) => {
                let t = match s.timestamp_ms {
                    Some(t) => t,
                    None => {
                        if s.name == super::series::USAGE {
                            untimed += 1;
                        }
                        scraped_ms
                    }
                };
                containers.add(s.name, &s.labels, s.value, t);
            }
            Err(e) => return Err(format!("not Prometheus text ({e})")),
        }
    }
    let num_cores = containers.num_cores();
    Ok(Parsed {
        list: containers.finish(),
        num_cores,
        untimed,
    })
}

impl Source for ScrapeSource {
    fn kind(&self) -> &'static str {
        self.shared.spec.kind
    }

    fn hosts(&self) -> &[String] {
        &self.shared.spec.urls
    }

    fn poll(&mut self) -> BoxFuture<'_, Vec<HostPoll>> {
        Box::pin(async move {
            let hosts = self.shared.spec.urls.clone();
            let polls = self.poll_hosts(false).await;
            let mut out = Vec::with_capacity(hosts.len());
            for (poll, host) in polls.into_iter().zip(hosts) {
                let poll = match poll {
                    Ok((reading, marks)) => {
                        let went_back = reading
                            .containers
                            .iter()
                            .any(|c| matches!(c.reading, Err(super::NoReading::ClockWentBack)));
                        if marks.is_empty() || went_back {
                            if went_back {
                                warn!(host = %host, "samples older than the last scrape's: the host's clock went back? its next reading starts afresh");
                            }
                            self.marks.remove(&host);
                        } else {
                            self.marks.insert(host.clone(), Arc::new(marks));
                        }
                        Ok(reading)
                    }
                    Err(e) => {
                        self.marks.remove(&host);
                        Err(e)
                    }
                };
                self.health.note(&host, &poll);
                out.push(poll);
            }
            out
        })
    }

    fn reconfigure(&mut self, config: &Config) {
        let spec = match self.shared.spec.kind {
            "kubelet" => match &config.kubelet {
                Some(k) => ScrapeSpec::kubelet(config, k),
                None => return,
            },
            _ => ScrapeSpec::cadvisor(config),
        };
        if spec != self.shared.spec {
            let fresh = ScrapeSource::new(spec);
            let cores =
                std::mem::take(&mut *self.shared.cores.lock().unwrap_or_else(|p| p.into_inner()));
            *fresh.shared.cores.lock().unwrap_or_else(|p| p.into_inner()) = cores;
            self.shared = fresh.shared;
        }
        let hosts: HashSet<&str> = self.shared.spec.urls.iter().map(String::as_str).collect();
        self.marks.retain(|h, _| hosts.contains(h.as_str()));
        self.health.retain(|h| hosts.contains(h));
        info!(
            source = self.kind(),
            hosts = hosts.len(),
            "source reconfigured"
        );
    }

    fn probe(&self) -> BoxFuture<'_, Vec<(String, HostPoll)>> {
        Box::pin(async move {
            let polls = self.poll_hosts(true).await;
            let polls = polls.into_iter().map(|p| p.map(|(reading, _)| reading));
            self.shared.spec.urls.iter().cloned().zip(polls).collect()
        })
    }

    fn save(&self) -> Option<Box<serde_json::value::RawValue>> {
        let cores = self
            .shared
            .cores
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        marks::save(&self.shared.spec.urls, &cores, &self.marks)
    }

    fn restore(
        &mut self,
        saved: &serde_json::value::RawValue,
        age: Duration,
    ) -> Result<(), String> {
        let spec = &self.shared.spec;
        let (marks, cores) = marks::restore(saved, age, spec.window, &spec.urls)?;
        self.marks.extend(marks);
        // Only where the scrape itself does not carry them (the kubelet's resource endpoint).
        if spec.cores_path.is_some() {
            self.shared
                .cores
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(cores);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = "\
# HELP container_cpu_usage_seconds_total Cumulative cpu time consumed in seconds.
# TYPE container_cpu_usage_seconds_total counter
container_cpu_usage_seconds_total{cpu=\"cpu00\",id=\"/docker/a1\",image=\"x\",name=\"app-1\"} 10.5 1700000000000
container_cpu_usage_seconds_total{cpu=\"cpu01\",id=\"/docker/a1\",image=\"x\",name=\"app-1\"} 4.5 1700000000000
container_memory_usage_bytes{id=\"/docker/a1\",name=\"app-1\"} 12345 1700000000000
container_cpu_usage_seconds_total{cpu=\"total\",id=\"/\",image=\"\",name=\"\"} 99 
container_spec_cpu_period{id=\"/docker/a1\",image=\"x\",name=\"app-1\"} 100000
container_spec_cpu_quota{id=\"/docker/a1\",image=\"x\",name=\"app-1\"} 50000
machine_cpu_cores{boot_id=\"b\"} 4
";

    /// One scrape: per-CPU series summed, the root cgroup dated by the scrape, quota read,
    /// cores from the same reply, other families passed over.
    #[test]
    fn a_cadvisor_scrape() {
        let keep = LabelKeys::default();
        let p = parse(T, Naming::Cadvisor, &keep, 1_700_000_005_000_000_000).unwrap();
        assert_eq!(p.num_cores, Some(4));
        assert_eq!(p.untimed, 1);
        assert_eq!(p.list.len(), 2);
        let a = &p.list[0];
        assert_eq!(
            (a.name.as_str(), a.aliases.as_slice()),
            ("/docker/a1", &["app-1".to_string(), "a1".to_string()][..])
        );
        assert_eq!(a.cpu.quota, Some(50000));
        assert_eq!(a.samples.len(), 1);
        assert_eq!(a.samples[0].usage_total, Some(15_000_000_000));
        assert_eq!(a.samples[0].timestamp, Some(1_700_000_000_000_000_000));
        assert_eq!(
            p.list[1].samples[0].timestamp,
            Some(1_700_000_005_000_000_000)
        );
    }

    /// Garbage in what a reading uses fails the scrape; in other families it does not.
    #[test]
    fn garbled_and_partly_garbled() {
        let keep = LabelKeys::default();
        let fails = |text: &str| parse(text, Naming::Cadvisor, &keep, 0).unwrap_err();
        let e = fails("container_cpu_usage_seconds_total{cpu=\"tot\n");
        assert!(e.starts_with("not Prometheus text (line 1:"), "{e}");
        let e = fails(&format!(
            "{T}container_cpu_usage_seconds_total{{id=\"/docker/b\"}} twelve\n"
        ));
        assert!(e.contains("line 10"), "{e}");
        // Cut off: the last line has no end.
        let e = fails(&T[..T.len() - 3]);
        assert!(e.contains("ends mid-line"), "{e}");
        // A family it does not read may hold anything.
        let text = format!("{T}container_memory_usage_bytes{{id=\"/docker/b\" 1\nweird line\n");
        assert_eq!(
            parse(&text, Naming::Cadvisor, &keep, 0).unwrap().list.len(),
            2
        );
        // No container series at all (an idle or empty host): no containers, no error.
        let p = parse("machine_cpu_cores 2\n<html>\n", Naming::Cadvisor, &keep, 0).unwrap();
        assert!(p.list.is_empty());
        assert_eq!(p.num_cores, Some(2));
    }

    /// Two scrapes make a reading: through the mark, as the rate rules say.
    #[test]
    fn a_reading_from_two_scrapes() {
        let keep = LabelKeys::default();
        let scrape = |secs: f64, t_ms: i64| {
            let text = format!("container_cpu_usage_seconds_total{{cpu=\"total\",id=\"/docker/a\",name=\"a\"}} {secs} {t_ms}\n");
            parse(&text, Naming::Cadvisor, &keep, 0)
                .unwrap()
                .list
                .remove(0)
        };
        let now = 1_700_000_010_000_000_000;
        let first = scrape(100.0, 1_700_000_000_000);
        let mark = newest_mark(&first, now);
        assert_eq!(
            utilisation_from_mark(&first, None, 4, now),
            Err(super::super::NoReading::FirstSample)
        );
        let second = scrape(103.0, 1_700_000_002_000);
        let u = utilisation_from_mark(&second, mark, 4, now).unwrap();
        assert!((u.cores_used - 1.5).abs() < 1e-9, "{u:?}");
        assert!((u.cpu - 0.375).abs() < 1e-9);
        let same = scrape(103.0, 1_700_000_002_000);
        let mark2 = newest_mark(&second, now);
        assert_eq!(
            utilisation_from_mark(&same, mark2, 4, now),
            Err(super::super::NoReading::NoNewSample)
        );
    }
}
