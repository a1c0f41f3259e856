//! Templates that build a HAProxy server name (or a port) from a container: `web_{1}`,
//! `{label:com.docker.compose.service}_{label:com.docker.compose.container-number}`. Pure.
//!
//! Fields: `{alias}` (the alias the backend's pattern matched), `{1}`, `{2}`… and `{NAME}` (the
//! pattern's capture groups, `(?P<NAME>…)`), `{label:KEY}` (a container label), `{host}` (the
//! source host's name or IP, as its URL gives it). `{{` and `}}` are literal braces. A template
//! is checked against its pattern when the config loads: a group the pattern does not have is
//! an error then, not a server that never maps.

use std::collections::BTreeMap;
use std::fmt;

use regex::{Captures, Regex};

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    text: String,
    pieces: Vec<Piece>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Literal(String),
    Alias,
    Group(usize),
    Named(String),
    Label(String),
    Host,
}

/// What a container offers a template.
#[derive(Debug, Clone, Copy)]
pub struct Fields<'a> {
    /// The alias the pattern matched.
    pub alias: &'a str,
    /// The pattern's captures on that alias.
    pub captures: &'a Captures<'a>,
    pub labels: &'a BTreeMap<String, String>,
    /// The source host's name or IP.
    pub host: &'a str,
}

impl Template {
    /// Parses `text` for a backend whose (anchored) pattern is `pattern`. The error says what
    /// is wrong, for the config's message.
    pub fn parse(text: &str, pattern: &Regex) -> Result<Template, String> {
        let mut pieces = vec![];
        let mut literal = String::new();
        let mut chars = text.char_indices().peekable();
        while let Some((at, c)) = chars.next() {
            match c {
                '{' if chars.peek().map(|&(_, c)| c) == Some('{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek().map(|&(_, c)| c) == Some('}') => {
                    chars.next();
                    literal.push('}');
                }
                '}' => {
                    return Err(format!(
                        "a lone `}}` at byte {at} (write `}}}}` for a literal brace)"
                    ))
                }
                '{' => {
                    let mut field = String::new();
                    loop {
                        match chars.next() {
                            Some((_, '}')) => break,
                            Some((_, c)) => field.push(c),
                            None => {
                                return Err(format!(
                                    "`{{` at byte {at} is never closed (write `{{{{` for a literal brace)"
                                ))
                            }
                        }
                    }
                    if !literal.is_empty() {
                        pieces.push(Piece::Literal(std::mem::take(&mut literal)));
                    }
                    pieces.push(field_piece(&field, pattern)?);
                }
                c => literal.push(c),
            }
        }
        if !literal.is_empty() {
            pieces.push(Piece::Literal(literal));
        }
        if pieces.is_empty() {
            return Err("is empty".into());
        }
        Ok(Template {
            text: text.to_string(),
            pieces,
        })
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The label keys it reads, so a source keeps only those.
    pub fn labels(&self) -> impl Iterator<Item = &str> {
        self.pieces.iter().filter_map(|p| match p {
            Piece::Label(k) => Some(k.as_str()),
            _ => None,
        })
    }

    /// The text for one container, or why it has none (a label it lacks, a group that took no
    /// part in the match).
    pub fn render(&self, fields: &Fields<'_>) -> Result<String, String> {
        let mut out = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Literal(s) => out.push_str(s),
                Piece::Alias => out.push_str(fields.alias),
                Piece::Host => out.push_str(fields.host),
                Piece::Group(i) => out.push_str(
                    fields
                        .captures
                        .get(*i)
                        .ok_or_else(|| {
                            format!("group {i} of the pattern took no part in the match")
                        })?
                        .as_str(),
                ),
                Piece::Named(n) => out.push_str(
                    fields
                        .captures
                        .name(n)
                        .ok_or_else(|| {
                            format!("group `{n}` of the pattern took no part in the match")
                        })?
                        .as_str(),
                ),
                Piece::Label(k) => out.push_str(
                    fields
                        .labels
                        .get(k)
                        .ok_or_else(|| format!("no label `{k}`"))?,
                ),
            }
        }
        Ok(out)
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

fn field_piece(field: &str, pattern: &Regex) -> Result<Piece, String> {
    const FIELDS: &str = "fields are {alias}, {1}, {2}.., {NAME}, {label:KEY} and {host}";
    if let Some(key) = field.strip_prefix("label:") {
        if key.is_empty() {
            return Err(format!("`{{label:}}` names no label ({FIELDS})"));
        }
        return Ok(Piece::Label(key.to_string()));
    }
    match field {
        "alias" => return Ok(Piece::Alias),
        "host" => return Ok(Piece::Host),
        "" => return Err(format!("`{{}}` names no field ({FIELDS})")),
        _ => {}
    }
    // The pattern is anchored as `^(?:…)`, which adds no group: numbers are the user's.
    let groups = pattern.captures_len() - 1;
    if field.bytes().all(|b| b.is_ascii_digit()) {
        return match field.parse::<usize>() {
            Ok(i) if (1..=groups).contains(&i) => Ok(Piece::Group(i)),
            _ => Err(format!(
                "`{{{field}}}`: the pattern has {groups} capture group(s) ({FIELDS})"
            )),
        };
    }
    if pattern.capture_names().flatten().any(|n| n == field) {
        return Ok(Piece::Named(field.to_string()));
    }
    Err(format!(
        "`{{{field}}}`: the pattern has no group named `{field}` ({FIELDS})"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn anchored(p: &str) -> Regex {
        Regex::new(&format!("^(?:{p})")).unwrap()
    }

    fn render(
        template: &str,
        pattern: &str,
        alias: &str,
        labels: &[(&str, &str)],
    ) -> Result<String, String> {
        let re = anchored(pattern);
        let t = Template::parse(template, &re)?;
        let captures = re.captures(alias).expect("the alias matches");
        let labels: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        t.render(&Fields {
            alias,
            captures: &captures,
            labels: &labels,
            host: "10.0.0.11",
        })
    }

    #[test]
    fn fields_render_from_the_container() {
        let compose = [
            ("com.docker.compose.service", "web"),
            ("com.docker.compose.container-number", "3"),
        ];
        let ok = |s: &str| Ok::<String, String>(s.to_string());
        type Case<'a> = (
            &'a str,
            &'a str,
            &'a str,
            &'a [(&'a str, &'a str)],
            Result<String, String>,
        );
        let cases: &[Case] = &[
            ("{alias}", "app-", "app-1", &[], ok("app-1")),
            (
                "web_{1}",
                r"proj_web_(\d+)",
                "proj_web_12",
                &[],
                ok("web_12"),
            ),
            (
                "{2}-{1}",
                r"(\w+)_(\w+)_",
                "proj_web_1",
                &[],
                ok("web-proj"),
            ),
            (
                "{svc}{n}",
                r"(?P<svc>[a-z]+)\.(?P<n>\d+)\.",
                "web.1.x7",
                &[],
                ok("web1"),
            ),
            (
                "web_{label:com.docker.compose.container-number}",
                "proj_web_",
                "proj_web_3",
                &compose,
                ok("web_3"),
            ),
            ("{host}_{alias}", "app", "app-1", &[], ok("10.0.0.11_app-1")),
            (
                "{{literal}}_{alias}",
                "app",
                "app-1",
                &[],
                ok("{literal}_app-1"),
            ),
            ("x}}", "app", "app-1", &[], ok("x}")),
            ("ünï_{1}", "(ab)", "ab", &[], ok("ünï_ab")),
            (
                "web_{label:missing}",
                "proj_web_",
                "proj_web_3",
                &compose,
                Err("no label `missing`".into()),
            ),
            (
                "{1}{2}",
                "(a)|(b)",
                "a",
                &[],
                Err("group 2 of the pattern took no part in the match".into()),
            ),
        ];
        for (template, pattern, alias, labels, want) in cases {
            assert_eq!(
                &render(template, pattern, alias, labels),
                want,
                "{template} over {pattern} on {alias}"
            );
        }
    }

    #[test]
    fn bad_templates_say_what_is_wrong() {
        let cases: &[(&str, &str, &str)] = &[
            ("", "app", "is empty"),
            ("{2}", "(a)", "the pattern has 1 capture group(s)"),
            ("{0}", "(a)", "the pattern has 1 capture group(s)"),
            ("{1}", "app", "the pattern has 0 capture group(s)"),
            ("{name}", "(?P<n>a)", "no group named `name`"),
            ("{label:}", "a", "names no label"),
            ("{}", "a", "names no field"),
            ("web_{1", "(a)", "is never closed"),
            ("web_1}", "(a)", "a lone `}`"),
            ("{99999999999999999999999}", "(a)", "capture group(s)"),
        ];
        for (template, pattern, want) in cases {
            let e = Template::parse(template, &anchored(pattern)).unwrap_err();
            assert!(e.contains(want), "{template}: {e}");
        }
    }

    #[test]
    fn a_template_lists_the_labels_it_reads() {
        let t = Template::parse("{label:a}_{alias}_{label:b.c}", &anchored("x")).unwrap();
        assert_eq!(t.labels().collect::<Vec<_>>(), ["a", "b.c"]);
        assert_eq!(t.to_string(), "{label:a}_{alias}_{label:b.c}");
    }
}
