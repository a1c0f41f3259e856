//! One tick: poll every cAdvisor host and read every HAProxy socket at once, decide each
//! backend, apply the same weights to every socket. Every mode (once, dry-run, the daemon)
//! runs this code.

use std::collections::HashMap;

use futures::future::join_all;
use tracing::{info, warn};

use crate::cadvisor::{self, HostReading, Window};
use crate::config::Config;
use crate::controller::{self, Decision, Input, Reason};
use crate::haproxy::{self, ServerStat, Stat, WeightChange};
use crate::mapping::{self, exclusion};
use crate::report::{Action, BackendReport, HostStatus, ServerRow, SocketStatus, TickReport};

/// Runs one tick. `window` gives the CPU window per cAdvisor host. Nothing is written when
/// `dry_run`. Never fails as a whole: what went wrong is in the report.
pub async fn run(
    config: &Config,
    sources: &cadvisor::Client,
    window: impl Fn(&str) -> Window,
    dry_run: bool,
) -> TickReport {
    let sockets: Vec<haproxy::Client> = config
        .haproxy
        .iter()
        .map(|a| haproxy::Client::new(a.clone(), config.timeout))
        .collect();

    let (stats, polls) = tokio::join!(
        join_all(sockets.iter().map(|s| s.show_stat())),
        sources.poll_all(&config.cadvisor, window)
    );

    let hosts: Vec<HostStatus> = config
        .cadvisor
        .iter()
        .zip(&polls)
        .map(|(url, poll)| match poll {
            Ok(h) => HostStatus {
                url: url.clone(),
                containers: Some(h.containers.len()),
                error: None,
            },
            Err(e) => {
                warn!(host = %url, reason = %e, "cAdvisor host skipped");
                HostStatus {
                    url: url.clone(),
                    containers: None,
                    error: Some(e.to_string()),
                }
            }
        })
        .collect();
    let readings: Vec<&HostReading> = polls.iter().filter_map(|p| p.as_ref().ok()).collect();

    let mut socket_status: Vec<SocketStatus> = sockets
        .iter()
        .zip(&stats)
        .map(|(s, st)| SocketStatus {
            address: s.address().to_string(),
            error: st.as_ref().err().map(|e| e.to_string()),
            applied: 0,
            refused: 0,
        })
        .collect();
    for (s, st) in sockets.iter().zip(&stats) {
        if let Err(e) = st {
            warn!(socket = %s.address(), error = %e, "HAProxy socket unreadable");
        }
    }

    // The first socket that answered is the reference for current weights and states.
    let Some(reference) = stats.iter().find_map(|s| s.as_ref().ok()) else {
        return TickReport {
            dry_run,
            backends: config
                .backends
                .iter()
                .map(|b| BackendReport {
                    name: b.name.clone(),
                    error: Some("no HAProxy socket could be read".into()),
                    servers: vec![],
                    unmatched_containers: vec![],
                })
                .collect(),
            hosts,
            sockets: socket_status,
        };
    };

    let mut backends = vec![];
    let mut decisions: Vec<(&str, Vec<Decision>)> = vec![];
    for backend in &config.backends {
        let servers: Vec<&ServerStat> = reference
            .servers
            .iter()
            .filter(|s| s.backend == backend.name)
            .collect();
        if servers.is_empty() {
            let known = reference.backends.iter().any(|b| b.name == backend.name);
            let error = if known {
                "backend has no servers"
            } else {
                "no such backend in HAProxy"
            };
            warn!(backend = %backend.name, "{error}");
            backends.push(BackendReport {
                name: backend.name.clone(),
                error: Some(error.into()),
                servers: vec![],
                unmatched_containers: vec![],
            });
            continue;
        }
        let mapped = mapping::map_backend(backend, &servers, &readings);
        let inputs: Vec<_> = mapped.servers.iter().map(|m| m.input.clone()).collect();
        let decided = controller::decide(&inputs, &backend.controller);
        let rows = mapped
            .servers
            .iter()
            .zip(&decided)
            .map(|(m, d)| ServerRow {
                server: d.name.clone(),
                host: m.host.clone(),
                cpu: m.cpu,
                current: d.current,
                proposed: d.proposed,
                action: match (&m.input.input, d.set) {
                    (_, true) => Action::Set,
                    (Input::Excluded(_), false) => Action::Skip,
                    _ => Action::Keep,
                },
                reason: d.reason.as_ref().map(Reason::to_string),
                errors: vec![],
            })
            .collect();
        backends.push(BackendReport {
            name: backend.name.clone(),
            error: None,
            servers: rows,
            unmatched_containers: mapped.unmatched_containers,
        });
        decisions.push((backend.name.as_str(), decided));
    }

    if !dry_run {
        let plans: Vec<Vec<WeightChange>> = stats
            .iter()
            .map(|st| match st {
                Ok(stat) => plan(stat, &decisions),
                Err(_) => vec![],
            })
            .collect();
        let outcomes = join_all(sockets.iter().zip(&plans).map(|(s, changes)| async move {
            if changes.is_empty() {
                Ok(vec![])
            } else {
                s.set_weights(changes).await
            }
        }))
        .await;
        for (((socket, status), changes), outcome) in sockets
            .iter()
            .zip(&mut socket_status)
            .zip(&plans)
            .zip(outcomes)
        {
            match outcome {
                Err(e) => {
                    warn!(socket = %socket.address(), error = %e, "weights not applied");
                    status.error = Some(e.to_string());
                }
                Ok(results) => {
                    for (change, result) in changes.iter().zip(results) {
                        match result {
                            Ok(()) => status.applied += 1,
                            Err(msg) => {
                                status.refused += 1;
                                warn!(
                                    socket = %socket.address(),
                                    backend = %change.backend,
                                    server = %change.server,
                                    weight = change.weight,
                                    error = %msg,
                                    "HAProxy refused the weight"
                                );
                                if let Some(row) = row_mut(&mut backends, change) {
                                    row.errors.push(format!("{}: {msg}", socket.address()));
                                }
                            }
                        }
                    }
                }
            }
        }
        for b in &backends {
            for row in b.servers.iter().filter(|r| r.action == Action::Set) {
                if row.errors.is_empty() {
                    info!(
                        backend = %b.name,
                        server = %row.server,
                        cpu = row.cpu.map(|c| (c * 1000.0).round() / 10.0),
                        old = row.current,
                        new = row.proposed,
                        "weight changed"
                    );
                }
            }
        }
    }

    TickReport {
        dry_run,
        backends,
        hosts,
        sockets: socket_status,
    }
}

/// The weights one socket needs so that it agrees with the decisions: every tuned server whose
/// user weight there differs, unless that socket's own state excludes it (an operator drained
/// it on that instance).
fn plan(stat: &Stat, decisions: &[(&str, Vec<Decision>)]) -> Vec<WeightChange> {
    let here: HashMap<(&str, &str), &ServerStat> = stat
        .servers
        .iter()
        .map(|s| ((s.backend.as_str(), s.server.as_str()), s))
        .collect();
    let mut changes = vec![];
    for (backend, list) in decisions {
        for d in list {
            let tuned = d.set || d.reason == Some(Reason::WithinDeadband);
            if !tuned {
                continue;
            }
            let Some(server) = here.get(&(*backend, d.name.as_str())) else {
                continue;
            };
            if exclusion(server).is_some() || server.user_weight() == d.proposed {
                continue;
            }
            changes.push(WeightChange {
                backend: backend.to_string(),
                server: d.name.clone(),
                weight: d.proposed,
            });
        }
    }
    changes
}

fn row_mut<'a>(
    backends: &'a mut [BackendReport],
    change: &WeightChange,
) -> Option<&'a mut ServerRow> {
    backends
        .iter_mut()
        .find(|b| b.name == change.backend)?
        .servers
        .iter_mut()
        .find(|r| r.server == change.server)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat(backend: &str, server: &str, status: &str, w: u32) -> ServerStat {
        ServerStat {
            backend: backend.into(),
            server: server.into(),
            status: status.into(),
            weight: w,
            uweight: Some(w),
            backup: false,
            throttle: None,
            agent_status: String::new(),
            sessions_total: None,
            lb_total: None,
        }
    }

    fn decision(
        name: &str,
        current: u32,
        proposed: u32,
        set: bool,
        reason: Option<Reason>,
    ) -> Decision {
        Decision {
            name: name.into(),
            current,
            proposed,
            set,
            reason,
        }
    }

    /// A second HAProxy gets the same weights, except where its own operator drained a server.
    #[test]
    fn every_socket_is_brought_to_the_same_weights() {
        let decisions = vec![(
            "app",
            vec![
                decision("a", 100, 256, true, None),
                decision("b", 128, 128, false, Some(Reason::WithinDeadband)),
                decision("c", 100, 100, false, Some(Reason::Maint)),
                decision("d", 50, 100, true, Some(Reason::NoContainer)),
                decision("e", 60, 60, false, Some(Reason::NoServerHasData)),
            ],
        )];
        let primary = Stat {
            backends: vec![],
            servers: vec![
                stat("app", "a", "UP", 100),
                stat("app", "b", "UP", 128),
                stat("app", "c", "MAINT", 100),
                stat("app", "d", "UP", 50),
                stat("app", "e", "UP", 60),
            ],
        };
        let secondary = Stat {
            backends: vec![],
            servers: vec![
                stat("app", "a", "DRAIN", 100),
                stat("app", "b", "UP", 100),
                stat("app", "c", "UP", 100),
                stat("app", "d", "UP", 50),
                stat("app", "e", "UP", 10),
            ],
        };
        let w = |plan: Vec<WeightChange>| -> Vec<(String, u32)> {
            plan.into_iter().map(|c| (c.server, c.weight)).collect()
        };
        assert_eq!(
            w(plan(&primary, &decisions)),
            vec![("a".into(), 256), ("d".into(), 100)]
        );
        assert_eq!(
            w(plan(&secondary, &decisions)),
            vec![("b".into(), 128), ("d".into(), 100)]
        );
    }
}
