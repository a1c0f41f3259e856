//! The 2015 tool's keys and how they meet the new ones: `haproxy_socket` for `haproxy`, `urls`
//! for `cadvisor`, `backend` + `pattern` for `backends`. Either name may be used, never both.

use serde_json::{Map, Value};

use super::error::{err, ConfigError};
use super::json::{string, string_list};

/// The HAProxy sockets, each with its key path: `haproxy` (one or a list) or the legacy
/// `haproxy_socket` (one).
pub(super) fn haproxy(top: &Map<String, Value>) -> Result<Vec<(String, String)>, ConfigError> {
    match one_of(top, "haproxy", "haproxy_socket")? {
        Some(("haproxy", v)) => string_list(v, "haproxy"),
        Some((key, v)) => Ok(vec![(string(v, key)?, key.to_string())]),
        None => Err(err("haproxy", "missing: list the HAProxy stats sockets")),
    }
}

/// The cAdvisor base URLs, each with its key path: `cadvisor` or the legacy `urls` (one or a
/// list either way).
pub(super) fn cadvisor(top: &Map<String, Value>) -> Result<Vec<(String, String)>, ConfigError> {
    match one_of(top, "cadvisor", "urls")? {
        Some((key, v)) => string_list(v, key),
        None => Err(err("cadvisor", "missing: list the cAdvisor base URLs")),
    }
}

/// Where the backends are given.
#[derive(Debug, PartialEq)]
pub(super) enum Backends<'a> {
    /// The value of `backends`, to be read as a list of `{name, pattern, controller}`.
    List(&'a Value),
    /// The legacy `backend` and `pattern`: one backend with the top-level controller settings.
    Legacy { name: String, pattern: String },
}

/// `backends`, or the legacy `backend` with its `pattern`; a top-level `pattern` goes only with
/// `backend`.
pub(super) fn backends(top: &Map<String, Value>) -> Result<Backends<'_>, ConfigError> {
    match (top.get("backends"), top.get("backend")) {
        (Some(_), Some(_)) => Err(err(
            "backend",
            "use either `backends` or the legacy `backend`/`pattern`, not both",
        )),
        (Some(_), None) if top.contains_key("pattern") => Err(err(
            "pattern",
            "with `backends`, give each backend its own `pattern`",
        )),
        (Some(v), None) => Ok(Backends::List(v)),
        (None, Some(name)) => {
            let name = string(name, "backend")?;
            let pattern = match top.get("pattern") {
                Some(p) => string(p, "pattern")?,
                None => return Err(err("pattern", "missing: the legacy `backend` needs it")),
            };
            Ok(Backends::Legacy { name, pattern })
        }
        (None, None) => Err(err(
            "backends",
            "missing: list the backends to tune as {name, pattern}",
        )),
    }
}

/// The new key or its legacy name, not both; the error names the legacy key.
fn one_of<'a>(
    top: &'a Map<String, Value>,
    key: &'static str,
    legacy: &'static str,
) -> Result<Option<(&'static str, &'a Value)>, ConfigError> {
    match (top.get(key), top.get(legacy)) {
        (Some(_), Some(_)) => Err(err(
            legacy,
            format!("use either `{key}` or the legacy `{legacy}`, not both"),
        )),
        (Some(v), None) => Ok(Some((key, v))),
        (None, Some(v)) => Ok(Some((legacy, v))),
        (None, None) => Ok(None),
    }
}
