//! `hatune check`: the health check of every sink and source. The config line, then one
//! `ok`/`FAIL` line per balancer (reachable at the access hatune needs, every configured
//! backend present) and per host (reachable, parsed), then one per backend with its
//! container → server table and what is left unmatched on either side (`FAIL` when a serving
//! server has no container, or an ambiguous one), then how many problems there were.
//!
//! The I/O is `probe`, which asks each sink and source built from the config to probe itself
//! ([`Sink::probe`](crate::sink::Sink::probe), [`Source::probe`](crate::source::Source::probe));
//! everything that turns what they found into lines is pure and table-tested below.

use std::fmt;
use std::path::{Path, PathBuf};

use futures::future::join_all;

use crate::config::{Backend, Config};
use crate::controller::{Input, Reason};
use crate::mapping;
use crate::report::printable;
use crate::sink::{self, Inventory, View};
use crate::source::{self, HostReading};

/// What `hatune check` found: the config line, then one probe per socket and per host.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckReport {
    /// The config's summary: always ok (a config that does not load never gets a report).
    pub config: Probe,
    /// One per HAProxy socket, then one per cAdvisor host, in config order; empty for
    /// `--config-only`.
    pub probes: Vec<Probe>,
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq)]
pub struct Probe {
    pub subject: Subject,
    pub ok: bool,
    /// What was found (ok) or what is wrong (FAIL).
    pub detail: String,
    /// Lines shown under it, indented (a backend's mapping table).
    pub table: Vec<String>,
}

/// What a line is about.
#[derive(Debug, Clone, PartialEq)]
pub enum Subject {
    Config(PathBuf),
    /// A sink or a source, by its kind (`HAProxy`, `cAdvisor`) and name (socket, host).
    Part {
        kind: &'static str,
        name: String,
    },
    /// A backend's container → server mapping.
    Mapping(String),
}

/// Probes every HAProxy socket and every cAdvisor host of `config`, loaded from `path` (which
/// the config line names).
pub async fn check(path: &Path, config: &Config) -> CheckReport {
    CheckReport {
        probes: probe(config).await,
        ..CheckReport::config_only(path, config)
    }
}

/// The probes' I/O: every balancer and every host at once, each bounded by the config's
/// timeout, on sinks and sources built from the config as `hatune once` builds them.
async fn probe(config: &Config) -> Vec<Probe> {
    let sinks = sink::build(config, sink::Options::default());
    let sources = source::build(config);
    let (balancers, hosts) = tokio::join!(
        join_all(sinks.iter().map(|s| s.probe())),
        join_all(sources.iter().map(|s| s.probe())),
    );
    let found: Vec<&Inventory> = balancers.iter().flatten().collect();
    let readings: Vec<&HostReading> = hosts
        .iter()
        .flatten()
        .filter_map(|(_, p)| p.as_ref().ok())
        .collect();
    let mappings = if found.is_empty() {
        vec![]
    } else {
        let silent = hosts.iter().flatten().filter(|(_, p)| p.is_err()).count();
        mapping_probes(&config.backends, &found, &readings, silent)
    };
    let balancer_lines = sinks.iter().zip(&balancers).map(|(s, found)| {
        balancer_probe(part(s.kind(), s.name()), found.as_ref(), &config.backends)
    });
    let host_lines = sources.iter().zip(&hosts).flat_map(|(s, polls)| {
        polls
            .iter()
            .map(|(host, poll)| host_probe(part(s.kind(), host), poll.as_ref(), &config.backends))
            .collect::<Vec<_>>()
    });
    let mut probes: Vec<Probe> = balancer_lines.chain(host_lines).chain(mappings).collect();
    if let Some(peers) = &config.peers {
        probes.push(peers_probe(peers, crate::peers::snapshot(peers).await));
    }
    probes
}

/// The peer group's line: etcd reached, who leads, the published revision.
fn peers_probe(
    peers: &crate::config::Peers,
    found: Result<crate::peers::Snapshot, String>,
) -> Probe {
    let subject = part("etcd", &peers.etcd.join(", "));
    let (ok, detail) = match found {
        Err(e) => (false, e),
        Ok(s) => {
            let leader = s.leader.filter(|l| !l.is_empty());
            let published = match &s.published {
                None => "nothing published yet".to_string(),
                Some(Ok(p)) => format!("weights at revision {}", p.revision),
                Some(Err(e)) => format!("the published set is unreadable: {e}"),
            };
            let ok = !matches!(s.published, Some(Err(_)));
            let leads = match leader {
                Some(l) => format!("led by {l}"),
                None => "no leader yet".to_string(),
            };
            (
                ok,
                format!(
                    "{} as {}: {leads}, {published}, {} instances recorded",
                    peers.prefix,
                    peers.name,
                    s.instances.len()
                ),
            )
        }
    };
    Probe {
        subject,
        ok,
        detail,
        table: vec![],
    }
}

/// One line per backend: how many of its serving servers found their container, the
/// container → server table, then the servers without one (and why) and the containers the
/// pattern matches that no server took. Servers are merged across balancers as a tick merges
/// them. While `silent` hosts did not answer, a server without a container may be on one of
/// them: it is listed, and is no problem of its own (the host's line is one); every other
/// reason a serving server has no container (ambiguous, shared, no address, addresses that
/// differ between balancers) still is.
fn mapping_probes(
    backends: &[Backend],
    found: &[&Inventory],
    readings: &[&HostReading],
    silent: usize,
) -> Vec<Probe> {
    let views: Vec<View> = found
        .iter()
        .map(|inv| View {
            backends: inv.backends.clone(),
            servers: inv.servers.clone(),
            reloaded: false,
        })
        .collect();
    let grouped: Vec<_> = views.iter().map(sink::by_backend).collect();
    backends
        .iter()
        .map(|b| {
            let merged = sink::merge(&b.name, &grouped);
            let servers: Vec<_> = merged.iter().map(|(s, _)| *s).collect();
            let mut m = mapping::map_backend(&b.pattern, &b.matching, &servers, readings);
            if b.matching.by_address() {
                let differing = sink::differing_addresses(&b.name, &grouped);
                mapping::distrust_differing(&mut m, &differing);
            }
            mapping_probe(&b.name, &m, silent)
        })
        .collect()
}

/// A backend's mapping as a probe line and its table: `CONTAINER on HOST -> SERVER` for each
/// server with its container, then each serving server without one and why, then each
/// container left over and why.
fn mapping_probe(backend: &str, m: &mapping::Mapping, silent: usize) -> Probe {
    let mut table = vec![];
    let mut unmapped = vec![];
    let mut problems = 0;
    let mut serving = 0;
    let mut mapped = 0;
    for s in &m.servers {
        let name = &s.input.name;
        let unmapped_why = match &s.input.input {
            Input::NoData(r) if is_mapping_reason(r) => Some(r),
            _ => None,
        };
        if let (Some(c), Some(h), None) = (&s.container, &s.host, unmapped_why) {
            let note = match &s.input.input {
                Input::Excluded(r) | Input::NoData(r) => format!(" ({r})"),
                Input::Measured(_) => String::new(),
            };
            table.push(format!("{c} on {h} -> {name}{note}"));
        }
        if matches!(&s.input.input, Input::Excluded(_)) {
            continue;
        }
        serving += 1;
        match unmapped_why {
            Some(r) => {
                let missing = matches!(r, Reason::NoContainer | Reason::NoContainerAt(_));
                if !(missing && silent > 0) {
                    problems += 1;
                }
                unmapped.push(format!("server {name}: {r}"));
            }
            None => mapped += 1,
        }
    }
    let ok = problems == 0;
    table.extend(unmapped);
    for c in &m.unmatched_containers {
        let why = c.why.as_deref().unwrap_or("no server of that name");
        table.push(format!("container {} on {}: {why}", c.alias, c.host));
    }
    let mut detail = format!(
        "{mapped} of {serving} serving servers mapped to a container, {} container(s) left over",
        m.unmatched_containers.len()
    );
    if silent > 0 && mapped < serving {
        detail += &format!(" ({silent} host(s) did not answer)");
    }
    Probe {
        subject: Subject::Mapping(backend.to_string()),
        ok,
        detail,
        table,
    }
}

/// Reasons that say the server found no container (or no single one), as opposed to a
/// container without a reading this time.
fn is_mapping_reason(r: &Reason) -> bool {
    matches!(
        r,
        Reason::NoContainer
            | Reason::NoContainerAt(_)
            | Reason::NoAddress
            | Reason::AddressesDiffer(_)
            | Reason::DuplicateAlias(_)
            | Reason::Ambiguous(_)
            | Reason::SharedContainer { .. }
    )
}

fn part(kind: &'static str, name: &str) -> Subject {
    Subject::Part {
        kind,
        name: name.to_string(),
    }
}

/// A balancer is ok when it answered with the access hatune needs and has every configured
/// backend (as a backend or through its servers).
fn balancer_probe<E: fmt::Display>(
    subject: Subject,
    found: Result<&Inventory, E>,
    backends: &[Backend],
) -> Probe {
    let found = match found {
        Ok(found) => found,
        Err(e) => return Probe::fail(subject, e.to_string()),
    };
    let mut parts = vec![];
    let mut missing = vec![];
    for b in backends {
        let n = found
            .servers
            .iter()
            .filter(|s| s.key.backend == b.name)
            .count();
        if found.backends.contains(&b.name) || n > 0 {
            parts.push(format!("{} ({n} servers)", b.name));
        } else {
            missing.push(format!("`{}`", b.name));
        }
    }
    if missing.is_empty() {
        Probe::ok(subject, format!("{}; {}", found.access, parts.join(", ")))
    } else {
        Probe::fail(subject, format!("no backend named {}", missing.join(", ")))
    }
}

/// A host is ok when it answered; the line counts its containers and those with an alias that
/// matches some backend's pattern.
fn host_probe<E: fmt::Display>(
    subject: Subject,
    host: Result<&HostReading, E>,
    backends: &[Backend],
) -> Probe {
    let host = match host {
        Ok(host) => host,
        Err(e) => return Probe::fail(subject, e.to_string()),
    };
    let matching = host
        .containers
        .iter()
        .filter(|c| {
            c.aliases
                .iter()
                .any(|a| backends.iter().any(|b| b.matches(a)))
        })
        .count();
    Probe::ok(
        subject,
        format!(
            "{} cores, {} containers, {matching} matching a backend pattern",
            host.num_cores,
            host.containers.len()
        ),
    )
}

impl CheckReport {
    /// The report of `--config-only`: the config line alone.
    pub fn config_only(path: &Path, config: &Config) -> CheckReport {
        let names: Vec<&str> = config.backends.iter().map(|b| b.name.as_str()).collect();
        let detail = format!(
            "{} HAProxy socket(s), {} cAdvisor host(s), backends {}",
            config.haproxy.len(),
            config.cadvisor.len(),
            names.join(", ")
        );
        CheckReport {
            config: Probe::ok(Subject::Config(path.to_path_buf()), detail),
            probes: vec![],
        }
    }

    /// How many probes failed.
    pub fn problems(&self) -> usize {
        self.probes.iter().filter(|p| !p.ok).count()
    }

    /// 0 when every probe is ok, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        if self.problems() > 0 {
            1
        } else {
            0
        }
    }

    /// The lines `hatune check` prints: the config line, every probe, then `N problem(s)` when
    /// there are any.
    pub fn render(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.config)?;
        for p in &self.probes {
            writeln!(f, "{p}")?;
        }
        match self.problems() {
            0 => Ok(()),
            n => writeln!(f, "{n} problem(s)"),
        }
    }
}

impl Probe {
    fn ok(subject: Subject, detail: String) -> Probe {
        Probe {
            subject,
            ok: true,
            detail,
            table: vec![],
        }
    }

    fn fail(subject: Subject, detail: String) -> Probe {
        Probe {
            subject,
            ok: false,
            detail,
            table: vec![],
        }
    }
}

/// `ok   SUBJECT: DETAIL` or `FAIL SUBJECT: DETAIL`, on one line: what a peer sent is
/// [`printable`].
impl fmt::Display for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = if self.ok { "ok  " } else { "FAIL" };
        let subject = self.subject.to_string();
        write!(
            f,
            "{status} {}: {}",
            printable(&subject),
            printable(&self.detail)
        )?;
        for line in &self.table {
            write!(f, "\n       {}", printable(line))?;
        }
        Ok(())
    }
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subject::Config(path) => write!(f, "config {}", path.display()),
            Subject::Part { kind, name } => write!(f, "{kind} {name}"),
            Subject::Mapping(backend) => write!(f, "backend {backend}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::{Reason, ServerKey};
    use crate::sink::ServerView;
    use crate::source::{ContainerReading, HostError, NoReading};

    const SOCK: &str = "/run/haproxy/admin.sock";
    const HOST: &str = "http://10.0.0.11:8080";

    fn config() -> Config {
        Config::parse(&format!(
            r#"{{"haproxy": ["{SOCK}", "tcp://10.0.0.5:9999"],
                "cadvisor": ["{HOST}"],
                "backends": [{{"name": "app", "pattern": "app-"}},
                             {{"name": "api", "pattern": "api-"}}]}}"#
        ))
        .unwrap()
    }

    fn addr() -> Subject {
        part("HAProxy", SOCK)
    }

    fn at_host() -> Subject {
        part("cAdvisor", HOST)
    }

    /// A balancer at admin level with these backends and these (backend, server) servers.
    fn stat(backends: &[&str], servers: &[(&str, &str)]) -> Inventory {
        Inventory {
            access: "admin level".into(),
            backends: backends.iter().map(|name| name.to_string()).collect(),
            servers: servers
                .iter()
                .map(|(backend, server)| ServerView::new(ServerKey::new(*backend, *server), 100))
                .collect(),
        }
    }

    /// A host of 4 cores with one container per list of aliases.
    fn host(containers: &[&[&str]]) -> HostReading {
        HostReading {
            host: HOST.into(),
            name: "10.0.0.11".into(),
            addresses: vec!["10.0.0.11".parse().unwrap()],
            num_cores: 4,
            containers: containers
                .iter()
                .enumerate()
                .map(|(i, aliases)| ContainerReading {
                    name: format!("/docker/{i}"),
                    aliases: aliases.iter().map(|a| a.to_string()).collect(),
                    labels: Default::default(),
                    reading: Err(NoReading::TooFewSamples),
                })
                .collect(),
        }
    }

    #[test]
    fn haproxy_lines() {
        let app2 = [("app", "app-1"), ("app", "app-2")];
        let both = [("app", "app-1"), ("api", "api-1")];
        let cases: Vec<(&str, Result<Inventory, String>, &str)> = vec![
            (
                "both backends, with their servers",
                Ok(stat(&["app", "api"], &both)),
                "ok   HAProxy /run/haproxy/admin.sock: admin level; app (1 servers), api (1 servers)",
            ),
            (
                "a backend row without servers is present",
                Ok(stat(&["app", "api"], &app2)),
                "ok   HAProxy /run/haproxy/admin.sock: admin level; app (2 servers), api (0 servers)",
            ),
            (
                "servers without a backend row are present",
                Ok(stat(&[], &both)),
                "ok   HAProxy /run/haproxy/admin.sock: admin level; app (1 servers), api (1 servers)",
            ),
            (
                "one backend missing",
                Ok(stat(&["app", "other"], &app2)),
                "FAIL HAProxy /run/haproxy/admin.sock: no backend named `api`",
            ),
            (
                "both missing",
                Ok(stat(&[], &[])),
                "FAIL HAProxy /run/haproxy/admin.sock: no backend named `app`, `api`",
            ),
            (
                "the socket failed",
                Err("cannot connect to HAProxy at /run/haproxy/admin.sock: refused".into()),
                "FAIL HAProxy /run/haproxy/admin.sock: cannot connect to HAProxy at /run/haproxy/admin.sock: refused",
            ),
        ];
        let backends = config().backends;
        for (what, result, line) in cases {
            let probe = balancer_probe(addr(), result.as_ref(), &backends);
            assert_eq!(probe.to_string(), line, "{what}");
            assert_eq!(probe.ok, line.starts_with("ok "), "{what}");
        }
    }

    /// A reply with escape sequences and a newline stays on its own line, escaped.
    #[test]
    fn a_peers_control_characters_are_escaped() {
        let probe = balancer_probe(
            addr(),
            Err::<&Inventory, _>("said \x1b[31madmin\x1b[0m\nok   HAProxy forged"),
            &config().backends,
        );
        assert_eq!(
            probe.to_string(),
            "FAIL HAProxy /run/haproxy/admin.sock: said \\x1b[31madmin\\x1b[0m\\nok   HAProxy forged"
        );
    }

    #[test]
    fn a_tcp_socket_is_named_as_written() {
        let tcp = crate::sink::haproxy::Address::parse("tcp://10.0.0.5:9999").unwrap();
        let probe = balancer_probe(
            part("HAProxy", &tcp.to_string()),
            Err::<&Inventory, _>("timeout"),
            &config().backends,
        );
        assert_eq!(
            probe.to_string(),
            "FAIL HAProxy tcp://10.0.0.5:9999: timeout"
        );
    }

    #[test]
    fn cadvisor_lines() {
        let cases: Vec<(&str, Result<HostReading, HostError>, &str)> = vec![
            (
                "no containers",
                Ok(host(&[])),
                "ok   cAdvisor http://10.0.0.11:8080: 4 cores, 0 containers, 0 matching a backend pattern",
            ),
            (
                "each backend's pattern counts, others do not",
                Ok(host(&[&["app-1", "1d6e"], &["api-1"], &["db-1"], &["cadvisor"]])),
                "ok   cAdvisor http://10.0.0.11:8080: 4 cores, 4 containers, 2 matching a backend pattern",
            ),
            (
                "a container counts once however many aliases match",
                Ok(host(&[&["app-1", "api-1", "app-x"]])),
                "ok   cAdvisor http://10.0.0.11:8080: 4 cores, 1 containers, 1 matching a backend pattern",
            ),
            (
                "patterns match at the start only",
                Ok(host(&[&["my-app-1"], &["xapi-1"]])),
                "ok   cAdvisor http://10.0.0.11:8080: 4 cores, 2 containers, 0 matching a backend pattern",
            ),
            (
                "the host failed",
                Err(HostError::Unreachable("connection refused".into())),
                "FAIL cAdvisor http://10.0.0.11:8080: unreachable: connection refused",
            ),
        ];
        let backends = config().backends;
        for (what, result, line) in cases {
            let probe = host_probe(at_host(), result.as_ref(), &backends);
            assert_eq!(probe.to_string(), line, "{what}");
            assert_eq!(probe.ok, line.starts_with("ok "), "{what}");
        }
    }

    #[test]
    fn config_only_is_the_config_line_and_no_problem() {
        let report = CheckReport::config_only(Path::new("/etc/hatune/config.json"), &config());
        assert_eq!(
            report.render(),
            "ok   config /etc/hatune/config.json: 2 HAProxy socket(s), 1 cAdvisor host(s), backends app, api\n"
        );
        assert_eq!((report.problems(), report.exit_code()), (0, 0));
    }

    #[test]
    fn problems_are_counted_under_the_lines() {
        let config = config();
        let mut report = CheckReport::config_only(Path::new("c.json"), &config);
        report.probes = vec![
            balancer_probe(
                addr(),
                Ok::<_, &str>(&stat(&["app"], &[])),
                &config.backends,
            ),
            balancer_probe(addr(), Err::<&Inventory, _>("down"), &config.backends),
            host_probe(
                at_host(),
                Ok::<_, &str>(&host(&[&["app-1"]])),
                &config.backends,
            ),
            host_probe(
                at_host(),
                Err::<&HostReading, _>(HostError::Timeout(config.timeout)),
                &config.backends,
            ),
        ];
        assert_eq!((report.problems(), report.exit_code()), (3, 1));
        let text = report.render();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1 + 4 + 1, "{text}");
        assert!(lines[0].starts_with("ok   config c.json: "), "{text}");
        assert!(lines[1].starts_with("FAIL HAProxy "), "{text}");
        assert!(lines[2].starts_with("FAIL HAProxy "), "{text}");
        assert!(lines[3].starts_with("ok   cAdvisor "), "{text}");
        assert!(lines[4].starts_with("FAIL cAdvisor "), "{text}");
        assert_eq!(lines[5], "3 problem(s)");
        assert!(text.ends_with("3 problem(s)\n"));
    }

    #[test]
    fn all_ok_has_no_problem_line() {
        let config = config();
        let mut report = CheckReport::config_only(Path::new("c.json"), &config);
        report.probes = vec![balancer_probe(
            addr(),
            Ok::<_, &str>(&stat(&["app", "api"], &[])),
            &config.backends,
        )];
        assert_eq!(report.exit_code(), 0);
        assert!(!report.render().contains("problem"));
        assert_eq!(report.render().lines().count(), 2);
    }

    /// The mapping line of each backend and its table: what maps, then what does not on
    /// either side; a serving server without its container fails the check, a container left
    /// over does not, and servers are merged across balancers.
    #[test]
    fn mapping_lines_show_the_table_and_what_is_left() {
        let config = Config::parse(
            r#"{"haproxy": ["/a", "/b"], "cadvisor": ["http://10.0.0.11:8080"],
                "backends": [{"name": "web", "pattern": "web-", "match": "address"},
                             {"name": "app", "pattern": "app-"}]}"#,
        )
        .unwrap();
        let srv = |name: &str, addr: &str| ServerView {
            address: Some(addr.parse().unwrap()),
            ..ServerView::new(ServerKey::new("web", name), 100)
        };
        let mut drained = srv("srv3", "10.0.0.13:31003");
        drained.exclusion = Some(Reason::Maint);
        let a = Inventory {
            access: "admin level".into(),
            backends: vec!["web".into(), "app".into()],
            servers: vec![
                srv("srv1", "10.0.0.11:31001"),
                srv("srv2", "10.0.0.12:31002"),
                drained,
                ServerView::new(ServerKey::new("app", "app-1"), 100),
            ],
        };
        // The second balancer has one more server, that the first does not.
        let mut b = a.clone();
        b.servers.push(srv("srv4", "10.0.0.11:31004"));
        let host = host(&[&["web-aaaa"], &["app-1"], &["app-2"], &["db"]]);
        let probes = mapping_probes(&config.backends, &[&a, &b], &[&host], 0);
        let text: Vec<String> = probes.iter().map(|p| p.to_string()).collect();
        assert_eq!(
            text[0],
            "FAIL backend web: 0 of 3 serving servers mapped to a container, 0 container(s) left over\n       \
             server srv1: no data: container web-aaaa on http://10.0.0.11:8080 fits servers srv4 too\n       \
             server srv2: no data: no container found on a host at 10.0.0.12\n       \
             server srv4: no data: container web-aaaa on http://10.0.0.11:8080 fits servers srv1 too"
        );
        assert_eq!(
            text[1],
            "ok   backend app: 1 of 1 serving servers mapped to a container, 1 container(s) left over\n       \
             app-1 on http://10.0.0.11:8080 -> app-1 (no data: too few samples)\n       \
             container app-2 on http://10.0.0.11:8080: no server of that name"
        );
        assert!(!probes[0].ok && probes[1].ok);

        // With one balancer, srv1 is web-aaaa's alone.
        let probes = mapping_probes(&config.backends, &[&a], &[&host], 0);
        assert_eq!(
            probes[0].to_string(),
            "FAIL backend web: 1 of 2 serving servers mapped to a container, 0 container(s) left over\n       \
             web-aaaa on http://10.0.0.11:8080 -> srv1 (no data: too few samples)\n       \
             server srv2: no data: no container found on a host at 10.0.0.12"
        );
        // While a host is silent, srv2 may be there: listed, not a problem; srv1 and srv4
        // fit one container whatever the silent host holds: still one.
        let probes = mapping_probes(&config.backends, &[&a], &[&host], 1);
        assert!(probes[0].ok, "{}", probes[0]);
        assert!(probes[0].to_string().contains("(1 host(s) did not answer)"));
        let probes = mapping_probes(&config.backends, &[&a, &b], &[&host], 1);
        assert!(!probes[0].ok, "{}", probes[0]);

        // Each balancer resolved srv1 on its own: one name, two servers.
        let mut moved = a.clone();
        moved.servers[0].address = Some("10.0.0.12:31009".parse().unwrap());
        let probes = mapping_probes(&config.backends, &[&a, &moved], &[&host], 0);
        assert!(
            probes[0].to_string().contains(
                "server srv1: no data: the balancers hold it at different addresses: \
                 10.0.0.11:31001, 10.0.0.12:31009"
            ),
            "{}",
            probes[0]
        );
        assert!(!probes[0].ok);
    }
}
