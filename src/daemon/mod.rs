//! `hatune run`: the same tick as `hatune once`, forever, on an interval or a cron schedule.
//!
//! Signals arrive as [`Control`] messages ([`forward_signals`] turns SIGTERM/SIGINT/SIGHUP into
//! them), so the loop is tested without sending signals. systemd hears READY, WATCHDOG and RELOADING.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{debug, error, info, warn};

use crate::config::Config;
use crate::peers::Peers;
use crate::report::Action;
use crate::tick::Tuner;

pub mod metrics;
mod schedule;
mod systemd;

use metrics::Metrics;
pub use schedule::{finish_within, Ticker};
use systemd::{notify, watchdog_period};

/// What the outside world asks of the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// SIGHUP: re-read the config; hand operators' servers back.
    Reload,
    /// SIGTERM/SIGINT: finish the tick in flight, then stop.
    Shutdown,
}

/// The daemon's control channel, fed by the process's signals: SIGHUP becomes a reload,
/// SIGTERM and SIGINT a shutdown. Must be called inside a Tokio runtime.
pub fn forward_signals() -> std::io::Result<mpsc::Receiver<Control>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let (tx, rx) = mpsc::channel(8);
    tokio::spawn(async move {
        loop {
            let msg = tokio::select! {
                _ = hup.recv() => Control::Reload,
                _ = term.recv() => Control::Shutdown,
                _ = int.recv() => Control::Shutdown,
            };
            if tx.send(msg).await.is_err() {
                break;
            }
        }
    });
    Ok(rx)
}

/// How long a tick in flight may go on after a shutdown: a few of its exchanges, each bounded by
/// the larger of `timeout` and `peers.timeout` (a leader's tick makes etcd calls too).
fn grace_of(config: &Config) -> Duration {
    let each = config
        .peers
        .as_ref()
        .map_or(config.timeout, |p| p.timeout.max(config.timeout));
    each.saturating_mul(3) + Duration::from_secs(1)
}

/// Waits until a newer weight set is seen (never, without peers).
async fn changed(newest: &mut Option<tokio::sync::watch::Receiver<i64>>) {
    match newest {
        Some(rx) => {
            if rx.changed().await.is_err() {
                // The agent is gone: nothing new will come.
                *newest = None;
            }
        }
        None => std::future::pending().await,
    }
}

fn observe_peers(metrics: &Metrics, tuner: &Tuner) {
    if let Some(p) = tuner.peers() {
        metrics.observe_peers(p.leads(Instant::now()), p.applied(), p.etcd_up());
    }
}

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen for metrics on {addr}: {source}")]
    Metrics {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start the cron scheduler: {0}")]
    Scheduler(String),
}

/// The daemon. Returns when told to stop.
pub async fn run(
    config_path: PathBuf,
    mut config: Config,
    dry_run: bool,
    mut control: mpsc::Receiver<Control>,
) -> Result<(), StartError> {
    let metrics = match config.peers {
        Some(_) if !dry_run => Metrics::new().with_peers(),
        _ => Metrics::new(),
    };
    let metrics = Arc::new(metrics);
    let metrics_task = match config.metrics_listen {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Metrics { addr, source })?;
            info!(%addr, "serving metrics on /metrics");
            Some(tokio::spawn(metrics::serve(listener, metrics.clone())))
        }
        None => None,
    };
    let mut ticker = Ticker::start(&config.schedule).await?;
    let mut tuner = Tuner::daemon(&config, dry_run);
    match &config.peers {
        // A dry run must not lead: its sets would be applied by every other balancer.
        Some(_) if dry_run => {
            warn!("dry run: not joining the peer group; logging what this instance would decide alone")
        }
        Some(peers) => {
            info!(name = %peers.name, etcd = ?peers.etcd, prefix = %peers.prefix, "joining the peer group");
            tuner.join(Peers::start(peers));
        }
        None => {}
    }
    // A set published by the leader is applied as soon as it is seen, not at the next tick.
    let mut newest = tuner.peers().map(Peers::newest);
    notify(&[sd_notify::NotifyState::Ready]);
    let watchdog = watchdog_period();
    let mut watchdog_timer = tokio::time::interval(watchdog.unwrap_or(Duration::from_secs(3600)));
    watchdog_timer.set_missed_tick_behavior(MissedTickBehavior::Skip);
    info!(
        schedule = ?config.schedule,
        dry_run,
        sockets = config.haproxy.len(),
        hosts = config.cadvisor.len(),
        "hatune running"
    );

    let mut reloads = 0usize;
    loop {
        tokio::select! {
            msg = control.recv() => match msg {
                Some(Control::Reload) => reloads += 1,
                Some(Control::Shutdown) | None => break,
            },
            _ = ticker.next() => {
                if let Some(period) = ticker.period() {
                    metrics.set_tick_interval(period);
                }
                let started = Instant::now();
                // Every exchange of a tick is bounded by the timeout; allow a few of them.
                let grace = grace_of(&config);
                let (report, stop) = finish_within(
                    tuner.tick(&config, Instant::now()),
                    &mut control,
                    grace,
                    &mut reloads,
                )
                .await;
                if let Some(report) = report {
                    let took = started.elapsed();
                    metrics.observe(&report, took, tuner.overridden());
                    observe_peers(&metrics, &tuner);
                    if dry_run {
                        for b in &report.backends {
                            for s in b.servers.iter().filter(|s| s.action == Action::Set) {
                                info!(backend = %b.name, server = %s.server, cpu = s.cpu.map(|c| (c * 1000.0).round() / 10.0), old = s.current, new = s.proposed, "would set weight");
                            }
                        }
                    }
                    debug!(took_ms = took.as_millis() as u64, "tick done");
                } else {
                    warn!("the tick in flight did not finish within {grace:?} of the shutdown");
                }
                notify(&[sd_notify::NotifyState::Watchdog]);
                if stop {
                    break;
                }
            },
            _ = changed(&mut newest) => {
                let (report, stop) = finish_within(
                    tuner.apply_published(&config, Instant::now()),
                    &mut control,
                    grace_of(&config),
                    &mut reloads,
                )
                .await;
                if let Some(Some(report)) = &report {
                    let applied: usize = report.sockets.iter().map(|s| s.applied).sum();
                    let revision = tuner.peers().map_or(0, Peers::applied);
                    debug!(revision, applied, "published weight set applied");
                }
                observe_peers(&metrics, &tuner);
                if stop {
                    break;
                }
            },
            _ = watchdog_timer.tick(), if watchdog.is_some() => {
                notify(&[sd_notify::NotifyState::Watchdog]);
            },
        }
        if reloads > 0 {
            reloads = 0;
            // Type=notify-reload (systemd 253+) wants the reload's monotonic time with it.
            let mut reloading = vec![sd_notify::NotifyState::Reloading];
            reloading.extend(sd_notify::NotifyState::monotonic_usec_now().ok());
            notify(&reloading);
            match Config::load(&config_path) {
                Ok(new) => {
                    if new.schedule != config.schedule {
                        match Ticker::start(&new.schedule).await {
                            Ok(t) => std::mem::replace(&mut ticker, t).stop().await,
                            Err(e) => error!(error = %e, "keeping the old schedule"),
                        }
                    }
                    if new.metrics_listen != config.metrics_listen {
                        warn!("metrics_listen changed: it takes effect at the next restart");
                    }
                    if new.peers != config.peers {
                        warn!("peers changed: it takes effect at the next restart");
                    }
                    tuner.reconfigure(&new);
                    let resumed = tuner.resume_all();
                    config = new;
                    info!(resumed, "config reloaded");
                }
                Err(e) => {
                    error!(error = %e, "config reload failed: keeping the old config");
                }
            }
            notify(&[sd_notify::NotifyState::Ready]);
        }
    }

    notify(&[sd_notify::NotifyState::Stopping]);
    // Gives the leader's post up at once (bounded by `peers.timeout`).
    tuner.leave().await;
    ticker.stop().await;
    if let Some(task) = metrics_task {
        task.abort();
    }
    info!("hatune stopped");
    Ok(())
}
