//! The Prometheus text exposition format (version 0.0.4), as cAdvisor's `/metrics` and the
//! kubelet's `/metrics/cadvisor` and `/metrics/resource` serve it: pure, one line at a time,
//! and lenient per line (a line it cannot read is reported with its number and skipped; the
//! others are read), so one odd family never costs a whole scrape.
//!
//! A sample line is `name[{label="value",...}] value [timestamp]`: label values unescaped
//! (`\\`, `\"`, `\n`), a trailing comma allowed, the value a Go float (`NaN`, `+Inf`, `-Inf`,
//! exponents), the timestamp integer milliseconds. `# HELP` and `# TYPE` lines, other comments
//! and blank lines carry no sample. Names and labels are borrowed from the text unless a value
//! needed unescaping.

use std::borrow::Cow;

/// One sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample<'a> {
    pub name: &'a str,
    /// In the order of the line; a value unescaped.
    pub labels: Vec<(&'a str, Cow<'a, str>)>,
    pub value: f64,
    /// Milliseconds since the epoch, when the line has one.
    pub timestamp_ms: Option<i64>,
}

impl Sample<'_> {
    /// The value of label `name`, if the sample has it.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_ref())
    }
}

/// Why a line gave no sample, and which line (from 1).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct LineError {
    pub line: usize,
    pub reason: &'static str,
}

/// Every line of `text` that is a sample or an error, in order; comments and blank lines are
/// skipped. Never panics, whatever the bytes.
pub fn samples(text: &str) -> impl Iterator<Item = Result<Sample<'_>, LineError>> {
    text.lines().enumerate().filter_map(|(i, line)| {
        let line = line.trim_matches(|c| c == ' ' || c == '\t' || c == '\r');
        if line.is_empty() || line.starts_with('#') {
            return None;
        }
        Some(parse_line(line).map_err(|reason| LineError {
            line: i + 1,
            reason,
        }))
    })
}

/// [`samples`], reading only the lines of the metrics named in `wanted`: the others (most of a
/// cAdvisor scrape: memory, network, filesystem families) are passed over without parsing
/// their labels. Errors are reported only for lines that could be one of `wanted`.
pub fn samples_of<'a>(
    text: &'a str,
    wanted: &'a [&'a str],
) -> impl Iterator<Item = Result<Sample<'a>, LineError>> + 'a {
    text.lines().enumerate().filter_map(move |(i, line)| {
        let line = line.trim_matches(|c| c == ' ' || c == '\t' || c == '\r');
        let named = |name: &str| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(['{', ' ', '\t']))
        };
        if !wanted.iter().any(|w| named(w)) {
            return None;
        }
        Some(parse_line(line).map_err(|reason| LineError {
            line: i + 1,
            reason,
        }))
    })
}

fn parse_line(line: &str) -> Result<Sample<'_>, &'static str> {
    let name_end = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(line.len());
    let name = &line[..name_end];
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        return Err("no metric name");
    }
    let mut rest = &line[name_end..];
    let mut labels = vec![];
    if let Some(after) = rest.strip_prefix('{') {
        rest = parse_labels(after, &mut labels)?;
    }
    let mut fields = rest.split([' ', '\t']).filter(|f| !f.is_empty());
    if !rest.is_empty() && !rest.starts_with([' ', '\t']) {
        return Err("no space after the name or labels");
    }
    let value = parse_value(fields.next().ok_or("no value")?)?;
    let timestamp_ms = match fields.next() {
        None => None,
        Some(t) => Some(
            t.parse::<i64>()
                .map_err(|_| "timestamp is not an integer")?,
        ),
    };
    if fields.next().is_some() {
        return Err("more after the timestamp");
    }
    Ok(Sample {
        name,
        labels,
        value,
        timestamp_ms,
    })
}

/// Reads `label="value",...}` (after the `{`), returns what follows the `}`.
fn parse_labels<'a>(
    mut s: &'a str,
    out: &mut Vec<(&'a str, Cow<'a, str>)>,
) -> Result<&'a str, &'static str> {
    loop {
        s = s.trim_start_matches([' ', '\t']);
        if let Some(after) = s.strip_prefix('}') {
            return Ok(after);
        }
        let key_end = s
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .ok_or("labels not closed")?;
        let key = &s[..key_end];
        if key.is_empty() || key.starts_with(|c: char| c.is_ascii_digit()) {
            return Err("bad label name");
        }
        s = s[key_end..].trim_start_matches([' ', '\t']);
        s = s.strip_prefix('=').ok_or("no `=` after a label name")?;
        s = s.trim_start_matches([' ', '\t']);
        s = s.strip_prefix('"').ok_or("label value not quoted")?;
        let (value, after) = quoted(s)?;
        out.push((key, value));
        s = after.trim_start_matches([' ', '\t']);
        if s.is_empty() {
            return Err("labels not closed");
        }
        if let Some(after) = s.strip_prefix(',') {
            s = after;
        } else if !s.starts_with('}') {
            return Err("no `,` or `}` after a label");
        }
    }
}

/// A label value up to its closing quote (the opening one already read), unescaped, and what
/// follows the closing quote.
fn quoted(s: &str) -> Result<(Cow<'_, str>, &str), &'static str> {
    let bytes = s.as_bytes();
    let mut i = 0;
    let mut owned: Option<String> = None;
    let mut copied = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                let value = match owned {
                    None => Cow::Borrowed(&s[..i]),
                    Some(mut o) => {
                        o.push_str(&s[copied..i]);
                        Cow::Owned(o)
                    }
                };
                return Ok((value, &s[i + 1..]));
            }
            b'\\' => {
                let escaped = match bytes.get(i + 1) {
                    Some(b'\\') => '\\',
                    Some(b'"') => '"',
                    Some(b'n') => '\n',
                    // The format allows no other escape; Prometheus keeps it as written.
                    Some(_) => {
                        i += 1;
                        continue;
                    }
                    None => return Err("label value not closed"),
                };
                let o = owned.get_or_insert_with(String::new);
                o.push_str(&s[copied..i]);
                o.push(escaped);
                i += 2;
                copied = i;
            }
            _ => i += 1,
        }
    }
    Err("label value not closed")
}

/// A Go float, as Prometheus writes values: decimal or exponent, `NaN`, `+Inf`, `-Inf`
/// (case-insensitive, as Go's `strconv.ParseFloat`).
fn parse_value(v: &str) -> Result<f64, &'static str> {
    let lower = v.to_ascii_lowercase();
    match lower.trim_start_matches('+') {
        "nan" => return Ok(f64::NAN),
        "inf" | "infinity" => return Ok(f64::INFINITY),
        _ => {}
    }
    match lower.as_str() {
        "-inf" | "-infinity" => return Ok(f64::NEG_INFINITY),
        _ => {}
    }
    // Rust's parser reads "inf"/"nan" spellings Go does not; they are handled above.
    if v.chars()
        .any(|c| c.is_ascii_alphabetic() && !matches!(c, 'e' | 'E'))
    {
        return Err("value is not a number");
    }
    v.parse::<f64>().map_err(|_| "value is not a number")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(line: &str) -> Result<Sample<'_>, LineError> {
        let mut it = samples(line);
        let first = it.next().expect("a sample or an error");
        assert!(it.next().is_none());
        first
    }

    #[test]
    fn sample_lines_as_cadvisor_and_the_kubelet_write_them() {
        let s = one(r#"container_cpu_usage_seconds_total{container_label_foo_label="bar",cpu="cpu00",id="testcontainer",name="testcontaineralias"} 2e-09 1395066363000"#).unwrap();
        assert_eq!(s.name, "container_cpu_usage_seconds_total");
        assert_eq!(s.label("cpu"), Some("cpu00"));
        assert_eq!(s.label("name"), Some("testcontaineralias"));
        assert_eq!(s.label("missing"), None);
        assert_eq!(s.value, 2e-9);
        assert_eq!(s.timestamp_ms, Some(1_395_066_363_000));

        let s = one("machine_cpu_cores 4").unwrap();
        assert_eq!(
            (s.name, s.value, s.timestamp_ms),
            ("machine_cpu_cores", 4.0, None)
        );
        assert!(s.labels.is_empty());

        let s = one(r#"container_cpu_usage_seconds_total{container="",cpu="total",pod="p"} 113.00285771 1683109361193"#).unwrap();
        assert_eq!(s.label("container"), Some(""));
        assert_eq!(s.value, 113.00285771);
    }

    #[test]
    fn escapes_spacing_and_special_values() {
        let s = one("m{a=\"x\\\"y\\\\z\\nw\",b = \"2\" , } +Inf").unwrap();
        assert_eq!(s.label("a"), Some("x\"y\\z\nw"));
        assert!(matches!(s.labels[0].1, Cow::Owned(_)));
        assert!(matches!(s.labels[1].1, Cow::Borrowed("2")));
        assert_eq!(s.value, f64::INFINITY);
        assert!(one("m NaN").unwrap().value.is_nan());
        assert_eq!(one("m -Inf 5").unwrap().value, f64::NEG_INFINITY);
        assert_eq!(one("m\t1.5e3\t-7").unwrap().timestamp_ms, Some(-7));
        assert_eq!(one("m{} 1").unwrap().value, 1.0);
        // An unknown escape is kept as written, as Prometheus does.
        assert_eq!(one(r#"m{a="c:\d"} 1"#).unwrap().label("a"), Some(r"c:\d"));
        // A brace or comma inside a quoted value is part of it.
        assert_eq!(
            one(r#"m{a="}, b=\"{"} 1"#).unwrap().label("a"),
            Some(r#"}, b="{"#)
        );
    }

    #[test]
    fn comments_and_blank_lines_carry_nothing() {
        let text = "# HELP m help\n# TYPE m counter\n\n   \n# any comment\nm 1\n";
        let all: Vec<_> = samples(text).collect();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].as_ref().unwrap().value, 1.0);
    }

    #[test]
    fn a_bad_line_is_reported_and_the_others_are_read() {
        let text = "good 1\nbad{a=\"x} 1\nalso_good{a=\"1\"} 2 3\n";
        let all: Vec<_> = samples(text).collect();
        assert_eq!(all.len(), 3);
        assert_eq!(all[0].as_ref().unwrap().name, "good");
        assert_eq!(
            all[1].as_ref().unwrap_err(),
            &LineError {
                line: 2,
                reason: "label value not closed"
            }
        );
        assert_eq!(all[2].as_ref().unwrap().timestamp_ms, Some(3));
    }

    #[test]
    fn malformed_lines_say_why() {
        let cases = [
            ("{a=\"1\"} 1", "no metric name"),
            ("9m 1", "no metric name"),
            ("m", "no value"),
            ("m{a=\"1\"}", "no value"),
            ("m one", "value is not a number"),
            ("m infinit", "value is not a number"),
            ("m 0x10", "value is not a number"),
            ("m 1 1.5", "timestamp is not an integer"),
            ("m 1 2 3", "more after the timestamp"),
            ("m{a=1} 1", "label value not quoted"),
            ("m{a \"1\"} 1", "no `=` after a label name"),
            ("m{a=\"1\" b=\"2\"} 1", "no `,` or `}` after a label"),
            ("m{1a=\"1\"} 1", "bad label name"),
            ("m{a=\"1\"", "labels not closed"),
            ("m{a=\"1\"}1", "no space after the name or labels"),
            ("m-x 1", "no space after the name or labels"),
            ("m{a=\"\\", "label value not closed"),
        ];
        for (line, why) in cases {
            assert_eq!(one(line).map_err(|e| e.reason), Err(why), "{line:?}");
        }
    }

    /// The real exposition captures (when `../shared/fixtures` is there): every sample line
    /// reads, none is an error, and the CPU counters carry what the sources will need.
    #[test]
    fn real_captures_read_whole() {
        let base = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures");
        let files = [
            "prometheus/cadvisor_prometheus_cpu_testdata.txt",
            "prometheus/kubelet_metrics_cadvisor_k8s1.9_trimmed.txt",
            "prometheus/kubelet_metrics_cadvisor_modern_lines.txt",
            "cadvisor/metrics_prometheus_cadvisor_testdata.txt",
            "cadvisor/metrics_prometheus_machine_cadvisor_testdata.txt",
        ];
        if !base.exists() {
            eprintln!("skipped: {} not found", base.display());
            return;
        }
        for f in files {
            let text = std::fs::read_to_string(base.join(f)).expect("fixture listed in its README");
            let all: Vec<_> = samples(&text).collect();
            let errors: Vec<_> = all.iter().filter_map(|r| r.as_ref().err()).collect();
            assert!(errors.is_empty(), "{f}: {errors:?}");
            let cpu: Vec<_> = all
                .iter()
                .flatten()
                .filter(|s| s.name == "container_cpu_usage_seconds_total")
                .collect();
            if f.contains("machine") {
                assert!(
                    all.iter().flatten().any(|s| s.name == "machine_cpu_cores"),
                    "{f}"
                );
            } else {
                assert!(!cpu.is_empty(), "{f}: no CPU counter");
                assert!(
                    cpu.iter().all(|s| s.value.is_finite() && s.value >= 0.0),
                    "{f}"
                );
                // Per-CPU or `total` series, or the kubelet's `/metrics/resource` (by container).
                let named =
                    |s: &&Sample| s.label("cpu").is_some() || s.label("container").is_some();
                assert!(cpu.iter().all(named), "{f}");
            }
        }
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// Any text: every line is a sample, an error or skipped, and nothing panics.
            #[test]
            fn any_text_never_panics(text in "(?s).{0,400}") {
                for s in samples(&text).flatten() {
                    prop_assert!(!s.name.is_empty());
                    prop_assert!(s.labels.iter().all(|(k, _)| !k.is_empty()));
                }
            }

            /// A line written from parts reads back as those parts.
            #[test]
            fn written_samples_read_back(
                name in "[a-zA-Z_:][a-zA-Z0-9_:]{0,20}",
                labels in proptest::collection::vec(("[a-zA-Z_][a-zA-Z0-9_]{0,10}", ".{0,20}"), 0..4),
                value in -1e12f64..1e12,
                ts in proptest::option::of(any::<i64>()),
            ) {
                let esc = |v: &str| v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
                let body: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{}\"", esc(v))).collect();
                let mut line = format!("{name}{{{}}} {value:?}", body.join(","));
                if let Some(t) = ts {
                    line.push_str(&format!(" {t}"));
                }
                // A value whose text holds a line break is written as `\n`: one line.
                let s = one(&line).map_err(|e| TestCaseError::fail(format!("{line:?}: {e}")))?;
                prop_assert_eq!(s.name, name.as_str());
                prop_assert_eq!(s.value, value);
                prop_assert_eq!(s.timestamp_ms, ts);
                let got: Vec<(String, String)> = s.labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
                prop_assert_eq!(got, labels);
            }
        }
    }
}
