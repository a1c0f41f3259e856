//! HAProxy as a [`Sink`]: one stats socket, read and written over the runtime API, with the
//! socket's [`Reconciler`] memory.

use std::time::Duration;

use futures::future::BoxFuture;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::reconcile::Reconciler;
use super::{Client, Error, Info, RuntimeApi, Stat, WeightChange};
use crate::config::{Backend, Config};
use crate::controller::ServerKey;
use crate::sink::{Inventory, Outcome, ServerView, Sink, View, Write};

/// One HAProxy stats socket.
#[derive(Debug)]
pub struct HaproxySink<A: RuntimeApi = Client> {
    api: A,
    name: String,
    /// Read `show info` around `show stat` to notice reloads (the daemon). `hatune once` sees
    /// the socket once and has nothing to compare with.
    follow_reloads: bool,
    memory: Reconciler,
}

impl<A: RuntimeApi> HaproxySink<A> {
    pub fn new(api: A, follow_reloads: bool) -> HaproxySink<A> {
        HaproxySink {
            name: api.address().to_string(),
            api,
            follow_reloads,
            memory: Reconciler::default(),
        }
    }

    /// `show info` before and after `show stat`, so the stat is known to come from the process
    /// the info names: a reload between two reads would otherwise show the new process's
    /// config weights under the old pid (and look like an operator's change).
    async fn read_consistent(&self) -> Result<(Option<Info>, Stat), String> {
        if !self.follow_reloads {
            return Ok((None, self.api.show_stat().await.map_err(|e| e.to_string())?));
        }
        let mut before = self.api.show_info().await.map_err(|e| e.to_string())?;
        for _ in 0..3 {
            let stat = self.api.show_stat().await.map_err(|e| e.to_string())?;
            let after = self.api.show_info().await.map_err(|e| e.to_string())?;
            if (after.pid, after.start_time_sec) == (before.pid, before.start_time_sec) {
                return Ok((Some(after), stat));
            }
            before = after;
        }
        Err("HAProxy reloaded during every read of this tick".to_string())
    }
}

impl<A: RuntimeApi> Sink for HaproxySink<A> {
    fn kind(&self) -> &'static str {
        "HAProxy"
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn read<'a>(
        &'a mut self,
        backends: &'a [Backend],
        now: Instant,
    ) -> BoxFuture<'a, Result<View, String>> {
        Box::pin(async move {
            if let Some(wait) = self.memory.backing_off(now) {
                let e = format!(
                    "unreachable; next attempt in {}",
                    humantime::format_duration(Duration::from_secs(wait.as_secs().max(1)))
                );
                debug!(socket = %self.name, error = %e, "HAProxy socket still unreachable");
                return Err(e);
            }
            let (info, stat) = match self.read_consistent().await {
                Ok(read) => read,
                Err(e) => {
                    if self.memory.failed(now) {
                        warn!(socket = %self.name, error = %e, "HAProxy socket unreachable; the others go on");
                    } else {
                        debug!(socket = %self.name, error = %e, "HAProxy socket still unreachable");
                    }
                    return Err(e);
                }
            };
            if self.memory.recovered() {
                info!(socket = %self.name, "HAProxy socket reachable again");
            }
            let current = self.memory.read_ok();
            let reloaded = info.is_some_and(|i| self.memory.notice_reload(&self.name, &i));
            let restores = if reloaded {
                // The config's weights, to tell what the reload reset from what someone set
                // since (an operator between the reload and this tick): one command, only now.
                let initial = match self.api.initial_weights().await {
                    Ok(w) => w,
                    Err(e) => {
                        debug!(socket = %self.name, error = %e, "initial weights unknown: every weight hatune set is restored");
                        Default::default()
                    }
                };
                self.memory
                    .after_reload(&self.name, backends, &stat, &initial)
            } else {
                self.memory.notice_overrides(&self.name, backends, &stat)
            };
            Ok(self.memory.view(&stat, &restores, reloaded, current))
        })
    }

    fn apply<'a>(&'a mut self, writes: &'a [Write]) -> BoxFuture<'a, Result<Vec<Outcome>, String>> {
        Box::pin(async move {
            if writes.is_empty() {
                return Ok(vec![]);
            }
            let changes: Vec<WeightChange> = writes
                .iter()
                .map(|w| WeightChange {
                    backend: w.key.backend.clone(),
                    server: w.key.server.clone(),
                    weight: w.weight,
                })
                .collect();
            match self.api.set_weights(&changes).await {
                Err(e) => {
                    self.memory.lost(writes);
                    Err(e.to_string())
                }
                Ok(results) => Ok(writes
                    .iter()
                    .zip(results)
                    .map(|(w, r)| match r {
                        Ok(()) => {
                            self.memory.applied(w);
                            Outcome::Applied
                        }
                        Err(msg) => Outcome::Refused(msg),
                    })
                    .collect()),
            }
        })
    }

    fn resume_all(&mut self) -> usize {
        self.memory.resume_all()
    }

    fn overridden(&self) -> usize {
        self.memory.overridden()
    }

    fn reconfigure(&mut self, config: &Config) {
        self.api.set_timeout(config.timeout);
    }

    fn save(&self) -> Option<Box<serde_json::value::RawValue>> {
        serde_json::value::to_raw_value(&self.memory.save()).ok()
    }

    fn restore(&mut self, saved: &serde_json::value::RawValue) -> Result<(), String> {
        let saved = serde_json::from_str(saved.get()).map_err(|e| e.to_string())?;
        self.memory = Reconciler::restore(saved);
        Ok(())
    }

    /// `show cli level`: one small command. Below admin, `set weight` is refused.
    fn check_writable(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            match self.api.check_admin().await {
                Ok(()) => Ok(()),
                Err(Error::PermissionDenied { reply, .. }) => Err(format!(
                    "HAProxy at {} is at {reply}: a real run would be refused (needs level admin)",
                    self.name
                )),
                Err(e) => Err(format!("{e} (asked whether a real run would be accepted)")),
            }
        })
    }

    fn probe(&self) -> BoxFuture<'_, Result<Inventory, String>> {
        Box::pin(async move {
            self.api.check_admin().await.map_err(|e| e.to_string())?;
            let stat = self.api.show_stat().await.map_err(|e| e.to_string())?;
            Ok(Inventory {
                access: "admin level".into(),
                backends: stat.backends.into_iter().map(|b| b.name).collect(),
                servers: stat
                    .servers
                    .iter()
                    .map(|s| ServerView {
                        exclusion: s.exclusion(),
                        address: s.address,
                        ..ServerView::new(ServerKey::new(&s.backend, &s.server), s.user_weight())
                    })
                    .collect(),
            })
        })
    }
}
