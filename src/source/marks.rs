//! What a source that reads from marks keeps between runs of `hatune once --state`: per host,
//! its cores and each container's [`Mark`], and the rules for believing them again.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use serde_json::value::RawValue;

use super::http::now_nanos;
use super::rate::{Mark, FUTURE_SLACK, MAX_CORES};
use super::Nanos;

/// Each container's [`Mark`] at a host's last poll, by container key.
pub type Marks = HashMap<String, Mark>;

/// Marks older than this many windows are not used by a later run: its readings would
/// average over a gap (cron stopped for a while), so the host is read afresh.
pub const MARKS_EXPIRE_AFTER_WINDOWS: u32 = 3;

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(default)]
struct Saved {
    hosts: BTreeMap<String, SavedHost>,
}

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(default)]
struct SavedHost {
    #[serde(skip_serializing_if = "Option::is_none")]
    num_cores: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    marks: Option<BTreeMap<String, Mark>>,
}

/// The part of the state file for `hosts`: their cores (by host without a trailing `/`) and
/// marks.
pub fn save(
    hosts: &[String],
    cores: &HashMap<String, u32>,
    marks: &HashMap<String, Arc<Marks>>,
) -> Option<Box<RawValue>> {
    let mut saved = Saved::default();
    for host in hosts {
        let entry = SavedHost {
            num_cores: cores.get(host.trim_end_matches('/')).copied(),
            marks: marks
                .get(host)
                .map(|m| m.iter().map(|(k, v)| (k.clone(), *v)).collect()),
        };
        if entry.num_cores.is_some() || entry.marks.is_some() {
            saved.hosts.insert(host.clone(), entry);
        }
    }
    serde_json::value::to_raw_value(&saved).ok()
}

/// Marks and cores saved `age` ago, for the hosts still in `hosts`. Not used: marks older than
/// [`MARKS_EXPIRE_AFTER_WINDOWS`] × `span`, or dated far from this machine's clock (an edited
/// file, a host whose clock is off: a reading over a span nobody measured), and core counts
/// beyond [`MAX_CORES`].
#[allow(clippy::type_complexity)]
pub fn restore(
    saved: &RawValue,
    age: Duration,
    span: Duration,
    hosts: &[String],
) -> Result<(HashMap<String, Arc<Marks>>, Vec<(String, u32)>), String> {
    let saved: Saved = serde_json::from_str(saved.get()).map_err(|e| e.to_string())?;
    let expire = span.saturating_mul(MARKS_EXPIRE_AFTER_WINDOWS);
    let fresh = age <= expire;
    let now = now_nanos();
    let slack = Nanos::from(FUTURE_SLACK.as_secs()) * 1_000_000_000;
    let oldest = now
        .saturating_sub(Nanos::try_from(expire.as_nanos()).unwrap_or(Nanos::MAX / 4))
        .saturating_sub(slack);
    let plausible = |m: &Mark| (oldest..=now.saturating_add(slack)).contains(&m.t);
    let hosts: HashSet<&str> = hosts.iter().map(String::as_str).collect();
    let mut marks = HashMap::new();
    let mut cores = vec![];
    for (host, h) in saved.hosts {
        if !hosts.contains(host.as_str()) {
            continue;
        }
        if let Some(n) = h.num_cores.filter(|&n| n > 0 && n <= MAX_CORES) {
            cores.push((host.trim_end_matches('/').to_string(), n));
        }
        let usable =
            |m: &BTreeMap<String, Mark>| fresh && !m.is_empty() && m.values().all(plausible);
        if let Some(m) = h.marks.filter(usable) {
            marks.insert(host, Arc::new(m.into_iter().collect()));
        }
    }
    Ok((marks, cores))
}
