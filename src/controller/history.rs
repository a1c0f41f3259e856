//! What the controller's guards and capacity mode need from earlier ticks, per server: since
//! when it has had no reading, whether it is new to its backend, whether it just came back into
//! service, and its filtered capacity. Pure: time is passed in.
//!
//! A fresh `History` knows nothing, so one tick over it (`hatune once`) decides as if there
//! were no earlier ticks: no server is new, none has been without data for long, none has a
//! capacity estimate.

use std::collections::{HashMap, HashSet};

use tokio::time::Instant;

use super::Settings;
use super::{filter_capacity, Input, Reason, ServerInput, ServerKey};

/// Fewer requests than this over a window give no capacity estimate (too coarse).
const MIN_REQUESTS_FOR_CAPACITY: u64 = 20;

/// Requests a server has served, summed over the balancers read this tick, with the indexes
/// of those balancers: a different set makes two sums incomparable.
pub type Served = (u64, Vec<usize>);

#[derive(Debug, Default, Clone, PartialEq)]
struct ServerMemory {
    requests: Option<Served>,
    /// Capacity mode: the filtered requests-per-utilisation estimate.
    capacity: Option<f64>,
    /// Since when the server has had no reading.
    outage_since: Option<Instant>,
    /// Out of service (DRAIN, MAINT, DOWN, ...) at the last tick.
    out_of_service: bool,
}

/// Per server of every tuned backend, from tick to tick.
#[derive(Debug, Default)]
pub struct History {
    servers: HashMap<ServerKey, ServerMemory>,
    /// Backends seen at least once: a server not seen before in one of them is new.
    backends_seen: HashSet<String>,
    /// The balancers of the last tick: request counters are summed over them, so another list
    /// (a reloaded config) makes the sums incomparable.
    balancers: Vec<String>,
}

/// What the history keeps between runs of `hatune once --state`. Times are ages at the
/// moment it was saved (an `Instant` means nothing to another process).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct SavedHistory {
    /// By backend, then server.
    servers: std::collections::BTreeMap<String, std::collections::BTreeMap<String, SavedServer>>,
    backends_seen: Vec<String>,
    balancers: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct SavedServer {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    requests: Option<Served>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    capacity: Option<f64>,
    /// How long it had had no reading, in ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    outage_ms: Option<u64>,
    #[serde(default)]
    out_of_service: bool,
}

impl History {
    /// What to keep until the next run, as of `now`.
    pub fn save(&self, now: Instant) -> SavedHistory {
        let mut servers: std::collections::BTreeMap<_, std::collections::BTreeMap<_, _>> =
            Default::default();
        for (key, m) in &self.servers {
            let saved = SavedServer {
                requests: m.requests.clone(),
                capacity: m.capacity.filter(|c| c.is_finite()),
                outage_ms: m.outage_since.map(|since| {
                    u64::try_from(now.saturating_duration_since(since).as_millis())
                        .unwrap_or(u64::MAX)
                }),
                out_of_service: m.out_of_service,
            };
            servers
                .entry(key.backend.clone())
                .or_default()
                .insert(key.server.clone(), saved);
        }
        let mut backends_seen: Vec<String> = self.backends_seen.iter().cloned().collect();
        backends_seen.sort();
        SavedHistory {
            servers,
            backends_seen,
            balancers: self.balancers.clone(),
        }
    }

    /// The history a run saved `age` before `now`: outages have gone on since. Request counts
    /// are kept only when `counters` (the runs are close enough that the requests served
    /// between them and the CPU window are of the same time).
    pub fn restore(
        saved: SavedHistory,
        now: Instant,
        age: std::time::Duration,
        counters: bool,
    ) -> History {
        let servers = saved
            .servers
            .into_iter()
            .flat_map(|(backend, servers)| {
                servers
                    .into_iter()
                    .map(move |(server, s)| (ServerKey::new(backend.clone(), server), s))
            })
            .map(|(key, s)| {
                let outage_since = s.outage_ms.map(|ms| {
                    let d = std::time::Duration::from_millis(ms).saturating_add(age);
                    now.checked_sub(d).unwrap_or(now)
                });
                let memory = ServerMemory {
                    requests: s.requests.filter(|_| counters),
                    capacity: s.capacity.filter(|c| c.is_finite()),
                    outage_since,
                    out_of_service: s.out_of_service,
                };
                (key, memory)
            })
            .collect();
        History {
            servers,
            backends_seen: saved.backends_seen.into_iter().collect(),
            balancers: saved.balancers,
        }
    }

    /// The balancers this tick reads; when they differ from the last tick's, every request
    /// counter starts afresh.
    pub fn balancers(&mut self, names: Vec<String>) {
        if self.balancers != names {
            for server in self.servers.values_mut() {
                server.requests = None;
            }
            self.balancers = names;
        }
    }

    /// Brings one backend's servers up to date and hands the controller what it needs: how
    /// long each has been without data, whether it is new, and (capacity mode) its filtered
    /// capacity, from the requests it served since the last tick over its utilisation in the
    /// same window. A server back in service is held this tick: its window covers time it
    /// served nothing. When `prune`, servers of the backend not in `inputs` left and are
    /// forgotten (only when every balancer was read: one missing from an unreadable balancer
    /// has not left).
    pub fn update<'a>(
        &mut self,
        backend: &str,
        settings: &Settings,
        now: Instant,
        served: &[Option<Served>],
        prune: bool,
        inputs: impl Iterator<Item = &'a mut ServerInput>,
    ) {
        let first_sight = self.backends_seen.insert(backend.to_string());
        let mut seen = HashSet::new();
        for (input, counter) in inputs.zip(served) {
            let key = ServerKey::new(backend, input.name.clone());
            let known = self.servers.contains_key(&key);
            let mem = self.servers.entry(key.clone()).or_default();
            let excluded = matches!(input.input, Input::Excluded(_));
            input.new = !first_sight && !known && !excluded;
            // An operator's weight, or an agent's, leaves the server serving: only a server
            // that took no traffic has a window that says nothing of its load.
            let out_of_service = matches!(&input.input, Input::Excluded(r) if r.takes_no_traffic());
            if mem.out_of_service && !out_of_service && matches!(input.input, Input::Measured(_)) {
                input.input = Input::NoData(Reason::NoReading(
                    "back in service this tick: reading not representative".into(),
                ));
            }
            mem.out_of_service = out_of_service;
            match input.input {
                Input::NoData(_) => {
                    let since = *mem.outage_since.get_or_insert(now);
                    input.outage = Some(now.saturating_duration_since(since));
                }
                _ => mem.outage_since = None,
            }
            if let (Input::Measured(cpu), Some((total, from)), Some((before, before_from))) =
                (&input.input, counter, &mem.requests)
            {
                let served = total.checked_sub(*before).filter(|_| from == before_from);
                if let Some(served) = served.filter(|&n| n >= MIN_REQUESTS_FOR_CAPACITY) {
                    if *cpu > 0.0 && cpu.is_finite() {
                        let sample = served as f64 / cpu;
                        mem.capacity = Some(filter_capacity(mem.capacity, sample, settings));
                    }
                }
            }
            mem.requests = counter.clone();
            input.capacity = mem.capacity;
            seen.insert(key);
        }
        if prune {
            self.servers
                .retain(|k, _| k.backend != backend || seen.contains(k));
        }
    }

    /// Forgets backends the config no longer has (after SIGHUP), so one added back later
    /// starts afresh.
    pub fn retain_backends(&mut self, keep: impl Fn(&str) -> bool) {
        self.servers.retain(|k, _| keep(&k.backend));
        self.backends_seen.retain(|b| keep(b));
    }

    /// True when nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.servers.is_empty() && self.backends_seen.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::Mode;
    use std::time::Duration;

    fn key(s: &str) -> ServerKey {
        ServerKey::new("app", s)
    }

    /// A server missing because its balancer was unreadable is not forgotten (it would come
    /// back as "new", at the mean weight); a backend removed by a config reload is.
    #[test]
    fn servers_are_forgotten_only_when_they_really_left() {
        let s = Settings::default();
        let mut history = History::default();
        let t = Instant::now();
        let mut both = [
            ServerInput::new("app-1", 10, Input::Measured(0.5)),
            ServerInput::new("app-2", 10, Input::Measured(0.5)),
        ];
        history.update("app", &s, t, &[None, None], true, both.iter_mut());
        let mut one = [ServerInput::new("app-1", 10, Input::Measured(0.5))];
        history.update("app", &s, t, &[None], false, one.iter_mut());
        assert!(
            history.servers.contains_key(&key("app-2")),
            "a balancer was unreadable: kept"
        );
        history.update("app", &s, t, &[None], true, one.iter_mut());
        assert!(
            !history.servers.contains_key(&key("app-2")),
            "every balancer read: it left"
        );

        history.retain_backends(|b| b == "api");
        assert!(history.is_empty());
    }

    /// Capacity from requests over utilisation, outage time, new servers; a changed set of
    /// balancers or a reset counter gives no capacity sample.
    #[test]
    fn server_memory_feeds_the_guards_and_capacity_mode() {
        let s = Settings {
            mode: Mode::Capacity,
            capacity_filter: 1.0,
            ..Settings::default()
        };
        let mut history = History::default();
        let t0 = Instant::now();
        let mut round = |t: Instant, inputs: &mut Vec<ServerInput>, counters: &[Option<Served>]| {
            history.update("app", &s, t, counters, true, inputs.iter_mut());
        };
        let si = |n: &str, i: Input| ServerInput::new(n, 100, i);
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
        // app-1 now counted on two balancers: not comparable; the estimate is kept.
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
        // At an operator's weight it served all along: not held when handed back.
        let mut theirs = vec![si(
            "app-1",
            Input::Excluded(Reason::Overridden { expected: 100 }),
        )];
        round(t2, &mut theirs, &[Some((1700, vec![0]))]);
        let mut handed_back = vec![si("app-1", Input::Measured(0.4))];
        round(t2, &mut handed_back, &[Some((1800, vec![0]))]);
        assert_eq!(handed_back[0].input, Input::Measured(0.4));
        assert!(
            !history.servers.contains_key(&key("app-3")),
            "left: forgotten"
        );
    }

    /// Another list of balancers makes the request sums incomparable: no capacity sample.
    #[test]
    fn other_balancers_restart_the_counters() {
        let s = Settings {
            mode: Mode::Capacity,
            ..Settings::default()
        };
        let mut history = History::default();
        let t = Instant::now();
        history.balancers(vec!["/a".into()]);
        let mut one = [ServerInput::new("app-1", 100, Input::Measured(0.5))];
        history.update("app", &s, t, &[Some((1000, vec![0]))], true, one.iter_mut());
        history.balancers(vec!["/a".into(), "/b".into()]);
        history.update("app", &s, t, &[Some((1400, vec![0]))], true, one.iter_mut());
        assert_eq!(one[0].capacity, None);
        history.update("app", &s, t, &[Some((1800, vec![0]))], true, one.iter_mut());
        assert_eq!(one[0].capacity, Some(800.0));
    }

    /// What one run saves, the next restores: capacity, counters, new-server memory, and an
    /// outage that has gone on for as long as the runs were apart.
    #[test]
    fn a_saved_history_goes_on_in_the_next_run() {
        let s = Settings {
            mode: Mode::Capacity,
            capacity_filter: 1.0,
            ..Settings::default()
        };
        let mut history = History::default();
        let t0 = Instant::now();
        let mut inputs = [
            ServerInput::new("app-1", 100, Input::Measured(0.5)),
            ServerInput::new("app-2", 100, Input::NoData(Reason::NoContainer)),
        ];
        let counters = [Some((1000, vec![0])), None];
        history.update("app", &s, t0, &counters, true, inputs.iter_mut());
        let mut inputs = [
            ServerInput::new("app-1", 100, Input::Measured(0.5)),
            ServerInput::new("app-2", 100, Input::NoData(Reason::NoContainer)),
        ];
        let counters = [Some((1100, vec![0])), None];
        let t1 = t0 + Duration::from_secs(60);
        history.update("app", &s, t1, &counters, true, inputs.iter_mut());
        assert_eq!(history.servers[&key("app-1")].capacity, Some(200.0));

        let saved = history.save(t1);
        let json = serde_json::to_value(&saved).unwrap();
        let back: SavedHistory = serde_json::from_value(json).unwrap();
        assert_eq!(back, saved);
        // The next run, 60 s later by the wall clock, on a fresh process's clock.
        let t2 = Instant::now() + Duration::from_secs(3600);
        let stale = History::restore(back.clone(), t2, Duration::from_secs(3600), false);
        assert_eq!(stale.servers[&key("app-1")].requests, None);
        let mut restored = History::restore(back, t2, Duration::from_secs(60), true);
        assert_eq!(restored.servers[&key("app-1")].capacity, Some(200.0));
        assert_eq!(
            restored.servers[&key("app-1")].requests,
            Some((1100, vec![0]))
        );
        let mut inputs = [
            ServerInput::new("app-1", 100, Input::Measured(0.5)),
            ServerInput::new("app-2", 100, Input::NoData(Reason::NoContainer)),
            ServerInput::new("app-3", 100, Input::Measured(0.5)),
        ];
        restored.update("app", &s, t2, &[None, None, None], true, inputs.iter_mut());
        // 60 s of outage before the save, 60 s between the runs.
        assert_eq!(inputs[1].outage, Some(Duration::from_secs(120)));
        assert!(inputs[2].new, "the backend was seen before: app-3 is new");
        assert!(!inputs[0].new);
    }
}
