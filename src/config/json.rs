//! Reading JSON values at a key path, each error naming that path.

use serde_json::{Map, Value};

use super::error::{err, ConfigError};

/// The first key of `obj` that is not `known`, as `{prefix}{key}`.
pub(super) fn reject_unknown(
    obj: &Map<String, Value>,
    known: &[&str],
    prefix: &str,
) -> Result<(), ConfigError> {
    match obj.keys().find(|k| !known.contains(&k.as_str())) {
        // An empty key is written `""`, or the error would read as one about the whole file.
        Some(k) if k.is_empty() => Err(err(
            format!("{prefix}\"\""),
            format!("unknown key (known: {})", known.join(", ")),
        )),
        Some(k) => Err(err(
            format!("{prefix}{k}"),
            format!("unknown key (known: {})", known.join(", ")),
        )),
        None => Ok(()),
    }
}

/// A string that is not blank.
pub(super) fn string(v: &Value, key: &str) -> Result<String, ConfigError> {
    match v.as_str() {
        Some(s) if !s.trim().is_empty() => Ok(s.to_string()),
        Some(_) => Err(err(key, "is empty")),
        None => Err(err(key, format!("must be a string, not {v}"))),
    }
}

/// A list of strings, each with its own key path; a single string is taken as a list of one.
pub(super) fn string_list(v: &Value, key: &str) -> Result<Vec<(String, String)>, ConfigError> {
    match v {
        Value::String(_) => Ok(vec![(string(v, key)?, key.to_string())]),
        Value::Array(items) if items.is_empty() => Err(err(key, "is empty")),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let k = format!("{key}[{i}]");
                Ok((string(item, &k)?, k))
            })
            .collect(),
        _ => Err(err(key, format!("must be a list of strings, not {v}"))),
    }
}
