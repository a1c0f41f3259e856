//! A local demo: a real HAProxy (Debian's `haproxy`) with a backend of five servers, four fake
//! cAdvisor hosts of 1, 1, 2 and 4 cores, and hatune against them.
//!
//! It prints the config it wrote and the dry-run table of `hatune once --dry-run` on it (the
//! same tick code, run in-process), then applies a few ticks and shows the load balancing out. The load model: 2 cores of work split by HAProxy's weights, so a host's
//! utilisation is its share of the work over its cores.
//!
//! `cargo run --example demo` (add `-- --keep` to leave HAProxy and the fake hosts running
//! afterwards, to try `hatune once`, `check` and `run` on the config it prints).

use std::time::Duration;

use hatune::config::Config;
use hatune::sink::haproxy::{self, Stat};
use hatune::testkit::cadvisor::{FakeCadvisor, FakeContainer};
use hatune::testkit::haproxy::Haproxy;
use hatune::tick::Tuner;
use tokio::time::Instant;

const CORES: [u32; 4] = [1, 1, 2, 4];
const WORK_CORES: f64 = 2.0;
const SAMPLE_EVERY: Duration = Duration::from_millis(100);

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let backend = "backend app\n    balance roundrobin\n".to_string()
        + &(1..=5)
            .map(|i| format!("    server app-{i} 127.0.0.1:{} weight 100\n", 19000 + i))
            .collect::<String>();
    let lb = Haproxy::start(&backend).map_err(|e| format!("cannot start HAProxy: {e}"))?;
    let admin = haproxy::Client::new(lb.admin_socket(), Duration::from_secs(2));
    // An operator drains app-5: hatune must leave it alone.
    admin.command("set server app/app-5 state drain").await?;

    let mut hosts = vec![];
    for (i, cores) in CORES.iter().enumerate() {
        let alias = format!("app-{}", i + 1);
        let host = FakeCadvisor::start(*cores, vec![FakeContainer::new(alias, 0.0)]).await?;
        host.set_sample_interval(SAMPLE_EVERY);
        hosts.push(host);
    }
    let config_text = serde_json::to_string_pretty(&serde_json::json!({
        "haproxy": [lb.admin_socket().to_string()],
        "cadvisor": hosts.iter().map(FakeCadvisor::url).collect::<Vec<_>>(),
        "timeout": "2s",
        // The fake samples every 100 ms, so a short window sees each tick's new split.
        "window": "500ms",
        "backends": [{"name": "app", "pattern": "^app-"}],
    }))?;
    let config_path = lb.dir().join("hatune.json");
    std::fs::write(&config_path, &config_text)?;
    let config = Config::parse(&config_text)?;
    println!("== config {}\n{config_text}\n", config_path.display());

    apply_load(&admin, &hosts).await?;
    tokio::time::sleep(Duration::from_millis(600)).await;

    println!(
        "== hatune once --dry-run --config {}",
        config_path.display()
    );
    // What `hatune once` runs: a fresh tuner for one tick.
    let config = &config;
    let once = |dry_run| async move {
        Tuner::once(config, dry_run)
            .tick(config, Instant::now())
            .await
    };
    let report = once(true).await;
    print!("{}", report.render_table());

    println!("\n== hatune once, tick by tick (max/mean utilisation of the four hosts)");
    for n in 0..=6 {
        let stat = admin.show_stat().await?;
        let (weights, cpu) = split(&stat);
        let mean = cpu.iter().sum::<f64>() / cpu.len() as f64;
        let max = cpu.iter().cloned().fold(0.0, f64::max);
        println!(
            "tick {n}: max/mean {:.3}  weights {:?}  cpu% {:?}",
            max / mean,
            weights,
            cpu.iter()
                .map(|c| (c * 1000.0).round() / 10.0)
                .collect::<Vec<_>>()
        );
        if n == 6 {
            break;
        }
        let report = once(false).await;
        if report.exit_code() != 0 {
            print!("{}", report.render_table());
        }
        apply_load(&admin, &hosts).await?;
        // Let a full window of samples at the new split accumulate.
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    let drained = admin.command("get weight app/app-5").await?;
    println!("app-5 (DRAIN) still has weight {}", drained.trim());
    if std::env::args().any(|a| a == "--keep") {
        println!(
            "\nHAProxy and the fake hosts keep running until Ctrl-C. Try:\n  \
             cargo run -- once --dry-run --config {0}\n  \
             cargo run -- check --config {0}\n  \
             cargo run -- run --dry-run --config {0}",
            config_path.display()
        );
        tokio::signal::ctrl_c().await?;
    }
    Ok(())
}

/// The weights of app-1..app-4 and the utilisation the load model gives each host.
fn split(stat: &Stat) -> (Vec<u32>, Vec<f64>) {
    let weights: Vec<u32> = (1..=4)
        .map(|i| {
            stat.servers
                .iter()
                .find(|s| s.server == format!("app-{i}"))
                .map(|s| s.user_weight())
                .unwrap_or(0)
        })
        .collect();
    let total: f64 = weights.iter().map(|&w| f64::from(w)).sum();
    let cpu = weights
        .iter()
        .zip(CORES)
        .map(|(&w, cores)| f64::from(w) / total * WORK_CORES / f64::from(cores))
        .collect();
    (weights, cpu)
}

/// Sets each fake host's app container to its share of the work under HAProxy's weights.
async fn apply_load(
    admin: &haproxy::Client,
    hosts: &[FakeCadvisor],
) -> Result<(), Box<dyn std::error::Error>> {
    let (_, cpu) = split(&admin.show_stat().await?);
    for (i, (host, share)) in hosts.iter().zip(cpu).enumerate() {
        host.set_cores_used(&format!("app-{}", i + 1), share * f64::from(CORES[i]));
    }
    Ok(())
}
