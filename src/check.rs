//! `hatune check`: the health check of every sink and source. The config line, then one
//! `ok`/`FAIL` line per balancer (reachable at the access hatune needs, every configured
//! backend present) and per host (reachable, parsed), then how many problems there were.
//!
//! The I/O is `probe`, which asks each sink and source built from the config to probe itself
//! ([`Sink::probe`](crate::sink::Sink::probe), [`Source::probe`](crate::source::Source::probe));
//! everything that turns what they found into lines is pure and table-tested below.

use std::fmt;
use std::path::{Path, PathBuf};

use futures::future::join_all;

use crate::config::{Backend, Config};
use crate::report::printable;
use crate::sink::{self, Inventory};
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
    let balancers = sinks
        .iter()
        .zip(balancers)
        .map(|(s, found)| balancer_probe(part(s.kind(), s.name()), found, &config.backends));
    let hosts = sources.iter().zip(hosts).flat_map(|(s, polls)| {
        s.hosts()
            .iter()
            .zip(polls)
            .map(|(host, poll)| host_probe(part(s.kind(), host), poll, &config.backends))
            .collect::<Vec<_>>()
    });
    balancers.chain(hosts).collect()
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
    found: Result<Inventory, E>,
    backends: &[Backend],
) -> Probe {
    let found = match found {
        Ok(found) => found,
        Err(e) => return Probe::fail(subject, e.to_string()),
    };
    let mut parts = vec![];
    let mut missing = vec![];
    for b in backends {
        let n = found.servers.iter().filter(|s| s.backend == b.name).count();
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
    host: Result<HostReading, E>,
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
        }
    }

    fn fail(subject: Subject, detail: String) -> Probe {
        Probe {
            subject,
            ok: false,
            detail,
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
        )
    }
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subject::Config(path) => write!(f, "config {}", path.display()),
            Subject::Part { kind, name } => write!(f, "{kind} {name}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::ServerKey;
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
                .map(|(backend, server)| ServerKey::new(*backend, *server))
                .collect(),
        }
    }

    /// A host of 4 cores with one container per list of aliases.
    fn host(containers: &[&[&str]]) -> HostReading {
        HostReading {
            host: HOST.into(),
            num_cores: 4,
            containers: containers
                .iter()
                .enumerate()
                .map(|(i, aliases)| ContainerReading {
                    name: format!("/docker/{i}"),
                    aliases: aliases.iter().map(|a| a.to_string()).collect(),
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
            let probe = balancer_probe(addr(), result, &backends);
            assert_eq!(probe.to_string(), line, "{what}");
            assert_eq!(probe.ok, line.starts_with("ok "), "{what}");
        }
    }

    /// A reply with escape sequences and a newline stays on its own line, escaped.
    #[test]
    fn a_peers_control_characters_are_escaped() {
        let probe = balancer_probe(
            addr(),
            Err::<Inventory, _>("said \x1b[31madmin\x1b[0m\nok   HAProxy forged"),
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
            Err::<Inventory, _>("timeout"),
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
            let probe = host_probe(at_host(), result, &backends);
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
            balancer_probe(addr(), Ok::<_, &str>(stat(&["app"], &[])), &config.backends),
            balancer_probe(addr(), Err::<Inventory, _>("down"), &config.backends),
            host_probe(
                at_host(),
                Ok::<_, &str>(host(&[&["app-1"]])),
                &config.backends,
            ),
            host_probe(
                at_host(),
                Err::<HostReading, _>(HostError::Timeout(config.timeout)),
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
            Ok::<_, &str>(stat(&["app", "api"], &[])),
            &config.backends,
        )];
        assert_eq!(report.exit_code(), 0);
        assert!(!report.render().contains("problem"));
        assert_eq!(report.render().lines().count(), 2);
    }
}
