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

/// The default `max_reply`: a real `/api/v1.3/docker/` reply is about 85 KB per container
/// (60 samples), so 32 MiB is a host of some 390 containers.
pub const DEFAULT_MAX_REPLY: u64 = 32 << 20;
/// The smallest `max_reply`: below this even a host of one container would be refused.
pub(super) const MAX_REPLY_LEAST: u64 = 256 << 10;
/// The largest `max_reply`: a reply this large would take longer than any tick to parse.
pub(super) const MAX_REPLY_MOST: u64 = 4 << 30;

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

/// A size at the top-level `key`, in bytes: a byte count (`1048576`) or a string with a unit
/// (`"32MiB"`, `"512 KiB"`, `"1GB"`: KiB, MiB, GiB are powers of 1024, KB, MB, GB of 1000),
/// within `least..=most`; `default` when the key is absent.
pub(super) fn size(
    top: &Map<String, Value>,
    key: &str,
    default: u64,
    least: u64,
    most: u64,
) -> Result<u64, ConfigError> {
    let Some(v) = top.get(key) else {
        return Ok(default);
    };
    let (bytes, text) = match v {
        Value::Number(n) => (n.as_u64(), n.to_string()),
        Value::String(s) => (parse_size(s), s.clone()),
        _ => {
            return Err(err(
                key,
                format!("must be a size such as \"32MiB\" or a byte count, not {v}"),
            ))
        }
    };
    let bytes = bytes.ok_or_else(|| {
        err(
            key,
            format!("`{text}` is not a size; write e.g. \"32MiB\" or a byte count"),
        )
    })?;
    if bytes < least {
        return Err(err(
            key,
            format!("`{text}` is smaller than {}", format_size(least)),
        ));
    }
    if bytes > most {
        return Err(err(
            key,
            format!("`{text}` is larger than {}", format_size(most)),
        ));
    }
    Ok(bytes)
}

/// `"32MiB"`, `"32 mib"`, `"1000000"`, `"1MB"` in bytes; `None` when it is not a size or does
/// not fit in 64 bits.
fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let unit: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1000,
        "kib" => 1 << 10,
        "mb" => 1000 * 1000,
        "mib" => 1 << 20,
        "gb" => 1000 * 1000 * 1000,
        "gib" => 1 << 30,
        _ => return None,
    };
    number.parse::<u64>().ok()?.checked_mul(unit)
}

/// A size as people write it: `32MiB`, `512KiB`, `1GiB`, else `1000000 bytes`.
pub fn format_size(bytes: u64) -> String {
    match bytes {
        0 => "0 bytes".to_string(),
        b if b % (1 << 30) == 0 => format!("{}GiB", b >> 30),
        b if b % (1 << 20) == 0 => format!("{}MiB", b >> 20),
        b if b % (1 << 10) == 0 => format!("{}KiB", b >> 10),
        b => format!("{b} bytes"),
    }
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

    /// Table: byte counts and units, each bound, and what is not a size.
    #[test]
    fn sizes() {
        let cases: &[(Value, Result<u64, &str>)] = &[
            (json!("32MiB"), Ok(32 << 20)),
            (json!(" 32 mib "), Ok(32 << 20)),
            (json!("512KiB"), Ok(512 << 10)),
            (json!("1GiB"), Ok(1 << 30)),
            (json!("4GiB"), Ok(4 << 30)),
            (json!("2MB"), Ok(2_000_000)),
            (json!("300kB"), Ok(300_000)),
            (json!("1048576"), Ok(1 << 20)),
            (json!("1048576B"), Ok(1 << 20)),
            (json!(1048576), Ok(1 << 20)),
            (json!("256KiB"), Ok(256 << 10)),
            (json!("255KiB"), Err("`255KiB` is smaller than 256KiB")),
            (json!(1000), Err("`1000` is smaller than 256KiB")),
            (json!("4097MiB"), Err("`4097MiB` is larger than 4GiB")),
            (
                json!("99999999999999999999GiB"),
                Err(
                    "`99999999999999999999GiB` is not a size; write e.g. \"32MiB\" or a byte count",
                ),
            ),
            (
                json!("18446744073709551615GiB"),
                Err(
                    "`18446744073709551615GiB` is not a size; write e.g. \"32MiB\" or a byte count",
                ),
            ),
            (
                json!("1.5MiB"),
                Err("`1.5MiB` is not a size; write e.g. \"32MiB\" or a byte count"),
            ),
            (
                json!("MiB"),
                Err("`MiB` is not a size; write e.g. \"32MiB\" or a byte count"),
            ),
            (
                json!("32 megs"),
                Err("`32 megs` is not a size; write e.g. \"32MiB\" or a byte count"),
            ),
            (
                json!(-1),
                Err("`-1` is not a size; write e.g. \"32MiB\" or a byte count"),
            ),
            (
                json!(1.5e6),
                Err("`1500000.0` is not a size; write e.g. \"32MiB\" or a byte count"),
            ),
            (
                json!(true),
                Err("must be a size such as \"32MiB\" or a byte count, not true"),
            ),
        ];
        for (v, want) in cases {
            let top = json!({ "max_reply": v });
            let got = size(
                top.as_object().unwrap(),
                "max_reply",
                DEFAULT_MAX_REPLY,
                MAX_REPLY_LEAST,
                MAX_REPLY_MOST,
            );
            match (got, want) {
                (Ok(got), Ok(want)) => assert_eq!(got, *want, "{v}"),
                (Err(e), Err(want)) => {
                    assert_eq!(e.key, "max_reply", "{v}");
                    assert_eq!(e.message, *want, "{v}");
                }
                (got, want) => panic!("{v}: got {got:?}, want {want:?}"),
            }
        }
        let absent = size(&Map::new(), "max_reply", 7, 1, 10);
        assert_eq!(absent, Ok(7));
    }

    #[test]
    fn sizes_are_written_as_people_write_them() {
        for (bytes, text) in [
            (32 << 20, "32MiB"),
            (256 << 10, "256KiB"),
            (4 << 30, "4GiB"),
            (1536 << 10, "1536KiB"),
            (1_000_000, "1000000 bytes"),
            (0, "0 bytes"),
        ] {
            assert_eq!(format_size(bytes), text);
        }
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
