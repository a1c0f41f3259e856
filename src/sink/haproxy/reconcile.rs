//! What the HAProxy sink learns from tick to tick about one socket: which process it talks to
//! (a new one means a reload, which forgot runtime weights), the weights hatune set, whom else
//! changed one, writes whose reply was lost, and when to try a failing socket again. Pure:
//! it reads `show info`/`show stat` results and the outcome of writes; time is passed in.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use tokio::time::Instant;
use tracing::{info, warn};

use super::{Info, ServerStat, Stat};
use crate::config::Backend;
use crate::controller::{self, ServerKey};
use crate::sink::{ServerView, View, Write};

/// Backoff for an unreachable socket: 1 s, 2 s, 4 s, ... up to this.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// One socket's memory.
#[derive(Debug, Default)]
pub struct Reconciler {
    /// Pid and start time from `show info`: a change means HAProxy was reloaded.
    identity: Option<(u32, Option<u64>)>,
    /// The weight hatune last set on each server, or the one it first saw: another weight at
    /// the next read means someone else changed it.
    expected: HashMap<ServerKey, u32>,
    /// Only the weights hatune itself wrote (and HAProxy accepted): what a reload restores.
    set_by_hatune: HashMap<ServerKey, u32>,
    /// Weights sent on a connection that failed before every reply was read: HAProxy may or
    /// may not hold them. Either they or `expected` are hatune's at the next read.
    pending: HashMap<ServerKey, u32>,
    /// Servers handed back by SIGHUP: their weight at the next read becomes hatune's own.
    adopt: HashSet<ServerKey>,
    /// Servers whose weight someone else changed: left alone until resumed.
    /// Servers whose weight someone else changed, with the weight they set: left alone until
    /// resumed.
    overridden: HashMap<ServerKey, u32>,
    /// What a reload made HAProxy forget and hatune has not written back yet (its writes
    /// failed): given back at the next reads until it lands or someone else sets the server.
    restoring: HashMap<ServerKey, u32>,
    failures: u32,
    retry_at: Option<Instant>,
    /// The last read succeeded: what the socket holds now is what hatune decided last tick.
    /// After a failure (or at first sight) its weights are older than the others' may be.
    last_read_ok: bool,
}

/// What a socket's memory keeps between runs of `hatune once --state`: everything but the
/// backoff (a run started by cron or a timer always tries the socket).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct SavedReconciler {
    /// `show info`'s pid and start time at the last read.
    identity: Option<(u32, Option<u64>)>,
    expected: Weights,
    set_by_hatune: Weights,
    pending: Weights,
    /// Per backend, its servers.
    adopt: BTreeMap<String, Vec<String>>,
    overridden: Weights,
    restoring: Weights,
    last_read_ok: bool,
}

/// Weights by backend, then server: each name once, in order (a state file of 10,000 servers
/// stays small, and changes only where the weights did).
type Weights = BTreeMap<String, BTreeMap<String, u32>>;

fn nested(map: &HashMap<ServerKey, u32>) -> Weights {
    let mut out = Weights::new();
    for (k, w) in map {
        out.entry(k.backend.clone())
            .or_default()
            .insert(k.server.clone(), *w);
    }
    out
}

fn flat(weights: Weights) -> HashMap<ServerKey, u32> {
    weights
        .into_iter()
        .flat_map(|(b, servers)| {
            servers
                .into_iter()
                .map(move |(s, w)| (ServerKey::new(b.clone(), s), w))
        })
        .collect()
}

fn key(s: &ServerStat) -> ServerKey {
    ServerKey::new(s.backend.clone(), s.server.clone())
}

/// Servers whose weight hatune tracks: those of a tuned backend that it could tune (by alias,
/// named like the pattern; otherwise as `servers` says), not backup, not weighted by an agent.
fn tracked(backend: &Backend, s: &ServerStat) -> bool {
    backend.tunes(&s.server) && !s.backup && s.agent_status.trim().is_empty()
}

impl Reconciler {
    /// What to keep until the next run.
    pub fn save(&self) -> SavedReconciler {
        let mut adopt: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for k in &self.adopt {
            adopt
                .entry(k.backend.clone())
                .or_default()
                .push(k.server.clone());
        }
        adopt.values_mut().for_each(|s| s.sort());
        SavedReconciler {
            identity: self.identity,
            expected: nested(&self.expected),
            set_by_hatune: nested(&self.set_by_hatune),
            pending: nested(&self.pending),
            adopt,
            overridden: nested(&self.overridden),
            restoring: nested(&self.restoring),
            last_read_ok: self.last_read_ok,
        }
    }

    /// The memory a run saved, with no backoff pending.
    pub fn restore(saved: SavedReconciler) -> Reconciler {
        Reconciler {
            identity: saved.identity,
            expected: flat(saved.expected),
            set_by_hatune: flat(saved.set_by_hatune),
            pending: flat(saved.pending),
            adopt: saved
                .adopt
                .into_iter()
                .flat_map(|(b, servers)| {
                    servers
                        .into_iter()
                        .map(move |s| ServerKey::new(b.clone(), s))
                })
                .collect(),
            overridden: flat(saved.overridden),
            restoring: flat(saved.restoring),
            failures: 0,
            retry_at: None,
            last_read_ok: saved.last_read_ok,
        }
    }

    /// HAProxy holds `weight`, written by hatune.
    fn accept(&mut self, key: ServerKey, weight: u32) {
        self.expected.insert(key.clone(), weight);
        self.set_by_hatune.insert(key, weight);
    }

    /// How long until a failing socket is tried again, if it is not due yet.
    pub fn backing_off(&self, now: Instant) -> Option<Duration> {
        let retry_at = self.retry_at?;
        (retry_at > now).then(|| retry_at - now)
    }

    /// A read failed: the next attempt waits 1 s, 2 s, 4 s, ... Returns true for the first
    /// failure in a row (the one worth a warning).
    pub fn failed(&mut self, now: Instant) -> bool {
        self.last_read_ok = false;
        self.failures += 1;
        let backoff = Duration::from_secs(1 << (self.failures - 1).min(6)).min(MAX_BACKOFF);
        self.retry_at = Some(now + backoff);
        self.failures == 1
    }

    /// A read succeeded. Returns true when the socket had been failing.
    pub fn recovered(&mut self) -> bool {
        let was = self.failures > 0;
        self.failures = 0;
        self.retry_at = None;
        was
    }

    /// A read succeeded; true when the one before did too (the weights are current).
    pub fn read_ok(&mut self) -> bool {
        std::mem::replace(&mut self.last_read_ok, true)
    }

    /// True when `show info` shows a different process than the last read: HAProxy was
    /// reloaded and forgot every runtime weight.
    pub fn notice_reload(&mut self, socket: &str, info: &Info) -> bool {
        let identity = (info.pid, info.start_time_sec);
        match self.identity.replace(identity) {
            Some(old) if old != identity => {
                warn!(
                    socket = %socket,
                    old_pid = old.0,
                    new_pid = identity.0,
                    "HAProxy was reloaded: re-applying the last weights"
                );
                true
            }
            _ => false,
        }
    }

    /// After a reload: what each server gets back. The weight hatune itself last wrote, and
    /// for a server the old process did not have, the backend's mean of those weights, so
    /// nobody starts from the config's weights. Weights hatune never wrote (an operator's, a
    /// config change made with the reload) are left as the new process has them and become
    /// the new reference. An operator's weight that the new process holds again (they set it
    /// again, or a server-state file carried it over) stays theirs; other overrides belonged
    /// to the old process. A weight that is neither the config's (`initial`, when known) nor
    /// hatune's was set by someone since the reload: theirs too, nothing is restored over it.
    pub fn after_reload(
        &mut self,
        socket: &str,
        backends: &[Backend],
        stat: &Stat,
        initial: &HashMap<ServerKey, u32>,
    ) -> HashMap<ServerKey, u32> {
        let theirs = std::mem::take(&mut self.overridden);
        self.pending.clear();
        let mut restores = HashMap::new();
        let mut reference = vec![];
        for backend in backends {
            let rows: Vec<&ServerStat> = stat
                .servers
                .iter()
                .filter(|s| s.backend == backend.name && tracked(backend, s))
                .collect();
            let ours: Vec<u32> = rows
                .iter()
                .filter_map(|s| self.set_by_hatune.get(&key(s)).copied())
                .collect();
            let mean = controller::mean_weight(&ours, &backend.controller);
            for s in rows {
                let key = key(s);
                if let Some(&w) = theirs.get(&key).filter(|&&w| w == s.user_weight()) {
                    // Still the operator's: hatune's own weight stays what "set it back"
                    // means, and nothing is restored over theirs.
                    self.overridden.insert(key, w);
                    continue;
                }
                let now = s.user_weight();
                let set_since = initial.get(&key).is_some_and(|&i| i != now)
                    && self.set_by_hatune.get(&key) != Some(&now);
                if set_since && s.exclusion().is_none() {
                    // Neither the config's weight nor hatune's: set since the reload.
                    warn!(
                        socket = %socket,
                        backend = %s.backend,
                        server = %s.server,
                        found = now,
                        "weight set since the reload outside hatune: leaving this server alone"
                    );
                    self.overridden.insert(key.clone(), now);
                    if !self.expected.contains_key(&key) {
                        // New with the reload: the config's weight is what hands it back.
                        reference.push((key.clone(), initial[&key]));
                    }
                    continue;
                }
                reference.push((key.clone(), s.user_weight()));
                if s.exclusion().is_some() {
                    continue;
                }
                let weight = match (
                    self.set_by_hatune.get(&key),
                    self.expected.contains_key(&key),
                ) {
                    (Some(&w), _) if w > 0 => w,
                    // Not in the old process: new with this reload.
                    (None, false) => match mean {
                        Some(m) => {
                            info!(socket = %socket, backend = %s.backend, server = %s.server, weight = m, "new server starts at the backend's mean weight");
                            m
                        }
                        None => continue,
                    },
                    _ => continue,
                };
                if s.user_weight() != weight {
                    restores.insert(key, weight);
                }
            }
        }
        // The new process's weights are the reference, until hatune's are written back.
        self.expected.extend(reference);
        self.restoring = restores.clone();
        restores
    }

    /// Marks servers whose weight someone else changed since hatune set it (the operator
    /// wins), and hands back those set back to hatune's weight. Logs each change of state once.
    /// Servers that left HAProxy are forgotten. Returns the restores still due from a reload
    /// whose writes failed, for servers that still hold what the reload left them.
    pub fn notice_overrides(
        &mut self,
        socket: &str,
        backends: &[Backend],
        stat: &Stat,
    ) -> HashMap<ServerKey, u32> {
        let mut restores = HashMap::new();
        let tuned: HashMap<&str, &Backend> =
            backends.iter().map(|b| (b.name.as_str(), b)).collect();
        let mut seen = HashSet::new();
        let pending = std::mem::take(&mut self.pending);
        for s in stat
            .servers
            .iter()
            .filter(|s| tuned.get(s.backend.as_str()).is_some_and(|b| tracked(b, s)))
        {
            let key = key(s);
            let now = s.user_weight();
            if pending.get(&key) == Some(&now) || self.adopt.remove(&key) {
                // A write whose reply was lost did land, or the operator handed it back.
                self.accept(key.clone(), now);
            }
            if let Some(target) = self.restoring.remove(&key) {
                // Sent, lost, and still what the reload left: give hatune's weight back again.
                // (A dry run never sends it: its next tick decides from what HAProxy holds.)
                let lost = pending.get(&key) == Some(&target);
                if lost && self.expected.get(&key) == Some(&now) && now != target {
                    self.restoring.insert(key.clone(), target);
                    restores.insert(key.clone(), target);
                }
            }
            match self.expected.get(&key) {
                None if now > 0 && s.exclusion().is_none() => {
                    // First sight of a serving server: hatune takes its weight over (after a
                    // restart, the weights it finds are the ones it tunes and a reload restores).
                    self.accept(key.clone(), now);
                }
                None => {
                    // Drained (weight 0, DRAIN, MAINT, ...): a reference, not hatune's weight.
                    self.expected.insert(key.clone(), now);
                }
                Some(&expected) if expected != now => {
                    if self.overridden.insert(key.clone(), now).is_none() {
                        warn!(
                            socket = %socket,
                            backend = %s.backend,
                            server = %s.server,
                            expected,
                            found = now,
                            "weight changed outside hatune: leaving this server alone; set it back to {expected} or reload hatune (SIGHUP) to resume"
                        );
                    }
                }
                Some(_) => {
                    if self.overridden.remove(&key).is_some() {
                        info!(socket = %socket, backend = %s.backend, server = %s.server, "weight set back: hatune tunes this server again");
                    }
                }
            }
            seen.insert(key);
        }
        self.expected.retain(|k, _| seen.contains(k));
        self.set_by_hatune.retain(|k, _| seen.contains(k));
        self.overridden.retain(|k, _| seen.contains(k));
        self.adopt.retain(|k| seen.contains(k));
        self.restoring.retain(|k, _| seen.contains(k));
        restores
    }

    /// The neutral view of `stat`, with what this socket's memory says of each server. A
    /// weight is hatune's (`ours`) only when it is current: the read before this one
    /// succeeded too, so it is what hatune decided last tick, not from before an outage (a
    /// balancer listed first would otherwise undo, with its stale weights, what the others
    /// were tuned to meanwhile).
    pub fn view(
        &self,
        stat: &Stat,
        restores: &HashMap<ServerKey, u32>,
        reloaded: bool,
        current: bool,
    ) -> View {
        View {
            backends: stat.backends.iter().map(|b| b.name.clone()).collect(),
            servers: stat
                .servers
                .iter()
                .map(|s| {
                    let key = key(s);
                    let holds = s.user_weight();
                    let restore = restores.get(&key).copied();
                    ServerView {
                        exclusion: s.exclusion(),
                        requests: s.sessions_total.or(s.lb_total),
                        ours: current
                            && (restore.is_some() || self.set_by_hatune.get(&key) == Some(&holds)),
                        overridden: self
                            .overridden
                            .contains_key(&key)
                            .then(|| self.expected.get(&key).copied().unwrap_or(holds)),
                        restore,
                        holds,
                        address: s.address,
                        key,
                    }
                })
                .collect(),
            reloaded,
        }
    }

    /// HAProxy accepted `write`.
    pub fn applied(&mut self, write: &Write) {
        self.restoring.remove(&write.key);
        self.accept(write.key.clone(), write.weight);
    }

    /// The connection failed before every reply was read: some writes may have landed.
    pub fn lost(&mut self, writes: &[Write]) {
        for w in writes {
            self.pending.insert(w.key.clone(), w.weight);
        }
    }

    /// Hands every overridden server back at its current weight (SIGHUP).
    pub fn resume_all(&mut self) -> usize {
        let n = self.overridden.len();
        let handed_back: Vec<ServerKey> = self.overridden.drain().map(|(k, _)| k).collect();
        self.adopt.extend(handed_back);
        n
    }

    /// Servers left alone because someone else changed their weight.
    pub fn overridden(&self) -> usize {
        self.overridden.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

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
            address: None,
        }
    }

    fn stats(servers: Vec<ServerStat>) -> Stat {
        Stat {
            backends: vec![],
            servers,
        }
    }

    fn backends() -> Vec<Backend> {
        Config::parse(
            r#"{"haproxy": "/s", "cadvisor": "http://h:1",
                "backends": [{"name": "app", "pattern": "^app-"}]}"#,
        )
        .unwrap()
        .backends
    }

    fn key(s: &str) -> ServerKey {
        ServerKey::new("app", s)
    }

    fn info(pid: u32, start: u64) -> Info {
        Info {
            version: "2.6".into(),
            pid,
            uptime_sec: 1,
            start_time_sec: Some(start),
        }
    }

    /// A reload restores only what hatune wrote: an operator's config change made with the
    /// reload (a standby at weight 0 now at 100) stays, and nothing is ever set to 0.
    #[test]
    fn a_reload_restores_only_hatunes_own_weights() {
        let b = backends();
        let mut mem = Reconciler::default();
        // A weight first seen on a serving server (after a restart) is hatune's to restore.
        mem.notice_overrides("/s", &b, &stats(vec![stat("app", "app-6", "UP", 66)]));
        mem.accept(key("app-1"), 200);
        mem.accept(key("app-2"), 100);
        mem.expected.insert(key("app-3"), 0); // a standby hatune never wrote
        mem.overridden.insert(key("app-2"), 77);
        let after = stats(vec![
            stat("app", "app-1", "UP", 50),
            stat("app", "app-2", "UP", 50),
            stat("app", "app-3", "UP", 100), // the operator's new config weight
            stat("app", "app-4", "UP", 10),  // new with this reload
            stat("app", "web-1", "UP", 10),  // not matched by the pattern
            stat("app", "app-6", "UP", 100), // first seen at 66 before the reload
        ]);
        let restores = mem.after_reload("/s", &b, &after, &HashMap::new());
        let view = mem.view(&after, &restores, true, true);
        let w: Vec<u32> = view.servers.iter().map(ServerView::weight).collect();
        assert_eq!(
            w,
            vec![200, 100, 100, 122, 10, 66],
            "app-4 at the mean of 200, 100 and 66"
        );
        assert_eq!(restores.len(), 4);
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

    /// A write whose reply was lost may have landed: that weight is hatune's, not an
    /// operator's. Servers hatune never tunes are not tracked at all.
    #[test]
    fn lost_replies_and_untuned_servers_are_not_overrides() {
        let b = backends();
        let mut mem = Reconciler::default();
        let mut backup = stat("app", "app-3", "UP", 5);
        backup.backup = true;
        let mut agent = stat("app", "app-4", "UP", 5);
        agent.agent_status = "L7OK".into();
        let seen = |w: u32, other: u32| {
            stats(vec![
                stat("app", "app-1", "UP", w),
                stat("app", "web-1", "UP", other),
                backup.clone(),
                agent.clone(),
            ])
        };
        mem.notice_overrides("/s", &b, &seen(100, 1));
        mem.lost(&[Write {
            key: key("app-1"),
            weight: 180,
            decided: true,
            restores: false,
        }]);
        mem.notice_overrides("/s", &b, &seen(180, 2));
        assert!(mem.overridden.is_empty(), "{:?}", mem.overridden);
        assert_eq!(mem.set_by_hatune[&key("app-1")], 180);
        assert!(mem.pending.is_empty());
        assert!(!mem.expected.contains_key(&key("web-1")));
        assert!(!mem.expected.contains_key(&key("app-3")));
        assert!(!mem.expected.contains_key(&key("app-4")));
    }

    #[test]
    fn a_new_process_is_a_reload() {
        let mut mem = Reconciler::default();
        assert!(!mem.notice_reload("/s", &info(10, 1000)), "first sight");
        assert!(!mem.notice_reload("/s", &info(10, 1000)));
        assert!(mem.notice_reload("/s", &info(11, 1030)));
        assert!(!mem.notice_reload("/s", &info(11, 1030)));
    }

    /// Operators win: a weight hatune did not set marks the server; setting it back resumes.
    #[test]
    fn operator_changes_are_noticed_once_and_undone_by_setting_back() {
        let b = backends();
        let mut mem = Reconciler::default();
        let seen = |a: u32, c: u32| {
            stats(vec![
                stat("app", "app-1", "UP", a),
                stat("app", "app-2", "UP", c),
            ])
        };
        mem.notice_overrides("/s", &b, &seen(100, 100));
        assert!(mem.overridden.is_empty(), "first sight is the reference");
        mem.expected.insert(key("app-1"), 200); // hatune set 200
        mem.notice_overrides("/s", &b, &seen(200, 100));
        assert!(mem.overridden.is_empty());
        mem.notice_overrides("/s", &b, &seen(0, 100)); // drained by weight 0
        assert!(mem.overridden.contains_key(&key("app-1")));
        let view = mem.view(&seen(0, 100), &HashMap::new(), false, true);
        assert_eq!(view.servers[0].overridden, Some(200), "hatune's weight");
        mem.notice_overrides("/s", &b, &seen(50, 100)); // still not hatune's
        assert!(mem.overridden.contains_key(&key("app-1")));
        mem.notice_overrides("/s", &b, &seen(200, 100)); // set back
        assert!(mem.overridden.is_empty());
        // A server that left HAProxy is forgotten.
        mem.notice_overrides("/s", &b, &stats(vec![stat("app", "app-1", "UP", 200)]));
        assert!(!mem.expected.contains_key(&key("app-2")));
    }

    #[test]
    fn resume_all_takes_the_current_weight_as_reference() {
        let b = backends();
        let mut mem = Reconciler::default();
        mem.expected.insert(key("app-1"), 200);
        let seen = stats(vec![stat("app", "app-1", "UP", 7)]);
        mem.notice_overrides("/s", &b, &seen);
        assert_eq!(mem.overridden(), 1);
        assert_eq!(mem.resume_all(), 1);
        mem.notice_overrides("/s", &b, &seen);
        assert!(mem.overridden.is_empty());
        assert_eq!(mem.expected[&key("app-1")], 7);
        assert_eq!(
            mem.set_by_hatune[&key("app-1")],
            7,
            "a reload restores the handed-back weight"
        );
    }

    /// An operator's weight that the new process holds again after a reload (they set it
    /// again, or a server-state file carried it) stays theirs: nothing is restored over it,
    /// and setting it back to hatune's weight still hands the server back.
    #[test]
    fn an_operators_weight_held_across_a_reload_stays_theirs() {
        let b = backends();
        let mut mem = Reconciler::default();
        let seen = |a: u32, c: u32| {
            stats(vec![
                stat("app", "app-1", "UP", a),
                stat("app", "app-2", "UP", c),
            ])
        };
        mem.notice_overrides("/s", &b, &seen(120, 80));
        mem.notice_overrides("/s", &b, &seen(120, 200)); // the operator's 200 on app-2
        assert_eq!(mem.overridden.get(&key("app-2")), Some(&200));
        let restores = mem.after_reload("/s", &b, &seen(100, 200), &HashMap::new());
        assert_eq!(restores.len(), 1, "app-1 only: {restores:?}");
        assert_eq!(restores[&key("app-1")], 120);
        let view = mem.view(&seen(100, 200), &restores, true, true);
        assert_eq!(view.servers[1].overridden, Some(80), "still the operator's");
        mem.applied(&Write {
            key: key("app-1"),
            weight: 120,
            decided: false,
            restores: true,
        });
        // Set back to hatune's 80: handed back.
        mem.notice_overrides("/s", &b, &seen(120, 80));
        assert!(mem.overridden.is_empty());
        // An override the reload did not carry over belonged to the old process.
        mem.notice_overrides("/s", &b, &seen(120, 30));
        assert!(mem
            .after_reload("/s", &b, &seen(100, 100), &HashMap::new())
            .contains_key(&key("app-2")));
        assert!(mem.overridden.is_empty());
    }

    /// Found by the soak: an operator who sets a weight between a reload and hatune's next
    /// tick keeps it. The config's weights (`show servers state`) tell it from a reset.
    #[test]
    fn a_weight_set_since_the_reload_is_the_operators() {
        let b = backends();
        let mut mem = Reconciler::default();
        let seen = |a: u32, c: u32, d: Option<u32>| {
            let mut rows = vec![stat("app", "app-1", "UP", a), stat("app", "app-2", "UP", c)];
            rows.extend(d.map(|d| stat("app", "app-3", "UP", d)));
            stats(rows)
        };
        mem.notice_overrides("/s", &b, &seen(120, 80, None));
        let initial: HashMap<ServerKey, u32> = ["app-1", "app-2", "app-3"]
            .into_iter()
            .map(|s| (key(s), 100))
            .collect();
        // app-1 was reset to the config's 100; app-2 was set to 51 since; app-3 is new and
        // set to 7 since.
        let restores = mem.after_reload("/s", &b, &seen(100, 51, Some(7)), &initial);
        assert_eq!(restores, HashMap::from([(key("app-1"), 120)]));
        assert_eq!(mem.overridden.get(&key("app-2")), Some(&51));
        assert_eq!(mem.overridden.get(&key("app-3")), Some(&7));
        let view = mem.view(&seen(100, 51, Some(7)), &restores, true, true);
        assert_eq!(
            view.servers[1].overridden,
            Some(80),
            "set back to 80 to hand it back"
        );
        assert_eq!(
            view.servers[2].overridden,
            Some(100),
            "the config's, for a new one"
        );
        // Set back to hatune's: handed back.
        mem.notice_overrides("/s", &b, &seen(120, 80, Some(7)));
        assert!(!mem.overridden.contains_key(&key("app-2")));
        assert!(mem.overridden.contains_key(&key("app-3")));
        // Unknown initial weights (an older API): every weight hatune set is restored.
        let restores = mem.after_reload("/s", &b, &seen(100, 51, Some(7)), &HashMap::new());
        assert!(restores.contains_key(&key("app-2")), "{restores:?}");
    }

    /// A restore whose writes failed is given back at the next reads, until it lands; an
    /// operator's weight set meanwhile ends it.
    #[test]
    fn a_failed_restore_is_given_back_until_it_lands() {
        let b = backends();
        let mut mem = Reconciler::default();
        mem.notice_overrides(
            "/s",
            &b,
            &stats(vec![
                stat("app", "app-1", "UP", 200),
                stat("app", "app-2", "UP", 50),
            ]),
        );
        let reset = stats(vec![
            stat("app", "app-1", "UP", 100),
            stat("app", "app-2", "UP", 100),
        ]);
        let restores = mem.after_reload("/s", &b, &reset, &HashMap::new());
        assert_eq!(restores.len(), 2);
        let write = |server: &str, weight| Write {
            key: key(server),
            weight,
            decided: false,
            restores: true,
        };
        mem.lost(&[write("app-1", 200), write("app-2", 50)]);
        let again = mem.notice_overrides("/s", &b, &reset);
        assert_eq!(again, restores, "nothing landed: both again");
        mem.applied(&write("app-1", 200));
        let operator = stats(vec![
            stat("app", "app-1", "UP", 200),
            stat("app", "app-2", "UP", 70),
        ]);
        assert!(mem.notice_overrides("/s", &b, &operator).is_empty());
        assert!(
            mem.overridden.contains_key(&key("app-2")),
            "the operator's 70 wins"
        );
        assert!(mem.restoring.is_empty());

        // Never sent (a dry run): the next read decides from what HAProxy holds.
        let mut dry = Reconciler::default();
        dry.notice_overrides("/s", &b, &stats(vec![stat("app", "app-1", "UP", 200)]));
        let reset = stats(vec![stat("app", "app-1", "UP", 100)]);
        assert_eq!(dry.after_reload("/s", &b, &reset, &HashMap::new()).len(), 1);
        assert!(dry.notice_overrides("/s", &b, &reset).is_empty());
    }

    /// 1 s, 2 s, 4 s ... 60 s between attempts; the first failure in a row is the loud one.
    #[test]
    fn a_failing_socket_backs_off() {
        let mut mem = Reconciler::default();
        let t0 = Instant::now();
        assert_eq!(mem.backing_off(t0), None);
        assert!(mem.failed(t0));
        assert_eq!(mem.backing_off(t0), Some(Duration::from_secs(1)));
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(mem.backing_off(t1), None, "due again");
        assert!(!mem.failed(t1));
        assert_eq!(mem.backing_off(t1), Some(Duration::from_secs(2)));
        for _ in 0..10 {
            mem.failed(t1);
        }
        assert_eq!(mem.backing_off(t1), Some(MAX_BACKOFF));
        assert!(mem.recovered());
        assert_eq!(mem.backing_off(t1), None);
        assert!(!mem.recovered());
    }

    /// What a run saves, the next restores, but for the backoff: a run from cron always tries.
    #[test]
    fn what_a_run_saves_the_next_restores_without_backoff() {
        let mut r = Reconciler {
            identity: Some((42, Some(1_700_000_000))),
            ..Reconciler::default()
        };
        r.accept(ServerKey::new("app", "a"), 120);
        r.overridden.insert(ServerKey::new("app", "b"), 33);
        r.adopt.insert(ServerKey::new("app", "c"));
        r.pending.insert(ServerKey::new("app", "d"), 7);
        let now = Instant::now();
        r.failed(now);
        assert!(r.backing_off(now).is_some());
        let saved = r.save();
        let json = serde_json::to_value(&saved).unwrap();
        let back = Reconciler::restore(serde_json::from_value(json).unwrap());
        assert_eq!(back.save(), saved);
        assert_eq!(back.identity, Some((42, Some(1_700_000_000))));
        assert_eq!(back.set_by_hatune[&ServerKey::new("app", "a")], 120);
        assert_eq!(back.overridden(), 1);
        assert_eq!(back.backing_off(now), None);
    }
}
