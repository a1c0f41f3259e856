//! `hatune run`: the same tick as `hatune once`, forever, on an interval or a cron schedule.
//!
//! Signals arrive as [`Control`] messages ([`forward_signals`] turns SIGTERM/SIGINT/SIGHUP into
//! them), so the loop is tested without sending signals. systemd hears READY, WATCHDOG and RELOADING.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{debug, error, info, warn};

use crate::config::{Config, Schedule};
use crate::metrics::{self, Metrics};
use crate::report::Action;
use crate::tick::Tuner;

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

/// Fires when a tick is due. Never queues more than one: ticks missed while one runs are
/// skipped, and two ticks never run at once.
pub enum Ticker {
    Interval(tokio::time::Interval),
    Cron {
        due: mpsc::Receiver<()>,
        scheduler: tokio_cron_scheduler::JobScheduler,
        first: bool,
    },
}

impl Ticker {
    /// Starts the schedule; the first tick is due at once.
    pub async fn start(schedule: &Schedule) -> Result<Ticker, StartError> {
        match schedule {
            Schedule::Interval(period) => {
                let mut interval = tokio::time::interval(*period);
                interval.set_missed_tick_behavior(MissedTickBehavior::Skip);
                Ok(Ticker::Interval(interval))
            }
            Schedule::Cron(expr) => {
                // tokio-cron-scheduler only says when; the loop below runs the tick. A full
                // channel of one means a tick is already due: the extra is dropped.
                let (tx, due) = mpsc::channel(1);
                let scheduler = tokio_cron_scheduler::JobScheduler::new()
                    .await
                    .map_err(|e| StartError::Scheduler(e.to_string()))?;
                let job = tokio_cron_scheduler::Job::new(expr.as_str(), move |_, _| {
                    let _ = tx.try_send(());
                })
                .map_err(|e| StartError::Scheduler(e.to_string()))?;
                scheduler
                    .add(job)
                    .await
                    .map_err(|e| StartError::Scheduler(e.to_string()))?;
                scheduler
                    .start()
                    .await
                    .map_err(|e| StartError::Scheduler(e.to_string()))?;
                Ok(Ticker::Cron {
                    due,
                    scheduler,
                    first: true,
                })
            }
        }
    }

    /// Waits until the next tick is due.
    pub async fn next(&mut self) {
        match self {
            Ticker::Interval(interval) => {
                interval.tick().await;
            }
            Ticker::Cron { due, first, .. } => {
                if std::mem::take(first) {
                    return;
                }
                if due.recv().await.is_none() {
                    // The scheduler is gone: never tick again rather than spin.
                    std::future::pending::<()>().await;
                }
            }
        }
    }

    async fn stop(self) {
        if let Ticker::Cron { mut scheduler, .. } = self {
            let _ = scheduler.shutdown().await;
        }
    }
}

/// Runs `work` to completion unless a shutdown arrives, in which case it gets `grace` more
/// time. Returns the result (None when cut short) and whether a shutdown was asked for.
/// Reloads asked for meanwhile are counted in `reloads`.
pub async fn finish_within<F: Future>(
    work: F,
    control: &mut mpsc::Receiver<Control>,
    grace: Duration,
    reloads: &mut usize,
) -> (Option<F::Output>, bool) {
    tokio::pin!(work);
    let mut deadline: Option<Instant> = None;
    let mut open = true;
    loop {
        tokio::select! {
            out = &mut work => return (Some(out), deadline.is_some()),
            msg = control.recv(), if open && deadline.is_none() => match msg {
                Some(Control::Reload) => *reloads += 1,
                Some(Control::Shutdown) | None => {
                    open = msg.is_some();
                    deadline = Some(Instant::now() + grace);
                }
            },
            _ = sleep_until_opt(deadline) => return (None, true),
        }
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// The daemon. Returns when told to stop.
pub async fn run(
    config_path: PathBuf,
    mut config: Config,
    dry_run: bool,
    mut control: mpsc::Receiver<Control>,
) -> Result<(), StartError> {
    let metrics = Arc::new(Metrics::new());
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
                let started = Instant::now();
                // Every exchange of a tick is bounded by the timeout; allow a few of them.
                let grace = config.timeout.saturating_mul(3) + Duration::from_secs(1);
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
    ticker.stop().await;
    if let Some(task) = metrics_task {
        task.abort();
    }
    info!("hatune stopped");
    Ok(())
}

fn notify(states: &[sd_notify::NotifyState]) {
    // Outside systemd there is no NOTIFY_SOCKET and this does nothing.
    if let Err(e) = sd_notify::notify(false, states) {
        debug!(error = %e, "sd_notify failed");
    }
}

/// Half systemd's WatchdogSec, when the unit sets one.
fn watchdog_period() -> Option<Duration> {
    let mut usec = 0u64;
    if sd_notify::watchdog_enabled(false, &mut usec) && usec > 0 {
        Some(Duration::from_micros(usec / 2))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn interval_ticks_at_once_then_every_period_and_skips_missed_ones() {
        let mut t = Ticker::start(&Schedule::Interval(Duration::from_secs(30)))
            .await
            .unwrap();
        let t0 = Instant::now();
        t.next().await;
        assert_eq!(t0.elapsed(), Duration::ZERO, "first tick at once");
        t.next().await;
        assert_eq!(t0.elapsed(), Duration::from_secs(30));
        // A tick that ran for 75 s: the missed ones are skipped, not run back to back.
        tokio::time::advance(Duration::from_secs(75)).await;
        t.next().await;
        assert_eq!(t0.elapsed(), Duration::from_secs(105), "one late tick");
        // The ticks due at 60 s and 90 s are skipped, not run back to back: the next one is
        // on the original grid.
        t.next().await;
        assert_eq!(t0.elapsed(), Duration::from_secs(120));
    }

    #[tokio::test(start_paused = true)]
    async fn a_shutdown_lets_the_tick_finish_within_the_grace() {
        let (tx, mut rx) = mpsc::channel(4);
        let mut reloads = 0;
        tx.send(Control::Reload).await.unwrap();
        tx.send(Control::Shutdown).await.unwrap();
        let work = async {
            tokio::time::sleep(Duration::from_secs(3)).await;
            "done"
        };
        let (out, stop) = finish_within(work, &mut rx, Duration::from_secs(5), &mut reloads).await;
        assert_eq!(out, Some("done"));
        assert!(stop);
        assert_eq!(reloads, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stuck_tick_is_cut_at_the_grace() {
        let (tx, mut rx) = mpsc::channel(1);
        let mut reloads = 0;
        let t0 = Instant::now();
        tx.send(Control::Shutdown).await.unwrap();
        let (out, stop) = finish_within(
            std::future::pending::<()>(),
            &mut rx,
            Duration::from_secs(5),
            &mut reloads,
        )
        .await;
        assert_eq!(out, None);
        assert!(stop);
        assert_eq!(t0.elapsed(), Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_shutdown_the_tick_runs_to_its_end() {
        let (_tx, mut rx) = mpsc::channel::<Control>(1);
        let mut reloads = 0;
        let work = async {
            tokio::time::sleep(Duration::from_secs(600)).await;
            7
        };
        let (out, stop) = finish_within(work, &mut rx, Duration::from_secs(5), &mut reloads).await;
        assert_eq!((out, stop), (Some(7), false));
    }

    #[tokio::test]
    async fn cron_ticks_at_once_then_on_schedule() {
        let mut t = Ticker::start(&Schedule::Cron("* * * * * *".into()))
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(1), t.next())
            .await
            .expect("first tick at once");
        tokio::time::timeout(Duration::from_secs(5), t.next())
            .await
            .expect("an every-second schedule ticks within a few seconds");
        t.stop().await;
    }
}
