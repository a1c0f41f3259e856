//! When the daemon ticks: a fixed interval or a cron schedule, never two ticks at once, and a
//! tick in flight at shutdown finishing within a grace period.

use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_cron_scheduler::job::job_data::{JobAndNextTick, JobStoredData};

use super::{Control, StartError};
use crate::config::Schedule;

/// Fires when a tick is due. Never queues more than one: ticks missed while one runs are
/// skipped, and two ticks never run at once.
pub enum Ticker {
    Interval(tokio::time::Interval),
    Cron {
        due: mpsc::Receiver<()>,
        scheduler: tokio_cron_scheduler::JobScheduler,
        first: bool,
        /// The job as the scheduler keeps it: its parsed schedule gives the fires around now.
        job: JobStoredData,
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
                let mut job = tokio_cron_scheduler::Job::new(expr.as_str(), move |_, _| {
                    let _ = tx.try_send(());
                })
                .map_err(|e| StartError::Scheduler(e.to_string()))?;
                let data = job
                    .job_data()
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
                    job: data,
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

    /// The time between ticks: the interval's period; for a cron schedule, the gap from its
    /// latest fire (at or before now) to its next one. None if the schedule has no such fires.
    pub fn period(&self) -> Option<Duration> {
        match self {
            Ticker::Interval(interval) => Some(interval.period()),
            Ticker::Cron { job, .. } => {
                let cron = job.schedule()?;
                // Cron fires on whole seconds (UTC, as the job was made).
                let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_secs();
                let now = JobAndNextTick::utc(now);
                let last = cron.find_previous_occurrence(&now, true).ok()?;
                let next = cron.find_next_occurrence(&now, false).ok()?;
                let gap = u64::try_from(next.timestamp() - last.timestamp()).ok()?;
                Some(Duration::from_secs(gap))
            }
        }
    }

    pub(super) async fn stop(self) {
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
        assert_eq!(t.period(), Some(Duration::from_secs(1)));
        t.stop().await;
    }

    #[tokio::test]
    async fn the_period_is_the_gap_around_now() {
        let t = Ticker::start(&Schedule::Cron("0 */5 * * * *".into()))
            .await
            .unwrap();
        assert_eq!(t.period(), Some(Duration::from_secs(300)));
        t.stop().await;
        // Twice a day, 8 h and 16 h apart: whichever gap now is in.
        let t = Ticker::start(&Schedule::Cron("0 0 9,17 * * *".into()))
            .await
            .unwrap();
        let hours = t.period().unwrap().as_secs() / 3600;
        assert!(hours == 8 || hours == 16, "{hours} h");
        t.stop().await;
        let t = Ticker::start(&Schedule::Interval(Duration::from_secs(30)))
            .await
            .unwrap();
        assert_eq!(t.period(), Some(Duration::from_secs(30)));
    }
}
