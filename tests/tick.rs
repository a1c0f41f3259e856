//! Whole ticks in-process, on tokio's paused clock: a fake source whose readings the test sets
//! between ticks, fake balancers held in memory, and the real HAProxy sink driven through a
//! fake runtime API. What only the passing of time shows (hold, backoff, outages, reloads
//! between ticks) is tested here without a real HAProxy, a real cAdvisor or real waiting.
//!
//! The load model is the controller's own: readings do not follow the weights, so each tick's
//! weights follow from the readings given and the weights held (halfway rule, gain 0.5, the
//! largest weight scaled to 256). The expected weights below were worked out by hand from it.

use std::collections::{BTreeMap, HashSet};
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::future::{ready, BoxFuture};
use serde_json::{json, Value};
use tokio::time::{advance, Instant};

use hatune::config::{Backend, Config};
use hatune::controller::{mean_weight, ServerKey};
use hatune::report::{Action, ServerRow, SocketStatus, TickReport};
use hatune::sink::haproxy::{
    Address, BackendStat, Error, HaproxySink, Info, RuntimeApi, ServerStat, Stat, WeightChange,
    WeightOutcome,
};
use hatune::sink::{DryRun, Inventory, Outcome, ServerView, Sink, View, Write};
use hatune::source::{ContainerReading, HostError, HostPoll, HostReading, Source, Utilisation};
use hatune::tick::Tuner;

const H1: &str = "http://h1:8080";
const H2: &str = "http://h2:8080";
const H3: &str = "http://h3:8080";
const H4: &str = "http://h4:8080";
const SOCK_A: &str = "/fake/a.sock";
const SOCK_B: &str = "/fake/b.sock";

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap()
}

// ---------------------------------------------------------------------------------------------
// A fake source
// ---------------------------------------------------------------------------------------------

/// What each host answers at the next poll: its containers' utilisation by alias, or an error.
/// A host never set answers with no containers.
#[derive(Clone, Default)]
struct Hosts(Arc<Mutex<HostsState>>);

#[derive(Default)]
struct HostsState {
    answers: BTreeMap<String, Result<Vec<(String, f64)>, HostError>>,
    /// Each host's IP, for address matching (none unless set).
    addresses: BTreeMap<String, std::net::IpAddr>,
    polls: usize,
}

impl Hosts {
    /// `host` reports these containers (by alias) at these utilisations.
    fn set(&self, host: &str, containers: &[(&str, f64)]) {
        let list = containers
            .iter()
            .map(|(a, c)| (a.to_string(), *c))
            .collect();
        lock(&self.0).answers.insert(host.into(), Ok(list));
    }

    /// `host` is at `ip` (address matching).
    fn set_address(&self, host: &str, ip: &str) {
        lock(&self.0)
            .addresses
            .insert(host.into(), ip.parse().unwrap());
    }

    fn fail(&self, host: &str, error: HostError) {
        lock(&self.0).answers.insert(host.into(), Err(error));
    }

    fn polls(&self) -> usize {
        lock(&self.0).polls
    }

    fn source(&self, hosts: &[&str]) -> Box<dyn Source> {
        Box::new(FakeSource {
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            state: self.clone(),
        })
    }
}

struct FakeSource {
    hosts: Vec<String>,
    state: Hosts,
}

impl FakeSource {
    fn answer(&self) -> Vec<HostPoll> {
        let state = lock(&self.state.0);
        self.hosts
            .iter()
            .map(|host| {
                let containers = match state.answers.get(host) {
                    Some(Err(e)) => return Err(e.clone()),
                    Some(Ok(list)) => list.clone(),
                    None => vec![],
                };
                Ok(HostReading {
                    host: host.clone(),
                    name: host.clone(),
                    addresses: state.addresses.get(host).into_iter().copied().collect(),
                    num_cores: 4,
                    containers: containers
                        .into_iter()
                        .map(|(alias, cpu)| ContainerReading {
                            name: format!("/docker/{alias}-0123"),
                            aliases: vec![alias.clone(), format!("{alias}-0123")],
                            labels: Default::default(),
                            reading: Ok(Utilisation {
                                cpu,
                                cores_used: cpu,
                                capacity_cores: 1.0,
                                from: 0,
                                to: 30_000_000_000,
                            }),
                        })
                        .collect(),
                })
            })
            .collect()
    }
}

impl Source for FakeSource {
    fn kind(&self) -> &'static str {
        "fake"
    }

    fn hosts(&self) -> &[String] {
        &self.hosts
    }

    fn poll(&mut self) -> BoxFuture<'_, Vec<HostPoll>> {
        lock(&self.state.0).polls += 1;
        Box::pin(ready(self.answer()))
    }

    fn reconfigure(&mut self, _config: &Config) {}

    fn probe(&self) -> BoxFuture<'_, Vec<(String, HostPoll)>> {
        Box::pin(ready(
            self.hosts.iter().cloned().zip(self.answer()).collect(),
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// A fake balancer, as a Sink
// ---------------------------------------------------------------------------------------------

/// One balancer held in memory: backend `app`'s servers and their weights. Its view marks a
/// weight as hatune's when hatune wrote it, as the HAProxy sink does.
#[derive(Clone)]
struct Balancer(Arc<Mutex<BalancerState>>);

struct BalancerState {
    /// (server, weight it holds, the weight hatune last wrote).
    servers: Vec<(String, u32, Option<u32>)>,
    fail_reads: Option<String>,
    fail_applies: Option<String>,
    reads: usize,
    /// Every apply call's writes, as (server, weight).
    applies: Vec<Vec<(String, u32)>>,
}

impl Balancer {
    fn new(servers: &[(&str, u32)]) -> Balancer {
        Balancer(Arc::new(Mutex::new(BalancerState {
            servers: servers
                .iter()
                .map(|(s, w)| (s.to_string(), *w, None))
                .collect(),
            fail_reads: None,
            fail_applies: None,
            reads: 0,
            applies: vec![],
        })))
    }

    fn sink(&self, name: &str) -> FakeSink {
        FakeSink {
            name: name.into(),
            state: self.clone(),
        }
    }

    fn weights(&self) -> BTreeMap<String, u32> {
        lock(&self.0)
            .servers
            .iter()
            .map(|(s, w, _)| (s.clone(), *w))
            .collect()
    }

    fn fail_reads(&self, error: Option<&str>) {
        lock(&self.0).fail_reads = error.map(String::from);
    }

    fn fail_applies(&self, error: Option<&str>) {
        lock(&self.0).fail_applies = error.map(String::from);
    }

    fn reads(&self) -> usize {
        lock(&self.0).reads
    }

    fn applies(&self) -> Vec<Vec<(String, u32)>> {
        lock(&self.0).applies.clone()
    }
}

struct FakeSink {
    name: String,
    state: Balancer,
}

impl Sink for FakeSink {
    fn kind(&self) -> &'static str {
        "fake balancer"
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn read<'a>(
        &'a mut self,
        _backends: &'a [Backend],
        _now: Instant,
    ) -> BoxFuture<'a, Result<View, String>> {
        let mut state = lock(&self.state.0);
        state.reads += 1;
        let read = match &state.fail_reads {
            Some(e) => Err(e.clone()),
            None => Ok(View {
                backends: vec!["app".into()],
                servers: state
                    .servers
                    .iter()
                    .map(|(server, holds, hatune)| ServerView {
                        ours: *hatune == Some(*holds),
                        ..ServerView::new(ServerKey::new("app", server.clone()), *holds)
                    })
                    .collect(),
                reloaded: false,
            }),
        };
        Box::pin(ready(read))
    }

    fn apply<'a>(&'a mut self, writes: &'a [Write]) -> BoxFuture<'a, Result<Vec<Outcome>, String>> {
        let mut state = lock(&self.state.0);
        state.applies.push(
            writes
                .iter()
                .map(|w| (w.key.server.clone(), w.weight))
                .collect(),
        );
        if let Some(e) = state.fail_applies.clone() {
            return Box::pin(ready(Err(e)));
        }
        for w in writes {
            let server = state
                .servers
                .iter_mut()
                .find(|(s, _, _)| *s == w.key.server)
                .expect("a write to a server the balancer has");
            server.1 = w.weight;
            server.2 = Some(w.weight);
        }
        Box::pin(ready(Ok(vec![Outcome::Applied; writes.len()])))
    }

    fn probe(&self) -> BoxFuture<'_, Result<Inventory, String>> {
        let state = lock(&self.state.0);
        Box::pin(ready(Ok(Inventory {
            access: "fake".into(),
            backends: vec!["app".into()],
            servers: state
                .servers
                .iter()
                .map(|(s, w, _)| ServerView::new(ServerKey::new("app", s.clone()), *w))
                .collect(),
        })))
    }
}

// ---------------------------------------------------------------------------------------------
// A fake HAProxy runtime API, for the real HAProxy sink
// ---------------------------------------------------------------------------------------------

/// How `set weight` batches fare.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Writes {
    Answered,
    /// The connection fails before any reply is read; nothing is applied.
    Fail,
    /// Every change is applied, then the connection fails before the replies are read.
    LoseReplies,
}

/// Runtime-API calls made, by command.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Calls {
    show_info: usize,
    show_stat: usize,
    check_admin: usize,
    set_weights: usize,
}

impl Calls {
    fn total(&self) -> usize {
        self.show_info + self.show_stat + self.check_admin + self.set_weights
    }
}

struct RtServer {
    name: String,
    weight: u32,
    /// What a reload resets it to.
    config_weight: u32,
    /// `show stat`'s `addr`.
    address: Option<std::net::SocketAddr>,
}

struct RuntimeState {
    pid: u32,
    start_time: u64,
    servers: Vec<RtServer>,
    fail_reads: bool,
    writes: Writes,
    /// Servers whose `set weight` HAProxy answers with an error.
    refuse: HashSet<String>,
    calls: Calls,
    timeout: Option<Duration>,
}

/// An in-memory HAProxy with one backend, `app`.
#[derive(Clone)]
struct FakeRuntime {
    address: Address,
    state: Arc<Mutex<RuntimeState>>,
}

impl FakeRuntime {
    fn new(address: &str, servers: &[(&str, u32)]) -> FakeRuntime {
        FakeRuntime {
            address: Address::parse(address).unwrap(),
            state: Arc::new(Mutex::new(RuntimeState {
                pid: 100,
                start_time: 1_700_000_000,
                servers: servers
                    .iter()
                    .map(|(s, w)| RtServer {
                        name: s.to_string(),
                        weight: *w,
                        config_weight: *w,
                        address: None,
                    })
                    .collect(),
                fail_reads: false,
                writes: Writes::Answered,
                refuse: HashSet::new(),
                calls: Calls::default(),
                timeout: None,
            })),
        }
    }

    /// A new process: a new pid and start time, every weight back to its config weight, and
    /// the servers the new config adds.
    fn reload(&self, added: &[(&str, u32)]) {
        let mut s = lock(&self.state);
        s.pid += 1;
        s.start_time += 30;
        for server in &mut s.servers {
            server.weight = server.config_weight;
        }
        s.servers.extend(added.iter().map(|(n, w)| RtServer {
            name: n.to_string(),
            weight: *w,
            config_weight: *w,
            address: None,
        }));
    }

    /// Where `server` sends traffic (`addr` in `show stat`).
    fn set_address(&self, server: &str, addr: &str) {
        let mut s = lock(&self.state);
        let rt = s.servers.iter_mut().find(|r| r.name == server).unwrap();
        rt.address = Some(addr.parse().unwrap());
    }

    /// Someone else sets a weight (`set weight` from an operator's shell).
    fn operator_sets(&self, server: &str, weight: u32) {
        let mut s = lock(&self.state);
        let rt = s.servers.iter_mut().find(|r| r.name == server).unwrap();
        rt.weight = weight;
    }

    fn weights(&self) -> BTreeMap<String, u32> {
        lock(&self.state)
            .servers
            .iter()
            .map(|s| (s.name.clone(), s.weight))
            .collect()
    }

    fn fail_reads(&self, fail: bool) {
        lock(&self.state).fail_reads = fail;
    }

    fn writes(&self, writes: Writes) {
        lock(&self.state).writes = writes;
    }

    fn refuse(&self, server: &str) {
        lock(&self.state).refuse.insert(server.into());
    }

    fn calls(&self) -> Calls {
        lock(&self.state).calls
    }

    fn refused(&self) -> Error {
        Error::Connect {
            addr: self.address.clone(),
            source: io::Error::new(io::ErrorKind::ConnectionRefused, "Connection refused"),
        }
    }

    fn sink(&self, follow_reloads: bool) -> HaproxySink<FakeRuntime> {
        HaproxySink::new(self.clone(), follow_reloads)
    }
}

impl RuntimeApi for FakeRuntime {
    fn address(&self) -> &Address {
        &self.address
    }

    fn set_timeout(&mut self, timeout: Duration) {
        lock(&self.state).timeout = Some(timeout);
    }

    fn show_info(&self) -> BoxFuture<'_, Result<Info, Error>> {
        let mut s = lock(&self.state);
        s.calls.show_info += 1;
        let reply = if s.fail_reads {
            Err(self.refused())
        } else {
            Ok(Info {
                version: "2.6.12".into(),
                pid: s.pid,
                uptime_sec: 10,
                start_time_sec: Some(s.start_time),
            })
        };
        Box::pin(ready(reply))
    }

    fn show_stat(&self) -> BoxFuture<'_, Result<Stat, Error>> {
        let mut s = lock(&self.state);
        s.calls.show_stat += 1;
        let reply = if s.fail_reads {
            Err(self.refused())
        } else {
            Ok(Stat {
                backends: vec![BackendStat {
                    name: "app".into(),
                    algo: Some("roundrobin".into()),
                }],
                servers: s
                    .servers
                    .iter()
                    .map(|r| ServerStat {
                        backend: "app".into(),
                        server: r.name.clone(),
                        status: "UP".into(),
                        weight: r.weight,
                        uweight: Some(r.weight),
                        backup: false,
                        throttle: None,
                        agent_status: String::new(),
                        sessions_total: None,
                        lb_total: None,
                        address: r.address,
                    })
                    .collect(),
            })
        };
        Box::pin(ready(reply))
    }

    /// `show servers state`: the config's weights.
    fn initial_weights(
        &self,
    ) -> BoxFuture<'_, Result<std::collections::HashMap<ServerKey, u32>, Error>> {
        let s = lock(&self.state);
        let reply = if s.fail_reads {
            Err(self.refused())
        } else {
            Ok(s.servers
                .iter()
                .map(|r| (ServerKey::new("app", r.name.clone()), r.config_weight))
                .collect())
        };
        Box::pin(ready(reply))
    }

    fn check_admin(&self) -> BoxFuture<'_, Result<(), Error>> {
        let mut s = lock(&self.state);
        s.calls.check_admin += 1;
        let reply = if s.fail_reads {
            Err(self.refused())
        } else {
            Ok(())
        };
        Box::pin(ready(reply))
    }

    fn set_weights<'a>(
        &'a self,
        changes: &'a [WeightChange],
    ) -> BoxFuture<'a, Result<Vec<WeightOutcome>, Error>> {
        let mut s = lock(&self.state);
        s.calls.set_weights += 1;
        if s.writes == Writes::Fail {
            return Box::pin(ready(Err(self.refused())));
        }
        let mut outcomes = vec![];
        for c in changes {
            assert_eq!(c.backend, "app");
            if s.refuse.contains(&c.server) {
                outcomes.push(Err("Backend is using a static LB algorithm.".to_string()));
                continue;
            }
            match s.servers.iter_mut().find(|r| r.name == c.server) {
                Some(r) => {
                    r.weight = c.weight;
                    outcomes.push(Ok(()));
                }
                None => outcomes.push(Err("No such server.".to_string())),
            }
        }
        let reply = if s.writes == Writes::LoseReplies {
            Err(Error::Io {
                addr: self.address.clone(),
                source: io::Error::new(io::ErrorKind::ConnectionReset, "Connection reset"),
            })
        } else {
            Ok(outcomes)
        };
        Box::pin(ready(reply))
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Backend `app` (servers `app-*`) with these controller settings; the sockets and hosts are
/// dummies: the fakes stand in for them.
fn config(controller: Value) -> Config {
    Config::parse(
        &json!({
            "haproxy": [SOCK_A, SOCK_B],
            "cadvisor": [H1, H2, H3, H4],
            "backends": [{"name": "app", "pattern": "app-"}],
            "controller": controller,
        })
        .to_string(),
    )
    .unwrap()
}

/// Advances the paused clock by `secs` and runs one tick at the new now.
async fn tick_after(tuner: &mut Tuner, config: &Config, secs: f64) -> TickReport {
    advance(Duration::from_secs_f64(secs)).await;
    tuner.tick(config, Instant::now()).await
}

fn row<'a>(report: &'a TickReport, server: &str) -> &'a ServerRow {
    report.backends[0]
        .servers
        .iter()
        .find(|r| r.server == server)
        .unwrap_or_else(|| panic!("no row for {server}: {report:#?}"))
}

/// Each row's (server, action, proposed, reason).
fn rows(report: &TickReport) -> Vec<(String, Action, u32, Option<String>)> {
    report.backends[0]
        .servers
        .iter()
        .map(|r| (r.server.clone(), r.action, r.proposed, r.reason.clone()))
        .collect()
}

fn r(
    server: &str,
    action: Action,
    proposed: u32,
    reason: Option<&str>,
) -> (String, Action, u32, Option<String>) {
    (server.into(), action, proposed, reason.map(String::from))
}

fn weights(list: &[(&str, u32)]) -> BTreeMap<String, u32> {
    list.iter().map(|(s, w)| (s.to_string(), *w)).collect()
}

fn socket<'a>(report: &'a TickReport, address: &str) -> &'a SocketStatus {
    report
        .sockets
        .iter()
        .find(|s| s.address == address)
        .unwrap_or_else(|| panic!("no socket {address}: {report:#?}"))
}

const NO_CONTAINER: &str = "no data: no container found";
const HOLD_EXPIRED: &str = "no data for longer than hold: mean weight";

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

/// A server whose container is gone keeps its share while within `hold`: its weight is scaled
/// with the others' (256 × 0.75 = 192 when the others' largest raw weight is 341). Once `hold`
/// has passed since the first tick without data (not since the last reading), it gets the mean
/// weight of the servers the readings moved.
#[tokio::test(start_paused = true)]
async fn a_server_without_data_is_held_then_gets_the_mean() {
    let config = config(json!({"hold": "90s"}));
    let hosts = Hosts::default();
    let lb = Balancer::new(&[
        ("app-1", 100),
        ("app-2", 100),
        ("app-3", 100),
        ("app-4", 100),
    ]);
    let mut tuner = Tuner::new(vec![hosts.source(&[H1])], vec![Box::new(lb.sink(SOCK_A))]);

    hosts.set(
        H1,
        &[
            ("app-1", 0.5),
            ("app-2", 0.5),
            ("app-3", 0.5),
            ("app-4", 0.5),
        ],
    );
    let t = tick_after(&mut tuner, &config, 0.0).await;
    assert!(
        rows(&t).iter().all(|r| r.1 == Action::Set && r.2 == 256),
        "{t:#?}"
    );

    // app-4's container is gone; app-1 is underloaded and moves up most.
    hosts.set(H1, &[("app-1", 0.25), ("app-2", 0.5), ("app-3", 0.5)]);
    let t = tick_after(&mut tuner, &config, 30.0).await;
    assert_eq!(
        rows(&t),
        vec![
            r("app-1", Action::Keep, 256, Some("within deadband")),
            r("app-2", Action::Set, 176, None),
            r("app-3", Action::Set, 176, None),
            r("app-4", Action::Set, 192, Some(NO_CONTAINER)),
        ]
    );
    assert_eq!(row(&t, "app-4").cpu, None);
    assert_eq!(
        lb.weights(),
        weights(&[
            ("app-1", 256),
            ("app-2", 176),
            ("app-3", 176),
            ("app-4", 192)
        ])
    );

    // 89 s without data: still held, not at the mean of 256, 176 and 176 (203).
    hosts.set(H1, &[("app-1", 0.4), ("app-2", 0.4), ("app-3", 0.4)]);
    let t = tick_after(&mut tuner, &config, 89.0).await;
    assert_eq!(
        row(&t, "app-4"),
        &ServerRow {
            server: "app-4".into(),
            host: None,
            container: None,
            cpu: None,
            current: 192,
            proposed: 192,
            action: Action::Keep,
            reason: Some(NO_CONTAINER.into()),
            errors: vec![],
        }
    );
    assert_eq!(lb.applies().last(), Some(&vec![]), "nothing moved");

    // 90 s: hold has passed.
    let t = tick_after(&mut tuner, &config, 1.0).await;
    let mean = mean_weight(&[256, 176, 176], &config.backends[0].controller).unwrap();
    assert_eq!(mean, 203);
    assert_eq!(
        rows(&t),
        vec![
            r("app-1", Action::Keep, 256, Some("within deadband")),
            r("app-2", Action::Keep, 176, Some("within deadband")),
            r("app-3", Action::Keep, 176, Some("within deadband")),
            r("app-4", Action::Set, mean, Some(HOLD_EXPIRED)),
        ]
    );
    assert_eq!(lb.applies().last(), Some(&vec![("app-4".into(), 203)]));
    assert_eq!(lb.weights()["app-4"], 203);
}

/// With `freeze_below` 0.75 and 2 of 4 servers reporting, nothing is written at all (not even
/// the two measured servers, which are far apart); 3 of 4 is enough to tune again.
#[tokio::test(start_paused = true)]
async fn too_few_servers_with_data_freeze_the_backend() {
    let config = config(json!({"freeze_below": 0.75}));
    let hosts = Hosts::default();
    let lb = Balancer::new(&[
        ("app-1", 100),
        ("app-2", 100),
        ("app-3", 100),
        ("app-4", 100),
    ]);
    let mut tuner = Tuner::new(
        vec![hosts.source(&[H1, H2, H3, H4])],
        vec![Box::new(lb.sink(SOCK_A))],
    );
    hosts.set(H1, &[("app-1", 0.25)]);
    hosts.set(H2, &[("app-2", 0.5)]);
    hosts.fail(H3, HostError::Unreachable("connection refused".into()));
    hosts.fail(H4, HostError::Unreachable("connection refused".into()));

    let frozen = "frozen: only 2 of 4 servers have data";
    for secs in [0.0, 30.0] {
        let t = tick_after(&mut tuner, &config, secs).await;
        assert_eq!(
            rows(&t),
            vec![
                r("app-1", Action::Keep, 100, Some(frozen)),
                r("app-2", Action::Keep, 100, Some(frozen)),
                r("app-3", Action::Keep, 100, Some(NO_CONTAINER)),
                r("app-4", Action::Keep, 100, Some(NO_CONTAINER)),
            ]
        );
        assert_eq!(socket(&t, SOCK_A).applied, 0);
    }
    assert_eq!(lb.applies(), vec![vec![], vec![]], "applied nothing");
    assert_eq!(
        lb.weights(),
        weights(&[
            ("app-1", 100),
            ("app-2", 100),
            ("app-3", 100),
            ("app-4", 100)
        ])
    );

    // A third host answers: 3 of 4 is not below 0.75, and the held app-4 is scaled too.
    hosts.set(H3, &[("app-3", 0.5)]);
    let t = tick_after(&mut tuner, &config, 30.0).await;
    assert_eq!(
        rows(&t),
        vec![
            r("app-1", Action::Set, 256, None),
            r("app-2", Action::Set, 176, None),
            r("app-3", Action::Set, 176, None),
            r("app-4", Action::Set, 192, Some(NO_CONTAINER)),
        ]
    );
    assert_eq!(socket(&t, SOCK_A).applied, 4);
    assert_eq!(
        lb.weights(),
        weights(&[
            ("app-1", 256),
            ("app-2", 176),
            ("app-3", 176),
            ("app-4", 192)
        ])
    );
}

/// A HAProxy whose reads fail is tried at t0, then not before 1 s, 2 s, 4 s, 8 s later; a tick
/// in between makes no call to it and says when the next attempt is. The other balancer is
/// tuned in every tick meanwhile, and the one that answers again is read and brought to the
/// same weights in the tick it answers.
#[tokio::test(start_paused = true)]
async fn a_failing_haproxy_backs_off_while_the_other_is_tuned() {
    let config = config(json!({}));
    let hosts = Hosts::default();
    // Readings that never follow the weights: app-1 is always busier, and moves down each tick.
    hosts.set(H1, &[("app-1", 0.5), ("app-2", 0.4)]);
    let healthy = Balancer::new(&[("app-1", 100), ("app-2", 100)]);
    let failing = FakeRuntime::new(SOCK_A, &[("app-1", 100), ("app-2", 100)]);
    failing.fail_reads(true);
    let mut tuner = Tuner::new(
        vec![hosts.source(&[H1])],
        vec![Box::new(healthy.sink(SOCK_B)), Box::new(failing.sink(true))],
    );
    let connect = "cannot connect to HAProxy at /fake/a.sock: Connection refused";

    // (seconds since the last tick, calls the failing HAProxy has had, its error, app-1's new
    // weight on the healthy one)
    let steps: &[(f64, usize, &str, u32)] = &[
        (0.0, 1, connect, 229),
        (0.5, 1, "unreachable; next attempt in 1s", 205),
        (0.5, 2, connect, 183), // t0 + 1 s
        (1.0, 2, "unreachable; next attempt in 1s", 164),
        (1.0, 3, connect, 147), // t0 + 3 s
        (2.0, 3, "unreachable; next attempt in 2s", 131),
        (2.0, 4, connect, 117), // t0 + 7 s: the next attempt 8 s later
        (3.0, 4, "unreachable; next attempt in 5s", 105),
    ];
    for (i, &(secs, calls, error, app1)) in steps.iter().enumerate() {
        if i == 7 {
            // Answers again, but the sink does not know until its next attempt.
            failing.fail_reads(false);
        }
        let t = tick_after(&mut tuner, &config, secs).await;
        assert_eq!(failing.calls().total(), calls, "step {i}");
        assert_eq!(socket(&t, SOCK_A).error.as_deref(), Some(error), "step {i}");
        assert_eq!(socket(&t, SOCK_B).error, None);
        assert_eq!(row(&t, "app-1").proposed, app1, "step {i}");
        assert_eq!(
            healthy.weights(),
            weights(&[("app-1", app1), ("app-2", 256)])
        );
        assert_eq!(healthy.reads(), i + 1);
        assert_eq!(healthy.applies().len(), i + 1);
        assert!(!healthy.applies()[i].is_empty(), "tuned in every tick");
    }
    assert_eq!(
        failing.weights(),
        weights(&[("app-1", 100), ("app-2", 100)])
    );
    assert_eq!(
        failing.calls().show_info,
        4,
        "each attempt failed at its first command"
    );

    // t0 + 15 s: read (info, stat, info) and written in this tick, to what the healthy one gets.
    let t = tick_after(&mut tuner, &config, 5.0).await;
    assert_eq!(
        failing.calls(),
        Calls {
            show_info: 6,
            show_stat: 1,
            check_admin: 0,
            set_weights: 1,
        }
    );
    assert_eq!(socket(&t, SOCK_A).error, None);
    assert_eq!(socket(&t, SOCK_A).applied, 2);
    assert_eq!(row(&t, "app-1").proposed, 94);
    assert_eq!(failing.weights(), weights(&[("app-1", 94), ("app-2", 256)]));
    assert_eq!(healthy.weights(), failing.weights());

    // Failing again later, it starts over at 1 s.
    failing.fail_reads(true);
    let t = tick_after(&mut tuner, &config, 30.0).await;
    assert_eq!(socket(&t, SOCK_A).error.as_deref(), Some(connect));
    let t = tick_after(&mut tuner, &config, 0.5).await;
    let wait = "unreachable; next attempt in 1s";
    assert_eq!(socket(&t, SOCK_A).error.as_deref(), Some(wait));
    let calls = failing.calls().total();
    let t = tick_after(&mut tuner, &config, 0.5).await;
    assert_eq!(socket(&t, SOCK_A).error.as_deref(), Some(connect));
    assert_eq!(failing.calls().total(), calls + 1);
}

/// A HAProxy that was unreachable for a while still holds the weights hatune set before the
/// outage. Listed first, it must not win over the weights hatune kept tuning on the healthy
/// one: the tick it comes back, the backend is decided from the healthy balancer's weights and
/// the one that was out is brought to them.
#[tokio::test(start_paused = true)]
async fn a_haproxy_back_from_an_outage_does_not_undo_the_tuning_of_the_others() {
    let config = config(json!({}));
    let hosts = Hosts::default();
    hosts.set(H1, &[("app-1", 0.5), ("app-2", 0.4)]);
    let failing = FakeRuntime::new(SOCK_A, &[("app-1", 100), ("app-2", 100)]);
    let healthy = FakeRuntime::new(SOCK_B, &[("app-1", 100), ("app-2", 100)]);
    let mut tuner = Tuner::new(
        vec![hosts.source(&[H1])],
        vec![Box::new(failing.sink(true)), Box::new(healthy.sink(true))],
    );
    // Both tuned once, then the first fails for a while.
    tick_after(&mut tuner, &config, 0.0).await;
    assert_eq!(
        failing.weights(),
        weights(&[("app-1", 229), ("app-2", 256)])
    );
    failing.fail_reads(true);
    for _ in 0..7 {
        let t = tick_after(&mut tuner, &config, 10.0).await;
        assert!(socket(&t, SOCK_A).error.is_some());
    }
    assert_eq!(
        healthy.weights(),
        weights(&[("app-1", 105), ("app-2", 256)])
    );
    failing.fail_reads(false);
    let t = tick_after(&mut tuner, &config, 60.0).await;
    assert_eq!(socket(&t, SOCK_A).error, None);
    // One more step from the healthy balancer's 105, as every tick before.
    assert_eq!(healthy.weights(), weights(&[("app-1", 94), ("app-2", 256)]));
    assert_eq!(failing.weights(), healthy.weights());
}

/// A host that errors for a few ticks: its server is held (not moved, not at the mean), and the
/// report's host status says why. Back, it is tuned again; a second short outage starts the
/// hold afresh, so neither reaches the mean; one that lasts `hold` does.
#[tokio::test(start_paused = true)]
async fn a_host_outage_holds_its_server_and_a_short_one_never_reaches_the_mean() {
    let config = config(json!({"hold": "90s"}));
    let hosts = Hosts::default();
    let lb = Balancer::new(&[("app-1", 100), ("app-2", 100), ("app-3", 100)]);
    let mut tuner = Tuner::new(
        vec![hosts.source(&[H1, H2, H3])],
        vec![Box::new(lb.sink(SOCK_A))],
    );
    hosts.set(H1, &[("app-1", 0.5)]);
    hosts.set(H2, &[("app-2", 0.5)]);
    hosts.set(H3, &[("app-3", 0.25)]);
    let t = tick_after(&mut tuner, &config, 0.0).await;
    assert_eq!(t.hosts[2].containers, Some(1));
    assert_eq!(
        lb.weights(),
        weights(&[("app-1", 176), ("app-2", 176), ("app-3", 256)])
    );

    let outage = |t: &TickReport, app3: u32| {
        let h3 = &t.hosts[2];
        assert_eq!(h3.url, H3);
        assert_eq!(h3.containers, None);
        assert_eq!(h3.error.as_deref(), Some("no reply within 5s"));
        assert_eq!(h3.kind.as_deref(), Some("timeout"));
        assert_eq!(t.hosts[0].error, None);
        assert_eq!(
            rows(t)[2],
            r("app-3", Action::Keep, app3, Some(NO_CONTAINER)),
            "held, not at the mean"
        );
        assert_eq!(row(t, "app-3").host, None);
    };

    // Out for three ticks (30, 60, 90 s); the others balanced, so nothing moves.
    hosts.set(H1, &[("app-1", 0.5)]);
    hosts.set(H2, &[("app-2", 0.5)]);
    hosts.fail(H3, HostError::Timeout(Duration::from_secs(5)));
    for _ in 0..3 {
        let t = tick_after(&mut tuner, &config, 30.0).await;
        outage(&t, 256);
    }
    assert_eq!(lb.weights()["app-3"], 256);

    // Back at 120 s, now the busiest: its own reading moves it down.
    hosts.set(H1, &[("app-1", 0.2)]);
    hosts.set(H2, &[("app-2", 0.2)]);
    hosts.set(H3, &[("app-3", 1.0)]);
    let t = tick_after(&mut tuner, &config, 30.0).await;
    assert_eq!(
        row(&t, "app-3"),
        &ServerRow {
            server: "app-3".into(),
            host: Some(H3.into()),
            container: Some("app-3".into()),
            cpu: Some(1.0),
            current: 256,
            proposed: 164,
            action: Action::Set,
            reason: None,
            errors: vec![],
        }
    );
    assert_eq!(t.hosts[2].error, None);
    assert_eq!(
        lb.weights(),
        weights(&[("app-1", 256), ("app-2", 256), ("app-3", 164)])
    );

    // Out again at 150, 180, 210 s: 60 s into this outage, 180 s since the first began.
    hosts.set(H1, &[("app-1", 0.5)]);
    hosts.set(H2, &[("app-2", 0.5)]);
    hosts.fail(H3, HostError::Timeout(Duration::from_secs(5)));
    for _ in 0..3 {
        let t = tick_after(&mut tuner, &config, 30.0).await;
        outage(&t, 164);
    }
    // 240 s: this outage has lasted `hold`.
    let t = tick_after(&mut tuner, &config, 30.0).await;
    assert_eq!(
        rows(&t)[2],
        r("app-3", Action::Set, 256, Some(HOLD_EXPIRED))
    );
    assert_eq!(lb.weights()["app-3"], 256);
    assert_eq!(hosts.polls(), 9);
}

/// A reload between ticks forgets hatune's weights and adds a server: the next tick writes
/// hatune's weights back, the new server gets the backend's mean weight, and nothing is taken
/// for an operator's change. An operator's weight set between ticks without a reload is left
/// alone until `resume_all` (SIGHUP), then tuned from.
#[tokio::test(start_paused = true)]
async fn a_reload_is_restored_and_an_operators_weight_is_left_alone() {
    let config = config(json!({}));
    let hosts = Hosts::default();
    let lb = FakeRuntime::new(SOCK_A, &[("app-1", 100), ("app-2", 100), ("app-3", 100)]);
    let mut tuner = Tuner::new(
        vec![hosts.source(&[H1, H2, H3])],
        vec![Box::new(lb.sink(true))],
    );
    hosts.set(H1, &[("app-1", 0.5)]);
    hosts.set(H2, &[("app-2", 0.5)]);
    hosts.set(H3, &[("app-3", 0.25)]);
    let t = tick_after(&mut tuner, &config, 0.0).await;
    assert_eq!(socket(&t, SOCK_A).applied, 3);
    assert!(!socket(&t, SOCK_A).reloaded);
    assert_eq!(
        lb.weights(),
        weights(&[("app-1", 176), ("app-2", 176), ("app-3", 256)])
    );

    // Reloaded with a new server, app-4, which runs next to app-1.
    lb.reload(&[("app-4", 100)]);
    assert_eq!(
        lb.weights(),
        weights(&[
            ("app-1", 100),
            ("app-2", 100),
            ("app-3", 100),
            ("app-4", 100)
        ])
    );
    hosts.set(H1, &[("app-1", 0.5), ("app-4", 0.5)]);
    hosts.set(H2, &[("app-2", 0.5)]);
    hosts.set(H3, &[("app-3", 0.5)]);
    let t = tick_after(&mut tuner, &config, 30.0).await;
    let mean = mean_weight(&[176, 176, 256], &config.backends[0].controller).unwrap();
    assert_eq!(mean, 203);
    assert_eq!(
        lb.weights(),
        weights(&[
            ("app-1", 176),
            ("app-2", 176),
            ("app-3", 256),
            ("app-4", mean)
        ])
    );
    assert_eq!(
        socket(&t, SOCK_A),
        &SocketStatus {
            address: SOCK_A.into(),
            error: None,
            applied: 0,
            refused: 0,
            reloaded: true,
            restored: 4,
        }
    );
    // Restored, not moved: the window ran the reset weights.
    let spans = Some("no data: the window spans a HAProxy reload");
    assert_eq!(
        rows(&t),
        vec![
            r("app-1", Action::Keep, 176, spans),
            r("app-2", Action::Keep, 176, spans),
            r("app-3", Action::Keep, 256, spans),
            r("app-4", Action::Keep, mean, spans),
        ]
    );
    assert_eq!(tuner.overridden(), 0);
    assert_eq!(lb.calls().set_weights, 2);

    // The next tick finds what it wrote: no override, nothing to write.
    let t = tick_after(&mut tuner, &config, 30.0).await;
    assert!(!socket(&t, SOCK_A).reloaded);
    assert!(rows(&t).iter().all(|r| r.1 == Action::Keep), "{t:#?}");
    assert_eq!(tuner.overridden(), 0);
    assert_eq!(lb.calls().set_weights, 2);

    // An operator sets app-2 to 50; app-1 is now underloaded and moves up.
    lb.operator_sets("app-2", 50);
    hosts.set(H1, &[("app-1", 0.25), ("app-4", 0.5)]);
    let overridden = Some("weight changed outside hatune (hatune set 176)");
    let t = tick_after(&mut tuner, &config, 30.0).await;
    assert_eq!(
        rows(&t),
        vec![
            r("app-1", Action::Set, 256, None),
            r("app-2", Action::Skip, 50, overridden),
            r("app-3", Action::Keep, 256, Some("within deadband")),
            r("app-4", Action::Keep, 203, Some("within deadband")),
        ]
    );
    assert_eq!(tuner.overridden(), 1);
    // And left alone in later ticks.
    hosts.set(H1, &[("app-1", 0.5), ("app-4", 0.5)]);
    hosts.set(H2, &[("app-2", 0.1)]);
    let t = tick_after(&mut tuner, &config, 30.0).await;
    assert_eq!(rows(&t)[1], r("app-2", Action::Skip, 50, overridden));
    assert_eq!(
        lb.weights(),
        weights(&[
            ("app-1", 256),
            ("app-2", 50),
            ("app-3", 256),
            ("app-4", 203)
        ])
    );

    // SIGHUP hands it back at its weight, 50: no longer left alone, and tuned from 50 (far
    // underloaded: up by the step cap, ×2, scaled by 256 / 230.4). Within two ticks: the first
    // holds it (see the ignored test below).
    assert_eq!(tuner.resume_all(), 1);
    assert_eq!(tuner.overridden(), 0);
    let mut tuned = None;
    for _ in 0..2 {
        let t = tick_after(&mut tuner, &config, 30.0).await;
        let app2 = row(&t, "app-2").clone();
        assert_ne!(app2.action, Action::Skip, "{t:#?}");
        assert_eq!(tuner.overridden(), 0);
        if app2.action == Action::Set {
            tuned = Some(app2);
            break;
        }
        assert_eq!(app2.proposed, 50);
    }
    let app2 = tuned.expect("tuned again after resume_all");
    assert_eq!((app2.current, app2.proposed, app2.reason), (50, 111, None));
    assert_eq!(
        lb.weights(),
        weights(&[
            ("app-1", 256),
            ("app-2", 111),
            ("app-3", 256),
            ("app-4", 203)
        ])
    );

    // An override belongs to the process it was made on: after a reload, hatune's weight is
    // restored there too.
    hosts.set(H2, &[("app-2", 0.5)]);
    lb.operator_sets("app-3", 20);
    let t = tick_after(&mut tuner, &config, 30.0).await;
    assert_eq!(
        rows(&t)[2],
        r(
            "app-3",
            Action::Skip,
            20,
            Some("weight changed outside hatune (hatune set 256)")
        )
    );
    assert_eq!(tuner.overridden(), 1);
    lb.reload(&[]);
    let t = tick_after(&mut tuner, &config, 30.0).await;
    assert_eq!(tuner.overridden(), 0);
    assert!(rows(&t).iter().all(|r| r.1 == Action::Keep), "{t:#?}");
    assert_eq!(socket(&t, SOCK_A).restored, 4);
    assert_eq!(
        lb.weights(),
        weights(&[
            ("app-1", 256),
            ("app-2", 111),
            ("app-3", 256),
            ("app-4", 203)
        ])
    );
}

/// The tick that notices a reload restores hatune's weights and moves nothing by its readings:
/// its window covers time HAProxy ran the config's weights, so the load it shows (here the
/// small hosts overloaded at equal weights) is not what hatune's weights did. Measured again
/// over the restored weights, the next tick finds them balanced.
#[tokio::test(start_paused = true)]
async fn a_window_spanning_a_reload_moves_nothing() {
    let config = config(json!({}));
    let hosts = Hosts::default();
    let lb = FakeRuntime::new(SOCK_A, &[("app-1", 100), ("app-2", 100), ("app-3", 100)]);
    let mut tuner = Tuner::new(vec![hosts.source(&[H1])], vec![Box::new(lb.sink(true))]);
    hosts.set(H1, &[("app-1", 0.5), ("app-2", 0.5), ("app-3", 0.25)]);
    tick_after(&mut tuner, &config, 0.0).await;
    let tuned = weights(&[("app-1", 176), ("app-2", 176), ("app-3", 256)]);
    assert_eq!(lb.weights(), tuned);
    // Balanced at hatune's weights for a while.
    hosts.set(H1, &[("app-1", 0.4), ("app-2", 0.4), ("app-3", 0.4)]);
    tick_after(&mut tuner, &config, 30.0).await;
    assert_eq!(lb.weights(), tuned);

    // Reloaded right after that tick: the whole next window runs the reset weights.
    lb.reload(&[]);
    hosts.set(H1, &[("app-1", 0.55), ("app-2", 0.55), ("app-3", 0.28)]);
    let t = tick_after(&mut tuner, &config, 30.0).await;
    assert!(socket(&t, SOCK_A).reloaded);
    assert_eq!(socket(&t, SOCK_A).restored, 3);
    assert_eq!(lb.weights(), tuned, "restored exactly, not moved");
    assert!(rows(&t).iter().all(|r| r.1 == Action::Keep), "{t:#?}");

    hosts.set(H1, &[("app-1", 0.4), ("app-2", 0.4), ("app-3", 0.4)]);
    let t = tick_after(&mut tuner, &config, 30.0).await;
    assert_eq!(lb.weights(), tuned);
    assert!(
        rows(&t)
            .iter()
            .all(|r| r.3.as_deref() == Some("within deadband")),
        "{t:#?}"
    );
}

/// A server handed back by `Tuner::resume_all` (SIGHUP) served all along at the operator's
/// weight, which is the weight the tick decides from: its reading is representative and it is
/// tuned at the next tick, not held as "back in service" (it never left service).
#[tokio::test(start_paused = true)]
async fn a_server_handed_back_by_resume_all_is_tuned_at_the_next_tick() {
    let config = config(json!({}));
    let hosts = Hosts::default();
    let lb = FakeRuntime::new(SOCK_A, &[("app-1", 100), ("app-2", 100), ("app-3", 100)]);
    let mut tuner = Tuner::new(vec![hosts.source(&[H1])], vec![Box::new(lb.sink(true))]);
    hosts.set(H1, &[("app-1", 0.5), ("app-2", 0.5), ("app-3", 0.25)]);
    tick_after(&mut tuner, &config, 0.0).await;
    assert_eq!(
        lb.weights(),
        weights(&[("app-1", 176), ("app-2", 176), ("app-3", 256)])
    );

    lb.operator_sets("app-2", 50);
    hosts.set(H1, &[("app-1", 0.5), ("app-2", 0.1), ("app-3", 0.5)]);
    let t = tick_after(&mut tuner, &config, 30.0).await;
    assert_eq!(row(&t, "app-2").action, Action::Skip);
    assert_eq!(tuner.resume_all(), 1);

    // Served at 50 all along, at 10% when the others are at 50%: up by the step cap.
    let t = tick_after(&mut tuner, &config, 30.0).await;
    assert_eq!(
        rows(&t),
        vec![
            r("app-1", Action::Keep, 176, Some("within deadband")),
            r("app-2", Action::Set, 115, None),
            r("app-3", Action::Keep, 256, Some("within deadband")),
        ]
    );
}

/// A reload whose restoring writes fail (the socket drops them): the weights the new process
/// holds are not taken for operators' changes at the next tick.
#[tokio::test(start_paused = true)]
async fn a_reload_whose_restore_fails_is_not_taken_for_operators() {
    let (config, hosts, _lb, mut tuner) = reloaded_and_restore_failed().await;
    hosts.set(H1, &[("app-1", 0.5), ("app-2", 0.5), ("app-3", 0.5)]);
    let t = tick_after(&mut tuner, &config, 30.0).await;
    assert_eq!(socket(&t, SOCK_A).error, None);
    assert_eq!(tuner.overridden(), 0);
    assert!(rows(&t).iter().all(|r| r.1 != Action::Skip), "{t:#?}");
}

/// When the writes that restore hatune's weights after a reload fail (a connection dropped
/// while HAProxy settles after the reload), the next tick, which sees no reload, writes them
/// back again: the backend is not tuned afresh from the config's weights.
#[tokio::test(start_paused = true)]
async fn a_restore_after_a_reload_is_retried_when_its_writes_fail() {
    let (config, hosts, lb, mut tuner) = reloaded_and_restore_failed().await;
    hosts.set(H1, &[("app-1", 0.5), ("app-2", 0.5), ("app-3", 0.5)]);
    let t = tick_after(&mut tuner, &config, 30.0).await;
    assert_eq!(socket(&t, SOCK_A).restored, 3, "{t:#?}");
    assert_eq!(
        lb.weights(),
        weights(&[("app-1", 176), ("app-2", 176), ("app-3", 256)])
    );
}

/// Tuned to 176, 176, 256; reloaded; the tick that notices the reload cannot write, and
/// HAProxy answers writes again afterwards.
async fn reloaded_and_restore_failed() -> (Config, Hosts, FakeRuntime, Tuner) {
    let config = config(json!({}));
    let hosts = Hosts::default();
    let lb = FakeRuntime::new(SOCK_A, &[("app-1", 100), ("app-2", 100), ("app-3", 100)]);
    let mut tuner = Tuner::new(vec![hosts.source(&[H1])], vec![Box::new(lb.sink(true))]);
    hosts.set(H1, &[("app-1", 0.5), ("app-2", 0.5), ("app-3", 0.25)]);
    tick_after(&mut tuner, &config, 0.0).await;
    assert_eq!(
        lb.weights(),
        weights(&[("app-1", 176), ("app-2", 176), ("app-3", 256)])
    );

    lb.reload(&[]);
    lb.writes(Writes::Fail);
    hosts.set(H1, &[("app-1", 0.5), ("app-2", 0.5), ("app-3", 0.5)]);
    let t = tick_after(&mut tuner, &config, 30.0).await;
    let s = socket(&t, SOCK_A);
    assert!(s.reloaded);
    assert_eq!(s.restored, 0);
    assert_eq!(
        s.error.as_deref(),
        Some("cannot connect to HAProxy at /fake/a.sock: Connection refused")
    );
    assert_eq!(
        lb.weights(),
        weights(&[("app-1", 100), ("app-2", 100), ("app-3", 100)])
    );
    assert_eq!(lb.calls().set_weights, 2);
    lb.writes(Writes::Answered);
    (config, hosts, lb, tuner)
}

/// Dry run, through the real HAProxy sink and through a fake balancer: the report says so and
/// shows the weights that would be set, and no weight reaches either balancer (so the next
/// tick would set them again, and nothing looks like an operator's change).
#[tokio::test(start_paused = true)]
async fn a_dry_run_reaches_no_balancer() {
    let config = config(json!({}));
    let hosts = Hosts::default();
    hosts.set(H1, &[("app-1", 0.5), ("app-2", 0.5), ("app-3", 0.25)]);
    let haproxy = FakeRuntime::new(SOCK_A, &[("app-1", 100), ("app-2", 100), ("app-3", 100)]);
    let fake = Balancer::new(&[("app-1", 100), ("app-2", 100), ("app-3", 100)]);
    let mut tuner = Tuner::new(
        vec![hosts.source(&[H1])],
        vec![
            Box::new(DryRun::new(haproxy.sink(true))),
            Box::new(DryRun::new(fake.sink(SOCK_B))),
        ],
    );
    for secs in [0.0, 30.0] {
        let t = tick_after(&mut tuner, &config, secs).await;
        assert!(t.dry_run);
        assert_eq!(
            rows(&t),
            vec![
                r("app-1", Action::Set, 176, None),
                r("app-2", Action::Set, 176, None),
                r("app-3", Action::Set, 256, None),
            ]
        );
        for s in &t.sockets {
            assert_eq!((s.error.as_deref(), s.applied, s.refused), (None, 0, 0));
        }
        assert!(t.render_table().contains("would set"));
    }
    let unchanged = weights(&[("app-1", 100), ("app-2", 100), ("app-3", 100)]);
    assert_eq!(haproxy.weights(), unchanged);
    assert_eq!(fake.weights(), unchanged);
    assert_eq!(haproxy.calls().set_weights, 0);
    assert_eq!(haproxy.calls().show_stat, 2, "read through");
    assert_eq!(fake.applies(), Vec::<Vec<(String, u32)>>::new());
    assert_eq!(fake.reads(), 2);
    assert_eq!(tuner.overridden(), 0);
}

/// A balancer that cannot take the writes: each of its servers' rows says why, the other
/// balancer is written, and the next tick writes again. When no balancer can be read, nothing
/// is decided and every backend says so.
#[tokio::test(start_paused = true)]
async fn a_balancer_that_fails_is_reported_and_written_again() {
    let config = config(json!({}));
    let hosts = Hosts::default();
    hosts.set(H1, &[("app-1", 0.5), ("app-2", 0.25)]);
    let a = Balancer::new(&[("app-1", 100), ("app-2", 100)]);
    let b = Balancer::new(&[("app-1", 100), ("app-2", 100)]);
    b.fail_applies(Some("connection reset"));
    let mut tuner = Tuner::new(
        vec![hosts.source(&[H1])],
        vec![Box::new(a.sink(SOCK_A)), Box::new(b.sink(SOCK_B))],
    );
    let t = tick_after(&mut tuner, &config, 0.0).await;
    let expected = weights(&[("app-1", 179), ("app-2", 256)]);
    assert_eq!(a.weights(), expected);
    assert_eq!(socket(&t, SOCK_A).applied, 2);
    assert_eq!(
        socket(&t, SOCK_B).error.as_deref(),
        Some("connection reset")
    );
    assert_eq!(socket(&t, SOCK_B).applied, 0);
    for r in &t.backends[0].servers {
        assert_eq!(r.errors, vec!["/fake/b.sock: connection reset".to_string()]);
    }
    assert_eq!(t.exit_code(), 1);

    // Balanced now: a holds the decisions, b is written to them.
    b.fail_applies(None);
    hosts.set(H1, &[("app-1", 0.4), ("app-2", 0.4)]);
    let t = tick_after(&mut tuner, &config, 30.0).await;
    assert_eq!(a.applies().last(), Some(&vec![]));
    assert_eq!(
        b.applies().last(),
        Some(&vec![("app-1".into(), 179), ("app-2".into(), 256)])
    );
    assert_eq!(b.weights(), expected);
    assert_eq!(t.exit_code(), 0);

    a.fail_reads(Some("gone"));
    b.fail_reads(Some("gone too"));
    let applies = (a.applies().len(), b.applies().len());
    let t = tick_after(&mut tuner, &config, 30.0).await;
    assert_eq!(
        t.backends[0].error.as_deref(),
        Some("no HAProxy socket could be read")
    );
    assert!(t.backends[0].servers.is_empty());
    assert_eq!(socket(&t, SOCK_A).error.as_deref(), Some("gone"));
    assert_eq!(socket(&t, SOCK_B).error.as_deref(), Some("gone too"));
    assert_eq!(
        (a.applies().len(), b.applies().len()),
        applies,
        "nothing applied"
    );
    assert_eq!(hosts.polls(), 3);
}

/// Writes whose replies were lost (the connection dropped after HAProxy applied them) are
/// hatune's at the next read, not an operator's; a write HAProxy refuses is reported on its
/// row and counted, and tried again next tick.
#[tokio::test(start_paused = true)]
async fn lost_replies_are_hatunes_weights_and_refusals_are_reported() {
    let config = config(json!({}));
    let hosts = Hosts::default();
    hosts.set(H1, &[("app-1", 0.5), ("app-2", 0.5), ("app-3", 0.25)]);
    let lb = FakeRuntime::new(SOCK_A, &[("app-1", 100), ("app-2", 100), ("app-3", 100)]);
    lb.writes(Writes::LoseReplies);
    let mut tuner = Tuner::new(vec![hosts.source(&[H1])], vec![Box::new(lb.sink(true))]);
    let t = tick_after(&mut tuner, &config, 0.0).await;
    let lost = "HAProxy at /fake/a.sock: Connection reset";
    assert_eq!(socket(&t, SOCK_A).error.as_deref(), Some(lost));
    assert_eq!(row(&t, "app-1").errors, vec![format!("{SOCK_A}: {lost}")]);
    assert_eq!(
        lb.weights(),
        weights(&[("app-1", 176), ("app-2", 176), ("app-3", 256)])
    );

    // They landed: the next read takes them as hatune's, not as overrides.
    lb.writes(Writes::Answered);
    hosts.set(H1, &[("app-1", 0.5), ("app-2", 0.5), ("app-3", 0.5)]);
    let t = tick_after(&mut tuner, &config, 30.0).await;
    assert_eq!(tuner.overridden(), 0);
    assert!(rows(&t).iter().all(|r| r.1 == Action::Keep), "{t:#?}");
    assert_eq!(socket(&t, SOCK_A).error, None);
    assert_eq!(lb.calls().set_weights, 1);

    // A refusal: reported on the row and counted, the other writes applied.
    lb.refuse("app-1");
    hosts.set(H1, &[("app-1", 0.25), ("app-2", 0.5), ("app-3", 0.75)]);
    let t = tick_after(&mut tuner, &config, 30.0).await;
    let s = socket(&t, SOCK_A);
    assert_eq!((s.applied, s.refused), (2, 1), "{t:#?}");
    assert_eq!(rows(&t)[0], r("app-1", Action::Set, 256, None));
    assert_eq!(
        row(&t, "app-1").errors,
        vec![format!("{SOCK_A}: Backend is using a static LB algorithm.")]
    );
    assert_eq!(t.exit_code(), 1);
    assert_eq!(
        lb.weights(),
        weights(&[("app-1", 176), ("app-2", 171), ("app-3", 207)]),
        "app-1 refused"
    );
    let calls = lb.calls().set_weights;
    let t = tick_after(&mut tuner, &config, 30.0).await;
    assert_eq!(lb.calls().set_weights, calls + 1, "tried again");
    assert_eq!(socket(&t, SOCK_A).refused, 1);
    assert_eq!(
        tuner.overridden(),
        0,
        "a refused weight is not an operator's"
    );
}

/// Servers named by a template (`web_N` for containers `app-N`), whose names the pattern does
/// not match, are tracked like any other: an operator's weight is left alone, a reload is
/// restored; a server `servers` leaves out (`static`) is never touched.
#[tokio::test(start_paused = true)]
async fn servers_named_by_a_template_are_tracked_across_operators_and_reloads() {
    let config = Config::parse(
        &json!({
            "haproxy": [SOCK_A],
            "cadvisor": [H1],
            "backends": [{"name": "app", "pattern": "app-(\\d+)", "server": "web_{1}",
                          "servers": "web_"}],
        })
        .to_string(),
    )
    .unwrap();
    let hosts = Hosts::default();
    let lb = FakeRuntime::new(
        SOCK_A,
        &[
            ("web_1", 100),
            ("web_2", 100),
            ("web_3", 100),
            ("static", 100),
        ],
    );
    let mut tuner = Tuner::new(vec![hosts.source(&[H1])], vec![Box::new(lb.sink(true))]);
    hosts.set(H1, &[("app-1", 0.5), ("app-2", 0.5), ("app-3", 0.25)]);
    tick_after(&mut tuner, &config, 0.0).await;
    let tuned = weights(&[
        ("web_1", 176),
        ("web_2", 176),
        ("web_3", 256),
        ("static", 100),
    ]);
    assert_eq!(lb.weights(), tuned);

    // An operator's weight on web_2 is theirs.
    lb.operator_sets("web_2", 50);
    hosts.set(H1, &[("app-1", 0.4), ("app-2", 0.1), ("app-3", 0.4)]);
    let t = tick_after(&mut tuner, &config, 30.0).await;
    assert_eq!(row(&t, "web_2").action, Action::Skip, "{t:#?}");
    assert_eq!(lb.weights()["web_2"], 50);
    assert_eq!(row(&t, "static").action, Action::Skip);
    assert_eq!(
        row(&t, "static").reason.as_deref(),
        Some("not tuned: name does not match the pattern (or `servers`)")
    );

    // A reload: hatune's weights come back; the operator's belonged to the old process.
    lb.reload(&[]);
    hosts.set(H1, &[("app-1", 0.4), ("app-2", 0.4), ("app-3", 0.4)]);
    let t = tick_after(&mut tuner, &config, 30.0).await;
    assert!(socket(&t, SOCK_A).reloaded);
    assert_eq!(lb.weights(), tuned, "{t:#?}");
    assert_eq!(lb.weights()["static"], 100, "never touched");
}

/// By address over two balancers: a server each holds at another address (each resolved its
/// `server-template` slot on its own) is two servers under one name: no data, and its weight
/// is left as it is on both; the servers both hold alike are tuned.
#[tokio::test(start_paused = true)]
async fn by_address_a_server_at_two_addresses_is_left_alone() {
    let config = Config::parse(
        &json!({
            "haproxy": [SOCK_A, SOCK_B],
            "cadvisor": [H1, H2, H3],
            "backends": [{"name": "app", "pattern": "web-", "match": "address"}],
        })
        .to_string(),
    )
    .unwrap();
    let hosts = Hosts::default();
    let servers = [("srv1", 100), ("srv2", 100), ("srv3", 100)];
    let (a, b) = (
        FakeRuntime::new(SOCK_A, &servers),
        FakeRuntime::new(SOCK_B, &servers),
    );
    for (host, ip) in [(H1, "10.0.0.1"), (H2, "10.0.0.2"), (H3, "10.0.0.3")] {
        hosts.set_address(host, ip);
    }
    for lb in [&a, &b] {
        lb.set_address("srv1", "10.0.0.1:80");
        lb.set_address("srv2", "10.0.0.2:80");
    }
    a.set_address("srv3", "10.0.0.3:80");
    b.set_address("srv3", "10.0.0.1:8080");
    hosts.set(H1, &[("web-a", 0.5)]);
    hosts.set(H2, &[("web-b", 0.25)]);
    hosts.set(H3, &[("web-c", 0.5)]);
    let mut tuner = Tuner::new(
        vec![hosts.source(&[H1, H2, H3])],
        vec![Box::new(a.sink(true)), Box::new(b.sink(true))],
    );
    let t = tick_after(&mut tuner, &config, 0.0).await;
    assert_eq!(
        row(&t, "srv3").reason.as_deref(),
        Some("no data: the balancers hold it at different addresses: 10.0.0.3:80, 10.0.0.1:8080"),
        "{t:#?}"
    );
    assert_eq!(row(&t, "srv1").container.as_deref(), Some("web-a"));
    assert_eq!(row(&t, "srv2").container.as_deref(), Some("web-b"));
    // srv1 busier than srv2: srv2 up to the top, srv1 below; srv3 keeps its share.
    for lb in [&a, &b] {
        let w = lb.weights();
        assert!(w["srv2"] > w["srv1"], "{w:?}");
        assert_eq!(w["srv2"], 256, "{w:?}");
    }
}
