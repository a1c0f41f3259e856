//! The other sources end to end: cAdvisor's `/metrics`, the kubelet over HTTPS with a token,
//! and a real Prometheus server (Debian's `prometheus`) scraping fake cAdvisor `/metrics`
//! endpoints. Each drives the real `hatune` binary against a real HAProxy.
//!
//! Load model (as in `tests/once.rs`): hosts of 1, 1, 2 and 4 cores each run an app container at
//! 0.5 cores, so they read 50%, 50%, 25% and 12.5%, and the halfway rule scaled to 256 proposes
//! 115, 115, 162, 256 from weights of 100.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use hatune::sink::haproxy::Client;
use hatune::testkit::cadvisor::{
    other_ca_pem, Behaviour, CpuSeries, FakeCadvisor, FakeContainer, FakeKubelet, KubeletOptions,
};
use hatune::testkit::haproxy::Haproxy;
use hatune::testkit::prometheus::Prometheus;

const TIMEOUT: Duration = Duration::from_secs(5);
const RUN_LIMIT: Duration = Duration::from_secs(60);
const CORES: [u32; 4] = [1, 1, 2, 4];
const DEMO_WEIGHTS: [u32; 4] = [115, 115, 162, 256];

fn backend_cfg(servers: &[String]) -> String {
    let mut cfg = "backend app\n    balance roundrobin\n".to_string();
    for s in servers {
        cfg.push_str(&format!("    server {s} 127.0.0.1:1 weight 100\n"));
    }
    cfg
}

fn servers() -> Vec<String> {
    (1..=4).map(|i| format!("app-{i}")).collect()
}

fn demo_map() -> BTreeMap<String, u32> {
    servers().into_iter().zip(DEMO_WEIGHTS).collect()
}

async fn weights(lb: &Haproxy) -> BTreeMap<String, u32> {
    Client::new(lb.admin_socket(), TIMEOUT)
        .show_stat()
        .await
        .unwrap()
        .servers
        .into_iter()
        .filter(|s| s.backend == "app")
        .map(|s| (s.server.clone(), s.user_weight()))
        .collect()
}

fn unchanged() -> BTreeMap<String, u32> {
    servers().into_iter().map(|s| (s, 100)).collect()
}

async fn cadvisors() -> Vec<FakeCadvisor> {
    let mut hosts = vec![];
    for (i, cores) in CORES.iter().enumerate() {
        let c = FakeContainer::new(format!("app-{}", i + 1), 0.5);
        hosts.push(FakeCadvisor::start(*cores, vec![c]).await.unwrap());
    }
    hosts
}

async fn kubelets(token: &str) -> Vec<FakeKubelet> {
    let mut nodes = vec![];
    for (i, cores) in CORES.iter().enumerate() {
        let c = FakeContainer::new(format!("app-{}", i + 1), 0.5);
        nodes.push(
            FakeKubelet::start(*cores, vec![c], KubeletOptions::new(token))
                .await
                .unwrap(),
        );
    }
    nodes
}

fn write(dir: &Path, file: &str, text: &str) -> PathBuf {
    let path = dir.join(file);
    std::fs::write(&path, text).unwrap();
    path
}

fn config(dir: &Path, lb: &Haproxy, sources: Value, backend: Value) -> PathBuf {
    let mut c = json!({
        "haproxy": lb.admin_socket().to_string(),
        "timeout": "3s",
        "second_scrape": "1s",
        "backends": [backend],
    });
    for (k, v) in sources.as_object().unwrap() {
        c[k] = v.clone();
    }
    write(
        dir,
        "config.json",
        &serde_json::to_string_pretty(&c).unwrap(),
    )
}

fn app_backend() -> Value {
    json!({"name": "app", "pattern": "^app-"})
}

/// The kubelet names containers `namespace/pod/container`; the HAProxy servers are the pods.
fn pod_backend() -> Value {
    json!({"name": "app", "pattern": "^default/(app-\\d+)/app$", "server": "{1}"})
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

async fn hatune(args: &[&str]) -> Run {
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_hatune"))
        .args(args)
        .env_remove("RUST_LOG")
        .env("NO_COLOR", "1")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(RUN_LIMIT, child)
        .await
        .unwrap_or_else(|_| panic!("hatune {args:?} ran longer than {RUN_LIMIT:?}"))
        .expect("cannot run the hatune binary");
    let run = Run {
        code: out.status.code().expect("hatune was killed by a signal"),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert!(!run.stderr.contains("panicked"), "{run}");
    run
}

async fn once(config: &Path) -> Run {
    hatune(&["once", "--config", config.to_str().unwrap()]).await
}

async fn check(config: &Path) -> Run {
    hatune(&["check", "--config", config.to_str().unwrap()]).await
}

/// cAdvisor's `/metrics` alone: two scrapes a second apart give each container's reading, and
/// the weights are those the JSON API gives. Per-CPU series (cgroup v1), `cpu="total"` (v2)
/// and series without timestamps all read the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cadvisor_metrics_alone_tunes_like_the_json_api() {
    let hosts = cadvisors().await;
    hosts[1].set_cpu_series(CpuSeries::Total);
    hosts[2].set_metrics_timestamps(false);
    let lb = Haproxy::start(&backend_cfg(&servers())).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let urls: Vec<String> = hosts
        .iter()
        .map(|h| format!("{}/metrics", h.url()))
        .collect();
    let cfg = config(dir.path(), &lb, json!({"cadvisor": urls}), app_backend());
    let run = once(&cfg).await;
    assert_eq!(run.code, 0, "{run}");
    // Host 3's series carry no timestamps: its reading spans the two scrapes as this machine
    // timed them, which a loaded CI machine stretches by a few ms (24.9% read for 25.0% once:
    // weight 163 for 162). The others are exact.
    let got = weights(&lb).await;
    let want = demo_map();
    for (server, w) in &want {
        let tolerance = if server == "app-3" { 2 } else { 0 };
        assert!(
            got[server].abs_diff(*w) <= tolerance,
            "{server}: {got:?} for {want:?}\n{run}"
        );
    }
    for h in &hosts {
        assert_eq!(h.metrics_requests(), 2, "two scrapes per host");
        assert_eq!(h.docker_requests(), 0, "the JSON API is not asked");
    }
}

/// JSON and `/metrics` URLs in one list, and a garbled `/metrics` host skipped with its URL
/// named while the others are tuned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_and_metrics_mixed_and_a_garbled_host_skipped() {
    let hosts = cadvisors().await;
    let lb = Haproxy::start(&backend_cfg(&servers())).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let urls = vec![
        hosts[0].url(),
        format!("{}/metrics", hosts[1].url()),
        hosts[2].url(),
        format!("{}/metrics", hosts[3].url()),
    ];
    let cfg = config(dir.path(), &lb, json!({"cadvisor": urls}), app_backend());
    let run = once(&cfg).await;
    assert_eq!(run.code, 0, "{run}");
    assert_eq!(weights(&lb).await, demo_map(), "{run}");
    assert_eq!(hosts[0].metrics_requests(), 0);
    assert_eq!(hosts[1].docker_requests(), 0);

    hosts[3].set_behaviour(Behaviour::Garbage);
    let run = check(&cfg).await;
    let bad = format!("{}/metrics", hosts[3].url());
    let line = run
        .stdout
        .lines()
        .find(|l| l.contains(&bad))
        .unwrap_or_else(|| panic!("no line names {bad}:\n{run}"));
    assert!(line.contains("garbled"), "{line}");
    let ok = format!("{}/metrics", hosts[1].url());
    let line = run.stdout.lines().find(|l| l.contains(&ok)).unwrap();
    assert!(
        line.contains("1 container") || line.contains("containers"),
        "{line}"
    );
}

/// The kubelet over HTTPS: the CA file, the token from its file, containers named
/// `namespace/pod/container` and mapped to the pods' servers; cores from `/metrics/cadvisor`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubelet_over_tls_with_a_token() {
    let nodes = kubelets("s3cret").await;
    let lb = Haproxy::start(&backend_cfg(&servers())).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca = write(dir.path(), "ca.pem", &nodes[0].ca_pem());
    // Every node has its own CA here: a bundle of them.
    let bundle: String = nodes.iter().map(|n| n.ca_pem()).collect();
    let ca_bundle = write(dir.path(), "cas.pem", &bundle);
    let token = write(dir.path(), "token", "s3cret\n");
    let urls: Vec<String> = nodes.iter().map(|n| n.url()).collect();
    let kubelet = |ca: &Path| json!({"kubelet": {"urls": urls, "ca_file": ca, "token_file": token, "second_scrape": "1s"}});
    let cfg = config(dir.path(), &lb, kubelet(&ca_bundle), pod_backend());
    let run = once(&cfg).await;
    assert_eq!(run.code, 0, "{run}");
    assert_eq!(weights(&lb).await, demo_map(), "{run}");
    assert!(
        !run.stderr.contains("s3cret"),
        "the token is never logged:\n{run}"
    );

    // A rotated token: the file changes and the kubelets take only the new one.
    for n in &nodes {
        n.set_token("n3w");
    }
    let run = check(&cfg).await;
    assert!(run.stdout.contains("status 401"), "{run}");
    assert!(run.stdout.contains("refused"), "{run}");
    write(dir.path(), "token", "n3w\n");
    let run = check(&cfg).await;
    assert!(
        !run.stdout.contains("status 401"),
        "the new token is read:\n{run}"
    );
    assert!(
        !run.stderr.contains("n3w") && !run.stdout.contains("n3w"),
        "{run}"
    );

    // Forbidden: the RBAC hint.
    nodes[0].set_behaviour(Behaviour::Status(403));
    let run = check(&cfg).await;
    let line = run
        .stdout
        .lines()
        .find(|l| l.contains("status 403"))
        .unwrap_or_else(|| panic!("{run}"));
    assert!(
        line.contains(&nodes[0].url()) && line.contains("nodes/metrics"),
        "{line}"
    );
    nodes[0].set_behaviour(Behaviour::Normal);

    // The wrong CA: every node that is not signed by it is named, with why.
    let cfg = config(dir.path(), &lb, kubelet(&ca), pod_backend());
    let run = check(&cfg).await;
    let line = run
        .stdout
        .lines()
        .find(|l| l.contains(&nodes[1].url()))
        .unwrap_or_else(|| panic!("{run}"));
    assert!(line.contains("not signed by a CA in `ca_file`"), "{line}");
    let other = write(dir.path(), "other.pem", &other_ca_pem());
    let cfg = config(dir.path(), &lb, kubelet(&other), pod_backend());
    let run = once(&cfg).await;
    assert_eq!(run.code, 0, "{run}");
    assert!(run.stderr.contains("not signed by a CA"), "{run}");
}

/// An expired serving certificate is named as such.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubelet_with_an_expired_certificate() {
    let options = KubeletOptions {
        expired_cert: true,
        ..KubeletOptions::new("t")
    };
    let node = FakeKubelet::start(2, vec![FakeContainer::new("app-1", 0.5)], options)
        .await
        .unwrap();
    let lb = Haproxy::start(&backend_cfg(&servers())).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca = write(dir.path(), "ca.pem", &node.ca_pem());
    let token = write(dir.path(), "token", "t");
    let cfg = config(
        dir.path(),
        &lb,
        json!({"kubelet": {"urls": [node.url()], "ca_file": ca, "token_file": token}}),
        pod_backend(),
    );
    let run = check(&cfg).await;
    assert!(run.stdout.contains("expired"), "{run}");
}

/// A real Prometheus scraping fake cAdvisor `/metrics` every second: one query gives every
/// host's readings from the series' own timestamps, and HAProxy is tuned. A selector that
/// matches nothing, and one Prometheus refuses, are said plainly and change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prometheus_server_tunes_from_one_query() {
    let hosts = cadvisors().await;
    let targets: Vec<String> = hosts.iter().map(|h| h.addr().to_string()).collect();
    let prom = Prometheus::start(&targets, Duration::from_secs(1), "/metrics")
        .await
        .expect("start Debian's prometheus (apt-get install -y prometheus)");
    prom.await_targets_up(Duration::from_secs(30))
        .await
        .unwrap();
    // Enough history for a reading: every host's app container has two samples.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let v = prom
            .query("count_over_time(container_cpu_usage_seconds_total{name=~\"app-.*\",cpu=\"cpu00\"}[1m])")
            .await
            .unwrap();
        let counts: Vec<f64> = v["result"]
            .as_array()
            .map(|r| {
                r.iter()
                    .filter_map(|s| s["value"][1].as_str()?.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        if counts.len() == 4 && counts.iter().all(|&c| c >= 3.0) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no history in Prometheus: {v}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let lb = Haproxy::start(&backend_cfg(&servers())).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let source = |selector: &str| json!({"prometheus": {"url": prom.url(), "selector": selector}, "window": "10s"});
    let cfg = config(dir.path(), &lb, source("job=\"cadvisor\""), app_backend());
    let run = check(&cfg).await;
    for t in &targets {
        assert!(
            run.stdout.contains(t.as_str()),
            "check names host {t}:\n{run}"
        );
    }
    let run = once(&cfg).await;
    assert_eq!(run.code, 0, "{run}");
    assert_eq!(weights(&lb).await, demo_map(), "{run}");

    let lb2 = Haproxy::start(&backend_cfg(&servers())).unwrap();
    let cfg = config(dir.path(), &lb2, source("job=\"nobody\""), app_backend());
    let run = once(&cfg).await;
    assert!(run.stderr.contains("no series matched"), "{run}");
    assert_eq!(weights(&lb2).await, unchanged(), "{run}");
    let cfg = config(dir.path(), &lb2, source("job=~\"(\""), app_backend());
    let run = once(&cfg).await;
    assert!(run.stderr.contains("Prometheus refused the query"), "{run}");
    assert_eq!(weights(&lb2).await, unchanged(), "{run}");
}

/// The daemon's source: a host's first poll scrapes twice, every later one once, each reading
/// from the last scrape's samples; a failure makes the next poll scrape twice again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_source_reads_from_its_last_scrape() {
    use hatune::config::Config;
    use hatune::source::{build, NoReading};
    let host = FakeCadvisor::start(2, vec![FakeContainer::new("app-1", 0.5)])
        .await
        .unwrap();
    let config = Config::parse(
        &json!({"haproxy": "/s", "cadvisor": [format!("{}/metrics", host.url())],
                "second_scrape": "300ms", "backends": [{"name": "app", "pattern": "^app-"}]})
        .to_string(),
    )
    .unwrap();
    let mut sources = build(&config);
    assert_eq!(sources.len(), 1);
    let source = &mut sources[0];
    assert_eq!(source.kind(), "cAdvisor /metrics");
    let app = |polls: &[hatune::source::HostPoll]| {
        let reading = polls[0].as_ref().expect("the host answers");
        assert_eq!(reading.num_cores, 2);
        reading
            .containers
            .iter()
            .find(|c| c.aliases.first().map(String::as_str) == Some("app-1"))
            .expect("app-1 is read")
            .reading
            .clone()
    };
    let u = app(&source.poll().await).expect("a reading from two scrapes");
    assert!((u.cpu - 0.25).abs() < 0.01, "{u:?}");
    assert_eq!(host.metrics_requests(), 2);
    host.set_cores_used("app-1", 1.5);
    // A tick's interval: the reading spans it (the fake's timestamps are whole milliseconds,
    // so a span of a few ms would be mostly rounding).
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The fake samples at each request: the next reading is the new rate alone.
    let u = app(&source.poll().await).expect("a reading from the last scrape");
    assert_eq!(host.metrics_requests(), 3);
    assert!((u.cpu - 0.75).abs() < 0.05, "{u:?}");
    host.set_behaviour(Behaviour::Status(500));
    assert!(source.poll().await[0].is_err());
    host.set_behaviour(Behaviour::Normal);
    let before = host.metrics_requests();
    let u = app(&source.poll().await).expect("read afresh");
    assert_eq!(
        host.metrics_requests(),
        before + 2,
        "back from a failure: two scrapes"
    );
    assert!((u.cpu - 0.75).abs() < 0.01, "{u:?}");
    host.set_behaviour(Behaviour::CounterReset);
    assert_eq!(app(&source.poll().await), Err(NoReading::CounterReset));
}
