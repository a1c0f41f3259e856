//! `hatune check`: the config line, then one `ok`/`FAIL` line per HAProxy socket (admin level,
//! every configured backend present) and per cAdvisor host (reachable, parsed), then how many
//! problems there were.
//!
//! The I/O is `probe`, the one place that talks to HAProxy and cAdvisor; everything that
//! turns what it found into lines is pure and table-tested below.

use std::fmt;
use std::path::{Path, PathBuf};

use futures::future::join_all;

use crate::config::{Backend, Config};
use crate::sink::haproxy::{self, Address, Stat};
use crate::source::cadvisor::{self, HostReading, Window};

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
    HAProxy(Address),
    CAdvisor(String),
}

/// Probes every HAProxy socket and every cAdvisor host of `config`, loaded from `path` (which
/// the config line names).
pub async fn check(path: &Path, config: &Config) -> CheckReport {
    CheckReport {
        probes: probe(config).await,
        ..CheckReport::config_only(path, config)
    }
}

/// The probes' I/O: the HAProxy sockets all at once (`check_admin`, then `show stat`), then
/// the cAdvisor hosts all at once, each bounded by the config's timeout.
async fn probe(config: &Config) -> Vec<Probe> {
    let sockets = join_all(config.haproxy.iter().map(|addr| async {
        let client = haproxy::Client::new(addr.clone(), config.timeout);
        client.check_admin().await?;
        client.show_stat().await
    }))
    .await;
    let window = config.window;
    let hosts = cadvisor::Client::new(config.timeout)
        .poll_all(&config.cadvisor, |_| Window::Span(window))
        .await;
    let sockets = config
        .haproxy
        .iter()
        .zip(sockets)
        .map(|(addr, stat)| haproxy_probe(addr, stat, &config.backends));
    let hosts = config
        .cadvisor
        .iter()
        .zip(hosts)
        .map(|(url, host)| cadvisor_probe(url, host, &config.backends));
    sockets.chain(hosts).collect()
}

/// A socket is ok when it answered at admin level and has every configured backend (as a
/// backend row or through its servers).
fn haproxy_probe<E: fmt::Display>(
    addr: &Address,
    stat: Result<Stat, E>,
    backends: &[Backend],
) -> Probe {
    let subject = Subject::HAProxy(addr.clone());
    let stat = match stat {
        Ok(stat) => stat,
        Err(e) => return Probe::fail(subject, e.to_string()),
    };
    let mut parts = vec![];
    let mut missing = vec![];
    for b in backends {
        let n = stat.servers.iter().filter(|s| s.backend == b.name).count();
        if stat.backends.iter().any(|x| x.name == b.name) || n > 0 {
            parts.push(format!("{} ({n} servers)", b.name));
        } else {
            missing.push(format!("`{}`", b.name));
        }
    }
    if missing.is_empty() {
        Probe::ok(subject, format!("admin level; {}", parts.join(", ")))
    } else {
        Probe::fail(subject, format!("no backend named {}", missing.join(", ")))
    }
}

/// A host is ok when it answered; the line counts its containers and those with an alias that
/// matches some backend's pattern.
fn cadvisor_probe<E: fmt::Display>(
    url: &str,
    host: Result<HostReading, E>,
    backends: &[Backend],
) -> Probe {
    let subject = Subject::CAdvisor(url.to_string());
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

/// `ok   SUBJECT: DETAIL` or `FAIL SUBJECT: DETAIL`.
impl fmt::Display for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = if self.ok { "ok  " } else { "FAIL" };
        write!(f, "{status} {}: {}", self.subject, self.detail)
    }
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subject::Config(path) => write!(f, "config {}", path.display()),
            Subject::HAProxy(addr) => write!(f, "HAProxy {addr}"),
            Subject::CAdvisor(url) => write!(f, "cAdvisor {url}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::haproxy::{BackendStat, ServerStat};
    use crate::source::cadvisor::{ContainerReading, HostError, NoReading};

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

    fn addr() -> Address {
        Address::parse(SOCK).unwrap()
    }

    /// `show stat` with these backend rows and these (backend, server) rows.
    fn stat(backends: &[&str], servers: &[(&str, &str)]) -> Stat {
        Stat {
            backends: backends
                .iter()
                .map(|name| BackendStat {
                    name: name.to_string(),
                    algo: Some("roundrobin".into()),
                })
                .collect(),
            servers: servers
                .iter()
                .map(|(backend, server)| ServerStat {
                    backend: backend.to_string(),
                    server: server.to_string(),
                    status: "UP".into(),
                    weight: 100,
                    uweight: Some(100),
                    backup: false,
                    throttle: None,
                    agent_status: String::new(),
                    sessions_total: None,
                    lb_total: None,
                })
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
        let cases: Vec<(&str, Result<Stat, String>, &str)> = vec![
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
            let probe = haproxy_probe(&addr(), result, &backends);
            assert_eq!(probe.to_string(), line, "{what}");
            assert_eq!(probe.ok, line.starts_with("ok "), "{what}");
        }
    }

    #[test]
    fn a_tcp_socket_is_named_as_written() {
        let tcp = Address::parse("tcp://10.0.0.5:9999").unwrap();
        let probe = haproxy_probe(&tcp, Err("timeout"), &config().backends);
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
            let probe = cadvisor_probe(HOST, result, &backends);
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
            haproxy_probe(
                &addr(),
                Ok::<_, &str>(stat(&["app"], &[])),
                &config.backends,
            ),
            haproxy_probe(&addr(), Err("down"), &config.backends),
            cadvisor_probe(HOST, Ok::<_, &str>(host(&[&["app-1"]])), &config.backends),
            cadvisor_probe(
                HOST,
                Err(HostError::Timeout(config.timeout)),
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
        report.probes = vec![haproxy_probe(
            &addr(),
            Ok::<_, &str>(stat(&["app", "api"], &[])),
            &config.backends,
        )];
        assert_eq!(report.exit_code(), 0);
        assert!(!report.render().contains("problem"));
        assert_eq!(report.render().lines().count(), 2);
    }
}
