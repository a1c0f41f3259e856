//! Sinks: where weights go, and what the balancer holds now. A [`Sink`] is one balancer
//! instance: it reads its servers and their weights into a neutral [`View`], and applies the
//! writes planned for it, reporting one outcome per write.
//!
//! - [`haproxy`]: HAProxy's runtime API (a stats socket). It owns what it learns from tick to
//!   tick: reloads, the weights hatune set, operators' changes, writes whose reply was lost,
//!   and its backoff.
//! - [`DryRun`]: wraps a sink, reads through it, records instead of writing.
//! - `merge` and `plan` (pure): several balancers' views into one row per server, and the
//!   decisions back into each balancer's writes.
//!
//! Adding a sink: a module here with a type that implements [`Sink`], and a line in [`build`].

use futures::future::BoxFuture;
use tokio::time::Instant;

use crate::config::{Backend, Config};
use crate::controller::{Reason, ServerKey};

mod dry_run;
pub mod haproxy;
mod merge;
mod plan;

pub use dry_run::DryRun;
pub use merge::{by_backend, differing_addresses, merge};
pub use plan::plan;

/// One server as one balancer holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerView {
    pub key: ServerKey,
    /// The weight it holds now (HAProxy's user weight, not the slowstart-throttled one).
    pub holds: u32,
    /// Why the balancer's own state keeps it out of tuning (DRAIN, MAINT, DOWN, backup, ...).
    pub exclusion: Option<Reason>,
    /// Requests it has served on this balancer so far (cumulative), when counted.
    pub requests: Option<u64>,
    /// The weight it holds (or gets back this tick) is the one hatune decided last tick: this
    /// balancer's row is preferred when balancers disagree. False after the balancer could not
    /// be read (its weights may be from before), and at first sight.
    pub ours: bool,
    /// Someone else changed its weight here since hatune set this one: left alone here.
    pub overridden: Option<u32>,
    /// The balancer forgot hatune's weight (a reload): this tick puts this one back.
    pub restore: Option<u32>,
    /// Where it sends traffic, when that is an IP and port (address matching).
    pub address: Option<std::net::SocketAddr>,
}

impl ServerView {
    /// A serving server holding `holds`, of which nothing else is known: not excluded, no
    /// request counter, not hatune's, not overridden, nothing to restore.
    pub fn new(key: ServerKey, holds: u32) -> ServerView {
        ServerView {
            key,
            holds,
            exclusion: None,
            requests: None,
            ours: false,
            overridden: None,
            restore: None,
            address: None,
        }
    }

    /// The weight the server has for this tick's decisions: what it holds, or what a restore
    /// gives back.
    pub fn weight(&self) -> u32 {
        self.restore.unwrap_or(self.holds)
    }
}

/// What one balancer holds this tick.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct View {
    /// Every backend it has, servers or not.
    pub backends: Vec<String>,
    /// Every server of every backend, in the balancer's order.
    pub servers: Vec<ServerView>,
    /// Restarted or reloaded since the last read: runtime weights were forgotten.
    pub reloaded: bool,
}

/// One weight to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    pub key: ServerKey,
    pub weight: u32,
    /// This tick's decision moves the server (counted as applied).
    pub decided: bool,
    /// It gives back a weight a reload forgot (counted as restored).
    pub restores: bool,
}

/// What became of one write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The balancer holds it now.
    Applied,
    /// The balancer said no, in its words.
    Refused(String),
    /// Recorded, not sent (dry-run).
    Recorded,
}

/// What `hatune check` learns from a balancer.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Inventory {
    /// What hatune may do there, for people: `admin level`.
    pub access: String,
    pub backends: Vec<String>,
    /// Every server, with its state and address as a first read sees them.
    pub servers: Vec<ServerView>,
}

/// One balancer instance that takes weights.
pub trait Sink: Send {
    /// What kind of balancer it is, for people: `HAProxy`.
    fn kind(&self) -> &'static str;

    /// Where it is, for reports and logs: a socket address.
    fn name(&self) -> &str;

    /// Reads every server and its weight, keeping track of those of `backends` (what hatune
    /// set, what someone else changed). `now` paces retries of a balancer that failed. The
    /// error says why it could not be read (or when it is tried again).
    fn read<'a>(
        &'a mut self,
        backends: &'a [Backend],
        now: Instant,
    ) -> BoxFuture<'a, Result<View, String>>;

    /// Applies the writes planned from the last [`read`](Sink::read): one outcome per write, in
    /// order, or why none could be sent (some may have landed).
    fn apply<'a>(&'a mut self, writes: &'a [Write]) -> BoxFuture<'a, Result<Vec<Outcome>, String>>;

    /// True when it records instead of writing (`--dry-run`).
    fn dry_run(&self) -> bool {
        false
    }

    /// Hands every server left to an operator back to hatune at its current weight (SIGHUP);
    /// returns how many there were.
    fn resume_all(&mut self) -> usize {
        0
    }

    /// Servers left alone because someone else changed their weight.
    fn overridden(&self) -> usize {
        0
    }

    /// Takes a reloaded config (SIGHUP): a new timeout, say.
    fn reconfigure(&mut self, _config: &Config) {}

    /// What it learnt, for the next run of `hatune once --state` (`None`: nothing worth it).
    fn save(&self) -> Option<Box<serde_json::value::RawValue>> {
        None
    }

    /// Takes what an earlier run saved; what it cannot read is dropped, with the reason.
    fn restore(&mut self, _saved: &serde_json::value::RawValue) -> Result<(), String> {
        Ok(())
    }

    /// `hatune check`: what hatune may do there and what it has, changing nothing.
    fn probe(&self) -> BoxFuture<'_, Result<Inventory, String>>;

    /// Why the writes of a real run would be refused here, found out without writing
    /// (`--dry-run` asks after each read it makes); `Ok` when they would be accepted.
    fn check_writable(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async { Ok(()) })
    }
}

/// How the sinks of a config are built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Options {
    /// Record instead of writing (`--dry-run`).
    pub dry_run: bool,
    /// Follow each balancer across ticks: notice reloads and re-apply (the daemon).
    pub follow_reloads: bool,
}

/// The sinks a config names, one per balancer, in config order.
pub fn build(config: &Config, options: Options) -> Vec<Box<dyn Sink>> {
    config
        .haproxy
        .iter()
        .map(|addr| {
            let sink = haproxy::HaproxySink::new(
                haproxy::Client::new(addr.clone(), config.timeout),
                options.follow_reloads,
            );
            if options.dry_run {
                Box::new(DryRun::new(sink)) as Box<dyn Sink>
            } else {
                Box::new(sink)
            }
        })
        .collect()
}
