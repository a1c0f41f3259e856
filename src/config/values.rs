//! Values with rules of their own: durations and their bounds, the cron schedule, cAdvisor base
//! URLs, the metrics listen address.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{Map, Value};

use super::error::{err, ConfigError};
use super::json::string;

// Both bounds are far beyond any sensible setting, and where time arithmetic would overflow.
/// The longest `timeout`.
pub(super) const TIMEOUT_MAX: Duration = Duration::from_secs(600);
/// The longest of the other durations: `window`, `interval`, a controller's `hold`.
pub(super) const DURATION_MAX: Duration = Duration::from_secs(7 * 24 * 3600);

/// The duration at the top-level `key`, or `default` when the key is absent.
pub(super) fn duration(
    top: &Map<String, Value>,
    key: &str,
    default: Duration,
    most: Duration,
) -> Result<Duration, ConfigError> {
    match top.get(key) {
        Some(v) => duration_value(v, key, most),
        None => Ok(default),
    }
}

/// A humantime duration at `key` (its full path), longer than zero and at most `most`.
pub(super) fn duration_value(
    v: &Value,
    key: &str,
    most: Duration,
) -> Result<Duration, ConfigError> {
    let text = v.as_str().ok_or_else(|| {
        err(
            key,
            format!("must be a duration string such as \"5s\" or \"1m 30s\", not {v}"),
        )
    })?;
    let d = humantime::parse_duration(text).map_err(|e| {
        err(
            key,
            format!("`{text}` is not a duration ({e}); write e.g. \"5s\""),
        )
    })?;
    if d.is_zero() {
        return Err(err(key, "must be longer than zero"));
    }
    if d > most {
        return Err(err(
            key,
            format!(
                "`{text}` is longer than {}",
                humantime::format_duration(most)
            ),
        ));
    }
    Ok(d)
}

/// A cron expression tokio-cron-scheduler accepts, with seconds: 5 fields get second 0.
pub(super) fn cron(text: &str) -> Result<String, ConfigError> {
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let expr = if text.split(' ').count() == 5 {
        format!("0 {text}")
    } else {
        text
    };
    // croner skips an empty list item (`1,,2`, a lone `,`), so a field of nothing else matches
    // no time: Job::new then searches up to the year 5000 (1.6 s) and accepts a schedule that
    // never fires.
    if let Some(field) = expr.split(' ').find(|f| f.split(',').any(str::is_empty)) {
        return Err(err(
            "schedule",
            format!("`{expr}` has an empty list item in `{field}`"),
        ));
    }
    tokio_cron_scheduler::Job::new(expr.as_str(), |_, _| {}).map_err(|_| {
        err(
            "schedule",
            format!("`{expr}` is not a cron expression (sec min hour day month weekday, UTC)"),
        )
    })?;
    Ok(expr)
}

/// An http(s) URL with a host, without trailing `/`; the error is for the caller to place.
pub(super) fn base_url(text: &str) -> Result<String, String> {
    let url = text.trim().trim_end_matches('/');
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| format!("`{text}` must start with http:// or https://"))?;
    if rest.is_empty() || rest.starts_with('/') || rest.contains(char::is_whitespace) {
        return Err(format!("`{text}` has no host"));
    }
    reqwest::Url::parse(url).map_err(|e| format!("`{text}` is not a URL: {e}"))?;
    Ok(url.to_string())
}

/// An IP address and port to listen on, at `key`.
pub(super) fn listen_address(v: &Value, key: &str) -> Result<SocketAddr, ConfigError> {
    let text = string(v, key)?;
    text.parse().map_err(|_| {
        err(
            key,
            format!("`{text}` is not an address such as \"127.0.0.1:9150\""),
        )
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// Table: each duration is bounded by its own limit, with the text as written.
    #[test]
    fn duration_bounds() {
        let cases: &[(&str, Duration, Result<Duration, &str>)] = &[
            ("10m", TIMEOUT_MAX, Ok(Duration::from_secs(600))),
            ("10m 1ms", TIMEOUT_MAX, Err("`10m 1ms` is longer than 10m")),
            (
                "7days",
                DURATION_MAX,
                Ok(Duration::from_secs(7 * 24 * 3600)),
            ),
            (
                "7days 1s",
                DURATION_MAX,
                Err("`7days 1s` is longer than 7days"),
            ),
            ("0s", DURATION_MAX, Err("must be longer than zero")),
            ("1ns", TIMEOUT_MAX, Ok(Duration::from_nanos(1))),
        ];
        for &(text, most, want) in cases {
            let got = duration_value(&json!(text), "k", most).map_err(|e| e.message);
            assert_eq!(got, want.map_err(String::from), "{text}");
        }
        let e = duration_value(&json!(5), "backends[0].controller.hold", DURATION_MAX).unwrap_err();
        assert_eq!(e.key, "backends[0].controller.hold");
    }

    #[test]
    fn cron_gets_seconds_and_single_spaces() {
        assert_eq!(cron("  */5  * * * * ").unwrap(), "0 */5 * * * *");
        assert_eq!(cron("*/10 * * * * *").unwrap(), "*/10 * * * * *");
        let e = cron("* * *").unwrap_err();
        assert_eq!(e.key, "schedule");
    }

    /// Found by fuzzing (fuzz/run config): a `,` field took 1.6 s and never fired.
    #[test]
    fn cron_refuses_empty_list_items() {
        for text in [
            "*/5 * , * *",
            "0 0 1,,2 * * *",
            "0 0 1, * * *",
            "* * * * * ,",
        ] {
            let e = cron(text).unwrap_err();
            assert_eq!(e.key, "schedule");
            assert!(
                e.message.contains("empty list item"),
                "{text}: {}",
                e.message
            );
        }
        assert_eq!(cron("0 0 1,2 * * *").unwrap(), "0 0 1,2 * * *");
    }

    #[test]
    fn base_urls() {
        assert_eq!(base_url(" https://h:1/// ").unwrap(), "https://h:1");
        for (text, words) in [
            ("ftp://h", "must start with http://"),
            ("http:///x", "has no host"),
            ("http://a b", "has no host"),
            ("http://h:99999", "is not a URL"),
        ] {
            let e = base_url(text).unwrap_err();
            assert!(e.contains(words), "{text}: {e}");
        }
    }
}
