//! `hatune once` and `hatune check`, end to end: the real binary against a real HAProxy
//! (started by the testkit) and fake cAdvisor hosts over real HTTP, serving from this process.
//!
//! Load model (as in `examples/demo.rs`): with equal weights each server gets the same share of
//! the work, so a container's reading is `cores_used / num_cores` of its host. Hosts of 1, 1, 2
//! and 4 cores each running an app container at 0.5 cores read 50%, 50%, 25% and 12.5%, and the
//! halfway rule scaled to 256 proposes 115, 115, 162, 256.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use serde_json::{json, Value};

use hatune::sink::haproxy::{Address, Client};
use hatune::testkit::cadvisor::{Behaviour, FakeCadvisor, FakeContainer, DECADES_AHEAD_SECS};
use hatune::testkit::haproxy::{free_port, Haproxy};

const TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a single run of the binary may take before the test fails (the hang case needs ~1 s).
const RUN_LIMIT: Duration = Duration::from_secs(60);

/// Cores of the four demo hosts.
const CORES: [u32; 4] = [1, 1, 2, 4];
/// What the controller proposes for four servers at weight 100 on [`CORES`], 0.5 cores each.
const DEMO_WEIGHTS: [u32; 4] = [115, 115, 162, 256];

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// `backend NAME` with `balance BALANCE` and the given servers at `weight`, pointing at a
/// closed port (setting weights needs no traffic).
fn backend_cfg(name: &str, balance: &str, servers: &[String], weight: u32) -> String {
    let mut cfg = format!("backend {name}\n    balance {balance}\n");
    for s in servers {
        cfg.push_str(&format!("    server {s} 127.0.0.1:1 weight {weight}\n"));
    }
    cfg
}

fn names(prefix: &str, n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("{prefix}{i}")).collect()
}

fn admin(lb: &Haproxy) -> Client {
    Client::new(lb.admin_socket(), TIMEOUT)
}

/// User weights of a backend's servers, by server name.
async fn weights(client: &Client, backend: &str) -> BTreeMap<String, u32> {
    client
        .show_stat()
        .await
        .unwrap()
        .servers
        .into_iter()
        .filter(|s| s.backend == backend)
        .map(|s| (s.server.clone(), s.user_weight()))
        .collect()
}

/// `status` column of a backend's servers, by server name.
async fn statuses(client: &Client, backend: &str) -> BTreeMap<String, String> {
    client
        .show_stat()
        .await
        .unwrap()
        .servers
        .into_iter()
        .filter(|s| s.backend == backend)
        .map(|s| (s.server.clone(), s.status.clone()))
        .collect()
}

/// `get weight b/s`, the user weight (the second number is the initial one).
async fn get_weight(client: &Client, backend: &str, server: &str) -> u32 {
    let reply = client
        .command(&format!("get weight {backend}/{server}"))
        .await
        .unwrap();
    reply
        .split_whitespace()
        .next()
        .and_then(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("get weight {backend}/{server}: {reply:?}"))
}

fn map(pairs: &[(&str, u32)]) -> BTreeMap<String, u32> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

/// Four fake hosts of [`CORES`] cores, host `i` running `{prefix}{i+1}` at 0.5 cores.
async fn demo_hosts(prefix: &str) -> Vec<FakeCadvisor> {
    let mut hosts = vec![];
    for (i, cores) in CORES.iter().enumerate() {
        let alias = format!("{prefix}{}", i + 1);
        hosts.push(
            FakeCadvisor::start(*cores, vec![FakeContainer::new(alias, 0.5)])
                .await
                .unwrap(),
        );
    }
    hosts
}

fn urls(hosts: &[FakeCadvisor]) -> Vec<String> {
    hosts.iter().map(FakeCadvisor::url).collect()
}

fn demo_map(prefix: &str) -> BTreeMap<String, u32> {
    (1..=4)
        .map(|i| (format!("{prefix}{i}"), DEMO_WEIGHTS[i - 1]))
        .collect()
}

/// Writes `config` as JSON into `dir` and returns its path.
fn write_config(dir: &Path, file: &str, config: &Value) -> PathBuf {
    let path = dir.join(file);
    std::fs::write(&path, serde_json::to_string_pretty(config).unwrap()).unwrap();
    path
}

fn write_text(dir: &Path, file: &str, text: &str) -> PathBuf {
    let path = dir.join(file);
    std::fs::write(&path, text).unwrap();
    path
}

/// The result of one run of the binary.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", self.stdout))
    }

    fn assert_no_panic(&self) {
        assert!(
            !self.stderr.contains("panicked"),
            "the binary panicked:\n{}",
            self.stderr
        );
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

/// Runs the real `hatune` binary without blocking the runtime, so the fake cAdvisor hosts of
/// this test keep serving while it runs.
async fn hatune(args: &[&str]) -> Run {
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_hatune"))
        .args(args)
        .env_remove("RUST_LOG")
        .env("NO_COLOR", "1")
        .kill_on_drop(true)
        .output();
    let out: Output = tokio::time::timeout(RUN_LIMIT, child)
        .await
        .unwrap_or_else(|_| panic!("hatune {args:?} ran longer than {RUN_LIMIT:?}"))
        .expect("cannot run the hatune binary");
    let run = Run {
        code: out.status.code().expect("hatune was killed by a signal"),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    run.assert_no_panic();
    run
}

async fn once(config: &Path, extra: &[&str]) -> Run {
    let mut args = vec!["once", "--config", config.to_str().unwrap()];
    args.extend_from_slice(extra);
    hatune(&args).await
}

async fn check(config: &Path) -> Run {
    hatune(&["check", "--config", config.to_str().unwrap()]).await
}

/// The cells of a dry-run table line (columns are separated by at least two spaces; no cell
/// holds two spaces in a row).
fn cells(line: &str) -> Vec<String> {
    line.split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(str::to_string)
        .collect()
}

/// The dry-run table's row for `backend`/`server`: BACKEND SERVER HOST CPU% WEIGHT NEW NOTE.
fn table_row(stdout: &str, backend: &str, server: &str) -> Vec<String> {
    let rows: Vec<Vec<String>> = stdout
        .lines()
        .map(cells)
        .filter(|c| c.len() >= 6 && c[0] == backend && c[1] == server)
        .collect();
    assert_eq!(
        rows.len(),
        1,
        "want one row for {backend}/{server}:\n{stdout}"
    );
    rows.into_iter().next().unwrap()
}

/// The JSON report's row for `backend`/`server`.
fn json_row<'a>(report: &'a Value, backend: &str, server: &str) -> &'a Value {
    report["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == backend)
        .unwrap_or_else(|| panic!("no backend {backend} in {report:#}"))["servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["server"] == server)
        .unwrap_or_else(|| panic!("no server {backend}/{server} in {report:#}"))
}

/// `CumConns` of `show info`: every connection HAProxy accepted, stats sockets included.
async fn cum_conns(client: &Client) -> u64 {
    let info = client.command("show info").await.unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("CumConns: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no CumConns in show info:\n{info}"))
}

/// An independent model of the controller with the default settings (gain 0.5, max_step 2,
/// largest weight 256, min 1, deadband 2%): `None` is a held server (no reading).
fn model(servers: &[(u32, Option<f64>)]) -> Vec<u32> {
    let measured: Vec<f64> = servers.iter().filter_map(|s| s.1).collect();
    let avg = measured.iter().sum::<f64>() / measured.len() as f64;
    let raw: Vec<f64> = servers
        .iter()
        .map(|&(w, cpu)| {
            let factor = match cpu {
                Some(c) if c > 0.0 => (1.0 + 0.5 * (avg / c - 1.0)).clamp(0.5, 2.0),
                Some(_) => 2.0,
                None => 1.0,
            };
            f64::from(w) * factor
        })
        .collect();
    let scale = 256.0 / raw.iter().cloned().fold(0.0, f64::max);
    servers
        .iter()
        .zip(raw)
        .map(|(&(w, _), r)| {
            let p = ((r * scale).round() as u32).clamp(1, 256);
            if (f64::from(p) - f64::from(w)).abs() <= 0.02 * f64::from(w) {
                w
            } else {
                p
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// 1. The 2015 tool's config
// ---------------------------------------------------------------------------------------------

/// A legacy config (`haproxy_socket`, `backend`, `pattern`, `urls`) runs unchanged: the server
/// with the most spare capacity gets the largest weight, 256.
#[tokio::test(flavor = "multi_thread")]
async fn legacy_config_runs_unchanged() {
    assert_eq!(
        model(&[
            (100, Some(0.5)),
            (100, Some(0.5)),
            (100, Some(0.25)),
            (100, Some(0.125))
        ]),
        DEMO_WEIGHTS,
        "the test's model of the controller agrees with the documented numbers"
    );
    let lb = Haproxy::start(&backend_cfg("app", "roundrobin", &names("app-", 4), 100)).unwrap();
    let hosts = demo_hosts("app-").await;
    let config = write_config(
        lb.dir(),
        "legacy.json",
        &json!({
            "haproxy_socket": lb.admin_socket().to_string(),
            "backend": "app",
            "pattern": "app-",
            "urls": urls(&hosts),
        }),
    );
    let run = once(&config, &[]).await;
    assert_eq!(run.code, 0, "{run}");

    let client = admin(&lb);
    let after = weights(&client, "app").await;
    assert_eq!(after, demo_map("app-"), "{run}");
    // Direction: more spare capacity, more weight; the busiest hosts lose weight.
    assert!(after["app-4"] > after["app-3"] && after["app-3"] > after["app-1"]);
    assert!(after["app-1"] > 0, "never drained");
    assert_eq!(get_weight(&client, "app", "app-4").await, 256);
    assert_eq!(get_weight(&client, "app", "app-1").await, 115);
    // Every cAdvisor host was polled.
    assert!(hosts.iter().all(|h| h.docker_requests() >= 1));
}

// ---------------------------------------------------------------------------------------------
// 2. Several backends in one tick
// ---------------------------------------------------------------------------------------------

/// Two backends with two patterns in one config: both are tuned in the same run, each from its
/// own containers only.
#[tokio::test(flavor = "multi_thread")]
async fn several_backends_in_one_tick() {
    let cfg = backend_cfg("app", "roundrobin", &names("app-", 4), 100)
        + &backend_cfg("api", "leastconn", &names("api-", 2), 100);
    let lb = Haproxy::start(&cfg).unwrap();
    let hosts = demo_hosts("app-").await;
    // api-1 on the first 1-core host at 60%, api-2 on the 4-core host at 15%.
    hosts[0].add_container(FakeContainer::new("api-1", 0.6));
    hosts[3].add_container(FakeContainer::new("api-2", 0.6));
    let expected_api = model(&[(100, Some(0.6)), (100, Some(0.15))]);
    assert_eq!(expected_api, vec![119, 256]);

    let config = write_config(
        lb.dir(),
        "two.json",
        &json!({
            "haproxy": [lb.admin_socket().to_string()],
            "cadvisor": urls(&hosts),
            "timeout": "2s",
            "backends": [
                {"name": "app", "pattern": "^app-"},
                {"name": "api", "pattern": "api-"},
            ],
        }),
    );
    let run = once(&config, &[]).await;
    assert_eq!(run.code, 0, "{run}");
    let client = admin(&lb);
    assert_eq!(weights(&client, "app").await, demo_map("app-"), "{run}");
    assert_eq!(
        weights(&client, "api").await,
        map(&[("api-1", 119), ("api-2", 256)]),
        "{run}"
    );
}

// ---------------------------------------------------------------------------------------------
// 3. A large backend
// ---------------------------------------------------------------------------------------------

/// 64 servers across four hosts (server i on host i mod 4): every one is tuned, including
/// those past the ~30 the 2015 tool saw in its single `recv()`.
#[tokio::test(flavor = "multi_thread")]
async fn backend_of_64_servers_is_fully_tuned() {
    const N: usize = 64;
    let servers: Vec<String> = (1..=N).map(|i| format!("app-{i:02}")).collect();
    let lb = Haproxy::start(&backend_cfg("app", "roundrobin", &servers, 100)).unwrap();
    // Hosts of 1, 2, 4 and 8 cores; every container gets the same share of 3.2 cores of work,
    // and a small per-container variation so the weights differ within a host too.
    let host_cores = [1u32, 2, 4, 8];
    let load = |i: usize| 3.2 / N as f64 * (1.0 + 0.05 * (i % 3) as f64);
    let mut per_host: Vec<Vec<FakeContainer>> = vec![vec![]; 4];
    let mut inputs = vec![];
    for (i, name) in servers.iter().enumerate() {
        let h = i % 4;
        per_host[h].push(FakeContainer::new(name.clone(), load(i)));
        inputs.push((100, Some(load(i) / f64::from(host_cores[h]))));
    }
    let mut hosts = vec![];
    for (cores, containers) in host_cores.iter().zip(per_host) {
        hosts.push(FakeCadvisor::start(*cores, containers).await.unwrap());
    }
    let expected = model(&inputs);
    assert!(
        expected.iter().all(|&w| w != 100),
        "test design: every server must move: {expected:?}"
    );

    let config = write_config(
        lb.dir(),
        "big.json",
        &json!({
            "haproxy": [lb.admin_socket().to_string()],
            "cadvisor": urls(&hosts),
            "timeout": "2s",
            "backends": [{"name": "app", "pattern": "app-"}],
        }),
    );
    let run = once(&config, &["--output", "json"]).await;
    assert_eq!(run.code, 0, "{run}");
    let report = run.json();
    assert_eq!(report["sockets"][0]["applied"], N, "{report:#}");
    assert_eq!(report["sockets"][0]["refused"], 0);

    let after = weights(&admin(&lb), "app").await;
    assert_eq!(after.len(), N);
    for (i, name) in servers.iter().enumerate() {
        let got = after[name];
        assert_ne!(got, 100, "{name} kept its old weight: {after:?}");
        // ±1: a reading a hair off a rounding boundary may round the other way.
        assert!(
            got.abs_diff(expected[i]) <= 1,
            "{name}: got {got}, want {} ({after:?})",
            expected[i]
        );
    }
    assert_eq!(after.values().max(), Some(&256));
}

// ---------------------------------------------------------------------------------------------
// 4. Operator state is respected
// ---------------------------------------------------------------------------------------------

/// MAINT, DRAIN and weight-0 servers keep their weight (and state), are not counted in the
/// average, and the dry-run table says why.
#[tokio::test(flavor = "multi_thread")]
async fn maint_drain_and_weight_zero_are_untouched() {
    let lb = Haproxy::start(&backend_cfg("app", "roundrobin", &names("app-", 7), 100)).unwrap();
    let client = admin(&lb);
    client
        .command("set server app/app-5 state maint")
        .await
        .unwrap();
    client
        .command("set server app/app-6 state drain")
        .await
        .unwrap();
    client.command("set weight app/app-7 0").await.unwrap();
    let hosts = demo_hosts("app-").await;
    // Their containers run, nearly idle: were they tuned they would go up, and pull the
    // average down.
    for name in ["app-5", "app-6", "app-7"] {
        hosts[3].add_container(FakeContainer::new(name, 0.05));
    }
    let before = weights(&client, "app").await;
    assert_eq!(
        (before["app-5"], before["app-6"], before["app-7"]),
        (100, 100, 0)
    );
    let states_before = statuses(&client, "app").await;
    assert!(
        states_before["app-5"].starts_with("MAINT"),
        "{states_before:?}"
    );
    assert!(
        states_before["app-6"].starts_with("DRAIN"),
        "{states_before:?}"
    );

    let config = write_config(
        lb.dir(),
        "states.json",
        &json!({
            "haproxy": [lb.admin_socket().to_string()],
            "cadvisor": urls(&hosts),
            "timeout": "2s",
            "backends": [{"name": "app", "pattern": "app-"}],
        }),
    );

    let dry = once(&config, &["--dry-run"]).await;
    assert_eq!(dry.code, 0, "{dry}");
    for (server, note) in [
        ("app-5", "MAINT"),
        ("app-6", "DRAIN"),
        ("app-7", "weight 0"),
    ] {
        let row = table_row(&dry.stdout, "app", server);
        assert!(row.last().unwrap().starts_with(note), "{server}: {row:?}");
        assert_eq!(row[5], "-", "{server}: no new weight: {row:?}");
    }
    assert_eq!(weights(&client, "app").await, before, "dry run wrote");

    let run = once(&config, &[]).await;
    assert_eq!(run.code, 0, "{run}");
    let after = weights(&client, "app").await;
    let mut want = demo_map("app-");
    want.insert("app-5".into(), 100);
    want.insert("app-6".into(), 100);
    want.insert("app-7".into(), 0);
    assert_eq!(after, want, "{run}");
    assert_eq!(statuses(&client, "app").await, states_before);
}

// ---------------------------------------------------------------------------------------------
// 5. Dry run
// ---------------------------------------------------------------------------------------------

/// `--dry-run` prints a row per server with what it would set, writes nothing, and its JSON form
/// carries the same proposed weights.
#[tokio::test(flavor = "multi_thread")]
async fn dry_run_writes_nothing_and_json_agrees_with_the_table() {
    let lb = Haproxy::start(&backend_cfg("app", "roundrobin", &names("app-", 4), 100)).unwrap();
    let client = admin(&lb);
    let hosts = demo_hosts("app-").await;
    let config = write_config(
        lb.dir(),
        "dry.json",
        &json!({
            "haproxy": [lb.admin_socket().to_string()],
            "cadvisor": urls(&hosts),
            "timeout": "2s",
            "backends": [{"name": "app", "pattern": "app-"}],
        }),
    );
    let before = weights(&client, "app").await;

    let table = once(&config, &["--dry-run"]).await;
    assert_eq!(table.code, 0, "{table}");
    let header = cells(table.stdout.lines().next().unwrap());
    assert_eq!(
        header,
        ["BACKEND", "SERVER", "HOST", "CPU%", "WEIGHT", "NEW", "NOTE"]
    );
    let cpu = ["50.0", "50.0", "25.0", "12.5"];
    for i in 0..4 {
        let server = format!("app-{}", i + 1);
        let row = table_row(&table.stdout, "app", &server);
        assert_eq!(row[2], hosts[i].url(), "{row:?}");
        assert_eq!(row[3], cpu[i], "{row:?}");
        assert_eq!(row[4], "100", "{row:?}");
        assert_eq!(row[5], DEMO_WEIGHTS[i].to_string(), "{row:?}");
        assert_eq!(row[6], "would set", "{row:?}");
    }
    assert_eq!(weights(&client, "app").await, before, "dry run wrote");

    let j = once(&config, &["--dry-run", "--output", "json"]).await;
    assert_eq!(j.code, 0, "{j}");
    let report = j.json();
    assert_eq!(report["dry_run"], true);
    assert_eq!(report["sockets"][0]["applied"], 0);
    for (i, host) in hosts.iter().enumerate() {
        let server = format!("app-{}", i + 1);
        let row = json_row(&report, "app", &server);
        let from_table: u64 = table_row(&table.stdout, "app", &server)[5].parse().unwrap();
        assert_eq!(row["proposed"], from_table, "{row:#}");
        assert_eq!(row["current"], 100);
        assert_eq!(row["action"], "set");
        assert_eq!(row["host"], host.url());
    }
    assert_eq!(weights(&client, "app").await, before, "dry run wrote");
}

// ---------------------------------------------------------------------------------------------
// 6. cAdvisor hosts that fail
// ---------------------------------------------------------------------------------------------

/// How the fifth host fails.
#[derive(Clone, Copy, Debug)]
enum Failure {
    Shutdown,
    ClosedPort,
    Hang,
    Garbage,
    Status500,
    EmptyStats,
    CounterReset,
    /// Its newest sample's counter jumped to u64::MAX.
    CounterJump,
    /// Every sample dated 75 years ahead (its clock is off).
    FutureTimestamps,
}

/// Four healthy demo hosts and a fifth (2 cores, app-5 at 0.5) that fails as given. The
/// run exits 0, the healthy servers are tuned as if app-5 did not exist, app-5 keeps its share
/// (100 scaled with the others: 100 × 256/187.5 = 137), and the report says why.
async fn failing_host(failure: Failure) {
    let lb = Haproxy::start(&backend_cfg("app", "roundrobin", &names("app-", 5), 100)).unwrap();
    let client = admin(&lb);
    let mut hosts = demo_hosts("app-").await;
    let fifth = FakeCadvisor::start(2, vec![FakeContainer::new("app-5", 0.5)])
        .await
        .unwrap();
    let mut fifth_url = fifth.url();
    match failure {
        Failure::Shutdown => {
            fifth.shutdown();
            // Wait until the listener is gone (a condition, polled).
            let addr = fifth.addr();
            tokio::time::timeout(Duration::from_secs(10), async {
                while tokio::net::TcpStream::connect(addr).await.is_ok() {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
            .await
            .expect("the fake did not stop listening");
        }
        Failure::ClosedPort => fifth_url = format!("http://127.0.0.1:{}", free_port()),
        Failure::Hang => fifth.set_behaviour(Behaviour::Hang),
        Failure::Garbage => fifth.set_behaviour(Behaviour::Garbage),
        Failure::Status500 => fifth.set_behaviour(Behaviour::Status(500)),
        Failure::EmptyStats => fifth.set_behaviour(Behaviour::EmptyStats),
        Failure::CounterReset => fifth.set_behaviour(Behaviour::CounterReset),
        Failure::CounterJump => fifth.set_behaviour(Behaviour::CounterJump),
        Failure::FutureTimestamps => fifth.set_behaviour(Behaviour::ClockAhead(DECADES_AHEAD_SECS)),
    }
    hosts.push(fifth);
    let mut all_urls = urls(&hosts[..4]);
    all_urls.push(fifth_url.clone());

    let expected = model(&[
        (100, Some(0.5)),
        (100, Some(0.5)),
        (100, Some(0.25)),
        (100, Some(0.125)),
        (100, None),
    ]);
    assert_eq!(expected, vec![115, 115, 162, 256, 137]);

    let config = write_config(
        lb.dir(),
        "failing.json",
        &json!({
            "haproxy": [lb.admin_socket().to_string()],
            "cadvisor": all_urls,
            "timeout": "1s",
            "backends": [{"name": "app", "pattern": "app-"}],
        }),
    );
    // The dry-run table first: app-5 would be scaled as held, with the reason, and a failed
    // host gets its own line; nothing is written.
    let dry = once(&config, &["--dry-run"]).await;
    assert_eq!(dry.code, 0, "{failure:?}: {dry}");
    let row = table_row(&dry.stdout, "app", "app-5");
    assert_eq!(row[5], "137", "{failure:?}: {row:?}");
    assert!(
        row[6].starts_with("would set (held: no data"),
        "{failure:?}: {row:?}"
    );
    let skipped = format!("cAdvisor {fifth_url} skipped: ");
    let host_failed = !matches!(
        failure,
        Failure::EmptyStats
            | Failure::CounterReset
            | Failure::CounterJump
            | Failure::FutureTimestamps
    );
    assert_eq!(
        dry.stdout.lines().any(|l| l.starts_with(&skipped)),
        host_failed,
        "{failure:?}: {dry}"
    );
    assert!(
        weights(&client, "app").await.values().all(|&w| w == 100),
        "dry run wrote"
    );

    let started = std::time::Instant::now();
    let run = once(&config, &["--output", "json"]).await;
    assert_eq!(run.code, 0, "{failure:?}: {run}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{failure:?}: took {:?}",
        started.elapsed()
    );

    let mut want = demo_map("app-");
    want.insert("app-5".into(), 137);
    assert_eq!(weights(&client, "app").await, want, "{failure:?}: {run}");

    let report = run.json();
    let row = json_row(&report, "app", "app-5");
    assert_eq!(row["action"], "set", "{failure:?}: {row:#}");
    assert_eq!(row["proposed"], 137, "{failure:?}: {row:#}");
    assert!(row["cpu"].is_null(), "{failure:?}: {row:#}");
    let reason = row["reason"].as_str().unwrap_or_default().to_string();
    let host = &report["hosts"][4];
    assert_eq!(host["url"], fifth_url);
    let host_error = host["error"].as_str().unwrap_or_default().to_string();
    match failure {
        Failure::Shutdown | Failure::ClosedPort => {
            assert!(host_error.contains("unreachable"), "{failure:?}: {host:#}");
            assert!(reason.contains("no data"), "{failure:?}: {row:#}");
        }
        Failure::Hang => {
            assert!(host_error.contains("no reply within 1s"), "{host:#}");
            assert!(reason.contains("no data"), "{failure:?}: {row:#}");
        }
        Failure::Garbage => {
            assert!(host_error.contains("garbled"), "{host:#}");
            assert!(reason.contains("no data"), "{failure:?}: {row:#}");
        }
        Failure::Status500 => {
            assert!(host_error.contains("HTTP status 500"), "{host:#}");
            assert!(reason.contains("no data"), "{failure:?}: {row:#}");
        }
        Failure::EmptyStats => {
            assert!(host["error"].is_null(), "the host answered: {host:#}");
            assert_eq!(reason, "no data: too few samples", "{row:#}");
            assert_eq!(row["host"], fifth_url);
        }
        Failure::CounterReset => {
            assert!(host["error"].is_null(), "the host answered: {host:#}");
            assert_eq!(reason, "no data: counter reset", "{row:#}");
            assert_eq!(row["host"], fifth_url);
        }
        Failure::CounterJump => {
            assert!(host["error"].is_null(), "the host answered: {host:#}");
            assert!(
                reason.starts_with("no data: impossible reading: ")
                    && reason.ends_with(" cores used of 2 it can use (counter jump?)"),
                "{row:#}"
            );
            assert_eq!(row["host"], fifth_url);
        }
        Failure::FutureTimestamps => {
            assert!(host["error"].is_null(), "the host answered: {host:#}");
            assert!(reason.contains("ahead of this machine's clock"), "{row:#}");
            // Said in the log too, naming the host.
            assert!(
                run.stderr.contains(&fifth_url) && run.stderr.contains("clock"),
                "{run}"
            );
        }
    }
    if !host["error"].is_null() {
        // Also logged, naming the host.
        assert!(
            run.stderr.contains(&fifth_url) && run.stderr.contains("skipped"),
            "{failure:?}: {run}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn host_down_after_shutdown() {
    failing_host(Failure::Shutdown).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn host_on_a_closed_port() {
    failing_host(Failure::ClosedPort).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn host_that_hangs_past_the_timeout() {
    failing_host(Failure::Hang).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn host_that_returns_garbage() {
    failing_host(Failure::Garbage).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn host_that_returns_http_500() {
    failing_host(Failure::Status500).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn host_with_empty_stats() {
    failing_host(Failure::EmptyStats).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn host_with_a_counter_reset() {
    failing_host(Failure::CounterReset).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn host_whose_counter_jumps_is_no_reading() {
    failing_host(Failure::CounterJump).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn host_whose_clock_is_decades_ahead_is_no_reading() {
    failing_host(Failure::FutureTimestamps).await;
}

/// Every host down: nothing to decide from, so nothing is written, and still exit 0.
#[tokio::test(flavor = "multi_thread")]
async fn every_host_down_changes_nothing() {
    let lb = Haproxy::start(&backend_cfg("app", "roundrobin", &names("app-", 3), 100)).unwrap();
    let client = admin(&lb);
    client.command("set weight app/app-2 40").await.unwrap();
    let before = weights(&client, "app").await;
    let config = write_config(
        lb.dir(),
        "nohost.json",
        &json!({
            "haproxy": [lb.admin_socket().to_string()],
            "cadvisor": [
                format!("http://127.0.0.1:{}", free_port()),
                format!("http://127.0.0.1:{}", free_port()),
            ],
            "timeout": "1s",
            "backends": [{"name": "app", "pattern": "app-"}],
        }),
    );
    let run = once(&config, &["--output", "json"]).await;
    assert_eq!(run.code, 0, "{run}");
    assert_eq!(weights(&client, "app").await, before, "{run}");
    let report = run.json();
    assert_eq!(report["sockets"][0]["applied"], 0);
    assert_eq!(
        json_row(&report, "app", "app-2")["action"],
        "keep",
        "{report:#}"
    );
}

/// The same alias on two hosts: which container is the server's is unknown, so the server is
/// held at its share (the 2015 tool let the last host win), and the report names both hosts.
#[tokio::test(flavor = "multi_thread")]
async fn duplicate_alias_is_held_not_guessed() {
    let lb = Haproxy::start(&backend_cfg("app", "roundrobin", &names("app-", 4), 100)).unwrap();
    let mut hosts = demo_hosts("app-").await;
    hosts.push(
        FakeCadvisor::start(2, vec![FakeContainer::new("app-1", 0.5)])
            .await
            .unwrap(),
    );
    let expected = model(&[
        (100, None),
        (100, Some(0.5)),
        (100, Some(0.25)),
        (100, Some(0.125)),
    ]);
    assert_eq!(expected, vec![154, 122, 166, 256]);
    let config = write_config(
        lb.dir(),
        "dup.json",
        &json!({
            "haproxy": [lb.admin_socket().to_string()],
            "cadvisor": urls(&hosts),
            "timeout": "2s",
            "backends": [{"name": "app", "pattern": "app-"}],
        }),
    );
    let run = once(&config, &["--output", "json"]).await;
    assert_eq!(run.code, 0, "{run}");
    assert_eq!(
        weights(&admin(&lb), "app").await,
        map(&[
            ("app-1", 154),
            ("app-2", 122),
            ("app-3", 166),
            ("app-4", 256)
        ]),
        "{run}"
    );
    let report = run.json();
    let reason = json_row(&report, "app", "app-1")["reason"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(reason.contains("duplicate alias"), "{report:#}");
    assert!(
        reason.contains(&hosts[0].url()) && reason.contains(&hosts[4].url()),
        "{reason}"
    );
}

/// A host that answers 301 pointing at another host is not followed: it is skipped, saying
/// so, in `once` (table and JSON) and in `check`. Followed, the other host's containers were
/// counted twice, and app-1 was held as a duplicate alias while `check` said all was well.
#[tokio::test(flavor = "multi_thread")]
async fn a_host_redirecting_to_another_is_skipped_not_followed() {
    let lb = Haproxy::start(&backend_cfg("app", "roundrobin", &names("app-", 4), 100)).unwrap();
    let hosts = demo_hosts("app-").await;
    let redirector = FakeCadvisor::start(2, vec![]).await.unwrap();
    redirector.set_behaviour(Behaviour::RedirectTo(hosts[0].addr()));
    let mut all_urls = urls(&hosts);
    all_urls.push(redirector.url());
    let config = write_config(
        lb.dir(),
        "redirect.json",
        &json!({
            "haproxy": [lb.admin_socket().to_string()],
            "cadvisor": all_urls,
            "timeout": "2s",
            "backends": [{"name": "app", "pattern": "app-"}],
        }),
    );
    let skipped = format!(
        "cAdvisor {} skipped: HTTP status 301 from {}/api/v1.3/",
        redirector.url(),
        redirector.url()
    );

    let dry = once(&config, &["--dry-run"]).await;
    assert_eq!(dry.code, 0, "{dry}");
    let line = dry
        .stdout
        .lines()
        .find(|l| l.starts_with(&skipped))
        .unwrap_or_else(|| panic!("no `{skipped}…` line: {dry}"));
    assert!(
        line.contains("(redirects are not followed; it points to http://"),
        "{line}"
    );
    assert_eq!(
        table_row(&dry.stdout, "app", "app-1")[6],
        "would set",
        "{dry}"
    );

    let run = once(&config, &["--output", "json"]).await;
    assert_eq!(run.code, 0, "{run}");
    assert_eq!(weights(&admin(&lb), "app").await, demo_map("app-"), "{run}");
    let report = run.json();
    let host = &report["hosts"][4];
    assert_eq!(host["url"], redirector.url());
    assert_eq!(host["kind"], "redirect", "{host:#}");
    assert!(
        host["error"]
            .as_str()
            .is_some_and(|e| e.contains("redirects are not followed")),
        "{host:#}"
    );
    assert!(
        json_row(&report, "app", "app-1")["reason"].is_null(),
        "{report:#}"
    );

    let run = check(&config).await;
    assert_eq!(run.code, 1, "{run}");
    let fail = lines_starting(&run.stdout, "FAIL");
    assert_eq!(fail.len(), 1, "{run}");
    assert!(
        fail[0].starts_with(&format!(
            "FAIL cAdvisor {}: HTTP status 301",
            redirector.url()
        )) && fail[0].contains("redirects are not followed"),
        "{run}"
    );
    assert_eq!(
        lines_starting(&run.stdout, "ok   cAdvisor").len(),
        4,
        "{run}"
    );
}

/// Two hosts whose valid replies are larger than `max_reply` (one announces it in its
/// `Content-Length`, one is chunked): both are skipped with an error naming the cap, in
/// `once` and in `check`, and the four other hosts' servers are tuned as usual (app-5 and app-6
/// keep their share).
#[tokio::test(flavor = "multi_thread")]
async fn hosts_replying_over_max_reply_are_skipped_and_the_others_tuned() {
    let lb = Haproxy::start(&backend_cfg("app", "roundrobin", &names("app-", 6), 100)).unwrap();
    let mut hosts = demo_hosts("app-").await;
    for (alias, bytes, chunked) in [("app-5", 2 << 20, false), ("app-6", 4 << 20, true)] {
        let host = FakeCadvisor::start(2, vec![FakeContainer::new(alias, 0.5)])
            .await
            .unwrap();
        host.set_behaviour(Behaviour::Oversized { bytes, chunked });
        hosts.push(host);
    }
    let config = write_config(
        lb.dir(),
        "max_reply.json",
        &json!({
            "haproxy": [lb.admin_socket().to_string()],
            "cadvisor": urls(&hosts),
            "timeout": "2s",
            "max_reply": "1MiB",
            "backends": [{"name": "app", "pattern": "app-"}],
        }),
    );
    let run = once(&config, &["--output", "json"]).await;
    assert_eq!(run.code, 0, "{run}");
    let expected = model(&[
        (100, Some(0.5)),
        (100, Some(0.5)),
        (100, Some(0.25)),
        (100, Some(0.125)),
        (100, None),
        (100, None),
    ]);
    let want: BTreeMap<String, u32> = names("app-", 6).into_iter().zip(expected).collect();
    assert_eq!(weights(&admin(&lb), "app").await, want, "{run}");
    let report = run.json();
    let details = [
        "its Content-Length is 2097152 bytes; not read",
        "more than 1048576 bytes arrived (no Content-Length); the rest was not read",
    ];
    for (host, detail) in report["hosts"].as_array().unwrap()[4..].iter().zip(details) {
        let url = host["url"].as_str().unwrap();
        assert_eq!(host["kind"], "too_large", "{host:#}");
        assert_eq!(
            host["error"],
            format!("reply from {url}/api/v1.3/docker/ is larger than max_reply (1MiB): {detail}"),
            "{host:#}"
        );
        // The warning on stderr names the host and the cap too.
        assert!(
            run.stderr
                .lines()
                .any(|l| l.contains("cAdvisor host skipped")
                    && l.contains(url)
                    && l.contains("max_reply (1MiB)")),
            "{run}"
        );
    }
    for server in ["app-5", "app-6"] {
        let reason = json_row(&report, "app", server)["reason"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(reason.starts_with("no data"), "{server}: {reason}");
    }

    let run = check(&config).await;
    assert_eq!(run.code, 1, "{run}");
    let fail = lines_starting(&run.stdout, "FAIL");
    assert_eq!(fail.len(), 2, "{run}");
    for (line, host) in fail.iter().zip(&hosts[4..]) {
        assert!(
            line.starts_with(&format!("FAIL cAdvisor {}: reply from", host.url()))
                && line.contains("is larger than max_reply (1MiB)"),
            "{run}"
        );
    }
    assert_eq!(
        lines_starting(&run.stdout, "ok   cAdvisor").len(),
        4,
        "{run}"
    );
}

// ---------------------------------------------------------------------------------------------
// 7. Idle containers
// ---------------------------------------------------------------------------------------------

/// A container at 0% CPU: no division by zero; its weight goes up by max_step (2) before
/// scaling, no more.
#[tokio::test(flavor = "multi_thread")]
async fn idle_container_goes_up_by_at_most_max_step() {
    let lb = Haproxy::start(&backend_cfg("app", "roundrobin", &names("app-", 4), 100)).unwrap();
    let mut hosts = vec![];
    for (i, cores) in [0.5, 0.5, 0.5, 0.0].iter().enumerate() {
        let c = FakeContainer::new(format!("app-{}", i + 1), *cores);
        hosts.push(FakeCadvisor::start(1, vec![c]).await.unwrap());
    }
    let config = write_config(
        lb.dir(),
        "idle.json",
        &json!({
            "haproxy": [lb.admin_socket().to_string()],
            "cadvisor": urls(&hosts),
            "timeout": "2s",
            "backends": [{"name": "app", "pattern": "app-"}],
        }),
    );
    let run = once(&config, &["--output", "json"]).await;
    assert_eq!(run.code, 0, "{run}");
    // avg 37.5%: the busy ones move by 0.875, the idle one by 2 (capped): 87.5, 200 → ×1.28.
    let after = weights(&admin(&lb), "app").await;
    assert_eq!(
        after,
        map(&[
            ("app-1", 112),
            ("app-2", 112),
            ("app-3", 112),
            ("app-4", 256)
        ]),
        "{run}"
    );
    let ratio = f64::from(after["app-4"]) / f64::from(after["app-1"]);
    assert!(ratio <= 2.0 / 0.875 + 0.02, "moved by more than max_step");
    let report = run.json();
    let row = json_row(&report, "app", "app-4");
    assert_eq!(row["cpu"], 0.0, "{row:#}");
}

/// Every container idle: nothing to balance; weights stay and the report says why.
#[tokio::test(flavor = "multi_thread")]
async fn whole_idle_backend_is_left_alone() {
    let lb = Haproxy::start(&backend_cfg("app", "roundrobin", &names("app-", 2), 100)).unwrap();
    let client = admin(&lb);
    client.command("set weight app/app-1 30").await.unwrap();
    let host = FakeCadvisor::start(
        2,
        vec![
            FakeContainer::new("app-1", 0.0),
            FakeContainer::new("app-2", 0.0),
        ],
    )
    .await
    .unwrap();
    let config = write_config(
        lb.dir(),
        "allidle.json",
        &json!({
            "haproxy": [lb.admin_socket().to_string()],
            "cadvisor": [host.url()],
            "timeout": "2s",
            "backends": [{"name": "app", "pattern": "app-"}],
        }),
    );
    let run = once(&config, &["--output", "json"]).await;
    assert_eq!(run.code, 0, "{run}");
    assert_eq!(
        weights(&client, "app").await,
        map(&[("app-1", 30), ("app-2", 100)])
    );
    let report = run.json();
    assert_eq!(json_row(&report, "app", "app-1")["reason"], "backend idle");
}

// ---------------------------------------------------------------------------------------------
// 8. HAProxy refuses a weight
// ---------------------------------------------------------------------------------------------

/// `balance source` only takes 0% and 100%: exit 1, HAProxy's refusal is reported for each
/// server, and the dynamic backend in the same config is still tuned.
#[tokio::test(flavor = "multi_thread")]
async fn static_algorithm_refusal_is_reported_and_other_backends_still_tuned() {
    let cfg = backend_cfg("sticky", "source", &names("st-", 2), 100)
        + &backend_cfg("app", "roundrobin", &names("app-", 4), 100);
    let lb = Haproxy::start(&cfg).unwrap();
    let hosts = demo_hosts("app-").await;
    hosts[0].add_container(FakeContainer::new("st-1", 0.5));
    hosts[3].add_container(FakeContainer::new("st-2", 0.5));
    let config = write_config(
        lb.dir(),
        "static.json",
        &json!({
            "haproxy": [lb.admin_socket().to_string()],
            "cadvisor": urls(&hosts),
            "timeout": "2s",
            "backends": [
                {"name": "sticky", "pattern": "st-"},
                {"name": "app", "pattern": "app-"},
            ],
        }),
    );
    let run = once(&config, &["--output", "json"]).await;
    assert_eq!(run.code, 1, "{run}");
    let client = admin(&lb);
    assert_eq!(weights(&client, "app").await, demo_map("app-"), "{run}");
    assert_eq!(
        weights(&client, "sticky").await,
        map(&[("st-1", 100), ("st-2", 100)])
    );
    // The log names each server and carries HAProxy's text.
    let refusals: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.contains("static LB algorithm"))
        .collect();
    for server in ["st-1", "st-2"] {
        assert!(
            refusals.iter().any(|l| l.contains(server)),
            "{server} not named with the refusal: {run}"
        );
    }
    let report = run.json();
    assert_eq!(report["sockets"][0]["refused"], 2, "{report:#}");
    assert_eq!(report["sockets"][0]["applied"], 4, "{report:#}");
    let errors = json_row(&report, "sticky", "st-2")["errors"].to_string();
    assert!(errors.contains("static LB algorithm"), "{errors}");
}

// ---------------------------------------------------------------------------------------------
// 9. Bad configs
// ---------------------------------------------------------------------------------------------

/// Each bad config exits 2 with a message naming its key, before touching HAProxy or any
/// cAdvisor host.
#[tokio::test(flavor = "multi_thread")]
async fn bad_configs_exit_2_naming_the_key_and_touch_nothing() {
    let lb = Haproxy::start(&backend_cfg("app", "roundrobin", &names("app-", 2), 100)).unwrap();
    let client = admin(&lb);
    let host = FakeCadvisor::start(1, vec![FakeContainer::new("app-1", 0.9)])
        .await
        .unwrap();
    let sock = lb.admin_socket().to_string();
    let good = json!({
        "haproxy": [sock],
        "cadvisor": [host.url()],
        "timeout": "1s",
        "backends": [{"name": "app", "pattern": "app-"}],
    });
    let with = |f: &dyn Fn(&mut Value)| {
        let mut v = good.clone();
        f(&mut v);
        serde_json::to_string(&v).unwrap()
    };
    let legacy = json!({"haproxy_socket": sock, "urls": [host.url()], "backend": "app"});
    let cases: Vec<(&str, String, &str, &str)> = vec![
        (
            "unknown key",
            with(&|v| v["colour"] = json!("blue")),
            "`colour`",
            "unknown key",
        ),
        (
            "bad regex",
            with(&|v| v["backends"][0]["pattern"] = json!("(app")),
            "`backends[0].pattern`",
            "not a valid regex",
        ),
        (
            "missing pattern",
            with(&|v| {
                v["backends"][0].as_object_mut().unwrap().remove("pattern");
            }),
            "`backends[0].pattern`",
            "missing",
        ),
        (
            "legacy without pattern",
            legacy.to_string(),
            "`pattern`",
            "missing",
        ),
        (
            "bad duration",
            with(&|v| v["timeout"] = json!("soon")),
            "`timeout`",
            "not a duration",
        ),
        (
            "bad socket address",
            with(&|v| v["haproxy"] = json!([sock, "tcp://127.0.0.1"])),
            "`haproxy[1]`",
            "no port",
        ),
        (
            "relative socket path",
            with(&|v| v["haproxy"] = json!(["run/admin.sock"])),
            "`haproxy[0]`",
            "absolute",
        ),
        (
            "bad controller setting",
            with(&|v| v["controller"] = json!({"max_weight": 300})),
            "`controller.max_weight`",
            "outside",
        ),
        (
            "invalid JSON",
            format!("{{\"haproxy\": [\"{sock}\"], "),
            "config:",
            "not valid JSON",
        ),
    ];
    let before = weights(&client, "app").await;
    for (what, text, key, words) in cases {
        let path = write_text(lb.dir(), "bad.json", &text);
        let conns = cum_conns(&client).await;
        for extra in [&[][..], &["--dry-run"][..]] {
            let run = once(&path, extra).await;
            assert_eq!(run.code, 2, "{what}: {run}");
            assert!(run.stderr.contains(key), "{what}: want {key}: {run}");
            assert!(run.stderr.contains(words), "{what}: want {words}: {run}");
            assert!(run.stdout.is_empty(), "{what}: {run}");
        }
        // Only this test's own `show info` connection since the last one.
        assert_eq!(
            cum_conns(&client).await,
            conns + 1,
            "{what}: hatune connected to HAProxy"
        );
        assert_eq!(host.requests(), 0, "{what}: hatune polled cAdvisor");
    }

    // A file that cannot be read, and a directory.
    let missing = lb.dir().join("no-such-config.json");
    for path in [missing.as_path(), lb.dir()] {
        let run = once(path, &[]).await;
        assert_eq!(run.code, 2, "{run}");
        assert!(run.stderr.contains("cannot read"), "{run}");
        assert!(
            run.stderr.contains(path.to_str().unwrap()),
            "names the file: {run}"
        );
    }
    assert_eq!(weights(&client, "app").await, before);
    assert_eq!(host.requests(), 0);
}

// ---------------------------------------------------------------------------------------------
// 10. HAProxy unreachable or not admin
// ---------------------------------------------------------------------------------------------

/// A socket path where nothing listens: exit 1 and a message naming the socket.
#[tokio::test(flavor = "multi_thread")]
async fn unreachable_haproxy_exits_1_naming_the_socket() {
    let dir = tempfile::Builder::new()
        .prefix("hatune-once")
        .tempdir_in("/tmp")
        .unwrap();
    let hosts = demo_hosts("app-").await;
    let sock = dir.path().join("nothing-here.sock");
    let config = write_config(
        dir.path(),
        "unreachable.json",
        &json!({
            "haproxy_socket": sock.to_str().unwrap(),
            "backend": "app",
            "pattern": "app-",
            "urls": urls(&hosts),
        }),
    );
    for extra in [&[][..], &["--dry-run"][..]] {
        let run = once(&config, extra).await;
        assert_eq!(run.code, 1, "{run}");
        let errors: Vec<&str> = run
            .stderr
            .lines()
            .filter(|l| l.starts_with("error:"))
            .collect();
        assert!(
            errors
                .iter()
                .any(|l| l.contains(sock.to_str().unwrap()) && l.contains("cannot connect")),
            "{run}"
        );
    }
}

/// A `level user` socket can read `show stat` but not set weights: exit 1, the message says
/// admin level is needed, and nothing changed.
#[tokio::test(flavor = "multi_thread")]
async fn user_level_socket_exits_1_asking_for_admin() {
    let lb = Haproxy::start(&backend_cfg("app", "roundrobin", &names("app-", 4), 100)).unwrap();
    let hosts = demo_hosts("app-").await;
    let user = lb.user_socket().to_string();
    let config = write_config(
        lb.dir(),
        "user.json",
        &json!({
            "haproxy": [user],
            "cadvisor": urls(&hosts),
            "timeout": "2s",
            "backends": [{"name": "app", "pattern": "app-"}],
        }),
    );
    let run = once(&config, &[]).await;
    assert_eq!(run.code, 1, "{run}");
    assert!(
        run.stderr
            .lines()
            .any(|l| l.starts_with("error:") && l.contains(&user) && l.contains("level admin")),
        "{run}"
    );
    assert_eq!(
        weights(&admin(&lb), "app").await,
        map(&[
            ("app-1", 100),
            ("app-2", 100),
            ("app-3", 100),
            ("app-4", 100)
        ])
    );
}

/// `--dry-run` against a `level user` socket says what the real run would meet: the socket's
/// error, on every row it would set, says the writes would be refused, and it exits 1 as the
/// real run does. The admin socket beside it is unaffected, nothing is written, and finding out
/// costs one `show cli level` per socket.
#[tokio::test(flavor = "multi_thread")]
async fn dry_run_on_a_user_level_socket_says_the_real_run_would_be_refused() {
    let lb = Haproxy::start(&backend_cfg("app", "roundrobin", &names("app-", 4), 100)).unwrap();
    let client = admin(&lb);
    let hosts = demo_hosts("app-").await;
    let (sock, user) = (lb.admin_socket().to_string(), lb.user_socket().to_string());
    let config = write_config(
        lb.dir(),
        "dry-user.json",
        &json!({
            "haproxy": [sock, user],
            "cadvisor": urls(&hosts),
            "timeout": "2s",
            "backends": [{"name": "app", "pattern": "app-"}],
        }),
    );
    let refused = format!(
        "HAProxy at {user} is at level user: a real run would be refused (needs level admin)"
    );
    let before = weights(&client, "app").await;

    let conns = cum_conns(&client).await;
    let table = once(&config, &["--dry-run"]).await;
    // Each socket: `show stat`, then `show cli level`; then this test's `show info`.
    assert_eq!(cum_conns(&client).await, conns + 2 * 2 + 1, "{table}");
    assert_eq!(table.code, 1, "{table}");
    for (i, weight) in DEMO_WEIGHTS.iter().enumerate() {
        let row = table_row(&table.stdout, "app", &format!("app-{}", i + 1));
        assert_eq!(row[5], weight.to_string(), "{row:?}");
        assert_eq!(
            row[6],
            format!("would set; REFUSED: {user}: {refused}"),
            "{row:?}"
        );
    }
    assert_eq!(
        lines_starting(&table.stdout, "HAProxy "),
        [format!("HAProxy {user}: {refused}")],
        "{table}"
    );
    assert_eq!(
        lines_starting(&table.stderr, "error: "),
        [format!("error: {refused}")],
        "{table}"
    );

    let j = once(&config, &["--dry-run", "--output", "json"]).await;
    assert_eq!(j.code, 1, "{j}");
    let report = j.json();
    assert!(report["sockets"][0]["error"].is_null(), "{report:#}");
    assert_eq!(report["sockets"][1]["error"], refused, "{report:#}");
    let row = json_row(&report, "app", "app-4");
    assert_eq!(row["action"], "set");
    assert_eq!(
        row["errors"],
        json!([format!("{user}: {refused}")]),
        "{row:#}"
    );

    assert_eq!(weights(&client, "app").await, before, "dry run wrote");
}

/// A backend the config names but HAProxy does not have: exit 1 naming it, and the backend
/// that does exist is still tuned.
#[tokio::test(flavor = "multi_thread")]
async fn missing_backend_exits_1_and_others_are_tuned() {
    let lb = Haproxy::start(&backend_cfg("app", "roundrobin", &names("app-", 4), 100)).unwrap();
    let hosts = demo_hosts("app-").await;
    let config = write_config(
        lb.dir(),
        "missing.json",
        &json!({
            "haproxy": [lb.admin_socket().to_string()],
            "cadvisor": urls(&hosts),
            "timeout": "2s",
            "backends": [
                {"name": "nope", "pattern": "nope-"},
                {"name": "app", "pattern": "app-"},
            ],
        }),
    );
    let run = once(&config, &[]).await;
    assert_eq!(run.code, 1, "{run}");
    assert!(
        run.stderr
            .lines()
            .any(|l| l.starts_with("error: backend nope") && l.contains("no such backend")),
        "{run}"
    );
    assert_eq!(weights(&admin(&lb), "app").await, demo_map("app-"), "{run}");
}

// ---------------------------------------------------------------------------------------------
// 11. hatune check
// ---------------------------------------------------------------------------------------------

fn lines_starting<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
    text.lines().filter(|l| l.starts_with(prefix)).collect()
}

/// `check` passes on a good setup, fails naming each problem (user-level socket, missing
/// backend, dead cAdvisor host), exits 2 on a bad config, and never changes a weight.
#[tokio::test(flavor = "multi_thread")]
async fn check_reports_ok_and_fail_lines() {
    let lb = Haproxy::start(&backend_cfg("app", "roundrobin", &names("app-", 4), 100)).unwrap();
    let client = admin(&lb);
    let hosts = demo_hosts("app-").await;
    let sock = lb.admin_socket().to_string();
    let base = json!({
        "haproxy": [sock],
        "cadvisor": urls(&hosts),
        "timeout": "1s",
        "backends": [{"name": "app", "pattern": "app-"}],
    });
    let before = weights(&client, "app").await;

    // Good.
    let good = write_config(lb.dir(), "good.json", &base);
    let run = check(&good).await;
    assert_eq!(run.code, 0, "{run}");
    assert!(lines_starting(&run.stdout, "FAIL").is_empty(), "{run}");
    let ok = lines_starting(&run.stdout, "ok");
    assert_eq!(
        ok.len(),
        1 + 1 + 4 + 1,
        "config, one socket, four hosts, one backend: {run}"
    );
    // The backend's line, and its container -> server table under it.
    assert!(
        ok.iter().any(|l| l.starts_with(
            "ok   backend app: 4 of 4 serving servers mapped to a container, 0 container(s) left over"
        )),
        "{run}"
    );
    for (i, h) in hosts.iter().enumerate() {
        let row = format!("       app-{n} on {} -> app-{n}", h.url(), n = i + 1);
        assert!(run.stdout.lines().any(|l| l == row), "{row}: {run}");
    }
    assert!(
        ok.iter()
            .any(|l| l.contains(&sock) && l.contains("admin") && l.contains("app (4 servers)")),
        "{run}"
    );
    for h in &hosts {
        assert!(
            ok.iter()
                .any(|l| l.contains(&h.url()) && l.contains("1 matching")),
            "{}: {run}",
            h.url()
        );
    }

    // A user-level socket.
    let mut v = base.clone();
    let user = lb.user_socket().to_string();
    v["haproxy"] = json!([user]);
    let run = check(&write_config(lb.dir(), "user.json", &v)).await;
    assert_eq!(run.code, 1, "{run}");
    let fail = lines_starting(&run.stdout, "FAIL");
    assert_eq!(fail.len(), 1, "{run}");
    assert!(
        fail[0].contains(&user) && fail[0].contains("level admin"),
        "{run}"
    );

    // A backend HAProxy does not have.
    let mut v = base.clone();
    v["backends"] = json!([
        {"name": "app", "pattern": "app-"},
        {"name": "nope", "pattern": "nope-"},
    ]);
    let run = check(&write_config(lb.dir(), "nope.json", &v)).await;
    assert_eq!(run.code, 1, "{run}");
    let fail = lines_starting(&run.stdout, "FAIL");
    assert_eq!(fail.len(), 1, "{run}");
    assert!(
        fail[0].contains(&sock) && fail[0].contains("no backend named `nope`"),
        "{run}"
    );
    assert!(
        !lines_starting(&run.stdout, "ok   HAProxy")
            .iter()
            .any(|l| l.contains(&sock)),
        "a socket with a missing backend is not also ok: {run}"
    );

    // A dead cAdvisor host.
    let dead = format!("http://127.0.0.1:{}", free_port());
    let mut v = base.clone();
    v["cadvisor"].as_array_mut().unwrap().push(json!(dead));
    let run = check(&write_config(lb.dir(), "dead.json", &v)).await;
    assert_eq!(run.code, 1, "{run}");
    let fail = lines_starting(&run.stdout, "FAIL");
    assert_eq!(fail.len(), 1, "{run}");
    assert!(
        fail[0].contains(&dead) && fail[0].contains("unreachable"),
        "{run}"
    );
    assert_eq!(
        lines_starting(&run.stdout, "ok   cAdvisor").len(),
        4,
        "{run}"
    );

    // A bad config.
    let mut v = base.clone();
    v["backends"][0]["pattern"] = json!("(app");
    let run = check(&write_config(lb.dir(), "bad.json", &v)).await;
    assert_eq!(run.code, 2, "{run}");
    assert!(run.stderr.contains("backends[0].pattern"), "{run}");

    assert_eq!(
        weights(&client, "app").await,
        before,
        "check changed weights"
    );
}

/// A stats socket served by this test: each connection gets one command, answered by `reply`
/// and closed, as HAProxy does in non-interactive mode. Stops listening when dropped.
struct FakeStatsSocket {
    path: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl FakeStatsSocket {
    fn start(path: PathBuf, reply: fn(&str) -> String) -> FakeStatsSocket {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (read, mut write) = stream.into_split();
                    let mut line = String::new();
                    if BufReader::new(read).read_line(&mut line).await.is_ok() {
                        let _ = write.write_all(reply(line.trim()).as_bytes()).await;
                        let _ = write.shutdown().await;
                    }
                });
            }
        });
        FakeStatsSocket { path, task }
    }
}

impl Drop for FakeStatsSocket {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Control characters in `text` other than the newlines that end its lines.
fn raw_controls(text: &str) -> Vec<char> {
    text.chars()
        .filter(|c| c.is_control() && *c != '\n')
        .collect()
}

/// What a hostile peer says to every command: escape sequences (clear the screen, set the
/// window title, turn text red, a C1 CSI), a carriage return and a forged line of output.
const HOSTILE: &str =
    "Unknown command '\x1b[2J\x1b]0;pwned\x07\x1b[31madmin\r\u{9b}K'\nok   HAProxy forged\n";

/// Nothing a HAProxy peer sends reaches the terminal raw: not `check`'s lines, not the
/// dry-run table, not the errors and logs on stderr. One socket answers every command with
/// escape sequences, the other is a good socket with a server whose name holds one.
#[tokio::test(flavor = "multi_thread")]
async fn a_peers_control_characters_never_reach_the_terminal() {
    let dir = tempfile::Builder::new()
        .prefix("hatune-hostile")
        .tempdir_in("/tmp")
        .unwrap();
    let hostile = FakeStatsSocket::start(dir.path().join("hostile.sock"), |_| HOSTILE.into());
    let named = FakeStatsSocket::start(dir.path().join("named.sock"), |cmd| match cmd {
        "show cli level" => "admin\n".into(),
        "show stat" => "# pxname,svname,type,status,weight,uweight\n\
                        app,app-1\x1b[31m,2,UP,100,100\n\
                        app,app-2,2,UP,100,100\n\
                        app,BACKEND,1,UP,200,200\n\n"
            .into(),
        _ => "Unknown command\n".into(),
    });
    let host = FakeCadvisor::start(2, vec![FakeContainer::new("app-2", 0.5)])
        .await
        .unwrap();
    let config = write_config(
        dir.path(),
        "hostile.json",
        &json!({
            "haproxy": [hostile.path.to_str().unwrap(), named.path.to_str().unwrap()],
            "cadvisor": [host.url()],
            "timeout": "2s",
            "backends": [{"name": "app", "pattern": "app-"}],
        }),
    );

    let run = check(&config).await;
    assert_eq!(run.code, 1, "{run}");
    for out in [&run.stdout, &run.stderr] {
        assert_eq!(raw_controls(out), Vec::<char>::new(), "{run}");
    }
    let fail = lines_starting(&run.stdout, "FAIL");
    assert_eq!(fail.len(), 2, "the hostile socket, and the backend: {run}");
    assert!(
        fail[0].contains("Unknown command '\\x1b[2J\\x1b]0;pwned\\x07\\x1b[31madmin\\r\\u{9b}K'"),
        "{run}"
    );
    // The server whose name holds an escape sequence has no container, said escaped.
    assert!(
        fail[1].starts_with("FAIL backend app: 1 of 2 serving servers"),
        "{run}"
    );
    assert!(
        run.stdout
            .lines()
            .any(|l| l == "       server app-1\\x1b[31m: no data: no container found"),
        "{run}"
    );
    assert!(
        !run.stdout
            .lines()
            .any(|l| l.starts_with("ok   HAProxy forged")),
        "{run}"
    );

    let run = once(&config, &["--dry-run"]).await;
    assert_eq!(run.code, 1, "{run}");
    for out in [&run.stdout, &run.stderr] {
        assert_eq!(raw_controls(out), Vec::<char>::new(), "{run}");
    }
    let row = table_row(&run.stdout, "app", "app-1\\x1b[31m");
    assert!(row[6].contains("no data: no container found"), "{row:?}");
    let hostile_name = hostile.path.to_str().unwrap();
    let error = format!("error: HAProxy at {hostile_name} gave an unexpected reply to `show stat`: Unknown command '\\x1b[2J");
    assert!(run.stderr.lines().any(|l| l.starts_with(&error)), "{run}");
    // The warning in the text log too.
    assert!(
        run.stderr
            .lines()
            .any(|l| l.contains("HAProxy socket unreachable") && l.contains("\\x1b]0;pwned\\x07")),
        "{run}"
    );
    assert!(
        !run.stderr
            .lines()
            .any(|l| l.starts_with("ok   HAProxy forged")),
        "{run}"
    );
}

// ---------------------------------------------------------------------------------------------
// 12. Several HAProxy instances
// ---------------------------------------------------------------------------------------------

/// Two HAProxy instances with the same backend (one over unix, one over TCP) end with the same
/// weights, except where an operator drained a server on the second one only.
#[tokio::test(flavor = "multi_thread")]
async fn two_haproxy_sockets_get_the_same_weights_and_local_drain_is_kept() {
    let cfg = backend_cfg("app", "roundrobin", &names("app-", 4), 100);
    let first = Haproxy::start(&cfg).unwrap();
    let second = Haproxy::start(&cfg).unwrap();
    let a = admin(&first);
    let b = Client::new(second.tcp_socket().unwrap(), TIMEOUT);
    b.command("set server app/app-2 state drain").await.unwrap();
    // The second instance has drifted: it is brought to the same weights as the first.
    b.command("set weight app/app-4 30").await.unwrap();
    let hosts = demo_hosts("app-").await;
    let second_addr: Address = second.tcp_socket().unwrap();
    let config = write_config(
        first.dir(),
        "two.json",
        &json!({
            "haproxy": [first.admin_socket().to_string(), second_addr.to_string()],
            "cadvisor": urls(&hosts),
            "timeout": "2s",
            "backends": [{"name": "app", "pattern": "app-"}],
        }),
    );
    let run = once(&config, &[]).await;
    assert_eq!(run.code, 0, "{run}");
    assert_eq!(weights(&a, "app").await, demo_map("app-"), "{run}");
    let mut want = demo_map("app-");
    want.insert("app-2".into(), 100);
    assert_eq!(weights(&b, "app").await, want, "{run}");
    assert!(statuses(&b, "app").await["app-2"].starts_with("DRAIN"));
    assert!(!statuses(&a, "app").await["app-2"].starts_with("DRAIN"));
}

/// Of two HAProxy sockets, the first cannot be reached: the second is still tuned, and the run
/// exits 1 naming the one that failed.
#[tokio::test(flavor = "multi_thread")]
async fn one_of_two_sockets_down_still_tunes_the_other() {
    let lb = Haproxy::start(&backend_cfg("app", "roundrobin", &names("app-", 4), 100)).unwrap();
    let hosts = demo_hosts("app-").await;
    let dead = lb.dir().join("gone.sock");
    let config = write_config(
        lb.dir(),
        "onedown.json",
        &json!({
            "haproxy": [dead.to_str().unwrap(), lb.admin_socket().to_string()],
            "cadvisor": urls(&hosts),
            "timeout": "2s",
            "backends": [{"name": "app", "pattern": "app-"}],
        }),
    );
    let run = once(&config, &[]).await;
    assert_eq!(run.code, 1, "{run}");
    assert!(
        run.stderr
            .lines()
            .any(|l| l.starts_with("error:") && l.contains(dead.to_str().unwrap())),
        "{run}"
    );
    assert_eq!(weights(&admin(&lb), "app").await, demo_map("app-"), "{run}");
}

/// The mirror of the test above: the operator drains app-2 on the FIRST instance only. It
/// should be respected there, and app-2 still tuned on the second, where it serves traffic.
#[tokio::test(flavor = "multi_thread")]
async fn drain_on_the_first_socket_only_is_respected_only_there() {
    let cfg = backend_cfg("app", "roundrobin", &names("app-", 4), 100);
    let first = Haproxy::start(&cfg).unwrap();
    let second = Haproxy::start(&cfg).unwrap();
    let a = admin(&first);
    let b = admin(&second);
    a.command("set server app/app-2 state drain").await.unwrap();
    let hosts = demo_hosts("app-").await;
    let config = write_config(
        first.dir(),
        "two.json",
        &json!({
            "haproxy": [first.admin_socket().to_string(), second.admin_socket().to_string()],
            "cadvisor": urls(&hosts),
            "timeout": "2s",
            "backends": [{"name": "app", "pattern": "app-"}],
        }),
    );
    let run = once(&config, &[]).await;
    assert_eq!(run.code, 0, "{run}");
    assert_eq!(weights(&b, "app").await, demo_map("app-"), "{run}");
    let mut want = demo_map("app-");
    want.insert("app-2".into(), 100);
    assert_eq!(weights(&a, "app").await, want, "{run}");
}

// ---------------------------------------------------------------------------------------------
// Mapping as orchestrators name things: by a name template, by address
// ---------------------------------------------------------------------------------------------

/// Loopback address of host `i` (from 0): each fake host has an address of its own.
fn host_ip(i: usize) -> std::net::IpAddr {
    format!("127.0.1.{}", i + 1).parse().unwrap()
}

/// A Nomad allocation's container: `web-<alloc id>` with Nomad's labels.
fn nomad_container(i: usize, cores: f64) -> FakeContainer {
    let alloc = format!("{:08x}-4a1e-9c3b-5d2f-{:012x}", 0x5eed_0000 + i, i * 7919);
    FakeContainer::new(format!("web-{alloc}"), cores)
        .with_label("com.hashicorp.nomad.task_name", "web")
        .with_label("com.hashicorp.nomad.alloc_id", alloc)
}

/// Four hosts of [`CORES`] cores, host `i` on [`host_ip`]`(i)` with the given app containers
/// and a `db-N` container.
async fn hosts_on_own_addresses(
    containers: impl Fn(usize) -> Vec<FakeContainer>,
) -> Vec<FakeCadvisor> {
    let mut hosts = vec![];
    for (i, cores) in CORES.iter().enumerate() {
        let mut list = containers(i);
        list.push(FakeContainer::new(format!("db-{}", i + 1), 0.1));
        hosts.push(
            FakeCadvisor::start_on(host_ip(i), *cores, list)
                .await
                .unwrap(),
        );
    }
    hosts
}

/// Nomad + consul-template (or `server-template` over Consul DNS): slot names mean nothing,
/// the server's address is its host's. With `"match": "address"` each slot gets its host's
/// container, and the weights are the demo's; by name, nothing maps and nothing moves.
#[tokio::test(flavor = "multi_thread")]
async fn nomad_style_slots_are_found_by_address() {
    let mut cfg = "backend web\n    balance roundrobin\n".to_string();
    for i in 0..4 {
        cfg += &format!(
            "    server srv{} {}:{} weight 100\n",
            i + 1,
            host_ip(i),
            20000 + i
        );
    }
    let lb = Haproxy::start(&cfg).unwrap();
    let client = admin(&lb);
    let hosts = hosts_on_own_addresses(|i| vec![nomad_container(i, 0.5)]).await;
    let base = json!({
        "haproxy": [lb.admin_socket().to_string()],
        "cadvisor": urls(&hosts),
        "backends": [{"name": "web", "pattern": "web-"}],
    });

    // By name (the default): no server is named after a container.
    let by_name = write_config(lb.dir(), "by-name.json", &base);
    let run = once(&by_name, &[]).await;
    assert_eq!(run.code, 0, "{run}");
    assert_eq!(
        weights(&client, "web").await,
        demo_map_of("srv", 100),
        "{run}"
    );

    let mut by_address = base.clone();
    by_address["backends"][0]["match"] = json!("address");
    let by_address = write_config(lb.dir(), "by-address.json", &by_address);
    let run = check(&by_address).await;
    assert_eq!(run.code, 0, "{run}");
    assert!(
        run.stdout.lines().any(|l| l
            == "ok   backend web: 4 of 4 serving servers mapped to a container, 0 container(s) left over"),
        "{run}"
    );
    for (i, h) in hosts.iter().enumerate() {
        let alias = nomad_container(i, 0.5).alias;
        let row = format!("       {alias} on {} -> srv{}", h.url(), i + 1);
        assert!(run.stdout.lines().any(|l| l == row), "{row}\n{run}");
    }
    // The JSON report names each server's container.
    let run = once(&by_address, &["--dry-run", "--output", "json"]).await;
    assert_eq!(run.code, 0, "{run}");
    let report = run.json();
    for (i, h) in hosts.iter().enumerate() {
        let row = json_row(&report, "web", &format!("srv{}", i + 1));
        assert_eq!(
            row["container"],
            json!(nomad_container(i, 0.5).alias),
            "{row}"
        );
        assert_eq!(row["host"], json!(h.url()), "{row}");
    }
    let run = once(&by_address, &[]).await;
    assert_eq!(run.code, 0, "{run}");
    assert_eq!(weights(&client, "web").await, demo_map("srv"), "{run}");
}

/// docker compose / Rancher: containers `proj_web_N` with compose's number label, servers
/// `web_N` named by the operator: a template builds the name, from the label or from the
/// pattern's group.
#[tokio::test(flavor = "multi_thread")]
async fn compose_style_names_are_built_by_a_template() {
    let lb = Haproxy::start(&backend_cfg("web", "roundrobin", &names("web_", 4), 100)).unwrap();
    let client = admin(&lb);
    let hosts = hosts_on_own_addresses(|i| {
        let n = (i + 1).to_string();
        vec![FakeContainer::new(format!("proj_web_{n}"), 0.5)
            .with_label("com.docker.compose.service", "web")
            .with_label("com.docker.compose.container-number", n)]
    })
    .await;
    for (file, backend) in [
        (
            "label.json",
            json!({"name": "web", "pattern": "proj_web_",
                   "server": "web_{label:com.docker.compose.container-number}"}),
        ),
        (
            "group.json",
            json!({"name": "web", "pattern": "proj_web_(\\d+)", "server": "web_{1}"}),
        ),
    ] {
        // Back to the config's weights, so each template is seen to set them itself.
        for s in names("web_", 4) {
            client
                .command(&format!("set weight web/{s} 100"))
                .await
                .unwrap();
        }
        let config = write_config(
            lb.dir(),
            file,
            &json!({
                "haproxy": [lb.admin_socket().to_string()],
                "cadvisor": urls(&hosts),
                "backends": [backend],
            }),
        );
        let run = once(&config, &[]).await;
        assert_eq!(run.code, 0, "{file}: {run}");
        assert_eq!(
            weights(&client, "web").await,
            demo_map("web_"),
            "{file}: {run}"
        );
    }
}

/// Two containers on the host at one server's address: that server has no data, with a
/// reason naming both, in the dry-run table and in `check`; a `port` template from a label
/// tells them apart against the real `addr` HAProxy reports.
#[tokio::test(flavor = "multi_thread")]
async fn two_containers_at_one_address_are_never_guessed() {
    let mut cfg = "backend web\n    balance roundrobin\n".to_string();
    cfg += &format!("    server srv1 {}:21001 weight 100\n", host_ip(0));
    cfg += &format!("    server srv2 {}:21002 weight 100\n", host_ip(0));
    cfg += &format!("    server srv3 {}:21003 weight 100\n", host_ip(1));
    let lb = Haproxy::start(&cfg).unwrap();
    let client = admin(&lb);
    let a = nomad_container(0, 0.5).with_label("port", "21001");
    let b = nomad_container(1, 0.25).with_label("port", "21002");
    let c = nomad_container(2, 0.5).with_label("port", "21003");
    let (a_alias, b_alias) = (a.alias.clone(), b.alias.clone());
    let h1 = FakeCadvisor::start_on(host_ip(0), 2, vec![a, b])
        .await
        .unwrap();
    let h2 = FakeCadvisor::start_on(host_ip(1), 1, vec![c])
        .await
        .unwrap();
    let config = |file: &str, backend: Value| {
        write_config(
            lb.dir(),
            file,
            &json!({
                "haproxy": [lb.admin_socket().to_string()],
                "cadvisor": [h1.url(), h2.url()],
                "backends": [backend],
            }),
        )
    };
    let no_port = config(
        "no-port.json",
        json!({"name": "web", "pattern": "web-", "match": "address"}),
    );
    let run = once(&no_port, &["--dry-run"]).await;
    assert_eq!(run.code, 0, "{run}");
    let both = format!(
        "no data: several containers fit: {a_alias} on {u}, {b_alias} on {u}",
        u = h1.url()
    );
    for server in ["srv1", "srv2"] {
        let row = table_row(&run.stdout, "web", server);
        assert_eq!(row[6], both, "{run}");
    }
    let run = check(&no_port).await;
    assert_eq!(run.code, 1, "{run}");
    assert!(
        run.stdout.lines().any(|l| l
            == "FAIL backend web: 1 of 3 serving servers mapped to a container, 0 container(s) left over"),
        "{run}"
    );
    assert!(
        run.stdout
            .lines()
            .any(|l| l == format!("       server srv1: {both}")),
        "{run}"
    );

    let by_port = config(
        "port.json",
        json!({"name": "web", "pattern": "web-", "match": "address", "port": "{label:port}"}),
    );
    let run = check(&by_port).await;
    assert_eq!(run.code, 0, "{run}");
    let run = once(&by_port, &[]).await;
    assert_eq!(run.code, 0, "{run}");
    // Unlimited containers on hosts of 2 and 1 cores: srv1 uses a quarter of its host,
    // srv2 an eighth, srv3 half of the other: the least busy gets the most.
    let w = weights(&client, "web").await;
    assert!(
        w["srv2"] > w["srv1"] && w["srv1"] > w["srv3"],
        "{w:?}\n{run}"
    );
}

/// Every server `{prefix}1`..`{prefix}4` at `weight`.
fn demo_map_of(prefix: &str, weight: u32) -> BTreeMap<String, u32> {
    (1..=4).map(|i| (format!("{prefix}{i}"), weight)).collect()
}
