//! Peers, end to end: several `hatune run` daemons (the real binary, one per balancer, each
//! with its own real HAProxy) agree on one weight set through a real etcd (testkit), reading
//! fake cAdvisor hosts over real HTTP served from this process.
//!
//! Every test has its own etcd, HAProxies, fake hosts, temp dir and metrics ports, so they run
//! in parallel. Each daemon logs JSON lines on stderr, collected by a background task, so a
//! test awaits a log line, a metric, a key in etcd or a weight with a deadline (polling inside
//! the deadline, never sleeping as synchronisation). Every process a test starts is stopped
//! whatever happens: daemons are killed when their handle drops (and print their log when the
//! test fails), etcd and HAProxy stop on drop (a frozen etcd is thawed first).
//!
//! Load model (as in tests/daemon.rs): 2 cores of work are split by the weights of one
//! balancer (every balancer holds the same weights), so host `i` reads `share_i × 2 / cores_i`,
//! plus a bias a test may add to unsettle the leader's decisions.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use hatune::sink::haproxy::Client;
use hatune::testkit::cadvisor::{FakeCadvisor, FakeContainer};
use hatune::testkit::etcd::Etcd;
use hatune::testkit::haproxy::{free_port, Haproxy};

/// Cores of the four fake hosts.
const CORES: [u32; 4] = [1, 1, 2, 4];
/// Fixed loads (cores) of the four containers, when no load model runs: busy enough that the
/// weights must move.
const BUSY: [f64; 4] = [0.5, 0.5, 1.0, 1.0];
/// The work the load model splits by weight, in cores.
const WORK_CORES: f64 = 2.0;
/// The daemons' tick period.
const INTERVAL: Duration = Duration::from_millis(300);
/// The peers' lease.
const LEASE: Duration = Duration::from_secs(2);
const PREFIX: &str = "/hatune/test";
/// Fake cAdvisor sample spacing: a few samples per tick.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// Default deadline for something that should happen within a few ticks.
const SOON: Duration = Duration::from_secs(10);
/// Deadline for the weights to settle under the load model.
const SETTLE: Duration = Duration::from_secs(40);
const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);
/// Bound on one call of this test's own etcd client.
const ETCD_CALL: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------------
// Waiting with a deadline
// ---------------------------------------------------------------------------------------------

/// Polls `check` every 25 ms until it gives `Some`, or panics after `within` naming `what`.
async fn until<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {within:?} waiting for {what}");
        }
        // Polling interval inside a deadline, not a synchronisation sleep.
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// The group: etcd, fake hosts, one HAProxy per instance
// ---------------------------------------------------------------------------------------------

type Weights = BTreeMap<String, u32>;

fn four_servers() -> String {
    let mut cfg = "backend app\n    balance roundrobin\n".to_string();
    for i in 0..4 {
        // A closed port: setting weights needs no traffic.
        cfg.push_str(&format!("    server {} 127.0.0.1:1 weight 100\n", alias(i)));
    }
    cfg
}

fn alias(i: usize) -> String {
    format!("app-{}", i + 1)
}

/// The instance name of balancer `i`.
fn name(i: usize) -> String {
    format!("lb-{}", i + 1)
}

fn leader_key() -> String {
    format!("{PREFIX}/leader")
}

fn weights_key() -> String {
    format!("{PREFIX}/weights")
}

struct Group {
    etcd: Etcd,
    hosts: Vec<FakeCadvisor>,
    lbs: Vec<Haproxy>,
    dir: tempfile::TempDir,
}

impl Group {
    /// etcd, the four hosts at `cores_used`, and `n` HAProxies with servers app-1..4 at 100.
    async fn start(n: usize, cores_used: [f64; 4]) -> Group {
        let etcd = Etcd::start().await.expect("cannot start etcd");
        Group::around(etcd, n, cores_used).await
    }

    /// The same around an etcd already started (one serving TLS, say).
    async fn around(etcd: Etcd, n: usize, cores_used: [f64; 4]) -> Group {
        let lbs = tokio::task::block_in_place(|| {
            (0..n)
                .map(|_| Haproxy::start(&four_servers()).expect("cannot start HAProxy"))
                .collect()
        });
        let mut hosts = vec![];
        for (i, (cores, used)) in CORES.iter().zip(cores_used).enumerate() {
            let host = FakeCadvisor::start(*cores, vec![FakeContainer::new(alias(i), used)])
                .await
                .unwrap();
            host.set_sample_interval(SAMPLE_EVERY);
            hosts.push(host);
        }
        Group {
            etcd,
            hosts,
            lbs,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn admin(&self, i: usize) -> Client {
        Client::new(self.lbs[i].admin_socket(), CLIENT_TIMEOUT)
    }

    fn set_all_cores(&self, cores_used: [f64; 4]) {
        for (i, (host, used)) in self.hosts.iter().zip(cores_used).enumerate() {
            host.set_cores_used(&alias(i), used);
        }
    }

    /// Instance `i`'s config: its own socket, every host, its own metrics port, and `peers`.
    fn config(&self, i: usize, metrics_port: u16) -> Value {
        let mut config = json!({
            "haproxy": [self.lbs[i].admin_socket().to_string()],
            "cadvisor": self.hosts.iter().map(FakeCadvisor::url).collect::<Vec<_>>(),
            "timeout": "1s",
            "window": "2s",
            "interval": format!("{}ms", INTERVAL.as_millis()),
            "metrics_listen": format!("127.0.0.1:{metrics_port}"),
            "backends": [{"name": "app", "pattern": "^app-"}],
            "peers": {
                "etcd": [self.etcd.endpoint()],
                "prefix": PREFIX,
                "lease": format!("{}s", LEASE.as_secs()),
                "name": name(i),
                "timeout": "500ms",
            },
        });
        if let (Some(ca), Some(client)) = (self.etcd.ca_file(), self.etcd.client_cert_file()) {
            config["peers"]["ca_file"] = json!(ca);
            config["peers"]["client_cert_file"] = json!(client);
        }
        config
    }

    fn write_config(&self, file: &str, config: &Value) -> PathBuf {
        let path = self.dir.path().join(file);
        std::fs::write(&path, serde_json::to_string_pretty(config).unwrap()).unwrap();
        path
    }

    /// Starts instance `i` (`hatune run` on its own config).
    async fn daemon(&self, i: usize) -> Daemon {
        let port = free_port();
        let path = self.write_config(&format!("{}.json", name(i)), &self.config(i, port));
        Daemon::start(i, &path, port).await
    }

    /// Instances `0..n`, started together.
    async fn daemons(&self, n: usize) -> Vec<Daemon> {
        futures::future::join_all((0..n).map(|i| self.daemon(i))).await
    }

    /// The name on the leader's post, as etcd holds it.
    async fn leader(&self) -> Option<String> {
        self.etcd
            .get(&leader_key())
            .await
            .expect("etcd get")
            .filter(|l| !l.is_empty())
    }

    /// The weights of backend `app` on each of `lbs`.
    async fn weights_of(&self, lbs: &[usize]) -> Vec<Weights> {
        let mut out = vec![];
        for &i in lbs {
            out.push(weights(&self.admin(i)).await);
        }
        out
    }

    /// Waits until weights on `lbs` have moved off 100 and are identical on every one of them
    /// and the same across two ticks of `clock`; returns them.
    async fn settled(&self, lbs: &[usize], clock: &Daemon, within: Duration) -> Weights {
        let deadline = Instant::now() + within;
        loop {
            let before = self.weights_of(lbs).await;
            let t = clock.wait_ticks(0.0, SOON).await;
            clock.wait_ticks(t + 2.0, SOON).await;
            let after = self.weights_of(lbs).await;
            let moved = after[0].values().any(|&w| w != 100);
            if moved && before == after && after.windows(2).all(|w| w[0] == w[1]) {
                return after[0].clone();
            }
            assert!(
                Instant::now() < deadline,
                "weights on {lbs:?} did not settle identically within {within:?}: {before:?} \
                 then {after:?}"
            );
        }
    }
}

/// User weights of backend `app`, by server.
async fn weights(client: &Client) -> Weights {
    client
        .show_stat()
        .await
        .expect("show stat")
        .servers
        .into_iter()
        .filter(|s| s.backend == "app")
        .map(|s| (s.server.clone(), s.user_weight()))
        .collect()
}

/// Keeps each fake host's container at its share of the work under one balancer's weights,
/// plus a bias (cores), until dropped.
struct LoadModel {
    task: tokio::task::JoinHandle<()>,
    bias: Arc<Mutex<[f64; 4]>>,
}

impl LoadModel {
    fn start(g: &Group, follow: usize) -> LoadModel {
        let admin = g.admin(follow);
        let hosts = g.hosts.clone();
        let bias = Arc::new(Mutex::new([0.0; 4]));
        let extra = bias.clone();
        let task = tokio::spawn(async move {
            loop {
                if let Ok(stat) = admin.show_stat().await {
                    let w: Vec<f64> = (0..4)
                        .map(|i| {
                            stat.servers
                                .iter()
                                .find(|s| s.backend == "app" && s.server == alias(i))
                                .map_or(0.0, |s| f64::from(s.user_weight()))
                        })
                        .collect();
                    let total: f64 = w.iter().sum::<f64>().max(1.0);
                    let extra = *extra.lock().unwrap();
                    for (i, host) in hosts.iter().enumerate() {
                        host.set_cores_used(&alias(i), w[i] / total * WORK_CORES + extra[i]);
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        LoadModel { task, bias }
    }

    fn set_bias(&self, bias: [f64; 4]) {
        *self.bias.lock().unwrap() = bias;
    }
}

impl Drop for LoadModel {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ---------------------------------------------------------------------------------------------
// What etcd holds, through a client of the test's own
// ---------------------------------------------------------------------------------------------

async fn etcd_client(g: &Group) -> etcd_client::Client {
    tokio::time::timeout(
        ETCD_CALL,
        etcd_client::Client::connect([g.etcd.endpoint()], None),
    )
    .await
    .expect("connecting to etcd timed out")
    .expect("connecting to etcd")
}

/// A key as etcd holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Kv {
    value: String,
    mod_revision: i64,
    create_revision: i64,
}

async fn kv(g: &Group, key: &str) -> Option<Kv> {
    let mut c = etcd_client(g).await;
    let resp = tokio::time::timeout(ETCD_CALL, c.get(key, None))
        .await
        .expect("etcd get timed out")
        .expect("etcd get");
    resp.kvs().first().map(|kv| Kv {
        value: String::from_utf8_lossy(kv.value()).into_owned(),
        mod_revision: kv.mod_revision(),
        create_revision: kv.create_revision(),
    })
}

/// Every put of `key` from revision `from` on, up to the key's current revision, in order
/// (etcd keeps the history: nothing is compacted in these tests).
async fn puts_since(g: &Group, key: &str, from: i64) -> Vec<Kv> {
    let Some(now) = kv(g, key).await else {
        return vec![];
    };
    if now.mod_revision < from {
        return vec![];
    }
    let mut c = etcd_client(g).await;
    let options = etcd_client::WatchOptions::new().with_start_revision(from);
    let mut stream = tokio::time::timeout(ETCD_CALL, c.watch(key, Some(options)))
        .await
        .expect("etcd watch timed out")
        .expect("etcd watch");
    let mut out: Vec<Kv> = vec![];
    while out
        .last()
        .map_or(true, |k| k.mod_revision < now.mod_revision)
    {
        let msg = tokio::time::timeout(ETCD_CALL, stream.message())
            .await
            .expect("the watch's history timed out")
            .expect("etcd watch message")
            .expect("the watch ended");
        for ev in msg.events() {
            if let (etcd_client::EventType::Put, Some(kv)) = (ev.event_type(), ev.kv()) {
                out.push(Kv {
                    value: String::from_utf8_lossy(kv.value()).into_owned(),
                    mod_revision: kv.mod_revision(),
                    create_revision: kv.create_revision(),
                });
            }
        }
    }
    out
}

/// The `leader` field of a published set's JSON.
fn set_leader(value: &str) -> String {
    let v: Value = serde_json::from_str(value).unwrap_or_else(|e| panic!("{e}: {value}"));
    v["leader"].as_str().unwrap_or_default().to_string()
}

/// The weights of backend `app` in a published set's JSON.
fn set_weights(value: &str) -> Weights {
    let v: Value = serde_json::from_str(value).unwrap_or_else(|e| panic!("{e}: {value}"));
    serde_json::from_value(v["weights"]["app"].clone()).unwrap_or_else(|e| panic!("{e}: {value}"))
}

// ---------------------------------------------------------------------------------------------
// The daemon under test
// ---------------------------------------------------------------------------------------------

/// `hatune --log-format json run --config PATH`, with its stderr collected line by line.
struct Daemon {
    index: usize,
    child: Child,
    pid: u32,
    lines: Arc<Mutex<Vec<String>>>,
    metrics_port: u16,
    http: reqwest::Client,
}

impl Daemon {
    async fn start(index: usize, config: &Path, metrics_port: u16) -> Daemon {
        let mut child = Command::new(env!("CARGO_BIN_EXE_hatune"))
            .args(["--log-format", "json", "run", "--config"])
            .arg(config)
            .env_remove("RUST_LOG")
            .env_remove("HATUNE_CONFIG")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("cannot start hatune");
        let pid = child.id().expect("pid");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = lines.clone();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                sink.lock().unwrap().push(line);
            }
        });
        let d = Daemon {
            index,
            child,
            pid,
            lines,
            metrics_port,
            http: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(2))
                .build()
                .unwrap(),
        };
        // The signal handlers are in place before this line is logged.
        d.wait_log("the `hatune running` line", 0, SOON, |v| {
            message(v) == "hatune running"
        })
        .await;
        d
    }

    fn name(&self) -> String {
        name(self.index)
    }

    /// Every stderr line so far that is a JSON log record, in order.
    fn logs(&self) -> Vec<Value> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    fn log_count(&self) -> usize {
        self.logs().len()
    }

    /// The log records from index `from` on that satisfy `pred`.
    fn find(&self, from: usize, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
        self.logs()
            .into_iter()
            .skip(from)
            .filter(|v| pred(v))
            .collect()
    }

    /// Awaits a log record at index `from` or later that satisfies `pred`.
    async fn wait_log(
        &self,
        what: &str,
        from: usize,
        within: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let pred = &pred;
        let what = format!("{}: {what}", self.name());
        until(&what, within, move || async move {
            self.logs().into_iter().skip(from).find(|v| pred(v))
        })
        .await
    }

    fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill")
            .args([&format!("-{name}"), &self.pid.to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{name} {}", self.pid);
    }

    async fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        match tokio::time::timeout(within, self.child.wait()).await {
            Ok(status) => status.expect("wait"),
            Err(_) => panic!("{} did not exit within {within:?}", self.name()),
        }
    }

    /// The metrics text, or None while nothing answers.
    async fn scrape(&self) -> Option<String> {
        let reply = self
            .http
            .get(format!("http://127.0.0.1:{}/metrics", self.metrics_port))
            .send()
            .await
            .ok()?;
        assert_eq!(reply.status(), 200);
        reply.text().await.ok()
    }

    /// The value of the unlabelled series `name`.
    async fn metric(&self, name: &str) -> Option<f64> {
        sample(&self.scrape().await?, name)
    }

    /// Awaits the unlabelled series `name` satisfying `pred`; returns its value.
    async fn wait_metric(&self, name: &str, within: Duration, pred: impl Fn(f64) -> bool) -> f64 {
        let what = format!("{}: {name} as wanted", self.name());
        until(&what, within, || async {
            self.metric(name).await.filter(|&v| pred(v))
        })
        .await
    }

    async fn ticks(&self) -> Option<f64> {
        self.metric("hatune_ticks_total").await
    }

    /// Awaits `hatune_ticks_total >= n`; returns the count seen.
    async fn wait_ticks(&self, n: f64, within: Duration) -> f64 {
        let what = format!("{}: hatune_ticks_total >= {n}", self.name());
        until(&what, within, || async {
            self.ticks().await.filter(|&t| t >= n)
        })
        .await
    }

    /// Awaits `k` more ticks from now.
    async fn wait_more_ticks(&self, k: f64) {
        let t = self.wait_ticks(0.0, SOON).await;
        self.wait_ticks(t + k, SOON).await;
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
            eprintln!("---- {}'s log ({} lines):", self.name(), lines.len());
            for l in lines.iter() {
                eprintln!("{l}");
            }
        }
    }
}

/// The value of the unlabelled sample `name` in OpenMetrics text.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let mut fields = l.split(' ');
        (fields.next()? == name).then_some(())?;
        fields.next()?.parse().ok()
    })
}

fn message(v: &Value) -> &str {
    v["message"].as_str().unwrap_or_default()
}

/// Awaits the leader's post naming one of `daemons`, that one's `hatune_peer_leader` at 1 and
/// every other's at 0; returns its index in `daemons`.
async fn one_leader(g: &Group, daemons: &[Daemon]) -> usize {
    until(
        "exactly one leader, by etcd and by metrics",
        SOON,
        || async {
            let leader = g.leader().await?;
            let mut flags = vec![];
            for d in daemons {
                flags.push(d.metric("hatune_peer_leader").await?);
            }
            let sum: f64 = flags.iter().sum();
            let at = daemons.iter().position(|d| d.name() == leader)?;
            (sum == 1.0 && flags[at] == 1.0).then_some(at)
        },
    )
    .await
}

/// Runs the binary with `args` to its end (bounded): (exit code, stdout, stderr).
async fn hatune(args: &[&str], config: &Path) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_hatune"))
        .args(args)
        .arg("--config")
        .arg(config)
        .env_remove("RUST_LOG")
        .env_remove("HATUNE_CONFIG")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(20), out)
        .await
        .unwrap_or_else(|_| panic!("hatune {args:?} did not exit"))
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

// ---------------------------------------------------------------------------------------------
// 1-2. Instances hold identical weights
// ---------------------------------------------------------------------------------------------

/// `n` instances under the load model: one leader, weights moved and settled, the same on
/// every balancer. Returns the group, the daemons, the leader's index and the weights.
async fn converged(n: usize) -> (Group, Vec<Daemon>, usize, Weights) {
    let g = Group::start(n, [0.0; 4]).await;
    let daemons = g.daemons(n).await;
    let leader = one_leader(&g, &daemons).await;
    let model = LoadModel::start(&g, 0);
    let all: Vec<usize> = (0..n).collect();
    let w = g.settled(&all, &daemons[0], SETTLE).await;
    drop(model);
    // Still exactly one leader once settled.
    assert_eq!(one_leader(&g, &daemons).await, leader);
    (g, daemons, leader, w)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_hold_identical_weights() {
    let (g, daemons, leader, w) = converged(2).await;
    // The weights follow the capacities 1:1:2:4.
    assert!(
        w["app-4"] > w["app-3"] && w["app-3"] > w["app-1"],
        "weights do not follow the cores: {w:?}"
    );
    let published = kv(&g, &weights_key()).await.expect("a published set");
    assert_eq!(set_weights(&published.value), w, "{published:?}");
    assert_eq!(set_leader(&published.value), name(leader));
    // The follower never led.
    let follower = &daemons[1 - leader];
    assert!(
        follower
            .find(0, |v| message(v).contains("this instance leads"))
            .is_empty(),
        "the follower led at some point"
    );
    // Only the leader polls the hosts: over a few ticks of both, each host is asked about as
    // many times as the leader ticked (give or take the ticks in flight at either end), not
    // as many as both did.
    let asked = |g: &Group| {
        g.hosts
            .iter()
            .map(FakeCadvisor::docker_requests)
            .collect::<Vec<_>>()
    };
    let (asked_before, led_before) = (asked(&g), daemons[leader].ticks().await.unwrap());
    let followed_before = follower.ticks().await.unwrap();
    follower.wait_more_ticks(5.0).await;
    let (asked_after, led_after) = (asked(&g), daemons[leader].ticks().await.unwrap());
    let followed = follower.ticks().await.unwrap() - followed_before;
    let led = led_after - led_before;
    for (b, a) in asked_before.iter().zip(&asked_after) {
        assert!(
            followed >= 5.0 && ((a - b) as f64) <= led + 2.0,
            "a host was asked {} times over {led} ticks of the leader and {followed} of the \
             follower",
            a - b
        );
    }

    // `hatune status` names the leader, the revision and both instances, none behind.
    let config = g.dir.path().join(format!("{}.json", name(0)));
    let status = until(
        "`hatune status` with both instances up to date",
        SOON,
        || {
            let config = config.clone();
            async move {
                let (code, out, err) = hatune(&["status"], &config).await;
                assert_eq!(code, Some(0), "{out}{err}");
                let revision = format!("published: revision {} by ", published.mod_revision);
                (out.contains(&revision) && !out.contains("BEHIND")).then_some(out)
            }
        },
    )
    .await;
    assert!(
        status.starts_with(&format!(
            "peer group {PREFIX} on {}: led by {}\n",
            g.etcd.endpoint(),
            name(leader)
        )),
        "{status}"
    );
    assert!(
        status.contains(&format!(
            "published: revision {} by {} at ",
            published.mod_revision,
            name(leader)
        )),
        "{status}"
    );
    let app: Vec<String> = w.iter().map(|(s, x)| format!("{s}={x}")).collect();
    assert!(
        status.contains(&format!("  app: {}\n", app.join(" "))),
        "{status}"
    );
    assert!(status.contains("instances:\n"), "{status}");
    for (i, d) in daemons.iter().enumerate() {
        let role = if i == leader { " (leader)" } else { "" };
        let line = format!(
            "  {}{role}: applied revision {} at ",
            d.name(),
            published.mod_revision
        );
        assert!(status.contains(&line), "no `{line}` in\n{status}");
    }
    // `hatune check` has a line for the peer group too.
    let config = g.dir.path().join(format!("{}.json", name(0)));
    let (_, out, err) = hatune(&["check"], &config).await;
    let line = format!(
        "ok   etcd {}: {PREFIX} as {}: led by {}, weights at revision ",
        g.etcd.endpoint(),
        name(0),
        name(leader)
    );
    assert!(out.contains(&line), "no `{line}` in\n{out}{err}");
    eprintln!("two instances settled at {w:?}\n{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_converge() {
    let (g, daemons, leader, w) = converged(3).await;
    assert_eq!(g.weights_of(&[0, 1, 2]).await, vec![w.clone(); 3]);
    // Each instance applied the set it holds: the revision it reports is the published one.
    let published = kv(&g, &weights_key()).await.expect("a published set");
    assert_eq!(set_weights(&published.value), w);
    for d in &daemons {
        d.wait_metric("hatune_peer_revision", SOON, |r| {
            r == published.mod_revision as f64
        })
        .await;
    }
    eprintln!("three instances settled at {w:?}, led by {}", name(leader));
}

// ---------------------------------------------------------------------------------------------
// 3. Failover
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_hands_over_within_the_lease() {
    let g = Group::start(2, [0.0; 4]).await;
    let mut daemons = g.daemons(2).await;
    let leader = one_leader(&g, &daemons).await;
    let survivor = 1 - leader;
    // The load follows the survivor's balancer: it goes on being tuned after the kill.
    let _model = LoadModel::start(&g, survivor);
    g.settled(&[0, 1], &daemons[survivor], SETTLE).await;
    let from = daemons[survivor].log_count();

    let before = weights(&g.admin(survivor)).await;
    let killed_at = Instant::now();
    daemons[leader].child.start_kill().unwrap();
    let new_name = name(survivor);
    until("the survivor on the leader's post", LEASE * 5, || async {
        (g.leader().await.as_deref() == Some(new_name.as_str())).then_some(())
    })
    .await;
    let handover = killed_at.elapsed();
    let after = weights(&g.admin(survivor)).await;
    daemons[leader].wait_exit(SOON).await;
    eprintln!("new leader after {handover:?}; weights {before:?} then {after:?}");
    assert!(
        handover < LEASE + Duration::from_secs(3),
        "the survivor led {handover:?} after the kill (lease {LEASE:?})"
    );

    // No reset, no jump: at most the normal next decision.
    let near = |a: &Weights, b: &Weights| {
        a.keys().eq(b.keys())
            && a.iter().all(|(s, &w)| {
                let x = f64::from(b[s]);
                (x - f64::from(w)).abs() <= 0.3 * f64::from(w)
            })
            && !b.values().all(|&w| w == 100)
    };
    assert!(near(&before, &after), "{before:?} then {after:?}");
    let survivor_d = &daemons[survivor];
    survivor_d
        .wait_log("`this instance leads`", from, SOON, |v| {
            message(v) == "peers: this instance leads"
        })
        .await;
    survivor_d
        .wait_metric("hatune_peer_leader", SOON, |v| v == 1.0)
        .await;
    // It goes on deciding from the published weights: a few ticks later still no jump, and
    // whatever it published since is its own.
    survivor_d.wait_more_ticks(3.0).await;
    let later = weights(&g.admin(survivor)).await;
    assert!(near(&before, &later), "{before:?} then later {later:?}");
    let post = kv(&g, &leader_key()).await.expect("the leader's post");
    for set in puts_since(&g, &weights_key(), post.create_revision).await {
        assert_eq!(set_leader(&set.value), new_name, "{set:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_gives_the_post_up_at_once() {
    let g = Group::start(2, BUSY).await;
    let mut daemons = g.daemons(2).await;
    let leader = one_leader(&g, &daemons).await;
    let other = name(1 - leader);
    daemons[leader].wait_more_ticks(2.0).await;
    let stopping = Instant::now();
    daemons[leader].signal("TERM");
    until(
        "the other instance on the leader's post",
        LEASE * 5,
        || async { (g.leader().await.as_deref() == Some(other.as_str())).then_some(()) },
    )
    .await;
    let handover = stopping.elapsed();
    let status = daemons[leader].wait_exit(SOON).await;
    assert_eq!(status.code(), Some(0), "{status:?}");
    eprintln!("handed over {handover:?} after SIGTERM");
    daemons[leader]
        .wait_log("`lease given up`", 0, SOON, |v| {
            message(v) == "peers: lease given up"
        })
        .await;
    // Well within the lease: the post was given up, not left to lapse.
    assert!(
        handover < LEASE / 2,
        "the other instance led {handover:?} after SIGTERM (lease {LEASE:?})"
    );
}

// ---------------------------------------------------------------------------------------------
// 4. A leader stopped past its lease
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_leader_does_not_overwrite_its_successor() {
    let g = Group::start(2, [0.0; 4]).await;
    let daemons = g.daemons(2).await;
    let old = one_leader(&g, &daemons).await;
    let new = 1 - old;
    let model = LoadModel::start(&g, new);
    g.settled(&[0, 1], &daemons[new], SETTLE).await;

    daemons[old].signal("STOP");
    let new_name = name(new);
    until(
        "the other instance on the leader's post",
        LEASE * 5,
        || async { (g.leader().await.as_deref() == Some(new_name.as_str())).then_some(()) },
    )
    .await;
    let post = kv(&g, &leader_key()).await.expect("the leader's post");
    let set_before = kv(&g, &weights_key()).await.expect("a published set");
    // A noisy neighbour on app-1's host: the leaders (new and old) now want other weights.
    model.set_bias([0.5, 0.0, 0.0, 0.0]);
    let from = daemons[old].log_count();
    daemons[old].signal("CONT");
    let t = daemons[old].wait_ticks(0.0, SOON).await;
    daemons[old].wait_ticks(t + 4.0, SOON).await;
    daemons[new].wait_more_ticks(2.0).await;

    assert_eq!(
        kv(&g, &leader_key()).await.as_ref(),
        Some(&post),
        "the post changed hands again"
    );
    let deposed = daemons[old].find(from, |v| {
        let m = message(v);
        m.contains("no longer the leader") || m.contains("another instance holds the post")
    });
    assert!(
        !deposed.is_empty(),
        "the old leader did not log that it lost its post"
    );
    daemons[old]
        .wait_metric("hatune_peer_leader", SOON, |v| v == 0.0)
        .await;
    // Every set published since the new leader took the post is the new leader's, and there
    // were some (the bias moved the weights).
    let sets = puts_since(&g, &weights_key(), post.create_revision).await;
    for set in &sets {
        assert_eq!(set_leader(&set.value), new_name, "{set:?}");
    }
    assert!(
        sets.iter()
            .any(|s| s.mod_revision > set_before.mod_revision),
        "nothing was published after SIGCONT: {sets:?}"
    );
    // What the old one wrote to its balancer after SIGCONT came from a published set, not
    // from decisions of its own.
    let published: Vec<Weights> = std::iter::once(&set_before)
        .chain(&sets)
        .map(|s| set_weights(&s.value))
        .collect();
    for v in daemons[old].find(from, |v| message(v) == "weight changed") {
        let (server, w) = (v["server"].as_str().unwrap(), v["new"].as_u64().unwrap());
        assert!(
            published
                .iter()
                .any(|p| p.get(server).map(|&x| u64::from(x)) == Some(w)),
            "the old leader set {server} to {w}, in no published set: {published:?}"
        );
    }
    // The old one follows again: its balancer comes to the new leader's set.
    drop(model);
    g.set_all_cores([0.0; 4]);
    g.settled(&[0, 1], &daemons[new], SETTLE).await;
    let last = kv(&g, &weights_key()).await.unwrap();
    assert_eq!(set_leader(&last.value), new_name);
    assert_eq!(weights(&g.admin(old)).await, set_weights(&last.value));
}

// ---------------------------------------------------------------------------------------------
// 5. A frozen etcd
// ---------------------------------------------------------------------------------------------

fn out_of_reach(v: &Value) -> bool {
    message(v).starts_with("peers: etcd out of reach")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_etcd_stalls_nobody() {
    let g = Group::start(2, [0.0; 4]).await;
    let mut daemons = g.daemons(2).await;
    let leader = one_leader(&g, &daemons).await;
    // The load follows the balancer of the instance that stays.
    let model = LoadModel::start(&g, leader);
    let settled = g.settled(&[0, 1], &daemons[leader], SETTLE).await;
    for d in &daemons {
        d.wait_metric("hatune_peer_etcd_up", SOON, |v| v == 1.0)
            .await;
    }
    let from: Vec<usize> = daemons.iter().map(Daemon::log_count).collect();

    g.etcd.freeze().unwrap();
    let frozen_at = Instant::now();
    // The leader would now move the weights, if it could publish.
    model.set_bias([0.5, 0.0, 0.0, 0.0]);
    for d in &daemons {
        d.wait_metric("hatune_peer_etcd_up", SOON, |v| v == 0.0)
            .await;
    }
    for d in &daemons {
        d.wait_more_ticks(6.0).await;
    }
    eprintln!("frozen for {:?}", frozen_at.elapsed());
    assert_eq!(
        g.weights_of(&[0, 1]).await,
        vec![settled.clone(); 2],
        "the weights moved while etcd was frozen"
    );
    for (d, &from) in daemons.iter().zip(&from) {
        let said = d.find(from, out_of_reach);
        assert_eq!(
            said.len(),
            1,
            "{}: said {} times: {said:?}",
            d.name(),
            said.len()
        );
        let changed = d.find(from, |v| message(v) == "weight changed");
        assert!(changed.is_empty(), "{}: {changed:?}", d.name());
        // Nothing is warned about tick after tick: each warning of the outage comes once.
        let warned: Vec<String> = d
            .find(from, |v| v["level"] == "WARN")
            .iter()
            .map(|v| message(v).to_string())
            .collect();
        let distinct: std::collections::BTreeSet<&String> = warned.iter().collect();
        assert_eq!(distinct.len(), warned.len(), "{}: {warned:?}", d.name());
    }

    // `hatune status` says etcd does not answer, within its timeouts.
    let asked = Instant::now();
    let config = g.dir.path().join(format!("{}.json", name(0)));
    let (code, out, err) = hatune(&["status"], &config).await;
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(err.contains("etcd"), "{err}");
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "{:?}",
        asked.elapsed()
    );

    // SIGTERM still stops at once, the frozen etcd notwithstanding.
    let quitter = 1 - leader;
    let stopping = Instant::now();
    daemons[quitter].signal("TERM");
    let status = daemons[quitter].wait_exit(Duration::from_secs(5)).await;
    assert_eq!(status.code(), Some(0), "{status:?}");
    eprintln!("stopped in {:?} with etcd frozen", stopping.elapsed());

    // Thawed: etcd answers again, the remaining instance leads, and the weights move again.
    let stay = &daemons[leader];
    let from = stay.log_count();
    g.etcd.thaw().unwrap();
    stay.wait_metric("hatune_peer_etcd_up", SOON, |v| v == 1.0)
        .await;
    stay.wait_log("`etcd answers again`", from, SOON, |v| {
        message(v) == "peers: etcd answers again"
    })
    .await;
    let stay_name = stay.name();
    until("the remaining instance leading", LEASE * 5, || async {
        (g.leader().await.as_deref() == Some(stay_name.as_str())).then_some(())
    })
    .await;
    stay.wait_log("a `weight changed` after the thaw", from, SOON * 2, |v| {
        message(v) == "weight changed"
    })
    .await;
    assert_eq!(stay.find(from, out_of_reach).len(), 0);
}

/// `standalone_after`: etcd out of reach that long, each instance decides alone; once etcd
/// answers, one leads again and nobody goes back to the set published before the outage (it
/// did before 2c875e4: a follower ticking before the new leader's first set applied the stale
/// set, app-1 39 -> 65 -> 42 over two ticks).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_standalone_after_each_decides_alone_then_rejoins() {
    let g = Group::start(2, [0.0; 4]).await;
    let mut daemons = vec![];
    for i in 0..2 {
        let port = free_port();
        let mut config = g.config(i, port);
        config["peers"]["standalone_after"] = json!("4s");
        let path = g.write_config(&format!("{}.json", name(i)), &config);
        daemons.push(Daemon::start(i, &path, port).await);
    }
    let leader = one_leader(&g, &daemons).await;
    let model = LoadModel::start(&g, leader);
    let settled = g.settled(&[0, 1], &daemons[leader], SETTLE).await;
    let stale = kv(&g, &weights_key()).await.expect("a published set");
    assert_eq!(set_weights(&stale.value), settled);
    let from: Vec<usize> = daemons.iter().map(Daemon::log_count).collect();

    g.etcd.freeze().unwrap();
    let frozen_at = Instant::now();
    model.set_bias([0.5, 0.0, 0.0, 0.0]);
    // Each instance, leader and follower, decides alone once etcd has been out of reach for
    // `standalone_after`, and not before.
    for (d, &from) in daemons.iter().zip(&from) {
        d.wait_log("a `weight changed` of its own", from, SOON * 2, |v| {
            message(v) == "weight changed"
        })
        .await;
        let alone_after = frozen_at.elapsed();
        eprintln!(
            "{} decided alone {alone_after:?} after the freeze",
            d.name()
        );
        assert!(
            alone_after >= Duration::from_secs(4),
            "{} moved a weight {alone_after:?} after the freeze",
            d.name()
        );
        let down = d.find(from, out_of_reach);
        assert_eq!(down.len(), 1, "{}: {down:?}", d.name());
        // The switch is said, once: a follower waiting out an outage looks the same otherwise.
        let alone = d.find(from, |v| message(v).starts_with("peers: deciding alone"));
        assert_eq!(alone.len(), 1, "{}: {alone:?}", d.name());
    }
    let alone = g.weights_of(&[0, 1]).await;
    assert!(
        alone.iter().all(|w| w["app-1"] < settled["app-1"]),
        "app-1's host is busier: its weight drops on both: {settled:?} then {alone:?}"
    );

    // Thawed: one leader again, and the two balancers agree again.
    let from: Vec<usize> = daemons.iter().map(Daemon::log_count).collect();
    g.etcd.thaw().unwrap();
    let leader = one_leader(&g, &daemons).await;
    drop(model);
    g.set_all_cores([0.0; 4]);
    let w = g.settled(&[0, 1], &daemons[leader], SETTLE).await;
    let published = kv(&g, &weights_key()).await.unwrap();
    assert_eq!(set_weights(&published.value), w);
    // Rejoining did not throw a balancer back to the set published before the freeze: once an
    // instance hears from etcd again, it writes no weight that only the stale set holds (a
    // set published since, or a decision, may land on the same value: those are fine).
    let since: Vec<Weights> = puts_since(&g, &weights_key(), stale.mod_revision + 1)
        .await
        .iter()
        .map(|s| set_weights(&s.value))
        .collect();
    assert!(!since.is_empty(), "nothing published after the thaw");
    for (d, &from) in daemons.iter().zip(&from) {
        let logs = d.logs();
        let rejoined = logs
            .iter()
            .enumerate()
            .skip(from)
            .find(|(_, v)| {
                let m = message(v);
                m == "peers: etcd answers again"
                    || m.starts_with("peers: the leader is now")
                    || m == "peers: this instance leads"
            })
            .map(|(i, _)| i)
            .expect("no sign of etcd after the thaw");
        let back: Vec<&Value> = logs[rejoined..]
            .iter()
            .filter(|v| message(v) == "weight changed")
            .filter(|v| {
                let server = v["server"].as_str().unwrap_or_default();
                let new = v["new"].as_u64().and_then(|w| u32::try_from(w).ok());
                new.is_some()
                    && settled.get(server).copied() == new
                    && since.iter().all(|s| s.get(server).copied() != new)
            })
            .collect();
        assert!(
            back.is_empty(),
            "{}: back to the stale set {settled:?} on rejoining (sets since: {since:?}): \
             {back:?}",
            d.name()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 6. An etcd restart
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_restart_loses_nothing() {
    let (mut g, daemons, _, _) = converged(2).await;
    // Idle: nothing moves any more, so whatever moves across the restart is the restart's.
    g.set_all_cores([0.0; 4]);
    let w = g.settled(&[0, 1], &daemons[0], SETTLE).await;
    let published = kv(&g, &weights_key()).await.expect("a published set");
    assert_eq!(set_weights(&published.value), w);
    let from: Vec<usize> = daemons.iter().map(Daemon::log_count).collect();

    g.etcd.restart().await.unwrap();
    assert_eq!(
        kv(&g, &weights_key()).await.as_ref(),
        Some(&published),
        "the published set changed across the restart"
    );
    for (d, &from) in daemons.iter().zip(&from) {
        d.wait_log("`etcd answers again`", from, SOON, |v| {
            message(v) == "peers: etcd answers again"
        })
        .await;
        d.wait_metric("hatune_peer_etcd_up", SOON, |v| v == 1.0)
            .await;
    }
    let leader = one_leader(&g, &daemons).await;
    for d in &daemons {
        d.wait_more_ticks(3.0).await;
        assert_eq!(
            d.metric("hatune_peer_revision").await,
            Some(published.mod_revision as f64),
            "{}",
            d.name()
        );
    }
    assert_eq!(g.weights_of(&[0, 1]).await, vec![w.clone(); 2]);
    assert_eq!(kv(&g, &weights_key()).await.as_ref(), Some(&published));
    eprintln!(
        "after the restart {} leads, revision {} kept: {w:?}",
        name(leader),
        published.mod_revision
    );
}

// ---------------------------------------------------------------------------------------------
// 7. Without peers
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_is_unaffected() {
    let g = Group::start(1, BUSY).await;
    let port = free_port();
    let mut config = g.config(0, port);
    let peers = config.as_object_mut().unwrap().remove("peers").unwrap();
    let path = g.write_config("alone.json", &config);
    let d = Daemon::start(0, &path, port).await;
    d.wait_log("a `weight changed`", 0, SOON, |v| {
        message(v) == "weight changed"
    })
    .await;
    let moved = weights(&g.admin(0)).await;
    assert!(moved.values().any(|&w| w != 100), "{moved:?}");
    let text = d.scrape().await.expect("metrics");
    assert!(sample(&text, "hatune_ticks_total").is_some(), "{text}");
    assert!(!text.contains("hatune_peer_"), "{text}");
    assert!(
        d.find(0, |v| message(v).starts_with("peers:")
            || message(v).contains("peer group"))
            .is_empty(),
        "a daemon without `peers` spoke of peers"
    );

    // `hatune status` wants `peers`.
    let (code, out, err) = hatune(&["status"], &path).await;
    assert_eq!(code, Some(2), "{out}{err}");
    assert!(err.contains("`peers`"), "{err}");
    // `hatune once` does not take part in a peer group (unless it only looks).
    config["peers"] = peers;
    let with_peers = g.write_config("once.json", &config);
    let (code, out, err) = hatune(&["once"], &with_peers).await;
    assert_eq!(code, Some(2), "{out}{err}");
    assert!(err.contains("`peers`"), "{err}");
    // With --dry-run it looks, alone, and touches nothing.
    let (code, out, err) = hatune(&["once", "--dry-run"], &with_peers).await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(kv(&g, &weights_key()).await.is_none());
    assert!(kv(&g, &leader_key()).await.is_none());
}

// ---------------------------------------------------------------------------------------------
// 8. Config errors
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_peers_key_exits_2_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let base = json!({
        "haproxy": ["/run/haproxy/admin.sock"],
        "cadvisor": ["http://127.0.0.1:8080"],
        "backends": [{"name": "app", "pattern": "^app-"}],
        "peers": {"etcd": ["http://127.0.0.1:2379"], "prefix": "/hatune/test", "lease": "2s",
                  "name": "lb-1"},
    });
    let path = dir.path().join("hatune.json");
    std::fs::write(&path, base.to_string()).unwrap();
    let (code, out, err) = hatune(&["check", "--config-only"], &path).await;
    assert_eq!(code, Some(0), "the base config is valid: {out}{err}");
    for (key, value, named) in [
        ("etcd", json!([]), "peers.etcd"),
        ("lease", json!("500ms"), "peers.lease"),
        ("prefix", json!("hatune"), "peers.prefix"),
    ] {
        let mut config = base.clone();
        config["peers"][key] = value;
        std::fs::write(&path, config.to_string()).unwrap();
        let (code, out, err) = hatune(&["check", "--config-only"], &path).await;
        assert_eq!(code, Some(2), "{key}: {out}{err}");
        assert!(err.contains(&format!("`{named}`")), "{key}: {err}");
    }
}

/// etcd over TLS with client certificates, as production etcd runs: two instances agree
/// through it; a CA that did not sign etcd's certificate, or no client certificate, is said
/// plainly and nothing is published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_over_tls_with_client_certificates() {
    let etcd = Etcd::start_tls().await.expect("cannot start etcd with TLS");
    assert!(etcd.endpoint().starts_with("https://"));
    let g = Group::around(etcd, 2, [0.5, 0.5, 1.0, 1.0]).await;
    let daemons = g.daemons(2).await;
    let leader = one_leader(&g, &daemons).await;
    let settled = g.settled(&[0, 1], &daemons[leader], SETTLE).await;
    assert!(settled.values().any(|&w| w != 100), "{settled:?}");
    assert_eq!(g.weights_of(&[0, 1]).await, vec![settled.clone(); 2]);
    let config = g.dir.path().join(format!("{}.json", name(0)));
    let (code, out, err) = hatune(&["status"], &config).await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains(&format!("led by {}", name(leader))), "{out}");

    // The wrong CA: the handshake fails, in words, and status exits 1.
    let mut wrong = g.config(0, free_port());
    wrong["peers"]["ca_file"] = json!(g.etcd.other_ca_file().unwrap());
    let path = g.write_config("wrong-ca.json", &wrong);
    let (code, out, err) = hatune(&["status"], &path).await;
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(err.contains("not signed by a CA in `ca_file`"), "{err}");
    eprintln!("the wrong CA said: {err}");
    // No client certificate: etcd refuses, and status exits 1.
    let mut anonymous = g.config(0, free_port());
    anonymous["peers"]
        .as_object_mut()
        .unwrap()
        .remove("client_cert_file");
    let path = g.write_config("anonymous.json", &anonymous);
    let (code, out, err) = hatune(&["status"], &path).await;
    assert_eq!(code, Some(1), "{out}{err}");
    // Under TLS 1.3 etcd refuses the certificate after the client thinks the handshake done:
    // the refusal arrives as BadCertificate (said with the `client_cert_file` hint) or, when
    // etcd closes first, as a closed connection or a broken pipe: which one is a race.
    assert!(err.starts_with("error: etcd: "), "{err}");
    eprintln!("no client certificate said: {err}");
}

/// The post deleted by hand (`etcdctl del PREFIX/leader`): another instance may take it, and
/// the one that held it stops leading; there is never more than one leader for long.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_deleted_by_hand_leaves_one_leader() {
    let g = Group::start(2, [0.5, 0.5, 1.0, 1.0]).await;
    let daemons = g.daemons(2).await;
    let leader = one_leader(&g, &daemons).await;
    let from = daemons[leader].log_count();
    g.etcd.delete(&leader_key()).await.unwrap();
    // Someone holds the post again, and exactly one instance says it leads.
    until("one leader after the delete", LEASE * 3, || async {
        let named = g.leader().await?;
        let mut leading = 0.0;
        for d in &daemons {
            leading += d.metric("hatune_peer_leader").await?;
        }
        (leading == 1.0).then_some(named)
    })
    .await;
    let now = g.leader().await.unwrap();
    if now != name(leader) {
        daemons[leader]
            .wait_log("the old leader stepping down", from, SOON, |v| {
                message(v) == "peers: the post is no longer this instance's: it no longer leads"
            })
            .await;
    }
}
