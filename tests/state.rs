//! `hatune once --state FILE` against a real HAProxy and fake cAdvisor hosts: what a run keeps
//! for the next one (the hosts' newest samples and cores, hatune's weights, HAProxy's pid), and
//! what the next run does with it: a lean read, a reload noticed and repaired, an operator's
//! weight left alone; a state file it cannot use costs nothing but the lean read.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use hatune::sink::haproxy::Client;
use hatune::testkit::cadvisor::{FakeCadvisor, FakeContainer};
use hatune::testkit::haproxy::Haproxy;

const TIMEOUT: Duration = Duration::from_secs(5);
const RUN_LIMIT: Duration = Duration::from_secs(60);

/// Cores of the four hosts, and the weights one run sets from 100 with each container at 0.5
/// cores (as `tests/once.rs` derives).
const CORES: [u32; 4] = [1, 1, 2, 4];
const FIRST_WEIGHTS: [u32; 4] = [115, 115, 162, 256];

fn backend_cfg(servers: usize) -> String {
    let mut cfg = "backend app\n    balance roundrobin\n".to_string();
    for i in 1..=servers {
        cfg.push_str(&format!("    server app-{i} 127.0.0.1:1 weight 100\n"));
    }
    cfg
}

async fn hosts() -> Vec<FakeCadvisor> {
    let mut hosts = vec![];
    for (i, cores) in CORES.iter().enumerate() {
        let c = FakeContainer::new(format!("app-{}", i + 1), 0.5);
        hosts.push(FakeCadvisor::start(*cores, vec![c]).await.unwrap());
    }
    hosts
}

fn config(lb: &Haproxy, hosts: &[FakeCadvisor]) -> PathBuf {
    let path = lb.dir().join("hatune.json");
    let urls: Vec<String> = hosts.iter().map(FakeCadvisor::url).collect();
    let config = json!({
        "haproxy": [lb.admin_socket().to_string()],
        "cadvisor": urls,
        "timeout": "5s",
        "backends": [{"name": "app", "pattern": "^app-"}],
    });
    std::fs::write(&path, serde_json::to_string_pretty(&config).unwrap()).unwrap();
    path
}

/// A real HAProxy with `app-1..4` at weight 100, the four hosts, the config, and where the
/// state file goes (not created).
struct Env {
    lb: Haproxy,
    hosts: Vec<FakeCadvisor>,
    config: PathBuf,
    state: PathBuf,
}

impl Env {
    async fn start() -> Env {
        let lb = Haproxy::start(&backend_cfg(4)).unwrap();
        let hosts = hosts().await;
        let config = config(&lb, &hosts);
        let state = lb.dir().join("once.json");
        Env {
            lb,
            hosts,
            config,
            state,
        }
    }
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{self}"))
    }
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

/// `hatune once --output json --state STATE --config CONFIG`, without blocking the runtime
/// (the fake hosts serve from it).
async fn once(config: &Path, state: &Path) -> Run {
    once_with(config, state, &[]).await
}

async fn once_with(config: &Path, state: &Path, extra: &[&str]) -> Run {
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_hatune"))
        .args(["once", "--output", "json", "--config"])
        .arg(config)
        .arg("--state")
        .arg(state)
        .args(extra)
        .env("RUST_LOG", "hatune=info")
        .env("NO_COLOR", "1")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(RUN_LIMIT, child)
        .await
        .expect("hatune once ran too long")
        .expect("cannot run hatune");
    let run = Run {
        code: out.status.code().expect("hatune was killed by a signal"),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert!(!run.stderr.contains("panicked"), "{run}");
    run
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

fn map(weights: &[u32]) -> BTreeMap<String, u32> {
    weights
        .iter()
        .enumerate()
        .map(|(i, w)| (format!("app-{}", i + 1), *w))
        .collect()
}

/// What the hosts' last docker request asked for, per host.
fn asked(hosts: &[FakeCadvisor]) -> Vec<Option<i64>> {
    hosts
        .iter()
        .map(|h| h.last_docker_request().and_then(|r| r.num_stats))
        .collect()
}

fn row<'a>(report: &'a Value, server: &str) -> &'a Value {
    report["backends"][0]["servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["server"] == server)
        .unwrap_or_else(|| panic!("no row for {server}: {report}"))
}

/// The first run reads the window and starts the state; the second asks each host only for
/// its newest sample (`num_stats` 1, no `/machine`: the cores are in the state) and still has
/// a reading for every server, over the time since the first run.
#[tokio::test(flavor = "multi_thread")]
async fn a_second_run_asks_only_for_the_newest_samples() {
    let Env {
        lb, hosts, config, ..
    } = Env::start().await;
    let state = lb.dir().join("state").join("once.json");
    std::fs::create_dir_all(state.parent().unwrap()).unwrap();

    let first = once(&config, &state).await;
    assert_eq!(first.code, 0, "{first}");
    assert_eq!(
        asked(&hosts),
        vec![Some(62); 4],
        "a minute's window: 62 samples"
    );
    assert!(hosts.iter().all(|h| h.machine_requests() == 1));
    assert_eq!(weights(&lb).await, map(&FIRST_WEIGHTS));
    assert!(first.stderr.contains("no state file yet"), "{first}");
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&state).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the state file is the service's own");
    let saved: Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    assert_eq!(saved["hatune_state"], 1);

    let bytes_before: Vec<u64> = hosts.iter().map(FakeCadvisor::docker_bytes_sent).collect();
    let second = once(&config, &state).await;
    assert_eq!(second.code, 0, "{second}");
    assert_eq!(asked(&hosts), vec![Some(1); 4], "only the newest sample");
    assert!(
        hosts.iter().all(|h| h.machine_requests() == 1),
        "cores come from the state file"
    );
    let report = second.json();
    for (i, cores) in CORES.iter().enumerate() {
        let r = row(&report, &format!("app-{}", i + 1));
        // 0.5 cores of the host's, from the first run's newest sample to this one.
        let cpu = r["cpu"]
            .as_f64()
            .unwrap_or_else(|| panic!("no reading: {r}"));
        let want = 0.5 / f64::from(*cores);
        assert!(
            (cpu - want).abs() < 0.02,
            "app-{}: {cpu} (want {want})",
            i + 1
        );
    }
    // The readings are the same loads: the weights go on from the first run's.
    let after = weights(&lb).await;
    assert!(after["app-4"] > after["app-3"] && after["app-3"] > after["app-1"]);
    // And the replies were a small part of the first run's.
    for (i, h) in hosts.iter().enumerate() {
        let lean = h.docker_bytes_sent() - bytes_before[i];
        assert!(
            lean * 10 < bytes_before[i],
            "host {i}: {lean} bytes at the second run, {} at the first",
            bytes_before[i]
        );
    }
}

/// HAProxy reloaded between two runs forgets hatune's weights; the run after it notices (the
/// pid in the state file is not the new process's) and gives them back, deciding nothing from
/// readings that span the reload.
#[tokio::test(flavor = "multi_thread")]
async fn a_reload_between_runs_gets_hatunes_weights_back() {
    let Env {
        mut lb,
        hosts: _hosts,
        config,
        state,
    } = Env::start().await;
    let first = once(&config, &state).await;
    assert_eq!(first.code, 0, "{first}");
    assert_eq!(weights(&lb).await, map(&FIRST_WEIGHTS));

    lb.reload(None).unwrap();
    assert_eq!(
        weights(&lb).await,
        map(&[100; 4]),
        "a reload resets the weights"
    );
    let second = once(&config, &state).await;
    assert_eq!(second.code, 0, "{second}");
    let report = second.json();
    let socket = &report["sockets"][0];
    assert_eq!(socket["reloaded"], true, "{report}");
    assert_eq!(socket["restored"], 4, "{report}");
    assert_eq!(weights(&lb).await, map(&FIRST_WEIGHTS));
    assert!(second.stderr.contains("HAProxy was reloaded"), "{second}");
}

/// A weight an operator sets between two runs is theirs: the next run leaves it and says why.
#[tokio::test(flavor = "multi_thread")]
async fn an_operators_weight_set_between_runs_stays_theirs() {
    let Env {
        lb,
        hosts: _hosts,
        config,
        state,
    } = Env::start().await;
    let first = once(&config, &state).await;
    assert_eq!(first.code, 0, "{first}");
    let client = Client::new(lb.admin_socket(), TIMEOUT);
    client.command("set weight app/app-2 33").await.unwrap();

    let second = once(&config, &state).await;
    assert_eq!(second.code, 0, "{second}");
    assert_eq!(weights(&lb).await["app-2"], 33);
    let report = second.json();
    let r = row(&report, "app-2");
    assert_eq!(r["action"], "skip", "{r}");
    assert!(
        r["reason"]
            .as_str()
            .unwrap_or("")
            .contains("outside hatune"),
        "the reason says so: {r}"
    );
}

/// A state file hatune cannot use (garbled here) is moved aside; the run reads the window and
/// tunes as a first run would, and writes a good one.
#[tokio::test(flavor = "multi_thread")]
async fn an_unusable_state_file_is_set_aside_and_the_run_goes_on() {
    let Env {
        lb,
        hosts,
        config,
        state,
    } = Env::start().await;
    std::fs::write(&state, b"{\"hatune_state\": 1, \"saved_at_ms\": tru").unwrap();
    let run = once(&config, &state).await;
    assert_eq!(run.code, 0, "{run}");
    assert!(run.stderr.contains("state file unusable"), "{run}");
    assert_eq!(weights(&lb).await, map(&FIRST_WEIGHTS));
    assert_eq!(asked(&hosts), vec![Some(62); 4]);
    let bad = lb.dir().join("once.json.bad");
    assert!(bad.exists(), "the unusable file is kept to look at");
    let saved: Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    assert_eq!(saved["hatune_state"], 1, "a good one replaces it");
}

/// Marks older than three windows are not used (the readings would average over the gap):
/// that run reads the window again.
#[tokio::test(flavor = "multi_thread")]
async fn a_state_from_long_ago_reads_the_window_again() {
    let Env {
        lb: _lb,
        hosts,
        config,
        state,
    } = Env::start().await;
    let first = once(&config, &state).await;
    assert_eq!(first.code, 0, "{first}");
    let mut saved: Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    let at = saved["saved_at_ms"].as_u64().unwrap();
    saved["saved_at_ms"] = json!(at - 3 * 60 * 1000 - 1000);
    std::fs::write(&state, serde_json::to_vec(&saved).unwrap()).unwrap();

    let second = once(&config, &state).await;
    assert_eq!(second.code, 0, "{second}");
    assert_eq!(asked(&hosts), vec![Some(62); 4], "the whole window again");
    assert!(
        hosts.iter().all(|h| h.machine_requests() == 1),
        "the cores are still known"
    );
}

/// A dry run with the state file moves the marks on but leaves the balancers' part as the
/// last real run saved it: a reload the dry run saw is still repaired by the next real run.
#[tokio::test(flavor = "multi_thread")]
async fn a_dry_run_with_the_state_file_leaves_a_reload_to_the_next_real_run() {
    let Env {
        mut lb,
        hosts,
        config,
        state,
    } = Env::start().await;
    assert_eq!(once(&config, &state).await.code, 0);
    lb.reload(None).unwrap();

    let dry = once_with(&config, &state, &["--dry-run"]).await;
    assert_eq!(dry.code, 0, "{dry}");
    assert_eq!(dry.json()["sockets"][0]["reloaded"], true, "{dry}");
    assert_eq!(asked(&hosts), vec![Some(1); 4], "the dry run read lean too");
    assert_eq!(
        weights(&lb).await,
        map(&[100; 4]),
        "a dry run writes nothing"
    );

    let real = once(&config, &state).await;
    assert_eq!(real.code, 0, "{real}");
    let report = real.json();
    assert_eq!(report["sockets"][0]["reloaded"], true, "{report}");
    assert_eq!(report["sockets"][0]["restored"], 4, "{report}");
    assert_eq!(weights(&lb).await, map(&FIRST_WEIGHTS));
}

/// Two runs of one state file never overlap: while one holds it, another changes nothing,
/// says why and exits 0 (cron may start a run before the last one ended).
#[tokio::test(flavor = "multi_thread")]
async fn a_run_finding_the_state_file_held_changes_nothing() {
    let Env {
        lb,
        hosts,
        config,
        state,
    } = Env::start().await;
    let held = hatune::state::lock(&state).unwrap().expect("free");
    let run = once(&config, &state).await;
    assert_eq!(run.code, 0, "{run}");
    assert!(run.stderr.contains("holds this state file"), "{run}");
    assert_eq!(weights(&lb).await, map(&[100; 4]), "nothing written");
    assert!(
        hosts.iter().all(|h| h.docker_requests() == 0),
        "nothing polled"
    );
    assert!(!state.exists(), "nothing saved");
    drop(held);
    let run = once(&config, &state).await;
    assert_eq!(run.code, 0, "{run}");
    assert_eq!(weights(&lb).await, map(&FIRST_WEIGHTS));
}

/// A state file edited by hand (or by a bug) is not believed: a core count beyond any machine
/// is asked again, and marks dated far from this machine's clock are dropped (the window is
/// read), so no reading comes from a span nobody measured.
#[tokio::test(flavor = "multi_thread")]
async fn implausible_values_in_the_state_file_are_not_used() {
    let Env {
        lb,
        hosts,
        config,
        state,
    } = Env::start().await;
    assert_eq!(once(&config, &state).await.code, 0);
    let mut saved: Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    let saved_hosts = saved["sources"]["cAdvisor"]["hosts"]
        .as_object_mut()
        .unwrap();
    assert_eq!(saved_hosts.len(), 4, "{saved_hosts:?}");
    for host in saved_hosts.values_mut() {
        host["num_cores"] = json!(4_000_000_000u32);
        for mark in host["marks"].as_object_mut().unwrap().values_mut() {
            *mark = json!([i64::MIN, 0]);
        }
    }
    std::fs::write(&state, serde_json::to_vec(&saved).unwrap()).unwrap();

    let run = once(&config, &state).await;
    assert_eq!(run.code, 0, "{run}");
    assert_eq!(
        asked(&hosts),
        vec![Some(62); 4],
        "the window, not the marks"
    );
    assert!(
        hosts.iter().all(|h| h.machine_requests() == 2),
        "the cores are asked again"
    );
    // Readings over the window, from the first run's weights on.
    let after = weights(&lb).await;
    assert!(after["app-4"] > after["app-3"] && after["app-3"] > after["app-1"]);
    let report = run.json();
    assert!(row(&report, "app-1")["cpu"].is_number(), "{report}");
}
