//! `peers`: several balancers that hold one set of weights, agreed through etcd.
//!
//! ```json
//! "peers": {"etcd": ["http://10.0.0.1:2379"], "prefix": "/hatune/prod", "lease": "5s"}
//! ```

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Map, Value};

use super::error::{err, ConfigError};
use super::json::{reject_unknown, string, string_list};
use super::values;

const PEERS_KEYS: &[&str] = &[
    "etcd",
    "prefix",
    "lease",
    "name",
    "timeout",
    "standalone_after",
    "ca_file",
    "client_cert_file",
];
/// The shortest and longest lease: under a second, a GC pause or a slow disk on etcd deposes a
/// healthy leader; over a minute, a dead leader's backends go untuned that long.
const LEASE_LEAST: Duration = Duration::from_secs(1);
const LEASE_MOST: Duration = Duration::from_secs(60);
/// The longest `standalone_after`.
const STANDALONE_MOST: Duration = Duration::from_secs(7 * 24 * 3600);

/// Where the peers meet and how long a leader holds without renewing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peers {
    /// etcd client URLs (`http://host:2379`), without a trailing `/`.
    pub etcd: Vec<String>,
    /// Every key hatune writes starts with this (`/hatune`), without a trailing `/`.
    pub prefix: String,
    /// The leader's lease: a leader that stops renewing loses its post after this.
    pub lease: Duration,
    /// This instance among its peers: the host's name unless given.
    pub name: String,
    /// Bound on each etcd call: a frozen etcd never holds a tick longer.
    pub timeout: Duration,
    /// After etcd has been out of reach this long, the instance decides alone, as without
    /// `peers`, until etcd answers again. `None` (the default): it keeps the last set.
    pub standalone_after: Option<Duration>,
    /// With `https://` endpoints: the CA that signed etcd's certificates (the only root
    /// trusted), and a PEM of a client certificate and its key when etcd asks for one.
    pub ca_file: Option<PathBuf>,
    pub client_cert_file: Option<PathBuf>,
}

impl Peers {
    /// The key of the leader's post.
    pub fn leader_key(&self) -> String {
        format!("{}/leader", self.prefix)
    }

    /// The key of the published weight set.
    pub fn weights_key(&self) -> String {
        format!("{}/weights", self.prefix)
    }

    /// Where each instance records what it applied (and its request counters): this prefix,
    /// then its name.
    pub fn instances_prefix(&self) -> String {
        format!("{}/instances/", self.prefix)
    }
}

/// The `peers` key, when present.
pub(super) fn peers(top: &Map<String, Value>) -> Result<Option<Peers>, ConfigError> {
    let Some(v) = top.get("peers") else {
        return Ok(None);
    };
    let o = v
        .as_object()
        .ok_or_else(|| err("peers", format!("must be an object, not {v}")))?;
    reject_unknown(o, PEERS_KEYS, "peers.")?;
    let list = o.get("etcd").ok_or_else(|| {
        err(
            "peers.etcd",
            "missing: list etcd's client URLs, e.g. \"http://10.0.0.1:2379\"",
        )
    })?;
    let mut etcd = vec![];
    for (text, key) in string_list(list, "peers.etcd")? {
        let url = values::base_url(&text).map_err(|m| err(&key, m))?;
        if reqwest::Url::parse(&url).is_ok_and(|u| u.path() != "/") {
            return Err(err(
                &key,
                format!("`{text}` has a path: give host and port"),
            ));
        }
        if etcd.contains(&url) {
            return Err(err(&key, format!("`{url}` is listed twice")));
        }
        etcd.push(url);
    }
    let https = etcd.iter().filter(|u| u.starts_with("https://")).count();
    if https != 0 && https != etcd.len() {
        return Err(err(
            "peers.etcd",
            "mixes http:// and https:// endpoints: one cluster is served one way",
        ));
    }
    let https = https != 0;
    if https && !o.contains_key("ca_file") {
        return Err(err(
            "peers.ca_file",
            "missing: etcd over https needs the CA that signed its certificates",
        ));
    }
    for key in ["ca_file", "client_cert_file"] {
        if !https && o.contains_key(key) {
            return Err(err(
                format!("peers.{key}"),
                "is for https:// endpoints; `peers.etcd` are http://",
            ));
        }
    }
    let tls = super::sources::tls(o, "peers", https)?;
    let prefix = match o.get("prefix") {
        None => "/hatune".to_string(),
        Some(v) => {
            let p = string(v, "peers.prefix")?;
            if !p.starts_with('/') {
                return Err(err(
                    "peers.prefix",
                    format!("`{p}` must start with `/`, e.g. \"/hatune/prod\""),
                ));
            }
            if p.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(err(
                    "peers.prefix",
                    format!("`{p}` has a space or a control character"),
                ));
            }
            let trimmed = p.trim_end_matches('/');
            if trimmed.is_empty() {
                return Err(err(
                    "peers.prefix",
                    "`/` alone would spread hatune's keys over the whole store: give e.g. \"/hatune\"",
                ));
            }
            trimmed.to_string()
        }
    };
    let lease = values::duration(o, "lease", Duration::from_secs(5), LEASE_MOST)
        .map_err(|e| err(format!("peers.{}", e.key), e.message))?;
    if lease.subsec_nanos() != 0 {
        return Err(err(
            "peers.lease",
            format!(
                "`{}`: etcd leases are whole seconds",
                humantime::format_duration(lease)
            ),
        ));
    }
    if lease < LEASE_LEAST {
        return Err(err(
            "peers.lease",
            format!(
                "`{}` is shorter than 1s: a slow etcd would depose a healthy leader",
                humantime::format_duration(lease)
            ),
        ));
    }
    let name = match o.get("name") {
        Some(v) => {
            let n = string(v, "peers.name")?;
            if n.contains('/') || n.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(err(
                    "peers.name",
                    format!("`{n}` may not hold `/`, spaces or control characters"),
                ));
            }
            n
        }
        None => hostname().ok_or_else(|| {
            err(
                "peers.name",
                "missing, and this host's name cannot be read: name this instance",
            )
        })?,
    };
    // A third of the lease by default: a renewal that times out still leaves time for another.
    let timeout = values::duration(o, "timeout", (lease / 3).min(Duration::from_secs(2)), lease)
        .map_err(|e| err(format!("peers.{}", e.key), e.message))?;
    if timeout >= lease {
        return Err(err(
            "peers.timeout",
            "must be shorter than `peers.lease`: a leader must renew within its lease",
        ));
    }
    let standalone_after = o
        .get("standalone_after")
        .filter(|v| !v.is_null())
        .map(|v| values::duration_value(v, "peers.standalone_after", STANDALONE_MOST))
        .transpose()?;
    if let Some(after) = standalone_after.filter(|a| *a < lease * 2) {
        return Err(err(
            "peers.standalone_after",
            format!(
                "`{}` is under two leases: an etcd election takes that long, and every \
                 instance would decide alone through it",
                humantime::format_duration(after)
            ),
        ));
    }
    Ok(Some(Peers {
        etcd,
        prefix,
        lease,
        name,
        timeout,
        standalone_after,
        ca_file: tls.ca_file,
        client_cert_file: tls.identity_file,
    }))
}

/// This host's name, as the kernel has it.
fn hostname() -> Option<String> {
    let text = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let name = text.trim();
    (!name.is_empty() && !name.contains('/')).then(|| name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: Value) -> Result<Option<Peers>, ConfigError> {
        peers(v.as_object().unwrap())
    }

    #[test]
    fn defaults_and_values() {
        let p =
            parse(serde_json::json!({"peers": {"etcd": "http://10.0.0.1:2379/", "name": "lb-1"}}))
                .unwrap()
                .unwrap();
        assert_eq!(p.etcd, ["http://10.0.0.1:2379"]);
        assert_eq!(p.prefix, "/hatune");
        assert_eq!(p.lease, Duration::from_secs(5));
        assert_eq!(p.timeout, Duration::from_secs(5) / 3);
        assert_eq!(p.standalone_after, None);
        assert_eq!(p.leader_key(), "/hatune/leader");
        assert_eq!(p.weights_key(), "/hatune/weights");
        assert_eq!(p.instances_prefix(), "/hatune/instances/");
        let p = parse(serde_json::json!({"peers": {
            "etcd": ["http://a:2379", "http://b:2379"], "prefix": "/hatune/prod/", "lease": "10s",
            "name": "lb-2", "timeout": "500ms", "standalone_after": "5m"}}))
        .unwrap()
        .unwrap();
        assert_eq!(p.prefix, "/hatune/prod");
        assert_eq!(p.timeout, Duration::from_millis(500));
        assert_eq!(p.standalone_after, Some(Duration::from_secs(300)));
        assert!(parse(serde_json::json!({})).unwrap().is_none());
        let p = parse(serde_json::json!({"peers": {"etcd": ["http://a:2379"]}}))
            .unwrap()
            .unwrap();
        assert!(!p.name.is_empty(), "the host's name");
    }

    #[test]
    fn each_mistake_names_its_key() {
        let cases = [
            (serde_json::json!("http://a:2379"), "peers"),
            (serde_json::json!({}), "peers.etcd"),
            (serde_json::json!({"etcd": []}), "peers.etcd"),
            (serde_json::json!({"etcd": ["a:2379"]}), "peers.etcd[0]"),
            (
                serde_json::json!({"etcd": ["https://a:2379"]}),
                "peers.ca_file",
            ),
            (
                serde_json::json!({"etcd": ["https://a:2379", "http://b:2379"]}),
                "peers.etcd",
            ),
            (
                serde_json::json!({"etcd": ["http://a:2379"], "ca_file": "/etc/hostname"}),
                "peers.ca_file",
            ),
            (
                serde_json::json!({"etcd": ["https://a:2379"], "ca_file": "/etc/hostname"}),
                "peers.ca_file",
            ),
            (
                serde_json::json!({"etcd": ["https://a:2379"], "ca_file": "/nonexistent.pem"}),
                "peers.ca_file",
            ),
            (
                serde_json::json!({"etcd": ["https://a:2379"], "insecure_skip_verify": true}),
                "peers.insecure_skip_verify",
            ),
            (
                serde_json::json!({"etcd": ["http://a:2379"], "client_cert_file": "/etc/hostname"}),
                "peers.client_cert_file",
            ),
            (
                serde_json::json!({"etcd": ["http://a:2379/v3"]}),
                "peers.etcd[0]",
            ),
            (
                serde_json::json!({"etcd": ["http://a:2379", "http://a:2379/"]}),
                "peers.etcd[1]",
            ),
            (
                serde_json::json!({"etcd": ["http://a:2379"], "prefix": "hatune"}),
                "peers.prefix",
            ),
            (
                serde_json::json!({"etcd": ["http://a:2379"], "prefix": "/"}),
                "peers.prefix",
            ),
            (
                serde_json::json!({"etcd": ["http://a:2379"], "prefix": "/a b"}),
                "peers.prefix",
            ),
            (
                serde_json::json!({"etcd": ["http://a:2379"], "lease": "500ms"}),
                "peers.lease",
            ),
            (
                serde_json::json!({"etcd": ["http://a:2379"], "lease": "2m"}),
                "peers.lease",
            ),
            (
                serde_json::json!({"etcd": ["http://a:2379"], "lease": 5}),
                "peers.lease",
            ),
            (
                serde_json::json!({"etcd": ["http://a:2379"], "name": "a/b"}),
                "peers.name",
            ),
            (
                serde_json::json!({"etcd": ["http://a:2379"], "timeout": "5s"}),
                "peers.timeout",
            ),
            (
                serde_json::json!({"etcd": ["http://a:2379"], "standalone_after": "3s"}),
                "peers.standalone_after",
            ),
            (
                serde_json::json!({"etcd": ["http://a:2379"], "leader": true}),
                "peers.leader",
            ),
        ];
        for (v, key) in cases {
            let e = parse(serde_json::json!({ "peers": v.clone() })).unwrap_err();
            assert_eq!(e.key, key, "{v}: {e}");
        }
    }
}
