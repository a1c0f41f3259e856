//! systemd's notification protocol: READY, RELOADING, STOPPING and the watchdog. Outside
//! systemd (no `NOTIFY_SOCKET`) every call does nothing.

use std::time::Duration;

use tracing::debug;

pub fn notify(states: &[sd_notify::NotifyState]) {
    // Outside systemd there is no NOTIFY_SOCKET and this does nothing.
    if let Err(e) = sd_notify::notify(false, states) {
        debug!(error = %e, "sd_notify failed");
    }
}

/// Half systemd's WatchdogSec, when the unit sets one.
pub fn watchdog_period() -> Option<Duration> {
    let mut usec = 0u64;
    if sd_notify::watchdog_enabled(false, &mut usec) && usec > 0 {
        Some(Duration::from_micros(usec / 2))
    } else {
        None
    }
}
