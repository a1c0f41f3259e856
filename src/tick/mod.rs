//! One tick: poll every cAdvisor host and read every HAProxy socket at once, decide each
//! backend, apply the same weights to every socket. Every mode (once, dry-run, the daemon)
//! runs this code; the daemon passes a [`Memory`] that lives from tick to tick.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use futures::future::join_all;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::controller::{self, Decision, Input, Reason};
use crate::mapping::{self, exclusion};
use crate::report::{Action, BackendReport, HostStatus, ServerRow, SocketStatus, TickReport};
use crate::sink::haproxy::{self, Address, Info, ServerStat, Stat, WeightChange};
use crate::source::cadvisor::{self, HostReading, Nanos, Window};

/// Backoff for an unreachable socket: 1 s, 2 s, 4 s, ... up to this.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

type Key = (String, String);

/// What a tick remembers for the next one.
///
/// One-shot mode uses a fresh `Memory::one_shot` per run: the CPU window is the configured
/// span and nothing is remembered. The daemon keeps one `Memory::daemon`: the window is the
/// time since the previous tick's newest sample, and per HAProxy socket it remembers the
/// weights it set (to notice a reload and operators' changes) and its backoff.
#[derive(Debug)]
pub struct Memory {
    span: Duration,
    remember: bool,
    /// Newest sample per cAdvisor host seen last tick.
    newest: HashMap<String, Nanos>,
    sockets: HashMap<Address, SocketMemory>,
    /// Per server of a tuned backend (daemon only): what the controller's guards and capacity
    /// mode need from earlier ticks.
    servers: HashMap<Key, ServerMemory>,
    /// Backends seen at least once: a server not seen before in one of them is new.
    backends_seen: HashSet<String>,
    /// cAdvisor hosts failing since an earlier tick, with the kind of failure.
    failing_hosts: HashMap<String, &'static str>,
    /// The sockets of the last tick: request counters are summed over them, so a different
    /// list (a reloaded config) makes the sums incomparable.
    haproxy: Vec<Address>,
}

/// Fewer requests than this over a window give no capacity estimate (too coarse).
const MIN_REQUESTS_FOR_CAPACITY: u64 = 20;

#[derive(Debug, Default, Clone, PartialEq)]
struct ServerMemory {
    /// Requests served (`stot`, else `lbtot`) summed over the sockets read, and which sockets
    /// (by index in the config): a different set of sockets makes the sums incomparable.
    requests: Option<(u64, Vec<usize>)>,
    /// Capacity mode: the filtered requests-per-utilisation estimate.
    capacity: Option<f64>,
    /// Since when the server has had no reading.
    outage_since: Option<Instant>,
    /// Out of service (DRAIN, MAINT, DOWN, ...) at the last tick.
    excluded: bool,
}

#[derive(Debug, Default)]
struct SocketMemory {
    /// Pid and start time from `show info`: a change means HAProxy was reloaded.
    identity: Option<(u32, Option<u64>)>,
    /// The weight hatune last set on each server, or the one it first saw: another weight at
    /// the next read means someone else changed it.
    expected: HashMap<Key, u32>,
    /// Only the weights hatune itself wrote (and HAProxy accepted): what a reload restores.
    set_by_hatune: HashMap<Key, u32>,
    /// Weights sent on a connection that failed before every reply was read: HAProxy may or
    /// may not hold them. Either they or `expected` are hatune's at the next read.
    pending: HashMap<Key, u32>,
    /// Servers handed back by SIGHUP: their weight at the next read becomes hatune's own.
    adopt: HashSet<Key>,
    /// Servers whose weight someone else changed: left alone until resumed.
    overridden: HashSet<Key>,
    failures: u32,
    retry_at: Option<Instant>,
}

impl SocketMemory {
    /// HAProxy holds `weight`, written by hatune.
    fn accept(&mut self, key: Key, weight: u32) {
        self.expected.insert(key.clone(), weight);
        self.set_by_hatune.insert(key, weight);
    }
}

impl Memory {
    /// For `hatune once`: the window is `span`, nothing carries over.
    pub fn one_shot(span: Duration) -> Memory {
        Memory {
            span,
            remember: false,
            newest: HashMap::new(),
            sockets: HashMap::new(),
            servers: HashMap::new(),
            backends_seen: HashSet::new(),
            failing_hosts: HashMap::new(),
            haproxy: vec![],
        }
    }

    /// For the daemon: the first tick uses `span`, later ones the time since the last tick.
    pub fn daemon(span: Duration) -> Memory {
        Memory {
            remember: true,
            ..Memory::one_shot(span)
        }
    }

    /// Sets the one-shot span (the config's `window`, after a reload of the config).
    pub fn set_span(&mut self, span: Duration) {
        self.span = span;
    }

    /// Hands every server an operator took over back to hatune, at its current weight
    /// (SIGHUP). Returns how many there were.
    pub fn resume_all(&mut self) -> usize {
        let mut n = 0;
        for socket in self.sockets.values_mut() {
            n += socket.overridden.len();
            // The current weight becomes hatune's own at the next read.
            let handed_back: Vec<Key> = socket.overridden.drain().collect();
            socket.adopt.extend(handed_back);
        }
        n
    }

    /// Forgets what belonged to backends the config no longer has (after SIGHUP), so a
    /// backend added back later starts afresh.
    pub fn forget_removed(&mut self, config: &Config) {
        let names: HashSet<&str> = config.backends.iter().map(|b| b.name.as_str()).collect();
        self.servers.retain(|k, _| names.contains(k.0.as_str()));
        self.backends_seen.retain(|b| names.contains(b.as_str()));
        self.sockets.retain(|a, _| config.haproxy.contains(a));
        self.newest.retain(|h, _| config.cadvisor.contains(h));
        self.failing_hosts
            .retain(|h, _| config.cadvisor.contains(h));
    }

    /// Servers currently left alone because someone else changed their weight.
    pub fn overridden(&self) -> usize {
        self.sockets.values().map(|s| s.overridden.len()).sum()
    }

    fn window(&self, host: &str) -> Window {
        match self.newest.get(host) {
            Some(&t) if self.remember => Window::Since(t),
            _ => Window::Span(self.span),
        }
    }
}

/// Runs one tick. Nothing is written when `dry_run`. Never fails as a whole: what went wrong
/// is in the report.
pub async fn run(
    config: &Config,
    sources: &cadvisor::Client,
    memory: &mut Memory,
    dry_run: bool,
) -> TickReport {
    let now = Instant::now();
    let sockets: Vec<haproxy::Client> = config
        .haproxy
        .iter()
        .map(|a| haproxy::Client::new(a.clone(), config.timeout))
        .collect();
    let remember = memory.remember;
    let backing_off: Vec<Option<Duration>> = sockets
        .iter()
        .map(|s| {
            let retry_at = memory.sockets.get(s.address())?.retry_at?;
            (retry_at > now).then(|| retry_at - now)
        })
        .collect();

    let read = join_all(sockets.iter().zip(&backing_off).map(|(s, off)| async move {
        if let Some(wait) = off {
            return Err(format!(
                "unreachable; next attempt in {}",
                humantime::format_duration(Duration::from_secs(wait.as_secs().max(1)))
            ));
        }
        if !remember {
            return Ok((None, s.show_stat().await.map_err(|e| e.to_string())?));
        }
        // `show info` before and after `show stat`, so the stat is known to come from the
        // process the info names: a reload between two reads would otherwise show the new
        // process's config weights under the old pid (and look like an operator's change).
        let mut before = s.show_info().await.map_err(|e| e.to_string())?;
        for _ in 0..3 {
            let stat = s.show_stat().await.map_err(|e| e.to_string())?;
            let after = s.show_info().await.map_err(|e| e.to_string())?;
            if (after.pid, after.start_time_sec) == (before.pid, before.start_time_sec) {
                return Ok((Some(after), stat));
            }
            before = after;
        }
        Err("HAProxy reloaded during every read of this tick".to_string())
    }));
    let (read, polls) = tokio::join!(
        read,
        sources.poll_all(&config.cadvisor, |h| memory.window(h))
    );

    if memory.haproxy != config.haproxy {
        for server in memory.servers.values_mut() {
            server.requests = None;
        }
        memory.haproxy = config.haproxy.clone();
    }
    let hosts = host_status(config, &polls, memory);
    remember_newest(memory, &polls);
    let readings: Vec<&HostReading> = polls.iter().filter_map(|p| p.as_ref().ok()).collect();

    let mut socket_status = vec![];
    let mut stats: Vec<Option<Stat>> = vec![];
    for ((socket, result), off) in sockets.iter().zip(read).zip(&backing_off) {
        let mem = memory.sockets.entry(socket.address().clone()).or_default();
        let mut status = SocketStatus {
            address: socket.address().to_string(),
            error: None,
            applied: 0,
            refused: 0,
            reloaded: false,
            restored: 0,
        };
        match result {
            Err(e) => {
                if off.is_none() && remember {
                    mem.failures += 1;
                    let backoff =
                        Duration::from_secs(1 << (mem.failures - 1).min(6)).min(MAX_BACKOFF);
                    mem.retry_at = Some(now + backoff);
                }
                if off.is_none() && mem.failures <= 1 {
                    warn!(socket = %socket.address(), error = %e, "HAProxy socket unreachable; the others go on");
                } else {
                    debug!(socket = %socket.address(), error = %e, "HAProxy socket still unreachable");
                }
                status.error = Some(e);
                stats.push(None);
            }
            Ok((info, mut stat)) => {
                if mem.failures > 0 {
                    info!(socket = %socket.address(), "HAProxy socket reachable again");
                }
                mem.failures = 0;
                mem.retry_at = None;
                if let Some(info) = info {
                    status.reloaded = notice_reload(mem, socket.address(), &info);
                }
                if status.reloaded {
                    status.restored =
                        restore(config, socket, mem, &mut stat, dry_run, &mut status).await;
                } else if remember {
                    notice_overrides(config, socket.address(), mem, &stat);
                }
                stats.push(Some(stat));
            }
        }
        socket_status.push(status);
    }

    let readable: Vec<(&SocketMemory, &Stat)> = stats
        .iter()
        .zip(&config.haproxy)
        .filter_map(|(st, addr)| Some((memory.sockets.get(addr)?, st.as_ref()?)))
        .collect();
    if readable.is_empty() {
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
    }

    let grouped: Vec<HashMap<&str, Vec<&ServerStat>>> =
        readable.iter().map(|(_, st)| by_backend(st)).collect();
    let grouped: Vec<(&SocketMemory, &HashMap<&str, Vec<&ServerStat>>)> = readable
        .iter()
        .zip(&grouped)
        .map(|((mem, _), g)| (*mem, g))
        .collect();
    let aliases = mapping::index_aliases(&config.backends, &readings);
    // Per socket, each server's row by name (request counters, once per tick).
    let indexed: Vec<Option<HashMap<(&str, &str), &ServerStat>>> = stats
        .iter()
        .map(|st| st.as_ref().map(index_servers))
        .collect();
    // A server missing from an unreadable socket has not left: nothing is forgotten then.
    let every_socket_read = stats.iter().all(Option::is_some);

    let mut backends = vec![];
    let mut decisions: Vec<(&str, Vec<Decision>)> = vec![];
    for (backend_index, backend) in config.backends.iter().enumerate() {
        let merged = merge_sockets(&backend.name, &grouped);
        if merged.is_empty() {
            let known = readable
                .iter()
                .any(|(_, st)| st.backends.iter().any(|b| b.name == backend.name));
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
        let servers: Vec<&ServerStat> = merged.iter().map(|(s, _)| *s).collect();
        let mut mapped =
            mapping::map_backend_indexed(backend, &servers, &readings, &aliases[backend_index]);
        for (m, (_, overridden)) in mapped.servers.iter_mut().zip(&merged) {
            if let Some(expected) = overridden {
                if !matches!(m.input.input, Input::Excluded(_)) {
                    m.input.input = Input::Excluded(Reason::Overridden {
                        expected: *expected,
                    });
                }
            }
        }
        if remember {
            let counters: Vec<Option<(u64, Vec<usize>)>> = mapped
                .servers
                .iter()
                .map(|m| requests_served(&backend.name, &m.input.name, &indexed))
                .collect();
            remember_servers(
                &mut memory.servers,
                &mut memory.backends_seen,
                backend,
                now,
                &counters,
                every_socket_read,
                mapped.servers.iter_mut().map(|m| &mut m.input),
            );
        }
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

    if dry_run {
        for b in &backends {
            for row in b.servers.iter().filter(|r| r.action == Action::Set) {
                debug!(backend = %b.name, server = %row.server, cpu = row.cpu.map(percent), old = row.current, new = row.proposed, "would set weight");
            }
        }
    } else {
        let plans: Vec<Vec<WeightChange>> = stats
            .iter()
            .zip(&config.haproxy)
            .map(|(st, addr)| match st {
                Some(stat) => plan(stat, &decisions, memory.sockets.get(addr)),
                None => vec![],
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
            let mem = memory.sockets.entry(socket.address().clone()).or_default();
            match outcome {
                Err(e) => {
                    warn!(socket = %socket.address(), error = %e, "weights not applied");
                    status.error = Some(e.to_string());
                    for change in changes {
                        // Some may have been applied before the connection failed.
                        mem.pending.insert(
                            (change.backend.clone(), change.server.clone()),
                            change.weight,
                        );
                        if let Some(row) = row_mut(&mut backends, change) {
                            row.errors.push(format!("{}: {e}", socket.address()));
                        }
                    }
                }
                Ok(results) => {
                    for (change, result) in changes.iter().zip(results) {
                        match result {
                            Ok(()) => {
                                status.applied += 1;
                                mem.accept(
                                    (change.backend.clone(), change.server.clone()),
                                    change.weight,
                                );
                            }
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
                        cpu = row.cpu.map(percent),
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

fn percent(share: f64) -> f64 {
    (share * 1000.0).round() / 10.0
}

/// What each host gave. The daemon warns when a host starts failing (or fails differently) and
/// says when it is back; the ticks in between are logged at debug, not every tick.
fn host_status(
    config: &Config,
    polls: &[Result<HostReading, cadvisor::HostError>],
    memory: &mut Memory,
) -> Vec<HostStatus> {
    let remember = memory.remember;
    config
        .cadvisor
        .iter()
        .zip(polls)
        .map(|(url, poll)| match poll {
            Ok(h) => {
                if memory.failing_hosts.remove(url).is_some() {
                    info!(host = %url, "cAdvisor host answers again");
                }
                HostStatus {
                    url: url.clone(),
                    containers: Some(h.containers.len()),
                    error: None,
                    kind: None,
                }
            }
            Err(e) => {
                let kind = e.kind();
                let before = memory.failing_hosts.insert(url.clone(), kind);
                if !remember || before != Some(kind) {
                    warn!(host = %url, reason = %e, "cAdvisor host skipped");
                } else {
                    debug!(host = %url, reason = %e, "cAdvisor host still skipped");
                }
                HostStatus {
                    url: url.clone(),
                    containers: None,
                    error: Some(e.to_string()),
                    kind: Some(e.kind().to_string()),
                }
            }
        })
        .collect()
}

/// The next window of each host starts at the newest sample this tick saw there.
fn remember_newest(memory: &mut Memory, polls: &[Result<HostReading, cadvisor::HostError>]) {
    if !memory.remember {
        return;
    }
    for host in polls.iter().flatten() {
        let newest = host
            .containers
            .iter()
            .filter_map(|c| c.reading.as_ref().ok().map(|u| u.to))
            .max();
        if let Some(t) = newest {
            memory.newest.insert(host.host.clone(), t);
        }
    }
}

fn index_servers(stat: &Stat) -> HashMap<(&str, &str), &ServerStat> {
    stat.servers
        .iter()
        .map(|s| ((s.backend.as_str(), s.server.as_str()), s))
        .collect()
}

/// Requests served by one server, summed over every socket read this tick (`stot`, else
/// `lbtot`), with the indexes of the sockets that reported it.
fn requests_served(
    backend: &str,
    server: &str,
    indexed: &[Option<HashMap<(&str, &str), &ServerStat>>],
) -> Option<(u64, Vec<usize>)> {
    let mut total: u64 = 0;
    let mut from = vec![];
    for (i, index) in indexed.iter().enumerate() {
        let Some(row) = index.as_ref().and_then(|x| x.get(&(backend, server))) else {
            continue;
        };
        total = total.saturating_add(row.sessions_total.or(row.lb_total)?);
        from.push(i);
    }
    (!from.is_empty()).then_some((total, from))
}

/// Daemon only: brings each server's memory up to date and hands the controller what it
/// needs from it: how long a server has been without data, whether it is new to the backend,
/// and (capacity mode) its filtered capacity, from the requests it served since the last tick
/// over the utilisation in the same window. Servers that left are forgotten.
fn remember_servers<'a>(
    servers: &mut HashMap<Key, ServerMemory>,
    backends_seen: &mut HashSet<String>,
    backend: &crate::config::Backend,
    now: Instant,
    counters: &[Option<(u64, Vec<usize>)>],
    prune: bool,
    inputs: impl Iterator<Item = &'a mut controller::ServerInput>,
) {
    let first_sight = backends_seen.insert(backend.name.clone());
    let mut seen = HashSet::new();
    for (input, counter) in inputs.zip(counters) {
        let key = (backend.name.clone(), input.name.clone());
        let known = servers.contains_key(&key);
        let mem = servers.entry(key.clone()).or_default();
        input.new = !first_sight && !known && !matches!(input.input, Input::Excluded(_));
        let excluded = matches!(input.input, Input::Excluded(_));
        // Back in service: its window covers time it served nothing, so its reading says
        // nothing about its load. Held for this tick (capacity mode keeps its estimate).
        if mem.excluded && !excluded && matches!(input.input, Input::Measured(_)) {
            input.input = Input::NoData(Reason::NoReading(
                "back in service this tick: reading not representative".into(),
            ));
        }
        mem.excluded = excluded;
        match input.input {
            Input::NoData(_) => {
                let since = *mem.outage_since.get_or_insert(now);
                input.outage = Some(now.saturating_duration_since(since));
            }
            _ => mem.outage_since = None,
        }
        if let (Input::Measured(cpu), Some((now_total, from)), Some((before, before_from))) =
            (&input.input, counter, &mem.requests)
        {
            let served = now_total
                .checked_sub(*before)
                .filter(|_| from == before_from);
            if let Some(served) = served.filter(|&n| n >= MIN_REQUESTS_FOR_CAPACITY) {
                if *cpu > 0.0 && cpu.is_finite() {
                    let sample = served as f64 / cpu;
                    mem.capacity = Some(controller::filter_capacity(
                        mem.capacity,
                        sample,
                        &backend.controller,
                    ));
                }
            }
        }
        mem.requests = counter.clone();
        input.capacity = mem.capacity;
        seen.insert(key);
    }
    if prune {
        servers.retain(|k, _| k.0 != backend.name || seen.contains(k));
    }
}

/// Each socket's servers grouped by backend, once per tick (not one scan per backend).
fn by_backend(stat: &Stat) -> HashMap<&str, Vec<&ServerStat>> {
    let mut groups: HashMap<&str, Vec<&ServerStat>> = HashMap::new();
    for s in &stat.servers {
        groups.entry(s.backend.as_str()).or_default().push(s);
    }
    groups
}

/// One row per server of `backend` across every socket that was read, in the first socket's
/// order. Sockets may disagree (an operator drained a server on one instance only): a server
/// takes part when it serves on any instance, with that instance's row, so every instance gets
/// one set of weights and each keeps its own drains. Among serving rows, one holding the
/// weight hatune set there is preferred (another instance may hold a stale weight from while
/// the server was drained there). The second item is hatune's weight when every instance
/// where the server serves has an operator's weight instead.
fn merge_sockets<'a>(
    backend: &str,
    readable: &[(&SocketMemory, &HashMap<&str, Vec<&'a ServerStat>>)],
) -> Vec<(&'a ServerStat, Option<u32>)> {
    let mut order: Vec<&str> = vec![];
    let mut rows: HashMap<&str, Vec<(&SocketMemory, &'a ServerStat)>> = HashMap::new();
    for (mem, groups) in readable {
        for &s in groups.get(backend).into_iter().flatten() {
            let entry = rows.entry(s.server.as_str()).or_default();
            if entry.is_empty() {
                order.push(s.server.as_str());
            }
            entry.push((mem, s));
        }
    }
    order
        .into_iter()
        .map(|name| {
            let candidates = &rows[name];
            let key = (backend.to_string(), name.to_string());
            let serving = || candidates.iter().filter(|(_, s)| exclusion(s).is_none());
            let ours = |m: &SocketMemory, s: &ServerStat| {
                m.set_by_hatune.get(&key) == Some(&s.user_weight())
            };
            let free = || serving().filter(|(m, _)| !m.overridden.contains(&key));
            if let Some((_, s)) = free().find(|(m, s)| ours(m, s)).or_else(|| free().next()) {
                return (*s, None);
            }
            if let Some((m, s)) = serving().next() {
                let expected = m.expected.get(&key).copied().unwrap_or(s.user_weight());
                return (*s, Some(expected));
            }
            (candidates[0].1, None)
        })
        .collect()
}

/// True when `show info` shows a different process than last tick: HAProxy was reloaded and
/// forgot every runtime weight.
fn notice_reload(mem: &mut SocketMemory, addr: &Address, info: &Info) -> bool {
    let identity = (info.pid, info.start_time_sec);
    let before = mem.identity.replace(identity);
    match before {
        Some(old) if old != identity => {
            warn!(
                socket = %addr,
                old_pid = old.0,
                new_pid = identity.0,
                "HAProxy was reloaded: re-applying the last weights"
            );
            true
        }
        _ => false,
    }
}

/// After a reload: sets every server back to the weight hatune itself last wrote, and a
/// server the old process did not have to the mean of those weights in its backend, so nobody
/// starts from the config's weights. Weights hatune never wrote (an operator's, a config
/// change made with the reload) are left as the new process has them and become the new
/// reference. `stat` is updated to what HAProxy holds afterwards. Returns how many weights
/// were restored.
async fn restore(
    config: &Config,
    socket: &haproxy::Client,
    mem: &mut SocketMemory,
    stat: &mut Stat,
    dry_run: bool,
    status: &mut SocketStatus,
) -> usize {
    // Operators' overrides belonged to the old process.
    mem.overridden.clear();
    mem.pending.clear();
    let mut changes = vec![];
    let mut tracked = vec![];
    for backend in &config.backends {
        let rows: Vec<&ServerStat> = stat
            .servers
            .iter()
            .filter(|s| s.backend == backend.name && tracked_server(backend, s))
            .collect();
        let ours: Vec<u32> = rows
            .iter()
            .filter_map(|s| {
                mem.set_by_hatune
                    .get(&(s.backend.clone(), s.server.clone()))
            })
            .copied()
            .filter(|&w| w > 0)
            .collect();
        let mean = (!ours.is_empty()).then(|| {
            let m = ours.iter().map(|&w| f64::from(w)).sum::<f64>() / ours.len() as f64;
            (m.round() as u32).clamp(backend.controller.min_weight, backend.controller.max_weight)
        });
        for s in rows {
            let key = (s.backend.clone(), s.server.clone());
            tracked.push(key.clone());
            if exclusion(s).is_some() {
                continue;
            }
            let weight = match (mem.set_by_hatune.get(&key), mem.expected.contains_key(&key)) {
                (Some(&w), _) if w > 0 => w,
                // Not in the old process: new with this reload.
                (None, false) => match mean {
                    Some(m) => {
                        info!(socket = %socket.address(), backend = %s.backend, server = %s.server, weight = m, "new server starts at the backend's mean weight");
                        m
                    }
                    None => continue,
                },
                _ => continue,
            };
            if s.user_weight() != weight {
                changes.push(WeightChange {
                    backend: s.backend.clone(),
                    server: s.server.clone(),
                    weight,
                });
            }
        }
    }
    let accepted: Vec<&WeightChange> = if dry_run || changes.is_empty() {
        changes.iter().collect()
    } else {
        match socket.set_weights(&changes).await {
            Ok(outcomes) => changes
                .iter()
                .zip(outcomes)
                .filter_map(|(c, o)| match o {
                    Ok(()) => Some(c),
                    Err(msg) => {
                        warn!(socket = %socket.address(), backend = %c.backend, server = %c.server, error = %msg, "HAProxy refused the weight");
                        status.refused += 1;
                        None
                    }
                })
                .collect(),
            Err(e) => {
                warn!(socket = %socket.address(), error = %e, "weights not re-applied after the reload");
                status.error = Some(e.to_string());
                for c in &changes {
                    mem.pending
                        .insert((c.backend.clone(), c.server.clone()), c.weight);
                }
                vec![]
            }
        }
    };
    // The new process's weights are the reference, except those just written.
    let now: HashMap<Key, u32> = stat
        .servers
        .iter()
        .map(|s| ((s.backend.clone(), s.server.clone()), s.user_weight()))
        .collect();
    for key in tracked {
        if let Some(&w) = now.get(&key) {
            mem.expected.insert(key, w);
        }
    }
    for c in &accepted {
        if let Some(s) = stat
            .servers
            .iter_mut()
            .find(|s| s.backend == c.backend && s.server == c.server)
        {
            s.weight = c.weight;
            s.uweight = Some(c.weight);
        }
        if !dry_run {
            mem.accept((c.backend.clone(), c.server.clone()), c.weight);
        }
    }
    info!(socket = %socket.address(), restored = accepted.len(), "weights re-applied after the reload");
    accepted.len()
}

/// Servers whose weight hatune tracks: those of a tuned backend that it could tune: matching
/// the pattern, not backup, not weighted by an agent.
fn tracked_server(backend: &crate::config::Backend, s: &ServerStat) -> bool {
    backend.matches(&s.server) && !s.backup && s.agent_status.trim().is_empty()
}

/// Marks servers whose weight someone else changed since hatune set it (the operator wins),
/// and hands back those set back to hatune's weight. Logs each change of state once.
fn notice_overrides(config: &Config, addr: &Address, mem: &mut SocketMemory, stat: &Stat) {
    let tuned: HashMap<&str, &crate::config::Backend> = config
        .backends
        .iter()
        .map(|b| (b.name.as_str(), b))
        .collect();
    let mut seen = HashSet::new();
    let pending = std::mem::take(&mut mem.pending);
    for s in stat.servers.iter().filter(|s| {
        tuned
            .get(s.backend.as_str())
            .is_some_and(|b| tracked_server(b, s))
    }) {
        let key = (s.backend.clone(), s.server.clone());
        let now = s.user_weight();
        if pending.get(&key) == Some(&now) || mem.adopt.remove(&key) {
            // A write whose reply was lost did land, or the operator handed it back.
            mem.accept(key.clone(), now);
        }
        match mem.expected.get(&key) {
            None if now > 0 && exclusion(s).is_none() => {
                // First sight of a serving server: hatune takes its weight over (after a
                // restart, the weights it finds are the ones it tunes and a reload restores).
                mem.accept(key.clone(), now);
            }
            None => {
                // Drained (weight 0, DRAIN, MAINT, ...): a reference, not hatune's weight.
                mem.expected.insert(key.clone(), now);
            }
            Some(&expected) if expected != now => {
                if mem.overridden.insert(key.clone()) {
                    warn!(
                        socket = %addr,
                        backend = %s.backend,
                        server = %s.server,
                        expected,
                        found = now,
                        "weight changed outside hatune: leaving this server alone; set it back to {expected} or reload hatune (SIGHUP) to resume"
                    );
                }
            }
            Some(_) => {
                if mem.overridden.remove(&key) {
                    info!(socket = %addr, backend = %s.backend, server = %s.server, "weight set back: hatune tunes this server again");
                }
            }
        }
        seen.insert(key);
    }
    // Servers that left HAProxy are forgotten.
    mem.expected.retain(|k, _| seen.contains(k));
    mem.set_by_hatune.retain(|k, _| seen.contains(k));
    mem.overridden.retain(|k| seen.contains(k));
    mem.adopt.retain(|k| seen.contains(k));
}

/// The weights one socket needs so that it agrees with the decisions: every tuned server whose
/// user weight there differs, unless that socket's own state excludes it (an operator drained
/// it on that instance, or changed its weight).
fn plan(
    stat: &Stat,
    decisions: &[(&str, Vec<Decision>)],
    mem: Option<&SocketMemory>,
) -> Vec<WeightChange> {
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
            let key = (backend.to_string(), d.name.clone());
            if mem.is_some_and(|m| m.overridden.contains(&key)) {
                continue;
            }
            changes.push(WeightChange {
                backend: key.0,
                server: key.1,
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

    fn config() -> Config {
        Config::parse(
            r#"{"haproxy": "/s", "cadvisor": "http://h:1",
                "backends": [{"name": "app", "pattern": "^app-"}]}"#,
        )
        .unwrap()
    }

    fn key(s: &str) -> Key {
        ("app".into(), s.into())
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
            w(plan(&primary, &decisions, None)),
            vec![("a".into(), 256), ("d".into(), 100)]
        );
        assert_eq!(
            w(plan(&secondary, &decisions, None)),
            vec![("b".into(), 128), ("d".into(), 100)]
        );
        // An operator's weight on the secondary wins there.
        let mut mem = SocketMemory::default();
        mem.overridden.insert(key("b"));
        assert_eq!(
            w(plan(&secondary, &decisions, Some(&mem))),
            vec![("d".into(), 100)]
        );
    }

    #[test]
    fn a_server_serving_on_any_instance_takes_part_with_that_row() {
        let first = Stat {
            backends: vec![],
            servers: vec![
                stat("app", "a", "DRAIN", 100),
                stat("app", "b", "UP", 100),
                stat("app", "c", "MAINT", 100),
                stat("app", "d", "UP", 40),
                stat("other", "x", "UP", 1),
            ],
        };
        let second = Stat {
            backends: vec![],
            servers: vec![
                stat("app", "a", "UP", 120),
                stat("app", "b", "UP", 90),
                stat("app", "c", "MAINT", 100),
                stat("app", "d", "UP", 50),
                stat("app", "e", "UP", 7),
            ],
        };
        let plain = SocketMemory::default();
        let mut operator_on_first = SocketMemory::default();
        operator_on_first.overridden.insert(key("d"));
        operator_on_first.expected.insert(key("d"), 64);
        let mut operator_on_second = SocketMemory::default();
        operator_on_second.overridden.insert(key("d"));
        operator_on_second.expected.insert(key("d"), 64);

        let (first, second) = (by_backend(&first), by_backend(&second));
        let merged = merge_sockets("app", &[(&operator_on_first, &first), (&plain, &second)]);
        let got: Vec<(&str, &str, u32, Option<u32>)> = merged
            .iter()
            .map(|(s, o)| (s.server.as_str(), s.status.as_str(), s.user_weight(), *o))
            .collect();
        assert_eq!(
            got,
            vec![
                ("a", "UP", 120, None), // drained on the first only: serves on the second
                ("b", "UP", 100, None), // serving on both: the first's row
                ("c", "MAINT", 100, None),
                ("d", "UP", 50, None), // the operator's weight on the first only
                ("e", "UP", 7, None),  // only the second has it
            ]
        );
        let merged = merge_sockets(
            "app",
            &[(&operator_on_first, &first), (&operator_on_second, &second)],
        );
        assert_eq!(
            merged[3].1,
            Some(64),
            "operators' weights on every instance"
        );
    }

    fn info(pid: u32, start: u64) -> Info {
        Info {
            version: "2.6".into(),
            pid,
            uptime_sec: 1,
            start_time_sec: Some(start),
        }
    }

    fn status() -> SocketStatus {
        SocketStatus {
            address: "/s".into(),
            error: None,
            applied: 0,
            refused: 0,
            reloaded: true,
            restored: 0,
        }
    }

    /// A reload restores only what hatune wrote: an operator's config change made with the
    /// reload (a standby at weight 0 now at 100) stays, and nothing is ever set to 0.
    #[tokio::test]
    async fn a_reload_restores_only_hatunes_own_weights() {
        let c = config();
        let socket =
            haproxy::Client::new(Address::Unix("/nonexistent".into()), Duration::from_secs(1));
        let mut mem = SocketMemory::default();
        mem.accept(key("app-1"), 200);
        mem.accept(key("app-2"), 100);
        mem.expected.insert(key("app-3"), 0); // a standby hatune never wrote
                                              // A weight first seen on a serving server (after a restart) is hatune's to restore.
        notice_overrides(
            &c,
            &Address::Unix("/s".into()),
            &mut mem,
            &Stat {
                backends: vec![],
                servers: vec![stat("app", "app-6", "UP", 66)],
            },
        );
        mem.accept(key("app-1"), 200);
        mem.accept(key("app-2"), 100);
        mem.expected.insert(key("app-3"), 0);
        mem.overridden.insert(key("app-2"));
        let mut stat = Stat {
            backends: vec![],
            servers: vec![
                stat("app", "app-1", "UP", 50),
                stat("app", "app-2", "UP", 50),
                stat("app", "app-3", "UP", 100), // the operator's new config weight
                stat("app", "app-4", "UP", 10),  // new with this reload
                stat("app", "web-1", "UP", 10),  // not matched by the pattern
                stat("app", "app-6", "UP", 100), // first seen at 66 before the reload
            ],
        };
        // dry_run: decided and recorded in `stat`, nothing sent.
        let n = restore(&c, &socket, &mut mem, &mut stat, true, &mut status()).await;
        let w: Vec<u32> = stat.servers.iter().map(|s| s.user_weight()).collect();
        assert_eq!(
            w,
            vec![200, 100, 100, 122, 10, 66],
            "app-4 at the mean of 200, 100 and 66"
        );
        assert_eq!(n, 4);
        assert!(
            mem.overridden.is_empty(),
            "overrides belonged to the old process"
        );
        assert_eq!(
            mem.expected[&key("app-3")],
            100,
            "the new process's weight is the reference"
        );
        assert!(!mem.expected.contains_key(&key("web-1")));
    }

    /// Another instance may still hold a weight from while the server was drained there: the
    /// row with hatune's own weight wins, whatever the order of sockets.
    #[test]
    fn the_row_with_hatunes_weight_is_preferred() {
        let a = Stat {
            backends: vec![],
            servers: vec![stat("app", "app-1", "UP", 100)],
        };
        let b = Stat {
            backends: vec![],
            servers: vec![stat("app", "app-1", "UP", 256)],
        };
        let mem_a = SocketMemory::default();
        let mut mem_b = SocketMemory::default();
        mem_b.accept(key("app-1"), 256);
        let (ga, gb) = (by_backend(&a), by_backend(&b));
        let merged = merge_sockets("app", &[(&mem_a, &ga), (&mem_b, &gb)]);
        assert_eq!(merged[0].0.user_weight(), 256);
    }

    /// A write whose reply was lost may have landed: that weight is hatune's, not an
    /// operator's. Servers hatune never tunes are not tracked at all.
    #[test]
    fn lost_replies_and_untuned_servers_are_not_overrides() {
        let c = config();
        let addr = Address::Unix("/s".into());
        let mut mem = SocketMemory::default();
        let mut backup = stat("app", "app-3", "UP", 5);
        backup.backup = true;
        let mut agent = stat("app", "app-4", "UP", 5);
        agent.agent_status = "L7OK".into();
        let seen = |w: u32, other: u32| Stat {
            backends: vec![],
            servers: vec![
                stat("app", "app-1", "UP", w),
                stat("app", "web-1", "UP", other),
                backup.clone(),
                agent.clone(),
            ],
        };
        notice_overrides(&c, &addr, &mut mem, &seen(100, 1));
        mem.pending.insert(key("app-1"), 180);
        notice_overrides(&c, &addr, &mut mem, &seen(180, 2));
        assert!(mem.overridden.is_empty(), "{:?}", mem.overridden);
        assert_eq!(mem.set_by_hatune[&key("app-1")], 180);
        assert!(mem.pending.is_empty());
        assert!(!mem.expected.contains_key(&key("web-1")));
        assert!(!mem.expected.contains_key(&key("app-3")));
        assert!(!mem.expected.contains_key(&key("app-4")));
    }

    #[test]
    fn a_new_process_is_a_reload() {
        let addr = Address::Unix("/s".into());
        let mut mem = SocketMemory::default();
        assert!(
            !notice_reload(&mut mem, &addr, &info(10, 1000)),
            "first sight"
        );
        assert!(!notice_reload(&mut mem, &addr, &info(10, 1000)));
        assert!(notice_reload(&mut mem, &addr, &info(11, 1030)));
        assert!(!notice_reload(&mut mem, &addr, &info(11, 1030)));
    }

    /// Operators win: a weight hatune did not set marks the server; setting it back resumes.
    #[test]
    fn operator_changes_are_noticed_once_and_undone_by_setting_back() {
        let c = config();
        let addr = Address::Unix("/s".into());
        let mut mem = SocketMemory::default();
        let seen = |a: u32, b: u32| Stat {
            backends: vec![],
            servers: vec![stat("app", "app-1", "UP", a), stat("app", "app-2", "UP", b)],
        };
        notice_overrides(&c, &addr, &mut mem, &seen(100, 100));
        assert!(mem.overridden.is_empty(), "first sight is the reference");
        mem.expected.insert(key("app-1"), 200); // hatune set 200
        notice_overrides(&c, &addr, &mut mem, &seen(200, 100));
        assert!(mem.overridden.is_empty());
        notice_overrides(&c, &addr, &mut mem, &seen(0, 100)); // drained by weight 0
        assert!(mem.overridden.contains(&key("app-1")));
        notice_overrides(&c, &addr, &mut mem, &seen(50, 100)); // still not hatune's
        assert!(mem.overridden.contains(&key("app-1")));
        notice_overrides(&c, &addr, &mut mem, &seen(200, 100)); // set back
        assert!(mem.overridden.is_empty());
        // A server that left HAProxy is forgotten.
        notice_overrides(
            &c,
            &addr,
            &mut mem,
            &Stat {
                backends: vec![],
                servers: vec![stat("app", "app-1", "UP", 200)],
            },
        );
        assert!(!mem.expected.contains_key(&key("app-2")));
    }

    #[test]
    fn resume_all_takes_the_current_weight_as_reference() {
        let c = config();
        let addr = Address::Unix("/s".into());
        let mut memory = Memory::daemon(Duration::from_secs(60));
        let mem = memory.sockets.entry(addr.clone()).or_default();
        mem.expected.insert(key("app-1"), 200);
        let seen = Stat {
            backends: vec![],
            servers: vec![stat("app", "app-1", "UP", 7)],
        };
        notice_overrides(&c, &addr, mem, &seen);
        assert_eq!(memory.overridden(), 1);
        assert_eq!(memory.resume_all(), 1);
        let mem = memory.sockets.get_mut(&addr).unwrap();
        notice_overrides(&c, &addr, mem, &seen);
        assert!(mem.overridden.is_empty());
        assert_eq!(mem.expected[&key("app-1")], 7);
        assert_eq!(
            mem.set_by_hatune[&key("app-1")],
            7,
            "a reload restores the handed-back weight"
        );
    }

    /// A server missing because its socket was unreadable is not forgotten (it would come
    /// back as "new", at the mean weight); a backend removed by a config reload is.
    #[test]
    fn servers_are_forgotten_only_when_they_really_left() {
        let c = config();
        let b = &c.backends[0];
        let mut servers = HashMap::new();
        let mut seen = HashSet::new();
        let t = Instant::now();
        let mut both = [
            controller::ServerInput::new("app-1", 10, Input::Measured(0.5)),
            controller::ServerInput::new("app-2", 10, Input::Measured(0.5)),
        ];
        remember_servers(
            &mut servers,
            &mut seen,
            b,
            t,
            &[None, None],
            true,
            both.iter_mut(),
        );
        let mut one = [controller::ServerInput::new(
            "app-1",
            10,
            Input::Measured(0.5),
        )];
        remember_servers(
            &mut servers,
            &mut seen,
            b,
            t,
            &[None],
            false,
            one.iter_mut(),
        );
        assert!(
            servers.contains_key(&key("app-2")),
            "a socket was unreadable: kept"
        );
        remember_servers(&mut servers, &mut seen, b, t, &[None], true, one.iter_mut());
        assert!(
            !servers.contains_key(&key("app-2")),
            "every socket read: it left"
        );

        let mut memory = Memory::daemon(Duration::from_secs(60));
        memory.servers = servers;
        memory.backends_seen = seen;
        let other = Config::parse(
            r#"{"haproxy": "/s", "cadvisor": "http://h:1", "backends": [{"name": "api", "pattern": "^api-"}]}"#,
        )
        .unwrap();
        memory.forget_removed(&other);
        assert!(memory.servers.is_empty() && memory.backends_seen.is_empty());
    }

    /// The daemon's per-server memory: capacity from requests over utilisation, outage time,
    /// new servers; a changed set of sockets or a reset counter gives no capacity sample.
    #[test]
    fn server_memory_feeds_the_guards_and_capacity_mode() {
        let c = Config::parse(
            r#"{"haproxy": "/s", "cadvisor": "http://h:1",
                "backends": [{"name": "app", "pattern": "^app-", "controller": {"mode": "capacity", "capacity_filter": 1}}]}"#,
        )
        .unwrap();
        let b = &c.backends[0];
        let mut servers = HashMap::new();
        let mut seen = HashSet::new();
        let t0 = Instant::now();
        let mut round = |t: Instant,
                         inputs: &mut Vec<controller::ServerInput>,
                         counters: &[Option<(u64, Vec<usize>)>]| {
            remember_servers(
                &mut servers,
                &mut seen,
                b,
                t,
                counters,
                true,
                inputs.iter_mut(),
            );
        };
        let si = |n: &str, i: Input| controller::ServerInput::new(n, 100, i);
        let mut tick1 = vec![
            si("app-1", Input::Measured(0.5)),
            si("app-2", Input::NoData(Reason::NoContainer)),
        ];
        round(
            t0,
            &mut tick1,
            &[Some((1000, vec![0])), Some((50, vec![0]))],
        );
        assert_eq!(
            tick1[0].capacity, None,
            "one reading of the counters is not enough"
        );
        assert!(!tick1[0].new && !tick1[1].new, "first sight of the backend");
        assert_eq!(tick1[1].outage, Some(Duration::ZERO));

        let t1 = t0 + Duration::from_secs(30);
        let mut tick2 = vec![
            si("app-1", Input::Measured(0.5)),
            si("app-2", Input::NoData(Reason::NoContainer)),
            si("app-3", Input::Measured(0.1)),
        ];
        round(
            t1,
            &mut tick2,
            &[
                Some((1400, vec![0])),
                Some((50, vec![0])),
                Some((0, vec![0])),
            ],
        );
        assert_eq!(tick2[0].capacity, Some(800.0), "400 requests at 50%");
        assert_eq!(tick2[1].outage, Some(Duration::from_secs(30)));
        assert!(tick2[2].new, "a server the backend did not have");

        let t2 = t1 + Duration::from_secs(30);
        let mut tick3 = vec![
            si("app-1", Input::Measured(0.5)),
            si("app-2", Input::Measured(0.5)),
        ];
        // app-1 now counted on two sockets: not comparable; the estimate is kept.
        round(
            t2,
            &mut tick3,
            &[Some((1500, vec![0, 1])), Some((10, vec![0]))],
        );
        assert_eq!(tick3[0].capacity, Some(800.0));
        assert_eq!(tick3[1].outage, None, "back with data");
        assert_eq!(
            tick3[1].capacity, None,
            "a counter that went down gives no sample"
        );

        // A server back from DRAIN is held one tick: its window covers time it served nothing.
        let mut drained = vec![si("app-1", Input::Excluded(Reason::Drain))];
        round(t2, &mut drained, &[Some((1500, vec![0]))]);
        let mut back = vec![si("app-1", Input::Measured(0.01))];
        round(t2, &mut back, &[Some((1500, vec![0]))]);
        assert!(matches!(back[0].input, Input::NoData(_)), "{:?}", back[0]);
        let mut next = vec![si("app-1", Input::Measured(0.5))];
        round(t2, &mut next, &[Some((1600, vec![0]))]);
        assert_eq!(next[0].input, Input::Measured(0.5));
        assert!(!servers.contains_key(&key("app-3")), "left: forgotten");
    }

    #[test]
    fn the_daemon_window_starts_at_the_last_newest_sample() {
        let mut one = Memory::one_shot(Duration::from_secs(60));
        one.newest.insert("h".into(), 5);
        assert_eq!(one.window("h"), Window::Span(Duration::from_secs(60)));
        let mut daemon = Memory::daemon(Duration::from_secs(60));
        assert_eq!(daemon.window("h"), Window::Span(Duration::from_secs(60)));
        daemon.newest.insert("h".into(), 5);
        assert_eq!(daemon.window("h"), Window::Since(5));
    }
}
