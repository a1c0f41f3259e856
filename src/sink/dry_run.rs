//! `--dry-run`: a sink that reads through another and records instead of writing.

use futures::future::BoxFuture;
use tokio::time::Instant;

use super::{Inventory, Outcome, Sink, View, Write};
use crate::config::{Backend, Config};

/// Reads through `S`; every write is [`Outcome::Recorded`] and never reaches the balancer, so
/// `S` learns nothing from it either (what hatune set stays what the balancer holds).
#[derive(Debug)]
pub struct DryRun<S> {
    inner: S,
}

impl<S: Sink> DryRun<S> {
    pub fn new(inner: S) -> DryRun<S> {
        DryRun { inner }
    }
}

impl<S: Sink> Sink for DryRun<S> {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    fn name(&self) -> &str {
        self.inner.name()
    }

    fn read<'a>(
        &'a mut self,
        backends: &'a [Backend],
        now: Instant,
    ) -> BoxFuture<'a, Result<View, String>> {
        self.inner.read(backends, now)
    }

    fn apply<'a>(&'a mut self, writes: &'a [Write]) -> BoxFuture<'a, Result<Vec<Outcome>, String>> {
        Box::pin(async move { Ok(vec![Outcome::Recorded; writes.len()]) })
    }

    fn dry_run(&self) -> bool {
        true
    }

    fn resume_all(&mut self) -> usize {
        self.inner.resume_all()
    }

    fn overridden(&self) -> usize {
        self.inner.overridden()
    }

    fn reconfigure(&mut self, config: &Config) {
        self.inner.reconfigure(config)
    }

    fn probe(&self) -> BoxFuture<'_, Result<Inventory, String>> {
        self.inner.probe()
    }
}
