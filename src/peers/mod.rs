//! Peers: several balancers, each with its own hatune, hold one set of weights, agreed
//! through etcd (`peers` in the config).
//!
//! ```text
//!            ┌── leader: sources ─► controller (from the published set) ─► publish ──┐
//! etcd ◄─────┤                                                                        │
//!  (set) ────┴──► every instance, leader included: watch ─► plan ─► its own sinks ◄───┘
//! ```
//!
//! One instance leads: it holds the post (`PREFIX/leader`) on its lease, decides every backend
//! from the fleet's CPU and the published weights, and publishes the next set, fenced on its
//! post. Every instance applies each set it sees, newest revision only, to its own balancers;
//! what an operator did on one balancer (drain, MAINT, a weight by hand) stays there. In
//! capacity mode each instance records its balancers' request counters and the leader sums
//! them. etcd out of reach: the last set stays applied; after `standalone_after` (if set),
//! the instance decides alone until etcd answers again.
//!
//! - `set` (pure): the set, the instance record, their JSON, decisions to set and back.
//! - `etcd`: the lease, the post, the watches, the fenced publish, all under the timeout.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use etcd_client::Client;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{info, warn, Instrument};

use crate::config::Peers as PeersConfig;

mod etcd;
pub mod set;
pub mod status;

pub use etcd::{snapshot, Snapshot};
pub use set::{InstanceRecord, Published, WeightSet};

/// What this instance does this tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// It decides and publishes, fenced on the post it won at this revision.
    Leader { fence: i64 },
    /// It applies the published set.
    Follower,
    /// etcd has been out of reach longer than `standalone_after`: it decides alone.
    Standalone,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Lease {
    pub id: i64,
    /// Until when the lease surely holds on etcd's side: renewals are counted from when they
    /// were sent.
    pub until: Instant,
}

/// What the agent learnt and the tick reads.
#[derive(Default)]
pub(crate) struct State {
    client: Option<Client>,
    pub lease: Option<Lease>,
    /// The leader key's create revision when this instance holds the post.
    pub leading: Option<i64>,
    /// Who holds the post, as last seen ("" for nobody).
    pub leader: String,
    /// The newest valid set seen.
    pub latest: Option<Published>,
    /// The newest revision refused as unreadable (said once).
    refused: i64,
    /// Whether etcd answered the last call; `None` before the first.
    up: Option<bool>,
    down_since: Option<Instant>,
    /// The revision of the set this instance last applied.
    pub applied: i64,
    /// Set while this instance decided alone (etcd out of reach past `standalone_after`): the
    /// newest revision then. Sets up to it are older than the weights it holds now and are
    /// not applied again; the leader's first set after it starts from its own balancers.
    alone_since: Option<i64>,
    resigned: bool,
    /// The etcd cluster's id, as its last answer gave it.
    cluster: u64,
}

pub(crate) struct Shared {
    state: Mutex<State>,
    /// The newest revision: the daemon waits on it to apply a set as soon as it is published.
    newest: watch::Sender<i64>,
}

impl Shared {
    pub(crate) fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_client(&self, client: Option<Client>) {
        self.state().client = client;
    }

    fn up(&self) {
        let mut st = self.state();
        if st.up != Some(true) {
            match st.down_since.take() {
                Some(since) => info!(
                    after = ?since.elapsed(),
                    "peers: etcd answers again"
                ),
                None => info!(leader = %st.leader, "peers: etcd reached"),
            }
        }
        st.up = Some(true);
    }

    fn down(&self, why: &str) {
        let mut st = self.state();
        if st.up != Some(false) {
            let revision = st.latest.as_ref().map_or(0, |p| p.revision);
            warn!(error = %why, revision, "peers: etcd out of reach: keeping the last weight set (said once until it answers)");
            st.down_since = Some(Instant::now());
        }
        st.up = Some(false);
    }

    fn leased(&self, id: i64, until: Instant) {
        self.state().lease = Some(Lease { id, until });
    }

    /// The lease is gone on etcd's side; true when this instance led.
    fn lost_lease(&self) -> bool {
        let mut st = self.state();
        st.lease = None;
        st.leading.take().is_some()
    }

    /// Deposes this instance when its lease may have lapsed on etcd's side.
    fn expire(&self, now: Instant) {
        let mut st = self.state();
        if st.lease.is_some_and(|l| l.until <= now) {
            st.lease = None;
            if st.leading.take().is_some() {
                warn!("peers: the lease was not renewed in time: no longer the leader");
            }
        }
    }

    fn elected(&self, fence: i64, name: &str) {
        let mut st = self.state();
        if st.leading.is_none() {
            info!(fence, "peers: this instance leads");
        }
        st.leading = Some(fence);
        st.leader = name.to_string();
    }

    /// The post was (re)created at `create_revision` (0: deleted). Not the one this instance
    /// won: it no longer leads (someone deleted the key by hand, or it lapsed and was taken).
    fn post_taken(&self, create_revision: i64) {
        let mut st = self.state();
        if st.leading.is_some_and(|f| f != create_revision) {
            st.leading = None;
            warn!("peers: the post is no longer this instance's: it no longer leads");
        }
    }

    /// The cluster answering now: a different one than before (etcd replaced by a fresh
    /// cluster) starts the revision order afresh.
    fn cluster_is(&self, id: u64) {
        let mut st = self.state();
        if st.cluster != 0 && id != 0 && st.cluster != id {
            warn!(
                old = st.cluster,
                new = id,
                "peers: etcd is another cluster now: forgetting the revisions of the old one"
            );
            st.latest = None;
            st.applied = 0;
            st.refused = 0;
            st.alone_since = None;
            st.leading = None;
        }
        st.cluster = id;
    }

    fn leader_is(&self, name: &[u8]) {
        let name = String::from_utf8_lossy(name);
        let mut st = self.state();
        if st.leader != name {
            info!(leader = %name, "peers: the leader is now {}", if name.is_empty() { "nobody" } else { &name });
            st.leader = name.into_owned();
        }
    }

    /// A set etcd holds at `revision`: kept when newer than the newest so far and readable.
    fn offer(&self, revision: i64, bytes: &[u8]) {
        let mut st = self.state();
        if st.latest.as_ref().is_some_and(|p| p.revision >= revision) || st.refused >= revision {
            return;
        }
        match WeightSet::decode(bytes) {
            Ok(set) => {
                st.latest = Some(Published { revision, set });
                drop(st);
                self.newest.send_replace(revision);
            }
            Err(e) => {
                st.refused = revision;
                let kept = st.latest.as_ref().map_or(0, |p| p.revision);
                warn!(revision, kept, error = %e, "peers: the published weight set is not one hatune applies: keeping the last one");
            }
        }
    }

    fn resigned(&self) {
        let mut st = self.state();
        st.resigned = true;
        st.leading = None;
        st.lease = None;
    }
}

/// This instance's side of the peer group.
pub struct Peers {
    config: PeersConfig,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    agent: Option<JoinHandle<()>>,
}

impl Peers {
    /// Starts following the group: the agent connects, takes a lease and campaigns in the
    /// background. Must be called inside a Tokio runtime.
    pub fn start(config: &PeersConfig) -> Peers {
        let (newest, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            newest,
        });
        let (stop, stopped) = watch::channel(false);
        // Its lines carry the instance's name: several instances' logs are often read together.
        let span = tracing::info_span!("peers", name = %config.name);
        let agent =
            tokio::spawn(etcd::agent(config.clone(), shared.clone(), stopped).instrument(span));
        Peers {
            config: config.clone(),
            shared,
            stop,
            agent: Some(agent),
        }
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// Changes whenever a newer set is seen.
    pub fn newest(&self) -> watch::Receiver<i64> {
        self.shared.newest.subscribe()
    }

    /// What this instance does at `now`.
    pub fn role(&self, now: Instant) -> Role {
        let st = self.shared.state();
        let alone = self.config.standalone_after.is_some_and(|after| {
            st.up == Some(false)
                && st
                    .down_since
                    .is_some_and(|since| now.saturating_duration_since(since) >= after)
        });
        if alone {
            return Role::Standalone;
        }
        match (st.leading, st.lease) {
            (Some(fence), Some(lease)) if lease.until > now => Role::Leader { fence },
            _ => Role::Follower,
        }
    }

    /// The newest set seen.
    pub fn latest(&self) -> Option<Published> {
        self.shared.state().latest.clone()
    }

    /// The set to apply and decide from: the newest seen, unless it is older than what this
    /// instance decided alone during an outage.
    pub fn current(&self) -> Option<Published> {
        let st = self.shared.state();
        st.latest
            .clone()
            .filter(|l| st.alone_since.map_or(true, |floor| l.revision > floor))
    }

    /// Notes that this tick decides alone (see [`Role::Standalone`]).
    pub fn went_alone(&self) {
        let mut st = self.shared.state();
        if st.alone_since.is_none() {
            warn!(
                after = ?self.config.standalone_after,
                "peers: deciding alone until etcd answers: it has been out of reach longer than standalone_after"
            );
            st.alone_since = Some(st.latest.as_ref().map_or(0, |l| l.revision));
        }
    }

    /// The revision last applied here.
    pub fn applied(&self) -> i64 {
        self.shared.state().applied
    }

    /// Notes that the set at `revision` is applied here.
    pub fn mark_applied(&self, revision: i64) {
        let mut st = self.shared.state();
        st.applied = st.applied.max(revision);
        if st.alone_since.is_some_and(|floor| revision > floor) {
            info!(
                revision,
                "peers: back in the peer group: applying the published set again"
            );
            st.alone_since = None;
        }
    }

    /// True while this instance leads.
    pub fn leads(&self, now: Instant) -> bool {
        matches!(self.role(now), Role::Leader { .. })
    }

    /// Whether etcd answered the last call.
    pub fn etcd_up(&self) -> bool {
        self.shared.state().up == Some(true)
    }

    fn client(&self) -> Result<Client, String> {
        self.shared
            .state()
            .client
            .clone()
            .ok_or_else(|| "not connected to etcd".to_string())
    }

    /// Publishes `set` under the post won at `fence`: the published set, or why it was not
    /// (deposed: another instance leads; or etcd did not answer).
    pub async fn publish(&self, fence: i64, set: WeightSet) -> Result<Published, String> {
        let mut client = self.client()?;
        match etcd::publish(&self.config, &mut client, fence, &set).await {
            Ok(Some(revision)) => {
                self.shared.up();
                let published = Published { revision, set };
                let mut st = self.shared.state();
                if st.latest.as_ref().map_or(true, |p| p.revision < revision) {
                    st.latest = Some(published.clone());
                }
                Ok(published)
            }
            Ok(None) => {
                self.shared.up();
                let mut st = self.shared.state();
                if st.leading == Some(fence) {
                    st.leading = None;
                    drop(st);
                    warn!("peers: another instance holds the post: this one no longer leads, and did not publish");
                }
                Err("deposed: another instance leads".into())
            }
            Err(e) => {
                self.shared.down(&e);
                Err(e)
            }
        }
    }

    /// Records what this instance applied (and its request counters) under its lease.
    pub async fn record(&self, record: &InstanceRecord) -> Result<(), String> {
        let lease = self.shared.state().lease.map(|l| l.id);
        let Some(lease) = lease else {
            return Err("no lease yet".into());
        };
        let mut client = self.client()?;
        etcd::record(&self.config, &mut client, lease, record).await
    }

    /// The other instances' records (this one's left out); unreadable ones are left out too.
    pub async fn others(&self) -> Result<Vec<(String, InstanceRecord)>, String> {
        let mut client = self.client()?;
        let all = etcd::records(&self.config, &mut client).await?;
        Ok(all
            .into_iter()
            .filter(|(name, _)| *name != self.config.name)
            .filter_map(|(name, r)| r.ok().map(|r| (name, r)))
            .collect())
    }

    /// Stops the agent, giving the lease up; bounded by the timeout (a frozen etcd does not
    /// hold the shutdown).
    pub async fn stop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(agent) = self.agent.take() {
            let bound = self.config.timeout.saturating_mul(3) + Duration::from_millis(200);
            if tokio::time::timeout(bound, agent).await.is_err() {
                warn!("peers: the etcd agent did not stop in time");
            }
        }
    }
}

impl Drop for Peers {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}
