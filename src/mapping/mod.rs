//! Which container belongs to which server, and which servers take part. Pure.
//!
//! Each backend says how its servers find their containers ([`Matching`]), among the
//! containers one of whose aliases its pattern matches:
//! - by alias (the default, the 2015 tool's rule): the server whose name equals the alias;
//!   servers whose names the pattern does not match are left alone;
//! - by name: the server whose name a [`Template`] builds from the container (its alias, the
//!   pattern's groups, its labels, its host); every server of the backend takes part;
//! - by address: the server whose IP is one of the container's host's addresses (and whose
//!   port a template gives, when several containers share a host); every server takes part.
//!
//! Ambiguity is never guessed: two containers for one server, or one container for two
//! serving servers, gives that server no data with a reason naming both.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};

use regex::Regex;
use serde::Serialize;

use crate::controller::{Input, Reason, ServerInput};
use crate::sink::ServerView;
use crate::source::{HostReading, NoReading};

use crate::naming::{Fields, Matching, Template};

/// One server of a backend, ready for the controller, with what the report shows of it.
#[derive(Debug, Clone, PartialEq)]
pub struct MappedServer {
    pub input: ServerInput,
    /// The host its container was found on (as the config names it).
    pub host: Option<String>,
    /// Its container (the alias the pattern matched).
    pub container: Option<String>,
    /// Its utilisation, when it has a reading (also for excluded servers, for the report).
    pub cpu: Option<f64>,
}

/// A container the pattern matches that no server of the backend is mapped to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnmatchedContainer {
    pub host: String,
    pub alias: String,
    /// What it was looked for as, or why it could not be (with a template or by address).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
}

/// A backend's servers and the containers left over.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Mapping {
    pub servers: Vec<MappedServer>,
    pub unmatched_containers: Vec<UnmatchedContainer>,
}

/// Maps one backend's servers (as the balancers hold them) to the containers the hosts
/// reported.
pub fn map_backend(
    pattern: &Regex,
    matching: &Matching,
    servers: &[&ServerView],
    hosts: &[&HostReading],
) -> Mapping {
    let index = index_aliases(&[pattern], hosts).pop();
    map_backend_indexed(
        pattern,
        matching,
        servers,
        hosts,
        &index.unwrap_or_default(),
    )
}

/// For one backend: each container alias its pattern matches, with every (host, container)
/// index where it stands.
pub type AliasIndex<'a> = HashMap<&'a str, Vec<(usize, usize)>>;

/// Indexes every alias once for all backends (one pass over the containers, whatever the
/// number of backends), one [`AliasIndex`] per backend's (anchored) pattern, in order.
pub fn index_aliases<'a>(patterns: &[&Regex], hosts: &[&'a HostReading]) -> Vec<AliasIndex<'a>> {
    let mut index: Vec<AliasIndex<'a>> = vec![HashMap::new(); patterns.len()];
    // Every pattern is already anchored and valid; a set matches them all in one scan.
    let set = regex::RegexSet::new(patterns.iter().map(|p| p.as_str())).ok();
    for (h, host) in hosts.iter().enumerate() {
        for (c, container) in host.containers.iter().enumerate() {
            for alias in &container.aliases {
                let matching: Vec<usize> = match &set {
                    Some(set) => set.matches(alias).into_iter().collect(),
                    None => (0..patterns.len())
                        .filter(|&b| patterns[b].is_match(alias))
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

/// What ties a container to a server.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key<'a> {
    Name(Cow<'a, str>),
    /// An IP, and the port when the backend's template gives one.
    Addr(IpAddr, Option<u16>),
}

/// (host index, container index)
type At = (usize, usize);

/// [`map_backend`] with the backend's aliases already indexed by [`index_aliases`].
pub fn map_backend_indexed(
    pattern: &Regex,
    matching: &Matching,
    servers: &[&ServerView],
    hosts: &[&HostReading],
    by_alias: &AliasIndex<'_>,
) -> Mapping {
    // Each container of the backend once, with the aliases the pattern matched in its own
    // order (each once), in host and container order. Linear in the aliases, whatever a
    // hostile host lists.
    let at_set: BTreeSet<At> = by_alias.values().flatten().copied().collect();
    let containers: BTreeMap<At, Vec<&str>> = at_set
        .into_iter()
        .map(|(h, c)| {
            let mut seen = HashSet::new();
            let aliases = hosts[h].containers[c]
                .aliases
                .iter()
                .map(String::as_str)
                .filter(|a| by_alias.contains_key(a) && seen.insert(*a))
                .collect();
            ((h, c), aliases)
        })
        .collect();

    // What each container is looked for as, or why it cannot be.
    let mut keys: BTreeMap<At, Result<Vec<Key<'_>>, String>> = BTreeMap::new();
    for (&at, aliases) in &containers {
        keys.insert(at, container_keys(pattern, matching, hosts, at, aliases));
    }
    let mut claims: HashMap<&Key<'_>, Vec<At>> = HashMap::new();
    for (at, k) in &keys {
        for key in k.iter().flatten() {
            let list = claims.entry(key).or_default();
            if list.last() != Some(at) {
                list.push(*at);
            }
        }
    }

    // Each server's key and the containers that fit it.
    let server_keys: Vec<Result<Key<'_>, Reason>> = servers
        .iter()
        .map(|s| server_key(pattern, matching, s))
        .collect();
    let fits: Vec<&[At]> = server_keys
        .iter()
        .map(|k| match k {
            Ok(k) => claims.get(k).map_or(&[][..], Vec::as_slice),
            Err(_) => &[],
        })
        .collect();
    // Serving servers each container fits: a server that takes no traffic (in MAINT, say,
    // while a new one takes its address) does not make its container ambiguous.
    let mut fitted: HashMap<At, Vec<usize>> = HashMap::new();
    for (i, (s, fit)) in servers.iter().zip(&fits).enumerate() {
        if s.exclusion.as_ref().is_some_and(Reason::takes_no_traffic) {
            continue;
        }
        for at in *fit {
            fitted.entry(*at).or_default().push(i);
        }
    }

    let describe =
        |(h, c): At| -> String { format!("{} on {}", containers[&(h, c)][0], hosts[h].host) };
    let mapped = servers
        .iter()
        .enumerate()
        .map(|(i, stat)| {
            let name = stat.key.server.as_str();
            let mut host = None;
            let mut container = None;
            let mut cpu = None;
            let data = match (&server_keys[i], fits[i]) {
                (Err(reason), _) => Err(reason.clone()),
                (Ok(key), []) => Err(match key {
                    Key::Addr(ip, port) => Reason::NoContainerAt(address(*ip, *port)),
                    Key::Name(_) => Reason::NoContainer,
                }),
                (Ok(_), &[(h, c)]) => {
                    host = Some(hosts[h].host.clone());
                    container = Some(containers[&(h, c)][0].to_string());
                    let sharing = fitted.get(&(h, c)).map_or(&[][..], Vec::as_slice);
                    let total = sharing.len() - usize::from(sharing.contains(&i));
                    let others = capped(
                        sharing
                            .iter()
                            .filter(|&&j| j != i)
                            .map(|&j| servers[j].key.server.clone()),
                        total,
                    );
                    if let Ok(u) = &hosts[h].containers[c].reading {
                        cpu = Some(u.cpu);
                    }
                    if !others.is_empty() {
                        Err(Reason::SharedContainer {
                            container: describe((h, c)),
                            servers: others,
                        })
                    } else {
                        match &hosts[h].containers[c].reading {
                            Ok(u) => Ok(u.cpu),
                            Err(NoReading::CounterReset) => Err(Reason::CounterReset),
                            Err(e) => Err(Reason::NoReading(e.to_string())),
                        }
                    }
                }
                (Ok(_), many) => {
                    if matches!(matching, Matching::Alias) {
                        // The 2015 rule's case: one alias on several hosts.
                        let mut names: Vec<String> =
                            many.iter().map(|(h, _)| hosts[*h].host.clone()).collect();
                        names.dedup();
                        let total = names.len();
                        Err(Reason::DuplicateAlias(capped(names.into_iter(), total)))
                    } else {
                        Err(Reason::Ambiguous(capped(
                            many.iter().map(|&at| describe(at)),
                            many.len(),
                        )))
                    }
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
                container,
                cpu,
            }
        })
        .collect();

    // Containers no server fits, in host and container order.
    let taken: HashSet<At> = fits.iter().flat_map(|f| f.iter().copied()).collect();
    let unmatched = keys
        .iter()
        .filter(|(at, _)| !taken.contains(at))
        .map(|(&(h, c), k)| UnmatchedContainer {
            host: hosts[h].host.clone(),
            alias: containers[&(h, c)][0].to_string(),
            why: match (matching, k) {
                (Matching::Alias, _) => None,
                (_, Err(why)) => Some(why.clone()),
                (_, Ok(keys)) => Some(looked_for(keys)),
            },
        })
        .collect();

    Mapping {
        servers: mapped,
        unmatched_containers: unmatched,
    }
}

/// Address matching over several balancers: a server they hold at different addresses (each
/// resolved its `server-template` slots on its own) is several servers under one name, and
/// one set of weights cannot serve them all: no data, with the addresses (`differing`, from
/// [`sink::differing_addresses`](crate::sink::differing_addresses)).
pub fn distrust_differing(m: &mut Mapping, differing: &HashMap<&str, Vec<SocketAddr>>) {
    for s in &mut m.servers {
        let Some(addrs) = differing.get(s.input.name.as_str()) else {
            continue;
        };
        if !matches!(s.input.input, Input::Excluded(_)) {
            let list = capped(addrs.iter().map(|a| a.to_string()), addrs.len());
            s.input.input = Input::NoData(Reason::AddressesDiffer(list));
        }
    }
}

/// What a container is looked for as: its aliases, the names its template builds, or its
/// host's addresses (with the port its template builds).
fn container_keys<'a>(
    pattern: &Regex,
    matching: &Matching,
    hosts: &[&'a HostReading],
    (h, c): At,
    aliases: &[&'a str],
) -> Result<Vec<Key<'a>>, String> {
    let host = hosts[h];
    let container = &host.containers[c];
    let render = |t: &Template, alias: &str| {
        let captures = pattern
            .captures(alias)
            .ok_or_else(|| "the pattern does not match".to_string())?;
        t.render(&Fields {
            alias,
            captures: &captures,
            labels: &container.labels,
            host: &host.name,
        })
    };
    match matching {
        Matching::Alias => Ok(aliases
            .iter()
            .map(|a| Key::Name(Cow::Borrowed(*a)))
            .collect()),
        Matching::Name { server: t, .. } => {
            let mut names = vec![];
            let mut seen = HashSet::new();
            let mut first_error = None;
            for a in aliases {
                match render(t, a) {
                    Ok(n) if seen.insert(n.clone()) => names.push(Key::Name(Cow::Owned(n))),
                    Ok(_) => {}
                    Err(e) => {
                        first_error.get_or_insert(format!("`server` template: {e}"));
                    }
                }
            }
            match (names.is_empty(), first_error) {
                (true, Some(e)) => Err(e),
                _ => Ok(names),
            }
        }
        Matching::Address { port, .. } => {
            if host.addresses.is_empty() {
                return Err(format!("the address of {} is not known", host.host));
            }
            let port = match port {
                None => None,
                Some(t) => {
                    let text =
                        render(t, aliases[0]).map_err(|e| format!("`port` template: {e}"))?;
                    Some(text.trim().parse::<u16>().map_err(|_| {
                        format!("`port` template gives `{text}`, not a port number")
                    })?)
                }
            };
            Ok(host
                .addresses
                .iter()
                .map(|ip| Key::Addr(ip.to_canonical(), port))
                .collect())
        }
    }
}

/// What a server is looked up by, or why it is not mapped at all.
fn server_key<'a>(
    pattern: &Regex,
    matching: &Matching,
    server: &'a ServerView,
) -> Result<Key<'a>, Reason> {
    let name = server.key.server.as_str();
    if !matching.tunes(pattern, name) {
        return Err(Reason::NotMatched);
    }
    match matching {
        Matching::Alias | Matching::Name { .. } => Ok(Key::Name(Cow::Borrowed(name))),
        Matching::Address { port, .. } => match server.address {
            Some(a) if !a.ip().is_unspecified() => Ok(Key::Addr(
                a.ip().to_canonical(),
                port.as_ref().map(|_| a.port()),
            )),
            _ => Err(Reason::NoAddress),
        },
    }
}

/// The most names a reason lists: the rest are counted.
const NAMED_MOST: usize = 3;

/// The first [`NAMED_MOST`] of `total` names, and `and N more` for the rest: a reason's cost
/// stays flat however many servers share an address.
fn capped(names: impl Iterator<Item = String>, total: usize) -> Vec<String> {
    let mut out: Vec<String> = names.take(NAMED_MOST).collect();
    if total > out.len() {
        out.push(format!("and {} more", total - out.len()));
    }
    out
}

fn address(ip: IpAddr, port: Option<u16>) -> String {
    match port {
        Some(p) => SocketAddr::new(ip, p).to_string(),
        None => ip.to_string(),
    }
}

fn looked_for(keys: &[Key<'_>]) -> String {
    let mut names = vec![];
    let mut addrs = vec![];
    for k in keys {
        match k {
            Key::Name(n) => names.push(n.to_string()),
            Key::Addr(ip, port) => addrs.push(address(*ip, *port)),
        }
    }
    if !names.is_empty() {
        format!("no server named {}", names.join(" or "))
    } else {
        format!("no server at {}", addrs.join(" or "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Backend, Config};
    use crate::controller::ServerKey;
    use crate::source::{ContainerReading, Utilisation};

    /// A backend from the config's own keys (`pattern`, `server`, `match`, `port`).
    fn backend(keys: &str) -> Backend {
        let text = format!(
            r#"{{"haproxy": "/s", "cadvisor": "http://h:1", "backends": [{{"name": "app", {keys}}}]}}"#
        );
        Config::parse(&text).unwrap().backends.remove(0)
    }

    fn map(b: &Backend, servers: &[ServerView], hosts: &[HostReading]) -> Mapping {
        let servers: Vec<&ServerView> = servers.iter().collect();
        let hosts: Vec<&HostReading> = hosts.iter().collect();
        map_backend(&b.pattern, &b.matching, &servers, &hosts)
    }

    fn stat(name: &str, exclusion: Option<Reason>, weight: u32) -> ServerView {
        ServerView {
            exclusion,
            ..ServerView::new(ServerKey::new("app", name), weight)
        }
    }

    /// A serving server at `addr`.
    fn at(name: &str, addr: &str) -> ServerView {
        ServerView {
            address: Some(addr.parse().unwrap()),
            ..stat(name, None, 100)
        }
    }

    fn container(alias: &str, reading: Result<f64, NoReading>) -> ContainerReading {
        ContainerReading {
            name: format!("/docker/{alias}-id"),
            aliases: vec![alias.to_string(), format!("{alias}-0123456789abcdef")],
            labels: BTreeMap::new(),
            reading: reading.map(|cpu| Utilisation {
                cpu,
                cores_used: cpu,
                capacity_cores: 1.0,
                from: 0,
                to: 60_000_000_000,
            }),
        }
    }

    /// A container with one alias (the id is elsewhere) and labels.
    fn labelled(alias: &str, cpu: f64, labels: &[(&str, &str)]) -> ContainerReading {
        ContainerReading {
            aliases: vec![alias.to_string()],
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..container(alias, Ok(cpu))
        }
    }

    fn host(url: &str, containers: Vec<ContainerReading>) -> HostReading {
        HostReading {
            host: url.into(),
            name: url.trim_start_matches("http://").into(),
            addresses: vec![],
            num_cores: 1,
            containers,
        }
    }

    /// A host at these IPs.
    fn host_at(ips: &[&str], containers: Vec<ContainerReading>) -> HostReading {
        HostReading {
            addresses: ips.iter().map(|ip| ip.parse().unwrap()).collect(),
            ..host(&format!("http://{}:8080", ips[0]), containers)
        }
    }

    fn inputs(m: &Mapping) -> Vec<(&str, &Input)> {
        m.servers
            .iter()
            .map(|s| (s.input.name.as_str(), &s.input.input))
            .collect()
    }

    fn unmatched(m: &Mapping) -> Vec<(&str, &str, Option<&str>)> {
        m.unmatched_containers
            .iter()
            .map(|c| (c.host.as_str(), c.alias.as_str(), c.why.as_deref()))
            .collect()
    }

    #[test]
    fn containers_map_to_servers_by_alias() {
        let b = backend(r#""pattern": "app-""#);
        let stats = [
            stat("app-1", None, 100),
            stat("app-2", None, 100),
            stat("app-3", Some(Reason::Maint), 100),
            stat("app-4", None, 100),
            stat("app-5", None, 100),
            stat("web-1", None, 100),
            stat("app-6", None, 100),
        ];
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
        let m = map(&b, &stats, &[h1, h2]);
        assert_eq!(
            inputs(&m).into_iter().map(|(_, i)| i).collect::<Vec<_>>(),
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
        assert_eq!(m.servers[0].container.as_deref(), Some("app-1"));
        assert_eq!(
            m.servers[2].cpu,
            Some(0.2),
            "excluded servers still show their CPU"
        );
        assert_eq!(unmatched(&m), [("http://h1", "app-9", None)]);
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
        let patterns: Vec<&Regex> = config.backends.iter().map(|b| &b.pattern).collect();
        let index = index_aliases(&patterns, &hosts);
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
            let m = &backend.matching;
            assert_eq!(
                map_backend_indexed(&backend.pattern, m, &refs, &hosts, &index[b]),
                map_backend(&backend.pattern, m, &refs, &hosts)
            );
        }
    }

    #[test]
    fn pattern_is_anchored_at_the_start_only() {
        let b = backend(r#""pattern": "app""#);
        let stats = [stat("myapp", None, 10), stat("app10", None, 10)];
        let h = host(
            "http://h",
            vec![container("myapp", Ok(0.3)), container("app10", Ok(0.3))],
        );
        let m = map(&b, &stats, &[h]);
        assert_eq!(
            m.servers[0].input.input,
            Input::Excluded(Reason::NotMatched)
        );
        assert_eq!(m.servers[1].input.input, Input::Measured(0.3));
        assert!(m.unmatched_containers.is_empty());
    }

    const COMPOSE_NUMBER: &str = "com.docker.compose.container-number";

    fn compose(service: &str, n: &str, cpu: f64) -> ContainerReading {
        labelled(
            &format!("proj_{service}_{n}"),
            cpu,
            &[("com.docker.compose.service", service), (COMPOSE_NUMBER, n)],
        )
    }

    /// docker compose: `proj_web_N` → `web_N`, by a label or by a capture group; every server
    /// of the backend takes part (none is "not matched"), and what a template cannot build or
    /// finds no server for is said.
    #[test]
    fn a_template_names_the_server() {
        let by_label = backend(
            r#""pattern": "proj_web_", "server": "web_{label:com.docker.compose.container-number}""#,
        );
        let by_group = backend(r#""pattern": "proj_web_(\\d+)", "server": "web_{1}""#);
        let stats = [
            stat("web_1", None, 100),
            stat("web_2", None, 100),
            stat("web_3", None, 100),
            stat("static", None, 100),
        ];
        let mut odd = compose("web", "9", 0.1);
        odd.labels.clear();
        let h = host(
            "http://10.0.0.11:8080",
            vec![
                compose("web", "1", 0.5),
                compose("web", "2", 0.25),
                compose("db", "1", 0.9),
                compose("web", "4", 0.3),
                odd,
            ],
        );
        for b in [&by_label, &by_group] {
            let m = map(b, &stats, std::slice::from_ref(&h));
            assert_eq!(
                inputs(&m),
                [
                    ("web_1", &Input::Measured(0.5)),
                    ("web_2", &Input::Measured(0.25)),
                    ("web_3", &Input::NoData(Reason::NoContainer)),
                    ("static", &Input::NoData(Reason::NoContainer)),
                ],
                "{:?}",
                b.matching
            );
            assert_eq!(m.servers[1].container.as_deref(), Some("proj_web_2"));
        }
        let m = map(&by_label, &stats, std::slice::from_ref(&h));
        assert_eq!(
            unmatched(&m),
            [
                (
                    "http://10.0.0.11:8080",
                    "proj_web_4",
                    Some("no server named web_4")
                ),
                (
                    "http://10.0.0.11:8080",
                    "proj_web_9",
                    Some("`server` template: no label `com.docker.compose.container-number`")
                ),
            ]
        );
        let m = map(&by_group, &stats, &[h]);
        assert_eq!(m.unmatched_containers.len(), 2, "web_4 and web_9");
    }

    /// `{host}` tells apart the same compose number on two hosts; without it, the two are
    /// ambiguous and named.
    #[test]
    fn two_containers_for_one_server_name_both() {
        let stats = [stat("h1_web_1", None, 100), stat("web_1", None, 100)];
        let hosts = [
            host("http://h1", vec![compose("web", "1", 0.5)]),
            host("http://h2", vec![compose("web", "1", 0.25)]),
        ];
        let with_host = backend(r#""pattern": "proj_web_(\\d+)", "server": "{host}_web_{1}""#);
        let m = map(&with_host, &stats, &hosts);
        assert_eq!(
            inputs(&m),
            [
                ("h1_web_1", &Input::Measured(0.5)),
                ("web_1", &Input::NoData(Reason::NoContainer)),
            ]
        );
        assert_eq!(
            unmatched(&m),
            [("http://h2", "proj_web_1", Some("no server named h2_web_1"))]
        );
        let without = backend(r#""pattern": "proj_web_(\\d+)", "server": "web_{1}""#);
        let m = map(&without, &stats, &hosts);
        assert_eq!(
            m.servers[1].input.input,
            Input::NoData(Reason::Ambiguous(vec![
                "proj_web_1 on http://h1".into(),
                "proj_web_1 on http://h2".into()
            ]))
        );
        assert!(m.unmatched_containers.is_empty(), "both fit a server");
        let Input::NoData(why) = &m.servers[1].input.input else {
            panic!("{:?}", m.servers[1].input.input)
        };
        assert_eq!(
            why.to_string(),
            "no data: several containers fit: proj_web_1 on http://h1, proj_web_1 on http://h2"
        );
    }

    fn nomad(alloc: &str, cpu: f64, port: Option<&str>) -> ContainerReading {
        let mut labels = vec![
            ("com.hashicorp.nomad.task_name", "web"),
            ("com.hashicorp.nomad.alloc_id", alloc),
        ];
        if let Some(p) = port {
            labels.push(("port", p));
        }
        labelled(&format!("web-{alloc}"), cpu, &labels)
    }

    /// Nomad: slot names mean nothing; a server is the container on the host at its address.
    /// IPv4 and IPv6 (and IPv4-mapped IPv6) alike; a host with two addresses matches either.
    #[test]
    fn by_address_a_server_is_the_container_on_its_host() {
        let b = backend(r#""pattern": "web-", "match": "address""#);
        let stats = [
            at("srv1", "10.0.0.11:31001"),
            at("srv2", "[2001:db8::12]:31002"),
            at("srv3", "[::ffff:10.0.0.13]:31003"),
            at("srv4", "192.168.1.14:31004"),
            at("srv5", "10.0.0.15:31005"),
            ServerView {
                exclusion: Some(Reason::Maint),
                ..stat("srv6", None, 100)
            },
            stat("srv7", None, 100),
            at("srv8", "0.0.0.0:80"),
        ];
        let hosts = [
            host_at(
                &["10.0.0.11"],
                vec![nomad("aaaa", 0.5, None), labelled("db-1", 0.9, &[])],
            ),
            host_at(&["2001:db8::12"], vec![nomad("bbbb", 0.25, None)]),
            host_at(&["10.0.0.13"], vec![nomad("cccc", 0.125, None)]),
            host_at(
                &["10.0.0.14", "192.168.1.14"],
                vec![nomad("dddd", 0.3, None)],
            ),
            host_at(&["10.0.0.16"], vec![nomad("ffff", 0.3, None)]),
        ];
        let m = map(&b, &stats, &hosts);
        assert_eq!(
            inputs(&m),
            [
                ("srv1", &Input::Measured(0.5)),
                ("srv2", &Input::Measured(0.25)),
                ("srv3", &Input::Measured(0.125)),
                ("srv4", &Input::Measured(0.3)),
                (
                    "srv5",
                    &Input::NoData(Reason::NoContainerAt("10.0.0.15".into()))
                ),
                ("srv6", &Input::Excluded(Reason::Maint)),
                ("srv7", &Input::NoData(Reason::NoAddress)),
                ("srv8", &Input::NoData(Reason::NoAddress)),
            ]
        );
        assert_eq!(m.servers[0].container.as_deref(), Some("web-aaaa"));
        assert_eq!(m.servers[0].host.as_deref(), Some("http://10.0.0.11:8080"));
        assert_eq!(
            unmatched(&m),
            [(
                "http://10.0.0.16:8080",
                "web-ffff",
                Some("no server at 10.0.0.16")
            )]
        );
    }

    /// Two containers on one host, two servers at its address: without a port, both servers
    /// are ambiguous (each names both containers); with a `port` template from a label, each
    /// maps to its own. One container at the address of two serving servers is theirs only
    /// if one takes no traffic.
    #[test]
    fn by_address_ambiguity_is_never_guessed() {
        let stats = [at("srv1", "10.0.0.11:31001"), at("srv2", "10.0.0.11:31002")];
        let two = [host_at(
            &["10.0.0.11"],
            vec![
                nomad("aaaa", 0.5, Some("31001")),
                nomad("bbbb", 0.25, Some("31002")),
            ],
        )];
        let no_port = backend(r#""pattern": "web-", "match": "address""#);
        let m = map(&no_port, &stats, &two);
        let both = Reason::Ambiguous(vec![
            "web-aaaa on http://10.0.0.11:8080".into(),
            "web-bbbb on http://10.0.0.11:8080".into(),
        ]);
        assert_eq!(
            inputs(&m),
            [
                ("srv1", &Input::NoData(both.clone())),
                ("srv2", &Input::NoData(both))
            ]
        );

        let port = backend(r#""pattern": "web-", "match": "address", "port": "{label:port}""#);
        let m = map(&port, &stats, &two);
        assert_eq!(
            inputs(&m),
            [
                ("srv1", &Input::Measured(0.5)),
                ("srv2", &Input::Measured(0.25))
            ]
        );

        // One container, two serving servers at its host: whose load is it?
        let one = [host_at(&["10.0.0.11"], vec![nomad("aaaa", 0.5, None)])];
        let m = map(&no_port, &stats, &one);
        assert_eq!(
            inputs(&m),
            [
                (
                    "srv1",
                    &Input::NoData(Reason::SharedContainer {
                        container: "web-aaaa on http://10.0.0.11:8080".into(),
                        servers: vec!["srv2".into()]
                    })
                ),
                (
                    "srv2",
                    &Input::NoData(Reason::SharedContainer {
                        container: "web-aaaa on http://10.0.0.11:8080".into(),
                        servers: vec!["srv1".into()]
                    })
                ),
            ]
        );
        // ... unless the other is in MAINT (an old slot whose address a new one took).
        let mut drained = stats.clone();
        drained[1].exclusion = Some(Reason::Maint);
        let m = map(&no_port, &drained, &one);
        assert_eq!(m.servers[0].input.input, Input::Measured(0.5));
        assert_eq!(m.servers[1].input.input, Input::Excluded(Reason::Maint));

        // A container whose port label is missing or not a port is said, not guessed.
        let odd = [host_at(
            &["10.0.0.11"],
            vec![
                nomad("aaaa", 0.5, Some("31001")),
                nomad("bbbb", 0.25, Some("http")),
                nomad("cccc", 0.1, None),
            ],
        )];
        let m = map(&port, &stats, &odd);
        assert_eq!(m.servers[0].input.input, Input::Measured(0.5));
        assert_eq!(
            m.servers[1].input.input,
            Input::NoData(Reason::NoContainerAt("10.0.0.11:31002".into()))
        );
        assert_eq!(
            unmatched(&m),
            [
                (
                    "http://10.0.0.11:8080",
                    "web-bbbb",
                    Some("`port` template gives `http`, not a port number")
                ),
                (
                    "http://10.0.0.11:8080",
                    "web-cccc",
                    Some("`port` template: no label `port`")
                ),
            ]
        );
    }

    /// A host whose address is not known has its containers said, and no server is guessed.
    #[test]
    fn by_address_a_host_without_address_maps_nothing() {
        let b = backend(r#""pattern": "web-", "match": "address""#);
        let stats = [at("srv1", "10.0.0.11:31001")];
        let m = map(
            &b,
            &stats,
            &[host("http://node1:8080", vec![nomad("aaaa", 0.5, None)])],
        );
        assert_eq!(
            m.servers[0].input.input,
            Input::NoData(Reason::NoContainerAt("10.0.0.11".into()))
        );
        assert_eq!(
            unmatched(&m),
            [(
                "http://node1:8080",
                "web-aaaa",
                Some("the address of http://node1:8080 is not known")
            )]
        );
    }

    /// One container, two names: a template over a pattern that both its aliases match gives
    /// two servers one container: both are told, neither guessed.
    #[test]
    fn one_container_for_two_server_names_names_both() {
        let b = backend(r#""pattern": "app-", "server": "{alias}""#);
        let stats = [
            stat("app-1", None, 100),
            stat("app-1-0123456789abcdef", None, 100),
        ];
        let m = map(
            &b,
            &stats,
            &[host("http://h", vec![container("app-1", Ok(0.5))])],
        );
        assert!(
            matches!(&m.servers[0].input.input, Input::NoData(Reason::SharedContainer { servers, .. }) if servers == &["app-1-0123456789abcdef"]),
            "{:?}",
            m.servers[0].input.input
        );
    }

    /// Reasons name at most three and count the rest, however many servers share an address;
    /// a container listing 40,000 aliases maps by the one a server has.
    #[test]
    fn reasons_stay_short_and_hostile_alias_lists_stay_linear() {
        let b = backend(r#""pattern": "web-", "match": "address""#);
        let stats: Vec<ServerView> = (0..1000)
            .map(|i| at(&format!("srv{i}"), &format!("10.0.0.11:{}", 30000 + i)))
            .collect();
        let one = [host_at(&["10.0.0.11"], vec![nomad("aaaa", 0.5, None)])];
        let m = map(&b, &stats, &one);
        let Input::NoData(Reason::SharedContainer { servers, .. }) = &m.servers[0].input.input
        else {
            panic!("{:?}", m.servers[0].input.input)
        };
        assert_eq!(servers, &["srv1", "srv2", "srv3", "and 996 more"]);

        let many: Vec<ContainerReading> = (0..50)
            .map(|i| nomad(&format!("{i:04}"), 0.1, None))
            .collect();
        let m = map(&b, &stats[..1], &[host_at(&["10.0.0.11"], many)]);
        let Input::NoData(Reason::Ambiguous(list)) = &m.servers[0].input.input else {
            panic!("{:?}", m.servers[0].input.input)
        };
        assert_eq!(list.len(), 4);
        assert_eq!(list[3], "and 47 more");

        // 20,000 distinct aliases the pattern matches, and each of them again.
        let mut hostile = container("app-1", Ok(0.5));
        let names: Vec<String> = (0..20_000).map(|i| format!("app-1-{i}")).collect();
        hostile.aliases = std::iter::once("app-1".to_string())
            .chain(names.iter().cloned())
            .chain(names.iter().cloned())
            .collect();
        let by_alias = backend(r#""pattern": "app-""#);
        let m = map(
            &by_alias,
            &[stat("app-1", None, 100)],
            &[host("http://h", vec![hostile])],
        );
        assert_eq!(m.servers[0].input.input, Input::Measured(0.5));
    }
}
