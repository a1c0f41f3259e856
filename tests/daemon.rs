//! `hatune run`, end to end: the real binary as a child process, against a real HAProxy
//! (testkit) and fake cAdvisor hosts over real HTTP serving from this process.
//!
//! Every test has its own HAProxy, fake hosts, temp dir and metrics port, so they run in
//! parallel. The daemon logs JSON lines on stderr; a background task collects them so a test
//! awaits a log line, a metric or a weight with a deadline (polling inside the deadline, never
//! sleeping as synchronisation). The child is killed when its handle drops (a failing test), and
//! a failing test prints the daemon's log.
//!
//! Load models: in the convergence test, as in `examples/demo.rs`, 2 cores of work are split by
//! HAProxy's weights, so host `i` reads `share_i × 2 / cores_i`. Elsewhere the containers use
//! fixed cores (readings do not follow the weights), or none at all (an idle backend, which
//! hatune leaves exactly as it is: the steady state the reload tests need).

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use hatune::sink::haproxy::{Address, Client};
use hatune::testkit::cadvisor::{Behaviour, FakeCadvisor, FakeContainer};
use hatune::testkit::haproxy::{free_port, Haproxy};

/// Cores of the four fake hosts (the demo's).
const CORES: [u32; 4] = [1, 1, 2, 4];
/// The work the load model splits by weight, in cores.
const WORK_CORES: f64 = 2.0;
/// The daemon's tick period in these tests.
const INTERVAL: Duration = Duration::from_millis(300);
/// Fake cAdvisor sample spacing: a few samples per tick.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// Default deadline for something that should happen within a few ticks.
const SOON: Duration = Duration::from_secs(10);
const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);

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
// The environment: HAProxy, fake hosts, config
// ---------------------------------------------------------------------------------------------

fn backend_cfg(servers: &[(&str, u32)]) -> String {
    let mut cfg = "backend app\n    balance roundrobin\n".to_string();
    for (name, weight) in servers {
        // A closed port: setting weights needs no traffic.
        cfg.push_str(&format!("    server {name} 127.0.0.1:1 weight {weight}\n"));
    }
    cfg
}

fn four_servers() -> String {
    backend_cfg(&[
        ("app-1", 100),
        ("app-2", 100),
        ("app-3", 100),
        ("app-4", 100),
    ])
}

/// A HAProxy with backend `app` of servers app-1..app-4 at weight 100, and four fake hosts of
/// [`CORES`] cores, host `i` running container `app-{i+1}` at `cores_used[i]` cores.
struct Env {
    lb: Haproxy,
    hosts: Vec<FakeCadvisor>,
    dir: tempfile::TempDir,
    metrics_port: u16,
}

impl Env {
    async fn start(cores_used: [f64; 4]) -> Env {
        let lb = tokio::task::block_in_place(|| Haproxy::start(&four_servers()))
            .expect("cannot start HAProxy");
        let mut hosts = vec![];
        for (i, (cores, used)) in CORES.iter().zip(cores_used).enumerate() {
            let host = FakeCadvisor::start(*cores, vec![FakeContainer::new(alias(i), used)])
                .await
                .unwrap();
            host.set_sample_interval(SAMPLE_EVERY);
            hosts.push(host);
        }
        Env {
            lb,
            hosts,
            dir: tempfile::tempdir().unwrap(),
            metrics_port: free_port(),
        }
    }

    fn admin(&self) -> Client {
        Client::new(self.lb.admin_socket(), CLIENT_TIMEOUT)
    }

    fn urls(&self) -> Vec<String> {
        self.hosts.iter().map(FakeCadvisor::url).collect()
    }

    /// The config every test starts from: one socket, the four hosts, a 300 ms interval and
    /// metrics on this env's port.
    fn config(&self) -> Value {
        json!({
            "haproxy": [self.lb.admin_socket().to_string()],
            "cadvisor": self.urls(),
            "timeout": "1s",
            "window": "2s",
            "interval": format!("{}ms", INTERVAL.as_millis()),
            "metrics_listen": format!("127.0.0.1:{}", self.metrics_port),
            "backends": [{"name": "app", "pattern": "^app-"}],
        })
    }

    fn write_config(&self, config: &Value) -> PathBuf {
        let path = self.dir.path().join("hatune.json");
        std::fs::write(&path, serde_json::to_string_pretty(config).unwrap()).unwrap();
        path
    }

    /// Writes `config` and starts `hatune run` on it.
    async fn daemon(&self, config: &Value, extra: &[&str]) -> Daemon {
        let path = self.write_config(config);
        Daemon::start(&path, extra, Some(self.metrics_port)).await
    }

    fn set_all_cores(&self, cores_used: [f64; 4]) {
        for (i, (host, used)) in self.hosts.iter().zip(cores_used).enumerate() {
            host.set_cores_used(&alias(i), used);
        }
    }
}

fn alias(i: usize) -> String {
    format!("app-{}", i + 1)
}

/// User weights of backend `app`, by server.
async fn weights(client: &Client) -> BTreeMap<String, u32> {
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

/// Utilisation of the four hosts under the load model, from HAProxy's weights.
fn model_utilisation(w: &BTreeMap<String, u32>) -> Vec<f64> {
    let ws: Vec<f64> = (0..4)
        .map(|i| f64::from(w.get(&alias(i)).copied().unwrap_or(0)))
        .collect();
    let total: f64 = ws.iter().sum();
    ws.iter()
        .zip(CORES)
        .map(|(w, cores)| w / total * WORK_CORES / f64::from(cores))
        .collect()
}

fn max_over_mean(u: &[f64]) -> f64 {
    let mean = u.iter().sum::<f64>() / u.len() as f64;
    u.iter().cloned().fold(0.0, f64::max) / mean
}

/// Keeps each fake host's container at its share of the work under HAProxy's current weights
/// (the demo's load model), until dropped.
struct LoadModel(tokio::task::JoinHandle<()>);

impl LoadModel {
    fn start(env: &Env) -> LoadModel {
        let admin = env.admin();
        let hosts = env.hosts.clone();
        LoadModel(tokio::spawn(async move {
            loop {
                if let Ok(stat) = admin.show_stat().await {
                    let w: BTreeMap<String, u32> = stat
                        .servers
                        .iter()
                        .filter(|s| s.backend == "app")
                        .map(|s| (s.server.clone(), s.user_weight()))
                        .collect();
                    let u = model_utilisation(&w);
                    for (i, host) in hosts.iter().enumerate() {
                        host.set_cores_used(&alias(i), u[i] * f64::from(CORES[i]));
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }))
    }
}

impl Drop for LoadModel {
    fn drop(&mut self) {
        self.0.abort();
    }
}

// ---------------------------------------------------------------------------------------------
// The daemon under test
// ---------------------------------------------------------------------------------------------

/// `hatune --log-format json run --config PATH`, with its stderr collected line by line.
struct Daemon {
    child: Child,
    pid: u32,
    lines: Arc<Mutex<Vec<String>>>,
    metrics_port: Option<u16>,
    http: reqwest::Client,
}

impl Daemon {
    async fn start(config: &Path, extra: &[&str], metrics_port: Option<u16>) -> Daemon {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_hatune"));
        cmd.args(["--log-format", "json", "run", "--config"])
            .arg(config)
            .args(extra)
            .env_remove("RUST_LOG")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("cannot start hatune");
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
            child,
            pid,
            lines,
            metrics_port,
            http: reqwest::Client::builder()
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

    /// Awaits a log record at index `from` or later that satisfies `pred`; returns its index
    /// and the record.
    async fn wait_log(
        &self,
        what: &str,
        from: usize,
        within: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> (usize, Value) {
        let pred = &pred;
        until(what, within, move || async move {
            self.logs()
                .into_iter()
                .enumerate()
                .skip(from)
                .find(|(_, v)| pred(v))
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

    /// Still running (not exited)?
    fn alive(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    async fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        match tokio::time::timeout(within, self.child.wait()).await {
            Ok(status) => status.expect("wait"),
            Err(_) => panic!("hatune did not exit within {within:?}"),
        }
    }

    /// GET /metrics: (content type, body), or None while nothing answers.
    async fn scrape(&self) -> Option<(String, String)> {
        let port = self.metrics_port.expect("this daemon serves no metrics");
        let reply = self
            .http
            .get(format!("http://127.0.0.1:{port}/metrics"))
            .send()
            .await
            .ok()?;
        assert_eq!(reply.status(), 200);
        let ctype = reply
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        Some((ctype, reply.text().await.ok()?))
    }

    /// The parsed metrics (asserting they are valid OpenMetrics text).
    async fn metrics(&self) -> Option<Metrics> {
        let (_, text) = self.scrape().await?;
        Some(parse_openmetrics(&text).unwrap_or_else(|e| panic!("{e}\n{text}")))
    }

    async fn ticks(&self) -> Option<f64> {
        self.metrics().await?.value("hatune_ticks_total", &[])
    }

    /// Awaits `hatune_ticks_total >= n`; returns the count seen.
    async fn wait_ticks(&self, n: f64, within: Duration) -> f64 {
        until(&format!("hatune_ticks_total >= {n}"), within, || async {
            self.ticks().await.filter(|&t| t >= n)
        })
        .await
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
            eprintln!("---- hatune's log ({} lines):", lines.len());
            for l in lines.iter() {
                eprintln!("{l}");
            }
        }
    }
}

fn message(v: &Value) -> &str {
    v["message"].as_str().unwrap_or_default()
}

fn field<'a>(v: &'a Value, name: &str) -> &'a str {
    v[name].as_str().unwrap_or_default()
}

/// A `weight changed` record (hatune wrote a weight), for `server` when given.
fn weight_changed(v: &Value, server: Option<&str>) -> bool {
    message(v) == "weight changed" && server.map_or(true, |s| field(v, "server") == s)
}

/// Weights stay the same across two ticks and no `weight changed` is logged meanwhile;
/// returns them.
async fn stable_weights(d: &Daemon, admin: &Client, within: Duration) -> BTreeMap<String, u32> {
    let deadline = Instant::now() + within;
    loop {
        let from = d.log_count();
        let before = weights(admin).await;
        let t0 = d.wait_ticks(0.0, SOON).await;
        d.wait_ticks(t0 + 2.0, SOON).await;
        let after = weights(admin).await;
        if before == after && d.find(from, |v| weight_changed(v, None)).is_empty() {
            return after;
        }
        assert!(
            Instant::now() < deadline,
            "weights did not settle within {within:?}: {before:?} then {after:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// A strict OpenMetrics text parser (what prometheus-client writes and Prometheus scrapes)
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

#[derive(Debug, Default)]
struct Family {
    kind: String,
    help: bool,
    samples: Vec<Sample>,
}

#[derive(Debug, Default)]
struct Metrics {
    families: BTreeMap<String, Family>,
}

impl Metrics {
    fn samples(&self) -> impl Iterator<Item = &Sample> {
        self.families.values().flat_map(|f| f.samples.iter())
    }

    /// The value of the sample with exactly these labels.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.samples()
            .find(|s| s.name == name && s.labels == want)
            .map(|s| s.value)
    }
}

fn is_metric_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn parse_value(s: &str) -> Result<f64, String> {
    match s {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => s.parse().map_err(|_| format!("`{s}` is not a number")),
    }
}

/// `{a="x",b="y"}` at the start of `s`: the labels and the rest after `}`.
fn parse_labels(s: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut labels = BTreeMap::new();
    let mut rest = s.strip_prefix('{').ok_or("labels must start with {")?;
    if let Some(r) = rest.strip_prefix('}') {
        return Ok((labels, r));
    }
    loop {
        let eq = rest.find('=').ok_or("label without =")?;
        let name = &rest[..eq];
        if !is_label_name(name) {
            return Err(format!("bad label name `{name}`"));
        }
        rest = rest[eq + 1..]
            .strip_prefix('"')
            .ok_or("label value must be quoted")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err("unterminated label value".into()),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    other => return Err(format!("bad escape {other:?}")),
                },
                Some((_, '\n')) => return Err("newline in a label value".into()),
                Some((_, c)) => value.push(c),
            }
        };
        if labels.insert(name.to_string(), value).is_some() {
            return Err(format!("label `{name}` twice"));
        }
        rest = &rest[end + 1..];
        if let Some(r) = rest.strip_prefix(',') {
            rest = r;
        } else if let Some(r) = rest.strip_prefix('}') {
            return Ok((labels, r));
        } else {
            return Err("expected , or } after a label".into());
        }
    }
}

/// A sample's labels other than `le`, in order: which histogram series it belongs to.
type LabelKey = Vec<(String, String)>;

/// The suffixes a sample of a family of `kind` may carry.
fn suffixes(kind: &str) -> &'static [&'static str] {
    match kind {
        "counter" => &["_total", "_created"],
        "gauge" | "unknown" | "stateset" | "info" => &[""],
        "histogram" | "gaugehistogram" => &["_bucket", "_sum", "_count", "_created", "_gcount"],
        "summary" => &["", "_sum", "_count", "_created"],
        _ => &[],
    }
}

/// Parses OpenMetrics text strictly: metadata before samples, each family in one block,
/// sample names and labels well formed, histograms cumulative, `# EOF` last.
fn parse_openmetrics(text: &str) -> Result<Metrics, String> {
    let body = text
        .strip_suffix("# EOF\n")
        .ok_or("the text does not end with `# EOF\\n`")?;
    let mut m = Metrics::default();
    let mut current: Option<String> = None;
    let mut closed: Vec<String> = vec![];
    for (n, line) in body.lines().enumerate() {
        let at = |e: String| format!("line {}: {e}: {line:?}", n + 1);
        if line.is_empty() {
            return Err(at("empty line".into()));
        }
        if let Some(meta) = line.strip_prefix("# ") {
            let mut parts = meta.splitn(3, ' ');
            let (kw, name, rest) = (parts.next(), parts.next(), parts.next());
            let name = name.ok_or_else(|| at("metadata without a name".into()))?;
            if !is_metric_name(name) {
                return Err(at(format!("bad family name `{name}`")));
            }
            if current.as_deref() != Some(name) {
                if closed.iter().any(|c| c == name) || m.families.contains_key(name) {
                    return Err(at(format!("family `{name}` appears twice")));
                }
                if let Some(c) = current.take() {
                    closed.push(c);
                }
                current = Some(name.to_string());
            }
            let fam = m.families.entry(name.to_string()).or_default();
            if !fam.samples.is_empty() {
                return Err(at("metadata after samples".into()));
            }
            match (kw, rest) {
                (Some("HELP"), Some(_)) => fam.help = true,
                (Some("TYPE"), Some(kind)) => {
                    if suffixes(kind).is_empty() {
                        return Err(at(format!("unknown type `{kind}`")));
                    }
                    fam.kind = kind.to_string();
                }
                (Some("UNIT"), Some(_)) => {}
                _ => return Err(at("unknown metadata".into())),
            }
            continue;
        }
        if line.starts_with('#') {
            return Err(at("a comment that is not HELP/TYPE/UNIT/EOF".into()));
        }
        let name_end = line.find(['{', ' ']).ok_or_else(|| at("no value".into()))?;
        let name = &line[..name_end];
        if !is_metric_name(name) {
            return Err(at(format!("bad metric name `{name}`")));
        }
        let (labels, rest) = if line[name_end..].starts_with('{') {
            parse_labels(&line[name_end..]).map_err(at)?
        } else {
            (BTreeMap::new(), &line[name_end..])
        };
        let rest = rest
            .strip_prefix(' ')
            .ok_or_else(|| at("expected a space before the value".into()))?;
        let mut fields = rest.split(' ');
        let value = parse_value(fields.next().unwrap_or_default()).map_err(at)?;
        if let Some(ts) = fields.next() {
            ts.parse::<f64>()
                .map_err(|_| at(format!("bad timestamp `{ts}`")))?;
        }
        if fields.next().is_some() {
            return Err(at("trailing fields".into()));
        }
        let family = current
            .clone()
            .ok_or_else(|| at("a sample before any TYPE".into()))?;
        let fam = m.families.get_mut(&family).unwrap();
        let suffix = name
            .strip_prefix(family.as_str())
            .ok_or_else(|| at(format!("sample outside its family `{family}`")))?;
        if fam.kind.is_empty() {
            return Err(at("a sample of a family without TYPE".into()));
        }
        if !suffixes(&fam.kind).contains(&suffix) {
            return Err(at(format!(
                "suffix `{suffix}` not allowed for a {}",
                fam.kind
            )));
        }
        if fam.kind == "counter" && suffix == "_total" && (value.is_nan() || value < 0.0) {
            return Err(at("negative counter".into()));
        }
        fam.samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    // Histograms: buckets ascending by `le`, cumulative, +Inf last and equal to _count.
    for (name, fam) in &m.families {
        if fam.kind != "histogram" {
            continue;
        }
        let mut groups: HashMap<LabelKey, Vec<(f64, f64)>> = HashMap::new();
        let mut counts: HashMap<LabelKey, f64> = HashMap::new();
        for s in &fam.samples {
            let mut key: LabelKey = s.labels.clone().into_iter().collect();
            key.retain(|(k, _)| k != "le");
            if s.name.ends_with("_bucket") {
                let le = s
                    .labels
                    .get("le")
                    .ok_or(format!("{name}: bucket without le"))?;
                groups
                    .entry(key)
                    .or_default()
                    .push((parse_value(le)?, s.value));
            } else if s.name.ends_with("_count") {
                counts.insert(key, s.value);
            }
        }
        for (key, buckets) in &groups {
            if buckets
                .windows(2)
                .any(|w| w[0].0 >= w[1].0 || w[0].1 > w[1].1)
            {
                return Err(format!("{name}{key:?}: buckets not ascending/cumulative"));
            }
            let last = buckets.last().unwrap();
            if last.0 != f64::INFINITY {
                return Err(format!("{name}{key:?}: no +Inf bucket"));
            }
            if counts.get(key) != Some(&last.1) {
                return Err(format!("{name}{key:?}: _count is not the +Inf bucket"));
            }
        }
    }
    Ok(m)
}

#[test]
fn the_openmetrics_parser_is_strict() {
    let good = "# HELP a_b Help.\n# TYPE a_b counter\na_b_total 3\n\
                # TYPE g gauge\ng{x=\"1\",y=\"a\\\"b\"} 2.5\n\
                # TYPE h histogram\nh_sum 1.0\nh_count 2\nh_bucket{le=\"0.1\"} 1\nh_bucket{le=\"+Inf\"} 2\n# EOF\n";
    let m = parse_openmetrics(good).unwrap();
    assert_eq!(m.value("a_b_total", &[]), Some(3.0));
    assert_eq!(m.value("g", &[("x", "1"), ("y", "a\"b")]), Some(2.5));
    for bad in [
        "# TYPE a counter\na_total 1\n",                     // no EOF
        "a 1\n# EOF\n",                                      // no TYPE
        "# TYPE a counter\na 1\n# EOF\n",                    // counter without _total
        "# TYPE a gauge\na{x=1} 1\n# EOF\n",                 // unquoted label
        "# TYPE a gauge\na 1\n# TYPE b gauge\na 2\n# EOF\n", // sample outside its family
        "# TYPE a gauge\na one\n# EOF\n",                    // not a number
        "# TYPE a gauge\na 1\n# TYPE a gauge\n# EOF\n",      // family twice
        "# TYPE h histogram\nh_count 2\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\n# EOF\n",
    ] {
        assert!(parse_openmetrics(bad).is_err(), "accepted {bad:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Ticks on the interval and converges
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ticks_on_its_interval_and_converges_weights_like_the_one_shot() {
    let env = Env::start([0.5; 4]).await;
    let _load = LoadModel::start(&env);
    let admin = env.admin();
    let initial = max_over_mean(&model_utilisation(&weights(&admin).await));
    assert!(initial > 1.4, "equal weights start unbalanced: {initial}");
    let started = Instant::now();
    let d = env.daemon(&env.config(), &[]).await;

    let reached = until(
        "max/mean utilisation <= 1.05 under the load model",
        Duration::from_secs(30),
        || async {
            let w = weights(&admin).await;
            (max_over_mean(&model_utilisation(&w)) <= 1.05).then_some(w)
        },
    )
    .await;
    let took = started.elapsed();
    // Converged means stays converged: a few more ticks keep it near balance (a little slack:
    // the test's load model follows the weights with a lag when the machine is busy).
    let t = d.wait_ticks(0.0, SOON).await;
    d.wait_ticks(t + 3.0, SOON).await;
    let later = weights(&admin).await;
    let ratio = max_over_mean(&model_utilisation(&later));
    assert!(
        ratio <= 1.1,
        "balanced at {reached:?} but later {later:?} (max/mean {ratio})"
    );
    // The weights follow the capacities 1:1:2:4.
    assert!(later["app-4"] > later["app-3"] && later["app-3"] > later["app-1"]);

    let changed = d.find(0, |v| weight_changed(v, None));
    assert!(!changed.is_empty(), "no `weight changed` logged");
    assert!(changed.iter().all(|v| field(v, "backend") == "app"));
    // It ticked on the interval: no fewer ticks than the interval allows, give or take.
    let ticks = d.ticks().await.unwrap();
    let elapsed = started.elapsed();
    let expected = elapsed.as_secs_f64() / INTERVAL.as_secs_f64();
    assert!(
        ticks >= 3.0 && ticks <= expected + 2.0 && ticks >= expected * 0.3,
        "{ticks} ticks in {elapsed:?} at a {INTERVAL:?} interval"
    );
    // After its first tick, the daemon asks each host only for the newest samples, and for
    // `/machine` once.
    for (i, h) in env.hosts.iter().enumerate() {
        let asked = h.last_docker_request().and_then(|r| r.num_stats);
        assert_eq!(
            asked,
            Some(1),
            "host {i}: a lean tick asks for the newest sample"
        );
        assert_eq!(h.machine_requests(), 1, "host {i}: the cores are kept");
    }
    eprintln!("converged in {took:?}: {later:?}");
}

// ---------------------------------------------------------------------------------------------
// 2. HAProxy reloads
// ---------------------------------------------------------------------------------------------

/// Ticks of the reload tests: long enough that a reload done right after a tick is over
/// before the next one (see [`reload_between_ticks`]).
const RELOAD_TEST_INTERVAL: &str = "1s";

/// Starts the daemon (with `config`) on fixed loads, waits until it has set weights, then
/// makes the backend idle (hatune then leaves every weight as it is) and returns the settled
/// weights.
async fn tuned_then_idle(env: &Env, config: &Value) -> (Daemon, BTreeMap<String, u32>) {
    let d = env.daemon(config, &[]).await;
    d.wait_log("a first `weight changed`", 0, SOON, |v| {
        weight_changed(v, None)
    })
    .await;
    env.set_all_cores([0.0; 4]);
    let settled = stable_weights(&d, &env.admin(), Duration::from_secs(20)).await;
    assert!(
        settled.values().any(|&w| w != 100),
        "hatune set no weight: {settled:?}"
    );
    (d, settled)
}

/// Reloads HAProxy right after a tick ends, so that no tick straddles the handover (a tick
/// that reads `show info` from the old process and `show stat` from the new one mistakes the
/// reload for operators' changes: see the ignored test
/// `a_tick_straddling_a_reload_does_not_mistake_it_for_operators`).
async fn reload_between_ticks(d: &Daemon, lb: &mut Haproxy, new_backends: Option<&str>) {
    let t = d.ticks().await.unwrap();
    let deadline = Instant::now() + SOON;
    while d.ticks().await.unwrap() <= t {
        assert!(Instant::now() < deadline, "no tick within {SOON:?}");
        // Polling interval inside a deadline.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::task::block_in_place(|| lb.reload(new_backends)).expect("reload");
}

/// A daemon (re)started on weights it did not write itself (an earlier run set them, and they
/// are within the deadband now) takes them over: a reload restores them, not the config's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_restores_the_weights_a_restarted_daemon_found() {
    let mut env = Env::start([0.0; 4]).await; // idle: hatune itself moves nothing
    let admin = env.admin();
    for (server, w) in [("app-1", 50), ("app-2", 60), ("app-3", 120), ("app-4", 256)] {
        let reply = admin
            .command(&format!("set weight app/{server} {w}"))
            .await
            .unwrap();
        assert!(reply.trim().is_empty(), "{reply}");
    }
    let found = weights(&admin).await;
    let mut config = env.config();
    config["interval"] = json!(RELOAD_TEST_INTERVAL);
    let d = env.daemon(&config, &[]).await;
    d.wait_ticks(2.0, SOON).await;
    let from = d.log_count();
    reload_between_ticks(&d, &mut env.lb, None).await;
    let restored = until("the found weights back", Duration::from_secs(5), || async {
        let w = weights(&admin).await;
        (w == found).then_some(w)
    })
    .await;
    assert_eq!(restored, found);
    let (_, line) = d
        .wait_log("weights re-applied", from, SOON, |v| {
            message(v) == "weights re-applied after the reload"
        })
        .await;
    assert_eq!(line["restored"].as_u64(), Some(4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_haproxy_reload_is_noticed_and_the_last_weights_reapplied_within_one_tick() {
    let mut env = Env::start([0.5; 4]).await;
    let mut config = env.config();
    config["interval"] = json!(RELOAD_TEST_INTERVAL);
    let (d, settled) = tuned_then_idle(&env, &config).await;
    let admin = env.admin();
    let socket = env.lb.admin_socket().to_string();
    let old_pid = env.lb.pid();

    let from = d.log_count();
    reload_between_ticks(&d, &mut env.lb, None).await;
    assert_ne!(env.lb.pid(), old_pid);
    // The reload forgot the runtime weights, as in production.
    let ticks_at_reload = d.ticks().await.unwrap();

    // Idle: without the re-apply, nothing would move these weights off 100.
    let restored = until(
        "the last weights back in HAProxy",
        Duration::from_secs(5),
        || async {
            let w = weights(&admin).await;
            (w == settled).then_some(w)
        },
    )
    .await;
    let ticks_after = d.ticks().await.unwrap();
    assert!(
        ticks_after - ticks_at_reload <= 2.0,
        "took {} ticks to restore {restored:?}",
        ticks_after - ticks_at_reload
    );

    let (i, noticed) = d
        .wait_log("the reload warning", from, SOON, |v| {
            message(v).starts_with("HAProxy was reloaded")
        })
        .await;
    assert_eq!(field(&noticed, "socket"), socket);
    assert_eq!(noticed["new_pid"].as_u64(), Some(u64::from(env.lb.pid())));
    assert_eq!(noticed["old_pid"].as_u64(), Some(u64::from(old_pid)));
    // Re-applied in the same tick that noticed the reload.
    let logs = d.logs();
    let reapplied = logs[i + 1..]
        .iter()
        .find(|v| message(v) == "weights re-applied after the reload")
        .expect("`weights re-applied after the reload` logged");
    assert_eq!(
        reapplied["restored"].as_u64(),
        Some(settled.values().filter(|&&w| w != 100).count() as u64)
    );
    assert_eq!(
        d.find(from, |v| message(v).starts_with("HAProxy was reloaded"))
            .len(),
        1,
        "the reload is noticed once"
    );
    // No override was invented from the reset weights.
    assert!(d
        .find(from, |v| message(v).starts_with("weight changed outside"))
        .is_empty());
    let m = d.metrics().await.unwrap();
    assert_eq!(
        m.value("hatune_haproxy_reloads_total", &[("socket", &socket)]),
        Some(1.0)
    );
}

/// Found by the soak: an operator sets a weight after a reload, before hatune's next tick.
/// That weight is neither the config's nor hatune's (`show servers state` tells the config's):
/// it is the operator's and stays; the others get hatune's back. The daemon is stopped while
/// the operator acts, so no tick reads HAProxy before the command and writes after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_weight_an_operator_sets_right_after_a_reload_stays_theirs() {
    let mut env = Env::start([0.5; 4]).await;
    let mut config = env.config();
    config["interval"] = json!(RELOAD_TEST_INTERVAL);
    let (d, settled) = tuned_then_idle(&env, &config).await;
    let admin = env.admin();
    // Neither hatune's weight nor the config's: an operator's, whatever hatune settled at.
    let theirs = [51u32, 37, 73]
        .into_iter()
        .find(|w| *w != settled["app-1"] && *w != 100)
        .unwrap();

    // Right after a tick, so none is cut in two by the stop.
    let ticks = d.ticks().await.unwrap();
    d.wait_ticks(ticks + 1.0, SOON).await;
    let ticks = d.ticks().await.unwrap();
    d.signal("STOP");
    tokio::task::block_in_place(|| env.lb.reload(None)).expect("reload");
    let reply = admin
        .command(&format!("set weight app/app-1 {theirs}"))
        .await
        .unwrap();
    assert!(reply.trim().is_empty(), "{reply}");
    let from = d.log_count();
    d.signal("CONT");

    let mut want = settled.clone();
    want.insert("app-1".into(), theirs);
    until("the others restored", Duration::from_secs(5), || async {
        (weights(&admin).await == want).then_some(())
    })
    .await;
    d.wait_ticks(ticks + 2.0, SOON).await;
    assert_eq!(weights(&admin).await, want, "two ticks later");
    let (_, line) = d
        .wait_log("the operator's weight noticed", from, SOON, |v| {
            message(v).starts_with("weight set since the reload outside hatune")
        })
        .await;
    assert_eq!(field(&line, "server"), "app-1");
    assert_eq!(line["found"].as_u64(), Some(u64::from(theirs)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_added_by_a_reload_starts_at_the_backends_mean_weight() {
    let mut env = Env::start([0.5; 4]).await;
    let mut config = env.config();
    config["interval"] = json!(RELOAD_TEST_INTERVAL);
    let (d, settled) = tuned_then_idle(&env, &config).await;
    let admin = env.admin();
    let mean = (f64::from(settled.values().sum::<u32>()) / settled.len() as f64).round() as u32;
    assert_ne!(
        mean, 10,
        "the test needs a mean unlike app-5's config weight"
    );

    let from = d.log_count();
    let with_app5 = backend_cfg(&[
        ("app-1", 100),
        ("app-2", 100),
        ("app-3", 100),
        ("app-4", 100),
        ("app-5", 10),
    ]);
    reload_between_ticks(&d, &mut env.lb, Some(&with_app5)).await;

    let mut want = settled.clone();
    want.insert("app-5".into(), mean);
    until(
        "app-5 at the mean weight and the others restored",
        Duration::from_secs(5),
        || async { (weights(&admin).await == want).then_some(()) },
    )
    .await;
    let (_, new) = d
        .wait_log("the new-server line", from, SOON, |v| {
            message(v) == "new server starts at the backend's mean weight"
        })
        .await;
    assert_eq!(field(&new, "server"), "app-5");
    assert_eq!(field(&new, "backend"), "app");
    assert_eq!(new["weight"].as_u64(), Some(u64::from(mean)));
    // It stays there: hatune takes app-5's weight as its own from now on.
    let t = d.ticks().await.unwrap();
    d.wait_ticks(t + 2.0, SOON).await;
    assert_eq!(weights(&admin).await, want);
    assert!(d
        .find(from, |v| message(v).starts_with("weight changed outside"))
        .is_empty());
}

/// After a reload the daemon restores its weights and does not move them by the window that
/// ran the reset weights (as if its own weights had made that load): under the load model the
/// backend stays balanced in every tick after the one that restores. Before, it over-corrected
/// (max/mean 1.39, 1.42, 1.30 ... in the ticks after a reload on a real fleet).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ticks_after_a_haproxy_reload_stay_balanced() {
    let mut env = Env::start([0.5; 4]).await;
    let _load = LoadModel::start(&env);
    let admin = env.admin();
    let mut config = env.config();
    // The window after the restoring tick still starts at a sample taken before the restore
    // (up to one sample spacing and the load model's lag): a longer tick keeps that share,
    // and the small move it causes, as small as a real fleet's (1-2 s samples, 30 s ticks).
    config["interval"] = json!("2s");
    let d = env.daemon(&config, &[]).await;
    let ratio = || async { max_over_mean(&model_utilisation(&weights(&admin).await)) };
    until(
        "balanced under the load model",
        Duration::from_secs(30),
        || async { (ratio().await <= 1.03).then_some(()) },
    )
    .await;
    let t = d.ticks().await.unwrap();
    d.wait_ticks(t + 2.0, SOON).await;
    let before = ratio().await;
    assert!(before <= 1.05, "not settled before the reload: {before}");

    reload_between_ticks(&d, &mut env.lb, None).await;
    assert!(ratio().await > 1.4, "the reload reset the weights");
    let t = d.ticks().await.unwrap();
    let mut after = vec![];
    for k in 1..=3 {
        d.wait_ticks(t + f64::from(k), SOON).await;
        after.push(ratio().await);
    }
    assert!(
        after.iter().all(|&r| r <= 1.05),
        "max/mean in the ticks after the reload: {after:?} (before it: {before})"
    );
    d.wait_log("the reload noticed", 0, SOON, |v| {
        message(v).starts_with("HAProxy was reloaded")
    })
    .await;
    eprintln!("max/mean before the reload {before:.3}, in the ticks after it {after:.3?}");
}

/// A unix socket in front of HAProxy's admin socket. Connections are passed through, except
/// that once armed, the reply to the next `show info` is held (after HAProxy sent it) until the
/// test releases it: a slow `show info` reply across a reload, made deterministic.
/// What arms the proxy: fired once the reply is held; awaited to release it.
type Hold = (
    tokio::sync::oneshot::Sender<()>,
    tokio::sync::oneshot::Receiver<()>,
);

struct HoldingProxy {
    path: PathBuf,
    arm: tokio::sync::mpsc::Sender<Hold>,
    task: tokio::task::JoinHandle<()>,
}

impl HoldingProxy {
    fn start(path: PathBuf, target: PathBuf) -> HoldingProxy {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let (arm, mut armed) = tokio::sync::mpsc::channel::<Hold>(1);
        let task = tokio::spawn(async move {
            let mut pending = None;
            loop {
                tokio::select! {
                    Some(a) = armed.recv() => pending = Some(a),
                    Ok((mut client, _)) = listener.accept() => {
                        // The first line decides; hatune writes each command line at once.
                        let mut first = vec![0u8; 4096];
                        let Ok(n) = client.read(&mut first).await else { continue };
                        first.truncate(n);
                        let hold = if first.starts_with(b"show info\n") { pending.take() } else { None };
                        let target = target.clone();
                        tokio::spawn(async move {
                            let Ok(mut upstream) = tokio::net::UnixStream::connect(&target).await else {
                                return;
                            };
                            if upstream.write_all(&first).await.is_err() {
                                return;
                            }
                            match hold {
                                None => {
                                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                                }
                                Some((held, release)) => {
                                    let mut reply = vec![];
                                    let _ = upstream.read_to_end(&mut reply).await;
                                    let _ = held.send(());
                                    let _ = release.await;
                                    let _ = client.write_all(&reply).await;
                                    let _ = client.shutdown().await;
                                }
                            }
                        });
                    }
                }
            }
        });
        HoldingProxy { path, arm, task }
    }

    /// Holds the next `show info` reply; the first receiver fires once it is held, the
    /// sender releases it.
    async fn hold_next_show_info(
        &self,
    ) -> (
        tokio::sync::oneshot::Receiver<()>,
        tokio::sync::oneshot::Sender<()>,
    ) {
        let (held_tx, held_rx) = tokio::sync::oneshot::channel();
        let (release_tx, release_rx) = tokio::sync::oneshot::channel();
        self.arm.send((held_tx, release_rx)).await.unwrap();
        (held_rx, release_tx)
    }
}

impl Drop for HoldingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// BUG: a tick reads `show info` and `show stat` on two connections. When HAProxy is reloaded
/// between them (the `show info` reply is slow, e.g. under load), the tick sees the old pid and
/// the new process's config weights: it takes the reload for operators' changes to every server
/// (one false `weight changed outside hatune` each), and records the new server's config weight
/// as hatune's own, so the next tick, which does notice the reload, "restores" the new server
/// to its config weight instead of the backend's mean. Seen without the proxy too, in about 2
/// runs in 5 of `a_server_added_by_a_reload_...` under CPU load at a 300 ms interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tick_straddling_a_reload_does_not_mistake_it_for_operators() {
    let mut env = Env::start([0.5; 4]).await;
    let proxy = HoldingProxy::start(
        env.dir.path().join("proxy.sock"),
        match env.lb.admin_socket() {
            Address::Unix(p) => p,
            other => panic!("{other}"),
        },
    );
    let mut config = env.config();
    config["haproxy"] = json!([proxy.path.to_str().unwrap()]);
    // The held `show info` must not time out while HAProxy reloads.
    config["timeout"] = json!("5s");
    let (d, settled) = tuned_then_idle(&env, &config).await;
    let admin = env.admin();
    let mean = (f64::from(settled.values().sum::<u32>()) / settled.len() as f64).round() as u32;

    let from = d.log_count();
    let (held, release) = proxy.hold_next_show_info().await;
    tokio::time::timeout(SOON, held)
        .await
        .expect("no tick asked `show info`")
        .unwrap();
    // The old process has answered `show info`; now the reload, then the tick goes on.
    let with_app5 = backend_cfg(&[
        ("app-1", 100),
        ("app-2", 100),
        ("app-3", 100),
        ("app-4", 100),
        ("app-5", 10),
    ]);
    tokio::task::block_in_place(|| env.lb.reload(Some(&with_app5))).expect("reload");
    release.send(()).unwrap();

    d.wait_log("the reload noticed", from, SOON, |v| {
        message(v).starts_with("HAProxy was reloaded")
    })
    .await;
    let t = d.ticks().await.unwrap();
    d.wait_ticks(t + 2.0, SOON).await;
    let false_overrides = d.find(from, |v| {
        message(v).starts_with("weight changed outside hatune")
    });
    let mut want = settled.clone();
    want.insert("app-5".into(), mean);
    let got = weights(&admin).await;
    assert!(
        false_overrides.is_empty(),
        "a reload taken for operators' changes (weights now {got:?}, want {want:?}): {false_overrides:#?}"
    );
    assert_eq!(got, want, "app-5 should start at the mean weight {mean}");
}

// ---------------------------------------------------------------------------------------------
// 3. Operators win, SIGHUP hands back
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operators_weight_wins_until_sighup_hands_it_back() {
    // Fixed loads: readings do not follow the weights, so hatune keeps moving app-1 and
    // app-3 down for many ticks (until min_weight): the others keep being tuned.
    let env = Env::start([0.5; 4]).await;
    let admin = env.admin();
    let d = env.daemon(&env.config(), &[]).await;
    d.wait_log("a first `weight changed`", 0, SOON, |v| {
        weight_changed(v, Some("app-2"))
    })
    .await;

    const OPERATOR: u32 = 7;
    // A tick in flight may write app-2 between our write and its next read; then our weight
    // is simply gone and hatune has nothing to notice: set it again.
    let mut noticed = None;
    for _ in 0..3 {
        let from = d.log_count();
        admin
            .command(&format!("set weight app/app-2 {OPERATOR}"))
            .await
            .unwrap();
        let t = d.ticks().await.unwrap();
        d.wait_ticks(t + 2.0, SOON).await;
        let found = d.find(from, |v| {
            message(v).starts_with("weight changed outside hatune")
        });
        if !found.is_empty() {
            noticed = Some(from);
            break;
        }
        assert_ne!(
            weights(&admin).await["app-2"],
            OPERATOR,
            "app-2 kept the operator's weight but no override was logged"
        );
    }
    let from = noticed.expect("the operator's weight was never noticed");
    let (at, warned) = d
        .wait_log("the override warning", from, SOON, |v| {
            message(v).starts_with("weight changed outside hatune")
        })
        .await;
    assert_eq!(field(&warned, "server"), "app-2");
    assert_eq!(warned["found"].as_u64(), Some(u64::from(OPERATOR)));

    // Several ticks later: app-2 untouched, the others still tuned, warned once.
    let t = d.ticks().await.unwrap();
    d.wait_ticks(t + 4.0, SOON).await;
    assert_eq!(weights(&admin).await["app-2"], OPERATOR);
    assert!(
        d.find(at, |v| weight_changed(v, Some("app-2"))).is_empty(),
        "hatune wrote app-2 after the operator took it"
    );
    assert!(
        !d.find(at, |v| weight_changed(v, None)).is_empty(),
        "the other servers were not tuned after the override"
    );
    assert_eq!(
        d.find(0, |v| message(v)
            .starts_with("weight changed outside hatune"))
            .len(),
        1,
        "the override is logged exactly once"
    );
    let m = d.metrics().await.unwrap();
    assert_eq!(m.value("hatune_overridden_servers", &[]), Some(1.0));

    // SIGHUP hands app-2 back.
    let from = d.log_count();
    d.signal("HUP");
    let (_, reloaded) = d
        .wait_log("`config reloaded`", from, SOON, |v| {
            message(v) == "config reloaded"
        })
        .await;
    assert_eq!(reloaded["resumed"].as_u64(), Some(1));
    let (_, resumed) = d
        .wait_log("hatune tuning app-2 again", from, SOON, |v| {
            weight_changed(v, Some("app-2"))
        })
        .await;
    assert_eq!(resumed["old"].as_u64(), Some(u64::from(OPERATOR)));
    assert_ne!(weights(&admin).await["app-2"], OPERATOR);
    until("hatune_overridden_servers 0", SOON, || async {
        let m = d.metrics().await?;
        (m.value("hatune_overridden_servers", &[]) == Some(0.0)).then_some(())
    })
    .await;
    assert_eq!(
        d.find(0, |v| message(v)
            .starts_with("weight changed outside hatune"))
            .len(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operators_drain_by_weight_0_is_left_alone_even_after_sighup() {
    let env = Env::start([0.5; 4]).await;
    let admin = env.admin();
    let d = env.daemon(&env.config(), &[]).await;
    d.wait_log("a first `weight changed`", 0, SOON, |v| {
        weight_changed(v, None)
    })
    .await;
    let from = d.log_count();
    admin.command("set weight app/app-2 0").await.unwrap();
    // Whether or not a tick raced the write, 0 is never hatune's weight (min_weight 1), so
    // app-2 must be at 0 from here on.
    let t = d.ticks().await.unwrap();
    d.wait_ticks(t + 4.0, SOON).await;
    assert_eq!(weights(&admin).await["app-2"], 0);
    assert!(d
        .find(from, |v| weight_changed(v, Some("app-2")))
        .is_empty());
    let warned = d.find(0, |v| {
        message(v).starts_with("weight changed outside hatune")
    });
    assert_eq!(warned.len(), 1, "{warned:?}");
    assert_eq!(warned[0]["found"].as_u64(), Some(0));

    // SIGHUP hands it back, and weight 0 is still the operator's drain: left at 0.
    let from = d.log_count();
    d.signal("HUP");
    let (_, reloaded) = d
        .wait_log("`config reloaded`", from, SOON, |v| {
            message(v) == "config reloaded"
        })
        .await;
    assert_eq!(reloaded["resumed"].as_u64(), Some(1));
    let t = d.ticks().await.unwrap();
    d.wait_ticks(t + 3.0, SOON).await;
    assert_eq!(weights(&admin).await["app-2"], 0);
    assert!(d
        .find(from, |v| weight_changed(v, Some("app-2")))
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_a_new_interval() {
    let env = Env::start([0.5; 4]).await;
    let mut config = env.config();
    config["interval"] = json!("1h");
    let d = env.daemon(&config, &[]).await;
    d.wait_ticks(1.0, SOON).await;
    config["interval"] = json!(format!("{}ms", INTERVAL.as_millis()));
    env.write_config(&config);
    let from = d.log_count();
    d.signal("HUP");
    d.wait_log("`config reloaded`", from, SOON, |v| {
        message(v) == "config reloaded"
    })
    .await;
    // On the hourly schedule there would be no second tick for an hour.
    d.wait_ticks(4.0, SOON).await;
}

// ---------------------------------------------------------------------------------------------
// 4. SIGHUP with a broken config
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_with_a_broken_config_keeps_the_old_one_and_keeps_ticking() {
    let env = Env::start([0.5; 4]).await;
    let mut d = env.daemon(&env.config(), &[]).await;
    d.wait_ticks(1.0, SOON).await;
    let config_path = env.dir.path().join("hatune.json");

    // Not JSON at all.
    std::fs::write(&config_path, "{\"haproxy\": ").unwrap();
    let from = d.log_count();
    d.signal("HUP");
    let (_, failed) = d
        .wait_log("the reload failure", from, SOON, |v| {
            message(v) == "config reload failed: keeping the old config"
        })
        .await;
    assert!(
        field(&failed, "error").contains("not valid JSON"),
        "{failed}"
    );

    // Valid JSON with an unknown key: the key is named.
    let mut bad = env.config();
    bad["colour"] = json!("blue");
    std::fs::write(&config_path, serde_json::to_string(&bad).unwrap()).unwrap();
    let from = d.log_count();
    d.signal("HUP");
    let (_, failed) = d
        .wait_log("the reload failure", from, SOON, |v| {
            message(v) == "config reload failed: keeping the old config"
        })
        .await;
    assert_eq!(failed["level"], "ERROR");
    assert!(field(&failed, "error").contains("`colour`"), "{failed}");

    // Still running and still ticking on the old config.
    let after = d.ticks().await.unwrap();
    d.wait_ticks(after + 2.0, SOON).await;
    assert!(d.alive(), "hatune exited after a bad reload");
    assert!(d.find(0, |v| message(v) == "config reloaded").is_empty());
    let m = d.metrics().await.unwrap();
    assert_eq!(
        m.value(
            "hatune_haproxy_socket_up",
            &[("socket", &env.lb.admin_socket().to_string())]
        ),
        Some(1.0)
    );
}

// ---------------------------------------------------------------------------------------------
// 5. SIGTERM and SIGINT
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_cleanly_with_status_0() {
    let env = Env::start([0.5; 4]).await;
    let mut d = env.daemon(&env.config(), &[]).await;
    d.wait_ticks(2.0, SOON).await;
    d.signal("TERM");
    let status = d.wait_exit(Duration::from_secs(5)).await;
    assert_eq!(status.code(), Some(0), "{status:?}");
    // The reader has the last lines once stderr closes.
    d.wait_log("`hatune stopped`", 0, SOON, |v| {
        message(v) == "hatune stopped"
    })
    .await;
    // The metrics listener went with it.
    assert!(
        d.scrape().await.is_none(),
        "metrics still served after exit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_mid_tick_lets_the_tick_finish_and_stops_with_status_0() {
    let env = Env::start([0.5; 4]).await;
    // A fifth host that never answers: every tick lasts the 1 s timeout.
    let hang = FakeCadvisor::start(2, vec![FakeContainer::new("other", 0.1)])
        .await
        .unwrap();
    hang.set_behaviour(Behaviour::Hang);
    let mut config = env.config();
    config["cadvisor"]
        .as_array_mut()
        .unwrap()
        .push(json!(hang.url()));
    // -v: the daemon warns once about a failing host, later ticks say so at debug.
    let mut d = env.daemon(&config, &["-v"]).await;
    // The second tick is waiting on the hanging host.
    until("a second request to the hanging host", SOON, || async {
        (hang.docker_requests() >= 2).then_some(())
    })
    .await;
    let ticks_before = d.ticks().await.unwrap();
    d.signal("INT");
    let status = d.wait_exit(Duration::from_secs(6)).await;
    assert_eq!(status.code(), Some(0), "{status:?}");
    d.wait_log("`hatune stopped`", 0, SOON, |v| {
        message(v) == "hatune stopped"
    })
    .await;
    // The tick in flight finished (the hanging host timed out), it was not cut.
    assert!(d
        .find(0, |v| message(v).contains("did not finish within"))
        .is_empty());
    assert_eq!(ticks_before, 1.0, "the second tick was in flight");
    let skipped = d.find(0, |v| {
        message(v).starts_with("cAdvisor host") && field(v, "host") == hang.url()
    });
    assert_eq!(skipped.len(), 2, "the tick in flight ran to its end");
    assert_eq!(message(&skipped[0]), "cAdvisor host skipped");
    assert_eq!(
        message(&skipped[1]),
        "cAdvisor host still skipped",
        "a host failing the same way is warned about once"
    );
}

// ---------------------------------------------------------------------------------------------
// 6. /metrics
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_openmetrics_text_with_every_series() {
    // Every host at 50 %: balanced from the start, so the weights settle at once (all 256).
    let env = Env::start([0.5, 0.5, 1.0, 2.0]).await;
    let down = env.hosts[3].url();
    env.hosts[3].shutdown();
    let d = env.daemon(&env.config(), &[]).await;
    let socket = env.lb.admin_socket().to_string();
    let t = d.wait_ticks(2.0, SOON).await;

    let (ctype, text) = d.scrape().await.unwrap();
    assert!(
        ctype.starts_with("application/openmetrics-text"),
        "content type {ctype}"
    );
    let m = parse_openmetrics(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let got = |name: &str, labels: &[(&str, &str)]| {
        m.value(name, labels)
            .unwrap_or_else(|| panic!("no {name}{labels:?} in\n{text}"))
    };
    for name in [
        "hatune_server_weight",
        "hatune_server_utilisation",
        "hatune_ticks",
        "hatune_tick_duration_seconds",
        "hatune_skipped_hosts",
        "hatune_haproxy_socket_up",
        "hatune_last_successful_tick_timestamp_seconds",
    ] {
        assert!(m.families[name].help, "{name} has no HELP");
    }
    assert_eq!(m.families["hatune_ticks"].kind, "counter");
    assert_eq!(m.families["hatune_tick_duration_seconds"].kind, "histogram");
    assert_eq!(m.families["hatune_server_weight"].kind, "gauge");

    let hatune_weights = weights(&env.admin()).await;
    for i in 0..4 {
        let labels = [("backend", "app"), ("server", &alias(i) as &str)];
        assert_eq!(
            got("hatune_server_weight", &labels),
            f64::from(hatune_weights[&alias(i)]),
            "{}",
            alias(i)
        );
    }
    for i in 0..3 {
        let u = got(
            "hatune_server_utilisation",
            &[("backend", "app"), ("server", &alias(i))],
        );
        assert!((u - 0.5).abs() < 0.05, "{} utilisation {u}", alias(i));
    }
    assert_eq!(
        m.value(
            "hatune_server_utilisation",
            &[("backend", "app"), ("server", "app-4")]
        ),
        None,
        "app-4's host is down: no reading"
    );
    let ticks = got("hatune_ticks_total", &[]);
    assert!(ticks >= t, "{ticks}");
    assert_eq!(got("hatune_tick_duration_seconds_count", &[]), ticks);
    assert!(got("hatune_tick_duration_seconds_sum", &[]) > 0.0);
    assert_eq!(
        got("hatune_tick_duration_seconds_bucket", &[("le", "+Inf")]),
        ticks
    );
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let last = got("hatune_last_successful_tick_timestamp_seconds", &[]);
    assert!((now - last).abs() < 30.0, "last success {last}, now {now}");
    let skipped = got(
        "hatune_skipped_hosts_total",
        &[("host", &down), ("reason", "unreachable")],
    );
    assert!(skipped >= 2.0 && skipped <= ticks, "{skipped}");
    for up in &env.hosts[..3] {
        assert!(
            m.samples().all(|s| s.name != "hatune_skipped_hosts_total"
                || s.labels.get("host") != Some(&up.url())),
            "a host that answers counted as skipped"
        );
    }
    assert_eq!(got("hatune_haproxy_socket_up", &[("socket", &socket)]), 1.0);

    // The counter counts on.
    let later = d.wait_ticks(ticks + 1.0, SOON).await;
    assert!(later > ticks);
}

// ---------------------------------------------------------------------------------------------
// 7. An unreachable second socket
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_second_socket_does_not_stop_the_first() {
    let env = Env::start([0.5; 4]).await;
    let missing = env.dir.path().join("missing.sock");
    let missing_label = Address::Unix(missing.clone()).to_string();
    let mut config = env.config();
    config["haproxy"]
        .as_array_mut()
        .unwrap()
        .push(json!(missing.to_str().unwrap()));
    let d = env.daemon(&config, &[]).await;
    let admin = env.admin();

    until("weights on the first socket changed", SOON, || async {
        weights(&admin)
            .await
            .values()
            .any(|&w| w != 100)
            .then_some(())
    })
    .await;
    // Long enough for the backoff (1 s, then 2 s) to retry the missing socket.
    d.wait_ticks(12.0, Duration::from_secs(15)).await;
    let warned = d.find(0, |v| {
        v["level"] == "WARN"
            && message(v).starts_with("HAProxy socket unreachable")
            && field(v, "socket") == missing_label
    });
    assert_eq!(
        warned.len(),
        1,
        "warned about the missing socket {warned:?}"
    );
    assert!(!d.find(0, |v| weight_changed(v, None)).is_empty());
    let m = d.metrics().await.unwrap();
    assert_eq!(
        m.value("hatune_haproxy_socket_up", &[("socket", &missing_label)]),
        Some(0.0)
    );
    assert_eq!(
        m.value(
            "hatune_haproxy_socket_up",
            &[("socket", &env.lb.admin_socket().to_string())]
        ),
        Some(1.0)
    );
    assert!(m
        .value("hatune_last_successful_tick_timestamp_seconds", &[])
        .is_some_and(|t| t > 0.0));
}

/// A host that redirects to another and one whose reply passes `max_reply` are skipped by the
/// daemon each tick, warned about once each and counted by reason, while the four others'
/// servers are tuned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirecting_host_and_an_oversized_reply_are_skipped_each_tick() {
    let env = Env::start([0.5; 4]).await;
    let redirector = FakeCadvisor::start(2, vec![]).await.unwrap();
    redirector.set_behaviour(Behaviour::RedirectTo(env.hosts[0].addr()));
    let oversized = FakeCadvisor::start(2, vec![FakeContainer::new("app-9", 0.5)])
        .await
        .unwrap();
    oversized.set_behaviour(Behaviour::Oversized {
        bytes: 4 << 20,
        chunked: true,
    });
    let mut config = env.config();
    config["max_reply"] = json!("1MiB");
    let hosts = config["cadvisor"].as_array_mut().unwrap();
    hosts.push(json!(redirector.url()));
    hosts.push(json!(oversized.url()));
    let d = env.daemon(&config, &[]).await;

    d.wait_log("app-1 tuned", 0, SOON, |v| weight_changed(v, Some("app-1")))
        .await;
    d.wait_ticks(3.0, SOON).await;
    for (host, reason, words) in [
        (&redirector, "redirect", "(redirects are not followed"),
        (&oversized, "too_large", "is larger than max_reply (1MiB)"),
    ] {
        let warned = d.find(0, |v| {
            v["level"] == "WARN"
                && message(v) == "cAdvisor host skipped"
                && field(v, "host") == host.url()
        });
        assert_eq!(warned.len(), 1, "{reason}: {warned:?}");
        assert!(field(&warned[0], "reason").contains(words), "{warned:?}");
        let m = d.metrics().await.unwrap();
        let skipped = m.value(
            "hatune_skipped_hosts_total",
            &[("host", &host.url()), ("reason", reason)],
        );
        assert!(skipped.is_some_and(|n| n >= 3.0), "{reason}: {skipped:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// 8. --dry-run
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_writes_nothing_and_logs_what_it_would_set() {
    let env = Env::start([0.5; 4]).await;
    let d = env.daemon(&env.config(), &["--dry-run"]).await;
    let (_, would) = d
        .wait_log("`would set weight`", 0, SOON, |v| {
            message(v) == "would set weight"
        })
        .await;
    assert_eq!(field(&would, "backend"), "app");
    assert_eq!(would["old"].as_u64(), Some(100));
    assert_ne!(would["new"].as_u64(), Some(100));
    let (_, running) = d
        .wait_log("the start line", 0, SOON, |v| {
            message(v) == "hatune running"
        })
        .await;
    assert_eq!(running["dry_run"], true);

    d.wait_ticks(4.0, SOON).await;
    let w = weights(&env.admin()).await;
    assert!(w.values().all(|&w| w == 100), "dry run wrote {w:?}");
    assert!(d.find(0, |v| weight_changed(v, None)).is_empty());
    // Every tick would set the same: nothing was applied.
    let servers: Vec<String> = d
        .find(0, |v| message(v) == "would set weight")
        .iter()
        .map(|v| field(v, "server").to_string())
        .collect();
    assert!(servers.len() >= 4 * 3, "{servers:?}");
    let m = d.metrics().await.unwrap();
    assert_eq!(
        m.value(
            "hatune_server_weight",
            &[("backend", "app"), ("server", "app-4")]
        ),
        Some(100.0)
    );
}

// ---------------------------------------------------------------------------------------------
// 9. A cron schedule
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cron_schedule_ticks_every_second() {
    let env = Env::start([0.5; 4]).await;
    let mut config = env.config();
    config.as_object_mut().unwrap().remove("interval");
    config["schedule"] = json!("* * * * * *");
    let d = env.daemon(&config, &[]).await;
    let (_, running) = d
        .wait_log("the start line", 0, SOON, |v| {
            message(v) == "hatune running"
        })
        .await;
    assert!(field(&running, "schedule").contains("Cron"), "{running}");
    let started = Instant::now();
    d.wait_ticks(3.0, Duration::from_secs(6)).await;
    // Not the 30 s default interval, nor a busy loop.
    let ticks = d.ticks().await.unwrap();
    let elapsed = started.elapsed().as_secs_f64();
    assert!(ticks <= elapsed + 3.0, "{ticks} ticks in {elapsed} s");
    assert!(!d.find(0, |v| weight_changed(v, None)).is_empty());
}

// ---------------------------------------------------------------------------------------------
// 10. Failing to start
// ---------------------------------------------------------------------------------------------

/// Runs `hatune run` to its end (bounded): (exit code, stderr).
async fn run_to_end(config: &Path) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_hatune"))
        .args(["run", "--config"])
        .arg(config)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(20), out)
        .await
        .expect("hatune run did not exit")
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_config_at_start_exits_2_naming_the_key() {
    let env = Env::start([0.5; 4]).await;
    for (key, value) in [
        ("colour", json!("blue")),
        ("interval", json!("fast")),
        ("metrics_listen", json!("localhost")),
    ] {
        let mut config = env.config();
        config[key] = value;
        let path = env.write_config(&config);
        let (code, stderr) = run_to_end(&path).await;
        assert_eq!(code, Some(2), "{key}: {stderr}");
        assert!(stderr.contains(&format!("`{key}`")), "{key}: {stderr}");
    }
    // Both `interval` and `schedule`.
    let mut config = env.config();
    config["schedule"] = json!("* * * * * *");
    let (code, stderr) = run_to_end(&env.write_config(&config)).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("`schedule`"), "{stderr}");
    // Nothing was written.
    assert!(weights(&env.admin()).await.values().all(|&w| w == 100));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_metrics_port_exits_1() {
    let env = Env::start([0.5; 4]).await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let mut config = env.config();
    config["metrics_listen"] = json!(addr.to_string());
    let (code, stderr) = run_to_end(&env.write_config(&config)).await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot listen for metrics") && stderr.contains(&addr.to_string()),
        "{stderr}"
    );
    assert!(weights(&env.admin()).await.values().all(|&w| w == 100));
    drop(taken);
}
