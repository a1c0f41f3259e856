//! Which hosts are failing, so a source logs when that changes rather than every tick.

use std::collections::HashMap;

use tracing::{debug, info, warn};

use super::HostPoll;

/// Hosts failing since an earlier tick, with the kind of failure.
#[derive(Debug, Default)]
pub struct HostHealth {
    failing: HashMap<String, &'static str>,
}

impl HostHealth {
    /// Notes one host's answer: warns when it starts failing (or fails differently), says when
    /// it is back, and logs the ticks in between at debug.
    pub fn note(&mut self, host: &str, poll: &HostPoll) {
        match poll {
            Ok(_) => {
                if self.failing.remove(host).is_some() {
                    info!(host = %host, "cAdvisor host answers again");
                }
            }
            Err(e) => {
                let kind = e.kind();
                if self.failing.insert(host.to_string(), kind) != Some(kind) {
                    warn!(host = %host, reason = %e, "cAdvisor host skipped");
                } else {
                    debug!(host = %host, reason = %e, "cAdvisor host still skipped");
                }
            }
        }
    }

    /// Forgets hosts no longer polled.
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        self.failing.retain(|h, _| keep(h));
    }
}
