//! Which container belongs to which server, and which servers take part. Pure.
//!
//! A container belongs to the server whose name equals the container alias that the backend's
//! pattern matches. The same alias on two hosts is ambiguous: that server gets no data.

use std::collections::{HashMap, HashSet};

use serde::Serialize;

use crate::config::Backend;
use crate::controller::{Input, Reason, ServerInput};
use crate::sink::ServerView;
use crate::source::{HostReading, NoReading};

/// One server of a backend, ready for the controller, with what the report shows of it.
#[derive(Debug, Clone, PartialEq)]
pub struct MappedServer {
    pub input: ServerInput,
    /// The cAdvisor host its container was found on.
    pub host: Option<String>,
    /// Its utilisation, when it has a reading (also for excluded servers, for the report).
    pub cpu: Option<f64>,
}

/// A container the pattern matches that no server of the backend is named after.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnmatchedContainer {
    pub host: String,
    pub alias: String,
}

/// A backend's servers and the containers left over.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Mapping {
    pub servers: Vec<MappedServer>,
    pub unmatched_containers: Vec<UnmatchedContainer>,
}

/// Maps one backend's servers (as the balancers hold them) to the containers the hosts
/// reported.
pub fn map_backend(backend: &Backend, servers: &[&ServerView], hosts: &[&HostReading]) -> Mapping {
    let index = index_aliases(std::slice::from_ref(backend), hosts).pop();
    map_backend_indexed(backend, servers, hosts, &index.unwrap_or_default())
}

/// For one backend: each container alias its pattern matches, with every (host, container)
/// index where it stands.
pub type AliasIndex<'a> = HashMap<&'a str, Vec<(usize, usize)>>;

/// Indexes every alias once for all backends (one pass over the containers, whatever the
/// number of backends), one [`AliasIndex`] per backend in order.
pub fn index_aliases<'a>(backends: &[Backend], hosts: &[&'a HostReading]) -> Vec<AliasIndex<'a>> {
    let mut index: Vec<AliasIndex<'a>> = vec![HashMap::new(); backends.len()];
    // Every pattern is already anchored and valid; a set matches them all in one scan.
    let set = regex::RegexSet::new(backends.iter().map(|b| b.pattern.as_str())).ok();
    for (h, host) in hosts.iter().enumerate() {
        for (c, container) in host.containers.iter().enumerate() {
            for alias in &container.aliases {
                let matching: Vec<usize> = match &set {
                    Some(set) => set.matches(alias).into_iter().collect(),
                    None => (0..backends.len())
                        .filter(|&b| backends[b].matches(alias))
                        .collect(),
                };
                for b in matching {
                    index[b].entry(alias.as_str()).or_default().push((h, c));
                }
            }
        }
    }
    index
}

/// [`map_backend`] with the backend's aliases already indexed by [`index_aliases`].
pub fn map_backend_indexed(
    backend: &Backend,
    servers: &[&ServerView],
    hosts: &[&HostReading],
    by_alias: &AliasIndex<'_>,
) -> Mapping {
    let mapped = servers
        .iter()
        .map(|stat| {
            let name = stat.key.server.as_str();
            let found = by_alias.get(name);
            let mut host = None;
            let mut cpu = None;
            let data = match found.map(Vec::as_slice) {
                _ if !backend.matches(name) => Err(Reason::NotMatched),
                None | Some([]) => Err(Reason::NoContainer),
                Some([(h, c)]) => {
                    host = Some(hosts[*h].host.clone());
                    match &hosts[*h].containers[*c].reading {
                        Ok(u) => {
                            cpu = Some(u.cpu);
                            Ok(u.cpu)
                        }
                        Err(NoReading::CounterReset) => Err(Reason::CounterReset),
                        Err(e) => Err(Reason::NoReading(e.to_string())),
                    }
                }
                Some(many) => {
                    let mut names: Vec<String> =
                        many.iter().map(|(h, _)| hosts[*h].host.clone()).collect();
                    names.dedup();
                    Err(Reason::DuplicateAlias(names))
                }
            };
            let input = match (stat.exclusion.clone(), data) {
                (_, Err(Reason::NotMatched)) => Input::Excluded(Reason::NotMatched),
                (Some(reason), _) => Input::Excluded(reason),
                (None, Ok(cpu)) => Input::Measured(cpu),
                (None, Err(reason)) => Input::NoData(reason),
            };
            MappedServer {
                input: ServerInput::new(name, stat.weight(), input),
                host,
                cpu,
            }
        })
        .collect();

    // Containers the pattern matches that no server claims. Only those in `by_alias` can be:
    // one pass over them, against a set of server names (no containers × servers scan).
    let names: HashSet<&str> = servers.iter().map(|s| s.key.server.as_str()).collect();
    let mut candidates: Vec<(usize, usize)> = by_alias
        .iter()
        .filter(|(alias, _)| !names.contains(**alias))
        .flat_map(|(_, at)| at.iter().copied())
        .collect();
    // In host and container order, each container once (it may have two matching aliases).
    candidates.sort_unstable();
    candidates.dedup();
    let unmatched = candidates
        .into_iter()
        .filter_map(|(h, c)| {
            let container = &hosts[h].containers[c];
            if container.aliases.iter().any(|a| names.contains(a.as_str())) {
                return None;
            }
            let alias = container.aliases.iter().find(|a| backend.matches(a))?;
            Some(UnmatchedContainer {
                host: hosts[h].host.clone(),
                alias: alias.clone(),
            })
        })
        .collect();

    Mapping {
        servers: mapped,
        unmatched_containers: unmatched,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::controller::ServerKey;
    use crate::source::{ContainerReading, Utilisation};

    fn backend(pattern: &str) -> Backend {
        let text = format!(
            r#"{{"haproxy_socket": "/s", "urls": ["http://h:1"], "backend": "app", "pattern": "{pattern}"}}"#
        );
        Config::parse(&text).unwrap().backends.remove(0)
    }

    fn stat(name: &str, exclusion: Option<Reason>, weight: u32) -> ServerView {
        ServerView {
            exclusion,
            ..ServerView::new(ServerKey::new("app", name), weight)
        }
    }

    fn container(alias: &str, reading: Result<f64, NoReading>) -> ContainerReading {
        ContainerReading {
            name: format!("/docker/{alias}-id"),
            aliases: vec![alias.to_string(), format!("{alias}-0123456789abcdef")],
            reading: reading.map(|cpu| Utilisation {
                cpu,
                cores_used: cpu,
                capacity_cores: 1.0,
                from: 0,
                to: 60_000_000_000,
            }),
        }
    }

    fn host(url: &str, containers: Vec<ContainerReading>) -> HostReading {
        HostReading {
            host: url.into(),
            num_cores: 1,
            containers,
        }
    }

    #[test]
    fn containers_map_to_servers_by_alias() {
        let b = backend("app-");
        let stats = [
            stat("app-1", None, 100),
            stat("app-2", None, 100),
            stat("app-3", Some(Reason::Maint), 100),
            stat("app-4", None, 100),
            stat("app-5", None, 100),
            stat("web-1", None, 100),
            stat("app-6", None, 100),
        ];
        let refs: Vec<&ServerView> = stats.iter().collect();
        let h1 = host(
            "http://h1",
            vec![
                container("app-1", Ok(0.5)),
                container("app-3", Ok(0.2)),
                container("app-5", Ok(0.1)),
                container("cadvisor", Ok(0.01)),
                container("app-9", Ok(0.3)),
            ],
        );
        let h2 = host(
            "http://h2",
            vec![
                container("app-2", Err(NoReading::CounterReset)),
                container("app-5", Ok(0.1)),
                container("app-6", Err(NoReading::TooFewSamples)),
            ],
        );
        let m = map_backend(&b, &refs, &[&h1, &h2]);
        let inputs: Vec<&Input> = m.servers.iter().map(|s| &s.input.input).collect();
        assert_eq!(
            inputs,
            vec![
                &Input::Measured(0.5),
                &Input::NoData(Reason::CounterReset),
                &Input::Excluded(Reason::Maint),
                &Input::NoData(Reason::NoContainer),
                &Input::NoData(Reason::DuplicateAlias(vec![
                    "http://h1".into(),
                    "http://h2".into()
                ])),
                &Input::Excluded(Reason::NotMatched),
                &Input::NoData(Reason::NoReading("too few samples".into())),
            ]
        );
        assert_eq!(m.servers[0].host.as_deref(), Some("http://h1"));
        assert_eq!(
            m.servers[2].cpu,
            Some(0.2),
            "excluded servers still show their CPU"
        );
        assert_eq!(
            m.unmatched_containers,
            vec![UnmatchedContainer {
                host: "http://h1".into(),
                alias: "app-9".into()
            }]
        );
    }

    /// One pass over the aliases for every backend gives what each backend's own scan gives.
    #[test]
    fn one_index_for_all_backends_agrees_with_each_backend_alone() {
        let config = Config::parse(
            r#"{"haproxy": "/s", "cadvisor": "http://h:1", "backends": [
                {"name": "app", "pattern": "app-"}, {"name": "api", "pattern": "ap"}]}"#,
        )
        .unwrap();
        let h1 = host(
            "http://h1",
            vec![container("app-1", Ok(0.5)), container("api-1", Ok(0.2))],
        );
        let h2 = host(
            "http://h2",
            vec![container("app-2", Ok(0.4)), container("web-1", Ok(0.1))],
        );
        let hosts = [&h1, &h2];
        let index = index_aliases(&config.backends, &hosts);
        assert_eq!(index.len(), 2);
        // Each container's two aliases (name and id-like) both start with its name.
        assert_eq!(index[0].len(), 4, "app-1, app-2: {:?}", index[0]);
        assert_eq!(index[1].len(), 6, "app-1, api-1, app-2: {:?}", index[1]);
        assert!(!index[1].contains_key("web-1"));
        let stats = [
            stat("app-1", None, 10),
            stat("api-1", None, 10),
            stat("app-2", None, 10),
        ];
        let refs: Vec<&ServerView> = stats.iter().collect();
        for (b, backend) in config.backends.iter().enumerate() {
            assert_eq!(
                map_backend_indexed(backend, &refs, &hosts, &index[b]),
                map_backend(backend, &refs, &hosts)
            );
        }
    }

    #[test]
    fn pattern_is_anchored_at_the_start_only() {
        let b = backend("app");
        let stats = [stat("myapp", None, 10), stat("app10", None, 10)];
        let refs: Vec<&ServerView> = stats.iter().collect();
        let h = host(
            "http://h",
            vec![container("myapp", Ok(0.3)), container("app10", Ok(0.3))],
        );
        let m = map_backend(&b, &refs, &[&h]);
        assert_eq!(
            m.servers[0].input.input,
            Input::Excluded(Reason::NotMatched)
        );
        assert_eq!(m.servers[1].input.input, Input::Measured(0.3));
        assert!(m.unmatched_containers.is_empty());
    }
}
