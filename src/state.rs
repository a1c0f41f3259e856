//! The state file of `hatune once --state FILE`: what a daemon keeps from tick to tick, kept
//! between runs started by cron or a systemd timer. With it, a run asks each cAdvisor host only
//! for its newest samples (each reading starts at the last run's), knows the hosts' cores,
//! notices a reload of HAProxy since the last run and re-applies hatune's weights, leaves a
//! weight an operator set since alone, and has the request counters capacity mode needs.
//!
//! The file is JSON, written whole to a temporary file beside it and renamed over it, so a run
//! that dies mid-write leaves the last one intact. One that cannot be read (garbled, another
//! version, not ours) is set aside with a warning and the run goes on as without a state file:
//! losing the state costs one lean read, never a tick.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// The format's version: a file of another version is not read.
pub const VERSION: u32 = 1;

/// The largest state file read (10,000 hosts of 4 containers take about 4 MB).
pub const MAX_STATE_BYTES: u64 = 256 << 20;

/// Everything one run leaves for the next. Each part is kept as the JSON text its owner wrote
/// and reads (never as a `serde_json::Value` tree: at 10,000 servers that cost more memory
/// than the tick).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Saved {
    /// [`VERSION`].
    pub hatune_state: u32,
    /// When it was saved, by this machine's clock (ms since the epoch).
    pub saved_at_ms: u64,
    /// Per source kind (`cAdvisor`), what it keeps.
    #[serde(default)]
    pub sources: BTreeMap<String, Box<RawValue>>,
    /// Per balancer (socket address), what its sink keeps.
    #[serde(default)]
    pub sinks: BTreeMap<String, Box<RawValue>>,
    /// The controller's history.
    #[serde(default)]
    pub history: Option<Box<RawValue>>,
}

impl Saved {
    /// A state saved at `at`.
    pub fn new(at: SystemTime) -> Saved {
        Saved {
            hatune_state: VERSION,
            saved_at_ms: millis(at),
            ..Saved::default()
        }
    }

    /// How long before `now` it was saved: zero when the clock went back a little since, and
    /// [`Duration::MAX`] (too old for anything) when it claims to be from more than 5 minutes
    /// ahead (an edited file, a clock set right since).
    pub fn age(&self, now: SystemTime) -> Duration {
        let now = millis(now);
        if self.saved_at_ms > now.saturating_add(5 * 60 * 1000) {
            return Duration::MAX;
        }
        Duration::from_millis(now.saturating_sub(self.saved_at_ms))
    }
}

fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Reads the state at `path`: `Ok(None)` when there is none yet, `Err` (why) when there is a
/// file hatune cannot use.
pub fn load(path: &Path) -> Result<Option<Saved>, String> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot open it: {e}")),
    };
    let mut bytes = vec![];
    use std::io::Read as _;
    file.take(MAX_STATE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read it: {e}"))?;
    if bytes.len() as u64 > MAX_STATE_BYTES {
        return Err(format!("larger than {MAX_STATE_BYTES} bytes"));
    }
    let saved: Saved =
        serde_json::from_slice(&bytes).map_err(|e| format!("not a hatune state file: {e}"))?;
    if saved.hatune_state != VERSION {
        return Err(format!(
            "state format {} (this hatune reads {VERSION})",
            saved.hatune_state
        ));
    }
    Ok(Some(saved))
}

/// Writes `saved` to `path` atomically: a temporary file in the same directory (mode 0600),
/// synced, then renamed over `path`.
pub fn save(path: &Path, saved: &Saved) -> Result<(), String> {
    let bytes = serde_json::to_vec(saved).map_err(|e| e.to_string())?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| "the path names no file".to_string())?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let written = (|| {
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        // The rename itself, on disk: best effort (some filesystems refuse to sync a directory).
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok::<(), std::io::Error>(())
    })();
    written.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        e.to_string()
    })
}

/// An exclusive lock on a state file for a whole run: `flock` on `FILE.lock` beside it, so two
/// runs never restore the same state and both save (the second would take the first's
/// weights for an operator's). The kernel releases it when the process ends, however it ends.
#[derive(Debug)]
pub struct Lock {
    _file: std::fs::File,
}

/// Takes the lock of the state file at `path`: `Ok(None)` when another run holds it.
pub fn lock(path: &Path) -> Result<Option<Lock>, String> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(std::path::PathBuf::from(name))
        .map_err(|e| format!("cannot open its lock file: {e}"))?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(Some(Lock { _file: file })),
        Err(rustix::io::Errno::WOULDBLOCK) => Ok(None),
        Err(e) => Err(format!("cannot lock it: {e}")),
    }
}

/// Moves an unusable state file aside (`FILE.bad`), so the next run writes a fresh one and
/// the old one is there to look at.
pub fn set_aside(path: &Path) -> Option<std::path::PathBuf> {
    let mut bad = path.as_os_str().to_owned();
    bad.push(".bad");
    let bad = std::path::PathBuf::from(bad);
    std::fs::rename(path, &bad).ok().map(|_| bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_state_reads_back_and_a_missing_one_is_none() {
        let dir = std::env::temp_dir().join(format!("hatune-state-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("once.json");
        let _ = std::fs::remove_file(&path);
        assert!(matches!(load(&path), Ok(None)));
        let mut saved = Saved::new(UNIX_EPOCH + Duration::from_millis(1_700_000_000_123));
        let part = RawValue::from_string(r#"{"a":1}"#.into()).unwrap();
        saved.sinks.insert("/run/haproxy/admin.sock".into(), part);
        save(&path, &saved).unwrap();
        let back = load(&path).unwrap().unwrap();
        assert_eq!(back.saved_at_ms, saved.saved_at_ms);
        assert_eq!(back.sinks["/run/haproxy/admin.sock"].get(), r#"{"a":1}"#);
        assert!(back.history.is_none());
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            saved.age(UNIX_EPOCH + Duration::from_millis(1_700_000_002_123)),
            Duration::from_secs(2)
        );
        let a_minute_early = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123 - 60_000);
        assert_eq!(saved.age(a_minute_early), Duration::ZERO);
        assert_eq!(saved.age(UNIX_EPOCH), Duration::MAX, "saved in the future");
        // No temporary file is left behind.
        let left: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert_eq!(left.len(), 1);

        for (bytes, why) in [
            (&b"{not json"[..], "not a hatune state file"),
            (
                br#"{"hatune_state": 99, "saved_at_ms": 1}"#,
                "state format 99",
            ),
            (br#"{"weights": {}}"#, "not a hatune state file"),
        ] {
            std::fs::write(&path, bytes).unwrap();
            let e = load(&path).unwrap_err();
            assert!(e.contains(why), "{e}");
        }
        let held = lock(&path).unwrap().expect("nobody holds it");
        assert!(
            lock(&path).unwrap().is_none(),
            "a second lock waits for the first"
        );
        drop(held);
        assert!(lock(&path).unwrap().is_some(), "released with its holder");
        std::fs::remove_file(dir.join("once.json.lock")).unwrap();
        let bad = set_aside(&path).unwrap();
        assert!(bad.ends_with("once.json.bad") && !path.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
