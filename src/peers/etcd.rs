//! The etcd side of peers: a lease renewed in the background, the leader's post taken with a
//! transaction, watches on the post and the weight set, and the fenced publish. Every call
//! is bounded by `peers.timeout`: a frozen etcd never holds a tick, a renewal or a shutdown.
//!
//! Keys, under `prefix`:
//! - `leader`: the leading instance's name, on its lease. Taken by a transaction that puts
//!   it only when it does not exist (`create_revision == 0`); the leader's fencing token is
//!   that key's create revision.
//! - `weights`: the published [`WeightSet`]; no lease (it outlives leaders). Written only by
//!   a transaction comparing the leader key's create revision with the writer's, so a
//!   deposed leader that wakes up (SIGCONT after its lease lapsed) cannot overwrite its
//!   successor's set. Its mod revision is the set's revision.
//! - `instances/NAME`: each instance's [`InstanceRecord`], on its lease.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Identity,
    LeaseKeepAliveStream, LeaseKeeper, PutOptions, TlsOptions, Txn, TxnOp, TxnOpResponse,
    WatchOptions, WatchStream,
};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::set::{InstanceRecord, Published, WeightSet};
use super::Shared;
use crate::config::Peers as PeersConfig;

/// `f`, bounded by `timeout`; both failures in words.
pub(super) async fn bounded<T, F>(timeout: Duration, what: &str, f: F) -> Result<T, String>
where
    F: Future<Output = Result<T, etcd_client::Error>>,
{
    match tokio::time::timeout(timeout, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{what}: {}", describe(&e))),
        Err(_) => Err(format!("{what}: no answer within {timeout:?}")),
    }
}

fn describe(e: &etcd_client::Error) -> String {
    match e {
        // What a connection cut mid-call (etcd stopped, or frozen and the keep-alive gave up)
        // looks like from gRPC: say that, not the HTTP/2 detail.
        etcd_client::Error::GRpcStatus(s) if s.message().contains("h2 protocol error") => {
            format!("the connection to etcd broke ({})", s.message())
        }
        // A transport failure's cause (TLS above all) is in the error's sources.
        etcd_client::Error::GRpcStatus(s) => {
            crate::source::http::explain(&chain(&format!("{} ({:?})", s.message(), s.code()), s))
        }
        etcd_client::Error::TransportError(t) => {
            crate::source::http::explain(&chain(&t.to_string(), t))
        }
        other => other.to_string(),
    }
}

/// `head`, then the message of each error under `e`.
fn chain(head: &str, e: &dyn std::error::Error) -> String {
    let mut text = head.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let said = c.to_string();
        if !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        cause = c.source();
    }
    text
}

/// Connects to the config's endpoints (lazily: the first call finds whether etcd is there).
pub(super) async fn connect(cfg: &PeersConfig) -> Result<Client, String> {
    let mut options = ConnectOptions::new()
        .with_connect_timeout(cfg.timeout)
        .with_timeout(cfg.timeout)
        // HTTP/2 pings no more often than etcd allows (`--grpc-keepalive-min-time`, 5 s by
        // default): more often and it answers GOAWAY "too_many_pings", cutting the watches.
        // Dead connections are found by the calls' own timeouts anyway.
        .with_keep_alive(KEEPALIVE, cfg.timeout)
        // A member cut off from its cluster's majority refuses, rather than serving a watch
        // that will never deliver.
        .with_require_leader(true);
    if let Some(tls) = tls(cfg)? {
        options = options.with_tls(tls);
    }
    bounded(
        cfg.timeout,
        "connecting to etcd",
        Client::connect(&cfg.etcd, Some(options)),
    )
    .await
}

/// TLS to etcd, from the config's files (read at each connection, so renewed certificates are
/// taken at the next reconnect): the CA as the only root, the client certificate when given.
fn tls(cfg: &PeersConfig) -> Result<Option<TlsOptions>, String> {
    let Some(ca) = &cfg.ca_file else {
        return Ok(None);
    };
    let read = |p: &std::path::Path| {
        std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()))
    };
    let mut tls = TlsOptions::new().ca_certificate(Certificate::from_pem(read(ca)?));
    if let Some(path) = &cfg.client_cert_file {
        // One PEM holds both: the certificate chain is read from its certificates, the key
        // from its private key.
        let pem = read(path)?;
        tls = tls.identity(Identity::from_pem(&pem, &pem));
    }
    Ok(Some(tls))
}

/// The HTTP/2 ping interval to etcd.
const KEEPALIVE: Duration = Duration::from_secs(10);

/// The lease's TTL in whole seconds, as etcd takes it.
fn ttl_secs(lease: Duration) -> i64 {
    (lease.as_millis().div_ceil(1000) as i64).max(1)
}

/// One connection's worth of state: what is lost when the connection is dropped.
struct Conn {
    client: Client,
    keeper: Option<(LeaseKeeper, LeaseKeepAliveStream)>,
    weights: WatchStream,
    leader: WatchStream,
}

/// The background task: keeps the lease, takes the post when it is free, follows the post
/// and the set. Ends when `stop` turns true, giving up the lease (so another instance leads
/// at once) within the timeout.
pub(super) async fn agent(cfg: PeersConfig, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let beat = (cfg.lease / 3).max(Duration::from_millis(250));
    let mut conn: Option<Conn> = None;
    loop {
        if *stop.borrow() {
            break;
        }
        if conn.is_none() {
            match open(&cfg, &shared).await {
                Ok(c) => conn = Some(c),
                Err(e) => shared.down(&e),
            }
        }
        let mut lost = false;
        if let Some(c) = conn.as_mut() {
            let done = match renew(&cfg, &shared, c).await {
                Ok(()) => campaign(&cfg, &shared, c).await,
                Err(e) => Err(e),
            };
            match done {
                Ok(()) => shared.up(),
                Err(e) => {
                    shared.down(&e);
                    conn = None;
                    lost = true;
                }
            }
        }
        // A lease that lapsed here deposes this instance before etcd can hand the post on.
        shared.expire(Instant::now());
        let Some(c) = conn.as_mut() else {
            // A connection that just failed is opened again at once: a blip must not cost a
            // beat on top of the timeout, or the renewal after it comes too late for the lease.
            if !lost {
                tokio::select! {
                    _ = tokio::time::sleep(beat) => {}
                    _ = stop.changed() => {}
                }
            }
            continue;
        };
        let wake = Instant::now() + beat;
        let broken = loop {
            tokio::select! {
                _ = tokio::time::sleep_until(wake) => break false,
                _ = stop.changed() => break false,
                m = c.weights.message() => match m {
                    Ok(Some(resp)) => {
                        for ev in resp.events() {
                            if let (EventType::Put, Some(kv)) = (ev.event_type(), ev.kv()) {
                                shared.offer(kv.mod_revision(), kv.value());
                            }
                        }
                        if resp.canceled() {
                            break true;
                        }
                    }
                    Ok(None) | Err(_) => break true,
                },
                m = c.leader.message() => match m {
                    Ok(Some(resp)) => {
                        let mut vacant = false;
                        for ev in resp.events() {
                            match (ev.event_type(), ev.kv()) {
                                (EventType::Put, Some(kv)) => {
                                    shared.post_taken(kv.create_revision());
                                    shared.leader_is(kv.value());
                                }
                                (EventType::Delete, _) => {
                                    shared.post_taken(0);
                                    vacant = true;
                                }
                                _ => {}
                            }
                        }
                        if resp.canceled() {
                            break true;
                        }
                        // The post is free: campaign now, not at the next beat.
                        if vacant {
                            shared.leader_is(b"");
                            break false;
                        }
                    }
                    Ok(None) | Err(_) => break true,
                },
            }
        };
        if broken {
            debug!("an etcd watch ended; reconnecting");
            conn = None;
        }
    }
    // Give the post up: the others need not wait for the lease to lapse.
    let lease = shared.state().lease.map(|l| l.id);
    // Without a live connection (a watch had just broken), one more, within the timeout.
    let client = match conn {
        Some(c) => Some(c.client),
        None if lease.is_some() => connect(&cfg).await.ok(),
        None => None,
    };
    if let (Some(id), Some(mut client)) = (lease, client) {
        match bounded(cfg.timeout, "giving up the lease", client.lease_revoke(id)).await {
            Ok(_) => info!("peers: lease given up"),
            Err(e) => warn!(error = %e, "peers: the lease lapses on its own"),
        }
    }
    shared.resigned();
}

/// A connection with the set and the post read, and both watched from there on.
async fn open(cfg: &PeersConfig, shared: &Shared) -> Result<Conn, String> {
    let mut client = connect(cfg).await?;
    let t = cfg.timeout;
    let resp = bounded(
        t,
        "reading the weight set",
        client.get(cfg.weights_key(), None),
    )
    .await?;
    let revision = resp.header().map_or(0, |h| h.revision());
    // Another cluster (etcd replaced, its revisions counting from 1 again): what was seen of
    // the old one orders nothing here.
    shared.cluster_is(resp.header().map_or(0, |h| h.cluster_id()));
    if let Some(kv) = resp.kvs().first() {
        shared.offer(kv.mod_revision(), kv.value());
    }
    let from = WatchOptions::new().with_start_revision(revision + 1);
    let weights = bounded(
        t,
        "watching the weight set",
        client.watch(cfg.weights_key(), Some(from.clone())),
    )
    .await?;
    let resp = bounded(
        t,
        "reading the leader's post",
        client.get(cfg.leader_key(), None),
    )
    .await?;
    shared.leader_is(resp.kvs().first().map_or(&b""[..], |kv| kv.value()));
    let from =
        WatchOptions::new().with_start_revision(resp.header().map_or(0, |h| h.revision()) + 1);
    let leader = bounded(
        t,
        "watching the leader's post",
        client.watch(cfg.leader_key(), Some(from)),
    )
    .await?;
    shared.set_client(Some(client.clone()));
    Ok(Conn {
        client,
        keeper: None,
        weights,
        leader,
    })
}

/// Renews the lease, or grants one when there is none (or it lapsed).
async fn renew(cfg: &PeersConfig, shared: &Shared, c: &mut Conn) -> Result<(), String> {
    let t = cfg.timeout;
    let lease = shared.state().lease;
    let Some(lease) = lease else {
        let sent = Instant::now();
        let granted = bounded(
            t,
            "granting a lease",
            c.client.lease_grant(ttl_secs(cfg.lease), None),
        )
        .await?;
        let ttl = Duration::from_secs(granted.ttl().max(1) as u64);
        shared.leased(granted.id(), sent + ttl);
        c.keeper = Some(
            bounded(
                t,
                "keeping the lease alive",
                c.client.lease_keep_alive(granted.id()),
            )
            .await?,
        );
        debug!(
            lease = granted.id(),
            ttl_s = ttl.as_secs(),
            "peers: lease granted"
        );
        return Ok(());
    };
    if c.keeper.is_none() {
        c.keeper = Some(
            bounded(
                t,
                "keeping the lease alive",
                c.client.lease_keep_alive(lease.id),
            )
            .await?,
        );
    }
    let Some((keeper, stream)) = c.keeper.as_mut() else {
        return Ok(());
    };
    let sent = Instant::now();
    let answer = tokio::time::timeout(t, async {
        keeper.keep_alive().await?;
        stream.message().await
    })
    .await;
    match answer {
        Ok(Ok(Some(resp))) if resp.ttl() > 0 => {
            shared.leased(lease.id, sent + Duration::from_secs(resp.ttl() as u64));
            Ok(())
        }
        Ok(Ok(_)) => {
            // etcd no longer has the lease: whatever was on it (the post) is gone.
            if shared.lost_lease() {
                warn!("peers: the lease lapsed (this instance was out of reach or stopped): no longer the leader");
            }
            c.keeper = None;
            Ok(())
        }
        Ok(Err(e)) => {
            c.keeper = None;
            Err(format!("renewing the lease: {}", describe(&e)))
        }
        Err(_) => {
            c.keeper = None;
            Err(format!("renewing the lease: no answer within {t:?}"))
        }
    }
}

/// Takes the post when it is free; learns who holds it otherwise.
async fn campaign(cfg: &PeersConfig, shared: &Shared, c: &mut Conn) -> Result<(), String> {
    let (lease, leading) = {
        let st = shared.state();
        (st.lease, st.leading)
    };
    let (Some(lease), None) = (lease, leading) else {
        return Ok(());
    };
    let key = cfg.leader_key();
    let txn = Txn::new()
        .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
        .and_then([TxnOp::put(
            key.clone(),
            cfg.name.clone(),
            Some(PutOptions::new().with_lease(lease.id)),
        )])
        .or_else([TxnOp::get(key, None)]);
    let resp = bounded(cfg.timeout, "campaigning", c.client.txn(txn)).await?;
    if resp.succeeded() {
        let revision = resp.header().map_or(0, |h| h.revision());
        shared.elected(revision, &cfg.name);
        return Ok(());
    }
    for op in resp.op_responses() {
        if let TxnOpResponse::Get(get) = op {
            if let Some(kv) = get.kvs().first() {
                if kv.lease() == lease.id {
                    // The post is already on this lease (a reconnect): still ours.
                    shared.elected(kv.create_revision(), &cfg.name);
                } else {
                    shared.leader_is(kv.value());
                }
            }
        }
    }
    Ok(())
}

/// Publishes `set` when this instance still holds the post it won at `fence`; the set's
/// revision, or why not (deposed, or etcd did not answer).
pub(super) async fn publish(
    cfg: &PeersConfig,
    client: &mut Client,
    fence: i64,
    set: &WeightSet,
) -> Result<Option<i64>, String> {
    let txn = Txn::new()
        .when([Compare::create_revision(
            cfg.leader_key(),
            CompareOp::Equal,
            fence,
        )])
        .and_then([TxnOp::put(cfg.weights_key(), set.encode(), None)]);
    let resp = bounded(cfg.timeout, "publishing the weight set", client.txn(txn)).await?;
    Ok(resp
        .succeeded()
        .then(|| resp.header().map_or(0, |h| h.revision())))
}

/// Writes this instance's record on its lease.
pub(super) async fn record(
    cfg: &PeersConfig,
    client: &mut Client,
    lease: i64,
    record: &InstanceRecord,
) -> Result<(), String> {
    let key = format!("{}{}", cfg.instances_prefix(), cfg.name);
    let options = PutOptions::new().with_lease(lease);
    bounded(
        cfg.timeout,
        "recording this instance",
        client.put(key, record.encode(), Some(options)),
    )
    .await?;
    Ok(())
}

/// Every instance's record, by name.
pub(super) async fn records(
    cfg: &PeersConfig,
    client: &mut Client,
) -> Result<Vec<(String, Result<InstanceRecord, String>)>, String> {
    let prefix = cfg.instances_prefix();
    let resp = bounded(
        cfg.timeout,
        "reading the instances",
        client.get(prefix.clone(), Some(GetOptions::new().with_prefix())),
    )
    .await?;
    Ok(resp
        .kvs()
        .iter()
        .map(|kv| {
            let name = String::from_utf8_lossy(kv.key());
            let name = name.strip_prefix(&prefix).unwrap_or(&name).to_string();
            (name, InstanceRecord::decode(kv.value()))
        })
        .collect())
}

/// What `hatune status` shows: the post, the set, the instances.
pub struct Snapshot {
    pub leader: Option<String>,
    pub published: Option<Result<Published, String>>,
    pub instances: Vec<(String, Result<InstanceRecord, String>)>,
}

/// Reads what `hatune status` shows.
pub async fn snapshot(cfg: &PeersConfig) -> Result<Snapshot, String> {
    let mut client = connect(cfg).await?;
    let t = cfg.timeout;
    let leader = bounded(
        t,
        "reading the leader's post",
        client.get(cfg.leader_key(), None),
    )
    .await?;
    let leader = leader
        .kvs()
        .first()
        .map(|kv| String::from_utf8_lossy(kv.value()).into_owned());
    let set = bounded(
        t,
        "reading the weight set",
        client.get(cfg.weights_key(), None),
    )
    .await?;
    let published = set.kvs().first().map(|kv| {
        WeightSet::decode(kv.value()).map(|set| Published {
            revision: kv.mod_revision(),
            set,
        })
    });
    let instances = records(cfg, &mut client).await?;
    Ok(Snapshot {
        leader,
        published,
        instances,
    })
}
