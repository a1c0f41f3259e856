//! HTTP: polls cAdvisor hosts, all at once, each under one timeout.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;

use super::parse::{parse_containers, parse_num_cores};
use super::utilisation::utilisation;
use super::{ContainerReading, HostError, HostReading, Window};

/// How many hosts are polled at once by [`Client::poll_all`]: enough that 1,000 hosts take about
/// two round trips, few enough to stay well under the usual 1,024 file descriptor limit.
pub const MAX_HOSTS_IN_FLIGHT: usize = 512;

/// A cAdvisor client shared by every tick: one connection pool, one timeout per host, and the
/// machines' core counts (which do not change while a host is up). Clones share all three.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    timeout: Duration,
    /// `num_cores` by base URL (trailing `/` stripped). Dropped when a host fails, so a host that
    /// comes back (possibly resized) is asked again.
    num_cores: Arc<Mutex<HashMap<String, u32>>>,
}

impl Client {
    /// A client whose every [`poll`](Client::poll) of one host, both requests included, takes at
    /// most `timeout`.
    pub fn new(timeout: Duration) -> Client {
        let http = reqwest::Client::builder()
            // One idle connection per host is what the next tick reuses; more would only hold
            // file descriptors across 1,000 hosts.
            .pool_max_idle_per_host(1)
            .connect_timeout(timeout)
            .build()
            // Only fails when a TLS backend or resolver cannot initialise; neither is enabled.
            .unwrap_or_else(|_| reqwest::Client::new());
        Client {
            http,
            timeout,
            num_cores: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// The per-host timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Polls one host: `GET {base}/api/v1.3/docker/` and, unless its core count is known,
    /// `GET {base}/api/v1.3/machine`, concurrently, all within the timeout. Each container gets a
    /// reading over `window`, or the reason it has none.
    pub async fn poll(&self, base: &str, window: Window) -> Result<HostReading, HostError> {
        let key = base.trim_end_matches('/');
        let result = match tokio::time::timeout(self.timeout, self.poll_inner(key, window)).await {
            Ok(r) => r,
            Err(_) => Err(HostError::Timeout(self.timeout)),
        };
        match result {
            Ok((num_cores, containers)) => Ok(HostReading {
                host: base.to_owned(),
                num_cores,
                containers,
            }),
            Err(e) => {
                self.cores_cache().remove(key);
                Err(e)
            }
        }
    }

    /// Polls every host at once (at most [`MAX_HOSTS_IN_FLIGHT`] at a time); results come in the
    /// order of `hosts`. One host's failure never affects another's result.
    pub async fn poll_all(
        &self,
        hosts: &[String],
        window: impl Fn(&str) -> Window,
    ) -> Vec<Result<HostReading, HostError>> {
        let mut out: Vec<Option<Result<HostReading, HostError>>> = vec![None; hosts.len()];
        let mut results = futures::stream::iter(hosts.iter().enumerate().map(|(i, h)| {
            let w = window(h);
            async move { (i, self.poll(h, w).await) }
        }))
        .buffer_unordered(MAX_HOSTS_IN_FLIGHT);
        while let Some((i, r)) = results.next().await {
            out[i] = Some(r);
        }
        out.into_iter()
            .map(|r| r.expect("every host yields exactly one result"))
            .collect()
    }

    async fn poll_inner(
        &self,
        base: &str,
        window: Window,
    ) -> Result<(u32, Vec<ContainerReading>), HostError> {
        let docker_url = format!("{base}/api/v1.3/docker/");
        let cached = self.cores_cache().get(base).copied();
        let docker = self.get(&docker_url);
        let (body, num_cores) = match cached {
            Some(n) => (docker.await?, n),
            None => {
                let machine_url = format!("{base}/api/v1.3/machine");
                let machine = async {
                    let body = self.get(&machine_url).await?;
                    parse_num_cores(body.as_ref()).map_err(|detail| HostError::Garbled {
                        url: machine_url.clone(),
                        detail,
                    })
                };
                let (body, n) = futures::try_join!(docker, machine)?;
                // 0 would make every unbounded container unreadable: ask again next time.
                if n > 0 {
                    self.cores_cache().insert(base.to_owned(), n);
                }
                (body, n)
            }
        };
        let containers = parse_containers(body.as_ref()).map_err(|detail| HostError::Garbled {
            url: docker_url,
            detail,
        })?;
        Ok((
            num_cores,
            containers
                .into_iter()
                .map(|c| ContainerReading {
                    reading: utilisation(&c, num_cores, window),
                    name: c.name,
                    aliases: c.aliases,
                })
                .collect(),
        ))
    }

    /// One GET, to a 2xx body.
    async fn get(&self, url: &str) -> Result<impl AsRef<[u8]>, HostError> {
        let resp = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| self.error(url, e))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(HostError::Status {
                url: url.to_owned(),
                status: status.as_u16(),
            });
        }
        resp.bytes().await.map_err(|e| self.error(url, e))
    }

    fn error(&self, url: &str, e: reqwest::Error) -> HostError {
        if e.is_timeout() {
            HostError::Timeout(self.timeout)
        } else if e.is_decode() {
            HostError::Garbled {
                url: url.to_owned(),
                detail: error_chain(&e),
            }
        } else {
            HostError::Unreachable(format!("{url}: {}", error_chain(&e)))
        }
    }

    fn cores_cache(&self) -> std::sync::MutexGuard<'_, HashMap<String, u32>> {
        // A poisoned lock only means another poll panicked mid-insert; the map is still valid.
        self.num_cores.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// reqwest's top-level message is terse ("error sending request"); the cause says why.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
