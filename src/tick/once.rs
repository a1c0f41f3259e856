//! `hatune once`: one tick on a fresh [`Tuner`]; with a state file, a tuner that takes up what
//! the last run left there and leaves what it learnt, under the file's lock.

use std::path::Path;
use std::time::SystemTime;

use serde_json::value::RawValue;
use tokio::time::Instant;
use tracing::{info, warn};

use super::Tuner;
use crate::config::Config;
use crate::report::TickReport;
use crate::state;

/// One tick of `config`, as `hatune once [--dry-run] [--state FILE]` runs it. `None` when
/// another run holds the state file: this one did nothing (two runs of one state would both
/// restore it and both save, and the second would take the first's weights for an
/// operator's). A state file that cannot be locked, read or written costs this run or the next
/// its lean read, never the tick: each case is logged and the tick goes on.
pub async fn once(config: &Config, dry_run: bool, state_file: Option<&Path>) -> Option<TickReport> {
    let now = Instant::now();
    let Some(path) = state_file else {
        return Some(Tuner::once(config, dry_run).tick(config, now).await);
    };
    let lock = match state::lock(path) {
        Ok(Some(lock)) => Some(lock),
        Ok(None) => {
            warn!(path = %path.display(), "another `hatune once` holds this state file: this run changes nothing");
            return None;
        }
        Err(e) => {
            warn!(path = %path.display(), error = %e, "state file unusable: this run goes on without it");
            None
        }
    };
    let Some(_lock) = lock else {
        return Some(Tuner::once(config, dry_run).tick(config, now).await);
    };
    let mut tuner = Tuner::once_with_state(config, dry_run);
    let kept = restore(&mut tuner, config, path, now);
    let report = tuner.tick(config, now).await;
    let mut saved = tuner.save(Instant::now(), SystemTime::now());
    if dry_run {
        // A dry run wrote nothing: each balancer still holds what the last real run left (a
        // reload it saw is still to be repaired), so those parts stay as that run saved them.
        // Only the marks move on.
        let (sinks, history) = kept.unwrap_or_default();
        saved.sinks = sinks;
        saved.history = history;
    }
    if let Err(e) = state::save(path, &saved) {
        // The weights are set: only the next run's lean read is lost.
        warn!(path = %path.display(), error = %e, "cannot write the state file; the next run reads the whole window");
    }
    Some(report)
}

/// The balancers' and the history's parts of a state file, as a dry run leaves them.
type Kept = (
    std::collections::BTreeMap<String, Box<RawValue>>,
    Option<Box<RawValue>>,
);

/// Gives `tuner` what the last run left in `path`, and returns the balancers' and history's
/// parts as they were. A file hatune cannot use is set aside with a warning, and the run goes
/// on as the first one would.
fn restore(tuner: &mut Tuner, config: &Config, path: &Path, now: Instant) -> Option<Kept> {
    match state::load(path) {
        Ok(Some(saved)) => {
            let kept = (saved.sinks.clone(), saved.history.clone());
            tuner.restore(config, saved, now, SystemTime::now());
            Some(kept)
        }
        Ok(None) => {
            info!(path = %path.display(), "no state file yet: this run reads the whole window and starts one");
            None
        }
        Err(e) => {
            let aside = state::set_aside(path);
            warn!(
                path = %path.display(),
                error = %e,
                moved_to = %aside.map_or("(could not be moved)".into(), |p| p.display().to_string()),
                "state file unusable: this run reads the whole window and starts a new one"
            );
            None
        }
    }
}
