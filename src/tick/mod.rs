//! One tick: poll every source and read every sink at once, map containers to servers, decide
//! each backend, plan each sink's writes, apply them, report. Every mode runs this code:
//! `hatune once` on a fresh [`Tuner`], the daemon on one that lives from tick to tick.
//!
//! ```text
//! sources ─ poll ─┐
//!                 ├─► mapping ─► controller (+ history) ─► plan ─► sinks ─ apply ─► report
//! sinks ── read ──┘
//! ```
//!
//! The tick holds no state of its own: what lasts between ticks lives where it is learnt, in
//! the sources (windows, failing hosts), the sinks (reloads, hatune's weights, operators,
//! backoff) and the controller's [`History`]. Time is passed in.

use std::collections::{HashMap, HashSet};

use futures::future::join_all;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::config::{Backend, Config};
use crate::controller::{self, Decision, History, Input, Reason};
use crate::mapping;
use crate::peers::{Peers, Role};
use crate::report::{Action, BackendReport, HostStatus, ServerRow, SocketStatus, TickReport};
use crate::sink::{self, Outcome, ServerView, Sink, View, Write};
use crate::source::{self, HostPoll, HostReading, Source};
use crate::state;

mod once;
mod peers;

pub use once::once;

/// Everything hatune tunes with: where readings come from, where weights go, and what the
/// controller remembers from earlier ticks.
pub struct Tuner {
    sources: Vec<Box<dyn Source>>,
    sinks: Vec<Box<dyn Sink>>,
    history: History,
    /// How the sinks were built from the config, so a reloaded config builds new ones alike;
    /// `None` for sinks handed in by [`Tuner::new`].
    options: Option<sink::Options>,
    /// The peer group this tuner agrees its weights with (`peers`), when it joined one.
    peers: Option<Peers>,
}

impl Tuner {
    /// For `hatune once`: one tick over the config's `window`, nothing carried over.
    pub fn once(config: &Config, dry_run: bool) -> Tuner {
        Tuner::build(
            config,
            sink::Options {
                dry_run,
                follow_reloads: false,
            },
        )
    }

    /// For `hatune once --state`: a daemon's tick that [`restore`](Tuner::restore)s what the
    /// last run [`save`](Tuner::save)d, so each sink follows its balancer across reloads
    /// between runs.
    pub fn once_with_state(config: &Config, dry_run: bool) -> Tuner {
        Tuner::daemon(config, dry_run)
    }

    /// For the daemon: the first tick reads the config's `window`, later ones the time since
    /// the tick before; each sink follows its balancer across reloads.
    pub fn daemon(config: &Config, dry_run: bool) -> Tuner {
        Tuner::build(
            config,
            sink::Options {
                dry_run,
                follow_reloads: true,
            },
        )
    }

    fn build(config: &Config, options: sink::Options) -> Tuner {
        Tuner {
            sources: source::build(config),
            sinks: sink::build(config, options),
            history: History::default(),
            options: Some(options),
            peers: None,
        }
    }

    /// Sources and sinks of any kind (tests drive fakes this way).
    pub fn new(sources: Vec<Box<dyn Source>>, sinks: Vec<Box<dyn Sink>>) -> Tuner {
        Tuner {
            sources,
            sinks,
            history: History::default(),
            options: None,
            peers: None,
        }
    }

    /// Takes part in a peer group from now on: each tick leads or follows as the group says.
    pub fn join(&mut self, peers: Peers) {
        self.peers = Some(peers);
    }

    /// The peer group, when joined.
    pub fn peers(&self) -> Option<&Peers> {
        self.peers.as_ref()
    }

    /// Leaves the peer group, giving the post up (bounded by `peers.timeout`).
    pub async fn leave(&mut self) {
        if let Some(mut p) = self.peers.take() {
            p.stop().await;
        }
    }

    /// Takes a reloaded config (SIGHUP): sinks of balancers still listed keep what they know,
    /// new ones start afresh, removed ones are dropped; sources keep what they know of hosts
    /// still listed; backends no longer listed are forgotten.
    pub fn reconfigure(&mut self, config: &Config) {
        for source in &mut self.sources {
            source.reconfigure(config);
        }
        if let Some(options) = self.options {
            let mut old: HashMap<String, Box<dyn Sink>> = self
                .sinks
                .drain(..)
                .map(|s| (s.name().to_string(), s))
                .collect();
            self.sinks = sink::build(config, options)
                .into_iter()
                .map(|new| old.remove(new.name()).unwrap_or(new))
                .collect();
        }
        for sink in &mut self.sinks {
            sink.reconfigure(config);
        }
        let names: HashSet<&str> = config.backends.iter().map(|b| b.name.as_str()).collect();
        self.history.retain_backends(|b| names.contains(b));
    }

    /// What the sources, sinks and history learnt, for the next run, as of `now` (`wall`: the
    /// same moment by the system clock).
    pub fn save(&self, now: Instant, wall: std::time::SystemTime) -> state::Saved {
        let mut saved = state::Saved::new(wall);
        for source in &self.sources {
            if let Some(v) = source.save() {
                saved.sources.insert(source.kind().to_string(), v);
            }
        }
        for sink in &self.sinks {
            if let Some(v) = sink.save() {
                saved.sinks.insert(sink.name().to_string(), v);
            }
        }
        saved.history = serde_json::value::to_raw_value(&self.history.save(now)).ok();
        saved
    }

    /// Takes what a run [`save`](Tuner::save)d, for `config` (the one this tuner was built
    /// from): sources and sinks it still has take their part, backends it no longer has are
    /// forgotten; a part that cannot be read is dropped with a warning (that part starts
    /// afresh). Request counts older than three windows are dropped (capacity mode would
    /// divide the requests of the whole gap by the CPU of one window).
    pub fn restore(
        &mut self,
        config: &Config,
        saved: state::Saved,
        now: Instant,
        wall: std::time::SystemTime,
    ) {
        let age = saved.age(wall);
        let counters = age <= config.window.saturating_mul(3);
        let mut sources = saved.sources;
        for source in &mut self.sources {
            if let Some(v) = sources.remove(source.kind()) {
                if let Err(e) = source.restore(&v, age) {
                    warn!(source = source.kind(), error = %e, "state file: the source's part is unreadable; it starts afresh");
                }
            }
        }
        let mut sinks = saved.sinks;
        for sink in &mut self.sinks {
            if let Some(v) = sinks.remove(sink.name()) {
                if let Err(e) = sink.restore(&v) {
                    warn!(socket = sink.name(), error = %e, "state file: the socket's part is unreadable; it starts afresh");
                }
            }
        }
        if let Some(history) = saved.history {
            match serde_json::from_str(history.get()) {
                Ok(h) => self.history = History::restore(h, now, age, counters),
                Err(e) => {
                    warn!(error = %e, "state file: the controller's history is unreadable; it starts afresh")
                }
            }
        }
        let names: HashSet<&str> = config.backends.iter().map(|b| b.name.as_str()).collect();
        self.history.retain_backends(|b| names.contains(b));
        debug!(age_ms = age.as_millis() as u64, "state restored");
    }

    /// Hands every server an operator took over back to hatune at its current weight
    /// (SIGHUP). Returns how many there were.
    pub fn resume_all(&mut self) -> usize {
        self.sinks.iter_mut().map(|s| s.resume_all()).sum()
    }

    /// Servers currently left alone because someone else changed their weight.
    pub fn overridden(&self) -> usize {
        self.sinks.iter().map(|s| s.overridden()).sum()
    }

    /// Runs one tick of `config`'s backends at `now`. Never fails as a whole: what went wrong
    /// is in the report. In a peer group, the leader decides from the published set and
    /// publishes the next one; a follower reads no source and applies the published set;
    /// both then bring their own balancers to the set.
    pub async fn tick(&mut self, config: &Config, now: Instant) -> TickReport {
        let backends = config.backends.as_slice();
        let role = self.peers.as_ref().map(|p| p.role(now));
        if let (Some(Role::Standalone), Some(p)) = (role, &self.peers) {
            p.went_alone();
        }
        let follows = role == Some(Role::Follower);
        let Tuner {
            sources,
            sinks,
            history,
            peers,
            ..
        } = self;
        let dry_run = sinks.iter().any(|s| s.dry_run());
        let (polls, reads) = tokio::join!(
            async {
                match follows {
                    true => vec![],
                    false => join_all(sources.iter_mut().map(|s| s.poll())).await,
                }
            },
            join_all(sinks.iter_mut().map(|s| s.read(backends, now))),
        );

        let mut hosts = vec![];
        let mut readings: Vec<&HostReading> = vec![];
        for (source, polls) in sources.iter().zip(&polls) {
            for (url, poll) in source.hosts().iter().zip(polls) {
                hosts.push(host_status(url, poll));
                readings.extend(poll.as_ref().ok());
            }
        }
        let mut sockets = socket_statuses(sinks, &reads);
        let views: Vec<Option<&View>> = reads.iter().map(|r| r.as_ref().ok()).collect();
        let mut names: Vec<String> = sinks.iter().map(|s| s.name().to_string()).collect();
        if views.iter().all(Option::is_none) {
            history.balancers(names);
            let error = || Some("no HAProxy socket could be read".to_string());
            return TickReport {
                dry_run,
                backends: backends.iter().map(|b| empty(b, error())).collect(),
                hosts,
                sockets,
            };
        }

        let (mut reports, published, decisions) = match (role, peers.as_ref()) {
            (Some(Role::Leader { fence }), Some(p)) => {
                let latest = p.current();
                let overlaid = latest.as_ref().map(|l| l.set.overlay(&views));
                let decide_from: Vec<Option<&View>> = match &overlaid {
                    Some(o) => o.iter().map(Option::as_ref).collect(),
                    None => views.clone(),
                };
                let remote = peers::remote_counters(p, backends).await;
                names.extend(remote.iter().map(|(name, _)| format!("peer {name}")));
                history.balancers(names);
                let counters: Vec<_> = remote.iter().map(|(_, r)| &r.requests).collect();
                let (mut reports, decisions) =
                    decide(backends, &decide_from, &readings, &counters, history, now);
                let published = peers::publish(p, fence, latest, &decisions, &mut reports).await;
                (reports, published, vec![])
            }
            (Some(Role::Follower), Some(p)) => {
                history.balancers(names);
                let latest = p.current();
                (
                    peers::follow(backends, &views, latest.as_ref()),
                    latest,
                    vec![],
                )
            }
            _ => {
                history.balancers(names);
                let (reports, decisions) = decide(backends, &views, &readings, &[], history, now);
                (reports, None, decisions)
            }
        };
        let decisions = match &published {
            Some(p) => p.set.decisions(backends),
            None => decisions,
        };
        apply(sinks, &views, &decisions, &mut sockets, &mut reports).await;
        log_changes(&reports, dry_run);
        if let (Some(p), false) = (peers.as_ref(), dry_run) {
            peers::applied(p, published.as_ref(), &views, &sockets, now).await;
        }
        TickReport {
            dry_run,
            backends: reports,
            hosts,
            sockets,
        }
    }

    /// Applies a set published since the last one applied here, at once (the daemon calls this
    /// when its watch sees one): reads the balancers, brings them to the set, records it. None
    /// when there is nothing newer to apply.
    pub async fn apply_published(&mut self, config: &Config, now: Instant) -> Option<TickReport> {
        let backends = config.backends.as_slice();
        let Tuner { sinks, peers, .. } = self;
        let p = peers.as_ref()?;
        let published = p.current().filter(|l| l.revision > p.applied())?;
        let dry_run = sinks.iter().any(|s| s.dry_run());
        let reads = join_all(sinks.iter_mut().map(|s| s.read(backends, now))).await;
        let mut sockets = socket_statuses(sinks, &reads);
        let views: Vec<Option<&View>> = reads.iter().map(|r| r.as_ref().ok()).collect();
        let mut reports = peers::follow(backends, &views, Some(&published));
        apply(
            sinks,
            &views,
            &published.set.decisions(backends),
            &mut sockets,
            &mut reports,
        )
        .await;
        log_changes(&reports, dry_run);
        if !dry_run {
            peers::applied(p, Some(&published), &views, &sockets, now).await;
        }
        Some(TickReport {
            dry_run,
            backends: reports,
            hosts: vec![],
            sockets,
        })
    }
}

/// Each sink's status after its read.
fn socket_statuses(sinks: &[Box<dyn Sink>], reads: &[Result<View, String>]) -> Vec<SocketStatus> {
    sinks
        .iter()
        .zip(reads)
        .map(|(s, read)| SocketStatus {
            address: s.name().to_string(),
            error: read.as_ref().err().cloned(),
            applied: 0,
            refused: 0,
            reloaded: read.as_ref().is_ok_and(|v| v.reloaded),
            restored: 0,
        })
        .collect()
}

/// Plans each readable sink's writes from `decisions`, applies them, and records what became
/// of them.
async fn apply(
    sinks: &mut [Box<dyn Sink>],
    views: &[Option<&View>],
    decisions: &[(&str, Vec<Decision>)],
    sockets: &mut [SocketStatus],
    reports: &mut [BackendReport],
) {
    let plans: Vec<Vec<Write>> = views
        .iter()
        .map(|v| v.map(|v| sink::plan(v, decisions)).unwrap_or_default())
        .collect();
    let outcomes = join_all(sinks.iter_mut().zip(&plans).map(|(s, w)| s.apply(w))).await;
    for ((status, writes), outcome) in sockets.iter_mut().zip(&plans).zip(outcomes) {
        record(status, writes, outcome, reports);
    }
}

fn log_changes(reports: &[BackendReport], dry_run: bool) {
    for b in reports {
        for row in b.servers.iter().filter(|r| r.action == Action::Set) {
            let cpu = row.cpu.map(percent);
            if dry_run {
                debug!(backend = %b.name, server = %row.server, cpu, old = row.current, new = row.proposed, "would set weight");
            } else if row.errors.is_empty() {
                info!(backend = %b.name, server = %row.server, cpu, old = row.current, new = row.proposed, "weight changed");
            }
        }
    }
}

/// Request counters by backend and server, of one balancer.
type Counters<'a> = HashMap<(&'a str, &'a str), Option<u64>>;

/// Every backend's servers across the views read, mapped to their containers and decided,
/// with the report rows. Servers that someone else weighted on every balancer where they
/// serve are left to them.
fn decide<'c>(
    backends: &'c [Backend],
    views: &[Option<&View>],
    readings: &[&HostReading],
    remote: &[&peers::Requests],
    history: &mut History,
    now: Instant,
) -> (Vec<BackendReport>, Vec<(&'c str, Vec<Decision>)>) {
    let read: Vec<&View> = views.iter().flatten().copied().collect();
    let grouped: Vec<_> = read.iter().map(|v| sink::by_backend(v)).collect();
    // Per balancer (by its index among the sinks, then the peers' instances), each server's
    // request counter, when counted.
    let mut indexed: Vec<Option<Counters>> = views
        .iter()
        .map(|v| {
            v.map(|v| {
                v.servers
                    .iter()
                    .map(|s| ((s.key.backend.as_str(), s.key.server.as_str()), s.requests))
                    .collect()
            })
        })
        .collect();
    indexed.extend(remote.iter().map(|r| Some(peers::counters(r))));
    // A server missing from an unreadable balancer has not left: nothing is forgotten then.
    let every_balancer_read = views.iter().all(Option::is_some);
    // A balancer that was reloaded ran its config's weights for part of this window: readings
    // over it do not answer for the weights hatune restores, so nothing moves by them.
    let spans_reload = read.iter().any(|v| v.reloaded);
    let patterns: Vec<&regex::Regex> = backends.iter().map(|b| &b.pattern).collect();
    let aliases = mapping::index_aliases(&patterns, readings);

    let mut reports = vec![];
    let mut decisions = vec![];
    for (backend, aliases) in backends.iter().zip(&aliases) {
        let merged = sink::merge(&backend.name, &grouped);
        if merged.is_empty() {
            let known = read.iter().any(|v| v.backends.contains(&backend.name));
            let error = if known {
                "backend has no servers"
            } else {
                "no such backend in HAProxy"
            };
            warn!(backend = %backend.name, "{error}");
            reports.push(empty(backend, Some(error.into())));
            continue;
        }
        let servers: Vec<&ServerView> = merged.iter().map(|(s, _)| *s).collect();
        let mut mapped = mapping::map_backend_indexed(
            &backend.pattern,
            &backend.matching,
            &servers,
            readings,
            aliases,
        );
        if backend.matching.by_address() {
            let differing = sink::differing_addresses(&backend.name, &grouped);
            mapping::distrust_differing(&mut mapped, &differing);
        }
        for (m, (_, overridden)) in mapped.servers.iter_mut().zip(&merged) {
            if let Some(expected) = *overridden {
                if !matches!(m.input.input, Input::Excluded(_)) {
                    m.input.input = Input::Excluded(Reason::Overridden { expected });
                }
            }
            if spans_reload && matches!(m.input.input, Input::Measured(_)) {
                m.input.input = Input::NoData(Reason::SpansReload);
            }
            if let Input::NoData(why) = &m.input.input {
                debug!(backend = %backend.name, server = %m.input.name, reason = %why, "server has no data this tick");
            }
        }
        let served: Vec<_> = mapped
            .servers
            .iter()
            .map(|m| requests_served(&backend.name, &m.input.name, &indexed))
            .collect();
        history.update(
            &backend.name,
            &backend.controller,
            now,
            &served,
            every_balancer_read,
            mapped.servers.iter_mut().map(|m| &mut m.input),
        );
        let inputs: Vec<_> = mapped.servers.iter().map(|m| m.input.clone()).collect();
        let decided = controller::decide(&inputs, &backend.controller);
        let rows = mapped
            .servers
            .iter()
            .zip(&decided)
            .map(|(m, d)| ServerRow {
                server: d.name.clone(),
                host: m.host.clone(),
                container: m.container.clone(),
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
        reports.push(BackendReport {
            name: backend.name.clone(),
            error: None,
            servers: rows,
            unmatched_containers: mapped.unmatched_containers,
        });
        decisions.push((backend.name.as_str(), decided));
    }
    (reports, decisions)
}

/// Requests served by one server, summed over every balancer read this tick, with the
/// indexes of the balancers that reported it; `None` when one of them does not count them.
fn requests_served(
    backend: &str,
    server: &str,
    indexed: &[Option<Counters>],
) -> Option<controller::history::Served> {
    let mut total: u64 = 0;
    let mut from = vec![];
    for (i, index) in indexed.iter().enumerate() {
        let Some(requests) = index.as_ref().and_then(|x| x.get(&(backend, server))) else {
            continue;
        };
        total = total.saturating_add((*requests)?);
        from.push(i);
    }
    (!from.is_empty()).then_some((total, from))
}

/// What one sink did with its writes, into its status and the servers' rows.
fn record(
    status: &mut SocketStatus,
    writes: &[Write],
    outcome: Result<Vec<Outcome>, String>,
    reports: &mut [BackendReport],
) {
    let socket = status.address.clone();
    match outcome {
        Err(e) => {
            warn!(socket = %socket, error = %e, "weights not applied");
            for w in writes {
                if let Some(row) = row_mut(reports, w) {
                    row.errors.push(format!("{socket}: {e}"));
                }
            }
            status.error = Some(e);
        }
        Ok(outcomes) => {
            for (w, outcome) in writes.iter().zip(outcomes) {
                match outcome {
                    Outcome::Applied => {
                        status.applied += usize::from(w.decided);
                        status.restored += usize::from(w.restores);
                    }
                    Outcome::Recorded => status.restored += usize::from(w.restores),
                    Outcome::Refused(msg) => {
                        status.refused += 1;
                        warn!(
                            socket = %socket,
                            backend = %w.key.backend,
                            server = %w.key.server,
                            weight = w.weight,
                            error = %msg,
                            "HAProxy refused the weight"
                        );
                        if let Some(row) = row_mut(reports, w) {
                            row.errors.push(format!("{socket}: {msg}"));
                        }
                    }
                }
            }
        }
    }
    if status.reloaded {
        info!(socket = %socket, restored = status.restored, "weights re-applied after the reload");
    }
}

fn empty(backend: &Backend, error: Option<String>) -> BackendReport {
    BackendReport {
        name: backend.name.clone(),
        error,
        servers: vec![],
        unmatched_containers: vec![],
    }
}

fn host_status(url: &str, poll: &HostPoll) -> HostStatus {
    match poll {
        Ok(h) => HostStatus {
            url: url.to_string(),
            containers: Some(h.containers.len()),
            error: None,
            kind: None,
        },
        Err(e) => HostStatus {
            url: url.to_string(),
            containers: None,
            error: Some(e.to_string()),
            kind: Some(e.kind().to_string()),
        },
    }
}

fn percent(share: f64) -> f64 {
    (share * 1000.0).round() / 10.0
}

fn row_mut<'a>(reports: &'a mut [BackendReport], write: &Write) -> Option<&'a mut ServerRow> {
    reports
        .iter_mut()
        .find(|b| b.name == write.key.backend)?
        .servers
        .iter_mut()
        .find(|r| r.server == write.key.server)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Capacity mode in a peer group: the requests a server served are summed over this
    /// instance's balancers and the other instances' records, each counted by its index.
    #[test]
    fn requests_are_summed_over_local_balancers_and_peers() {
        let local: Counters = [(("app", "a"), Some(10)), (("app", "b"), None)].into();
        let mut remote = peers::Requests::new();
        remote
            .entry("app".into())
            .or_default()
            .insert("a".into(), 5);
        remote
            .entry("app".into())
            .or_default()
            .insert("b".into(), 7);
        let indexed = vec![Some(local), None, Some(peers::counters(&remote))];
        assert_eq!(
            requests_served("app", "a", &indexed),
            Some((15, vec![0, 2]))
        );
        // One balancer that does not count a server makes its sum unknown.
        assert_eq!(requests_served("app", "b", &indexed), None);
        assert_eq!(requests_served("app", "c", &indexed), None);
    }
}
