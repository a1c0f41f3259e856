//! `--dry-run`: a sink that reads through another and records instead of writing, and says
//! when the real run's writes would be refused.

use futures::future::BoxFuture;
use tokio::time::Instant;

use super::{Inventory, Outcome, Sink, View, Write};
use crate::config::{Backend, Config};

/// Reads through `S`; every write is [`Outcome::Recorded`] and never reaches the balancer, so
/// `S` learns nothing from it either (what hatune set stays what the balancer holds).
///
/// After each read it asks `S` whether a real run's writes would be accepted
/// ([`Sink::check_writable`]: for HAProxy one `show cli level`). When they would not, this
/// tick's writes fail with that reason, as the real run's would: the rows and the socket say
/// so and the exit code is 1, with nothing written.
#[derive(Debug)]
pub struct DryRun<S> {
    inner: S,
    /// Why the last read balancer would refuse a real run's writes.
    refusal: Option<String>,
}

impl<S: Sink> DryRun<S> {
    pub fn new(inner: S) -> DryRun<S> {
        DryRun {
            inner,
            refusal: None,
        }
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
        Box::pin(async move {
            self.refusal = None;
            // Only a balancer that was read is asked: one that failed (or is backing off)
            // already has its error, and is not kept waiting on twice.
            let view = self.inner.read(backends, now).await?;
            self.refusal = self.inner.check_writable().await.err();
            Ok(view)
        })
    }

    fn apply<'a>(&'a mut self, writes: &'a [Write]) -> BoxFuture<'a, Result<Vec<Outcome>, String>> {
        Box::pin(async move {
            match &self.refusal {
                Some(why) => Err(why.clone()),
                None => Ok(vec![Outcome::Recorded; writes.len()]),
            }
        })
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

    fn save(&self) -> Option<Box<serde_json::value::RawValue>> {
        self.inner.save()
    }

    fn restore(&mut self, saved: &serde_json::value::RawValue) -> Result<(), String> {
        self.inner.restore(saved)
    }

    fn probe(&self) -> BoxFuture<'_, Result<Inventory, String>> {
        self.inner.probe()
    }

    fn check_writable(&self) -> BoxFuture<'_, Result<(), String>> {
        self.inner.check_writable()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::controller::ServerKey;

    /// A balancer that reads (or fails to) and refuses writes (or not), counting the asks.
    struct Fake {
        read: Result<View, String>,
        writable: Result<(), String>,
        asked: AtomicUsize,
    }

    impl Sink for Fake {
        fn kind(&self) -> &'static str {
            "fake"
        }
        fn name(&self) -> &str {
            "fake"
        }
        fn read<'a>(
            &'a mut self,
            _: &'a [Backend],
            _: Instant,
        ) -> BoxFuture<'a, Result<View, String>> {
            Box::pin(async move { self.read.clone() })
        }
        fn apply<'a>(&'a mut self, _: &'a [Write]) -> BoxFuture<'a, Result<Vec<Outcome>, String>> {
            unreachable!("a dry run never writes")
        }
        fn probe(&self) -> BoxFuture<'_, Result<Inventory, String>> {
            unreachable!()
        }
        fn check_writable(&self) -> BoxFuture<'_, Result<(), String>> {
            self.asked.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move { self.writable.clone() })
        }
    }

    fn write() -> Write {
        Write {
            key: ServerKey::new("app", "app-1"),
            weight: 7,
            decided: true,
            restores: false,
        }
    }

    /// What the balancer's read gives, what it says to the writability question, what the
    /// tick's writes then give, and how often it was asked.
    type Case = (
        Result<View, String>,
        Result<(), String>,
        Result<Vec<Outcome>, String>,
        usize,
    );

    /// Table: what a read and the writability question give the tick's writes.
    #[tokio::test]
    async fn writes_fail_as_the_real_runs_would() {
        let refused = || Err("level user: would be refused".to_string());
        let cases: Vec<Case> = vec![
            (Ok(View::default()), Ok(()), Ok(vec![Outcome::Recorded]), 1),
            (
                Ok(View::default()),
                refused(),
                refused().map(|()| vec![]),
                1,
            ),
            // A balancer that could not be read has its error already; it is not asked.
            (
                Err("down".into()),
                refused(),
                Ok(vec![Outcome::Recorded]),
                0,
            ),
        ];
        for (read, writable, want, asked) in cases {
            let mut sink = DryRun::new(Fake {
                read: read.clone(),
                writable,
                asked: AtomicUsize::new(0),
            });
            assert_eq!(sink.read(&[], Instant::now()).await, read);
            assert_eq!(sink.apply(&[write()]).await, want, "{read:?}");
            assert_eq!(sink.inner.asked.load(Ordering::SeqCst), asked, "{read:?}");
        }
    }

    /// A refusal lasts one tick: the next read asks again.
    #[tokio::test]
    async fn each_read_asks_again() {
        let mut sink = DryRun::new(Fake {
            read: Ok(View::default()),
            writable: Err("level operator".into()),
            asked: AtomicUsize::new(0),
        });
        sink.read(&[], Instant::now()).await.unwrap();
        assert!(sink.apply(&[]).await.is_err());
        sink.inner.writable = Ok(());
        sink.read(&[], Instant::now()).await.unwrap();
        assert_eq!(sink.apply(&[write()]).await, Ok(vec![Outcome::Recorded]));
        assert_eq!(sink.inner.asked.load(Ordering::SeqCst), 2);
    }
}
