//! What one tick did, or would do: the dry-run table, its JSON form, and the exit code; and
//! [`printable`], which every plain-text output passes a peer's words through.

use std::borrow::Cow;
use std::fmt::Write as _;

use serde::Serialize;

use crate::mapping::UnmatchedContainer;

/// `text` with every control character (C0 with newline and tab, DEL, C1) and every
/// bidirectional-text control written as an escape (`\x1b`, `\n`, `\u{9b}`, `\u{202e}`), so
/// what a peer sent (a HAProxy reply, a server name, a `Location` header) cannot move the
/// cursor, recolour or retitle the terminal, or forge a line of hatune's output. Borrowed when
/// there is nothing to escape. Backslashes are left as they are.
pub fn printable(text: &str) -> Cow<'_, str> {
    fn escaped(c: char) -> bool {
        c.is_control()
            || matches!(c, '\u{61c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    }
    if !text.chars().any(escaped) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_ascii_control() => {
                let _ = write!(out, "\\x{:02x}", u32::from(c));
            }
            c if escaped(c) => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// One tick, for humans (`render_table`) and scripts (JSON).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TickReport {
    pub dry_run: bool,
    pub backends: Vec<BackendReport>,
    pub hosts: Vec<HostStatus>,
    pub sockets: Vec<SocketStatus>,
}

/// One cAdvisor host this tick.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HostStatus {
    pub url: String,
    /// Containers it reported, when it answered.
    pub containers: Option<usize>,
    /// Why it was skipped.
    pub error: Option<String>,
    /// The kind of failure, for metrics: `unreachable`, `timeout`, `status`, `garbled`,
    /// `redirect`, `too_large`.
    pub kind: Option<String>,
}

/// One HAProxy socket this tick.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SocketStatus {
    pub address: String,
    /// Why it could not be read or written.
    pub error: Option<String>,
    /// Weights HAProxy accepted.
    pub applied: usize,
    /// Weights HAProxy refused (each also in its server's `errors`).
    pub refused: usize,
    /// HAProxy was reloaded since the last tick (daemon only).
    pub reloaded: bool,
    /// Weights re-applied after that reload.
    pub restored: usize,
}

/// One backend this tick.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BackendReport {
    pub name: String,
    /// Why the backend could not be tuned at all (e.g. not found in HAProxy).
    pub error: Option<String>,
    pub servers: Vec<ServerRow>,
    pub unmatched_containers: Vec<UnmatchedContainer>,
}

/// What happened to one server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// A new weight is sent (or, in dry-run, would be).
    Set,
    /// Takes part, but its weight stays.
    Keep,
    /// Left exactly as HAProxy has it.
    Skip,
}

/// One server's row.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServerRow {
    pub server: String,
    pub host: Option<String>,
    /// The container mapped to it (the alias the pattern matched).
    pub container: Option<String>,
    /// Utilisation as a share of the container's capacity (0.0..).
    pub cpu: Option<f64>,
    pub current: u32,
    pub proposed: u32,
    pub action: Action,
    pub reason: Option<String>,
    /// HAProxy's refusals, one per socket that refused.
    pub errors: Vec<String>,
}

impl TickReport {
    /// 0 when every HAProxy socket was reached and every weight accepted; 1 otherwise. cAdvisor
    /// hosts that failed do not count: they cost only their own servers' data.
    pub fn exit_code(&self) -> i32 {
        let socket_failed = self
            .sockets
            .iter()
            .any(|s| s.error.is_some() || s.refused > 0);
        let backend_failed = self.backends.iter().any(|b| b.error.is_some());
        if socket_failed || backend_failed {
            1
        } else {
            0
        }
    }

    /// What `hatune once` prints: the report as JSON when `json`, else the table in dry-run
    /// (nothing otherwise), on stdout; then [`render_errors`](Self::render_errors) on stderr.
    pub fn print(&self, json: bool) {
        if json {
            match serde_json::to_string_pretty(self) {
                Ok(text) => println!("{text}"),
                Err(e) => eprintln!("error: cannot print the report: {e}"),
            }
        } else if self.dry_run {
            print!("{}", self.render_table());
        }
        eprint!("{}", self.render_errors());
    }

    /// What `hatune once` prints on stderr after the tick: one `error:` line per HAProxy socket
    /// that failed, then one per backend that could not be tuned.
    pub fn render_errors(&self) -> String {
        let mut out = String::new();
        for s in &self.sockets {
            if let Some(e) = &s.error {
                let _ = writeln!(out, "error: {}", printable(e));
            }
        }
        for b in &self.backends {
            if let Some(e) = &b.error {
                let _ = writeln!(
                    out,
                    "error: backend {}: {}",
                    printable(&b.name),
                    printable(e)
                );
            }
        }
        out
    }

    /// The dry-run table: one row per server, then what matched nothing and what failed.
    pub fn render_table(&self) -> String {
        let mut rows = vec![[
            "BACKEND".to_string(),
            "SERVER".into(),
            "HOST".into(),
            "CPU%".into(),
            "WEIGHT".into(),
            "NEW".into(),
            "NOTE".into(),
        ]];
        for b in &self.backends {
            for s in &b.servers {
                let note = match (s.action, &s.reason) {
                    (Action::Set, None) if self.dry_run => "would set".to_string(),
                    (Action::Set, None) => "set".to_string(),
                    (Action::Set, Some(r)) if self.dry_run => format!("would set (held: {r})"),
                    (Action::Set, Some(r)) => format!("set (held: {r})"),
                    (_, Some(r)) => r.clone(),
                    (_, None) => String::new(),
                };
                let note = if s.errors.is_empty() {
                    note
                } else {
                    format!("{note}; REFUSED: {}", s.errors.join("; "))
                };
                rows.push([
                    b.name.clone(),
                    s.server.clone(),
                    s.host.clone().unwrap_or_else(|| "-".into()),
                    s.cpu
                        .map(|c| format!("{:.1}", c * 100.0))
                        .unwrap_or_else(|| "-".into()),
                    s.current.to_string(),
                    match s.action {
                        Action::Skip => "-".to_string(),
                        _ => s.proposed.to_string(),
                    },
                    note,
                ]);
            }
        }
        for row in &mut rows {
            for cell in row.iter_mut() {
                if let Cow::Owned(escaped) = printable(cell) {
                    *cell = escaped;
                }
            }
        }
        let mut widths = [0usize; 7];
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for row in &rows {
            let mut line = String::new();
            for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
                let numeric = (3..=5).contains(&i);
                if numeric {
                    let _ = write!(line, "{cell:>w$}  ");
                } else {
                    let _ = write!(line, "{cell:<w$}  ");
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        // Each line escaped whole, so a newline a peer sent cannot start a line of its own.
        let mut below: Vec<String> = vec![];
        for b in &self.backends {
            if let Some(e) = &b.error {
                below.push(format!("backend {}: {e}", b.name));
            }
            for c in &b.unmatched_containers {
                below.push(format!(
                    "backend {}: container {} on {} matches the pattern but no server{}",
                    b.name,
                    c.alias,
                    c.host,
                    c.why.as_ref().map(|w| format!(": {w}")).unwrap_or_default()
                ));
            }
        }
        for h in &self.hosts {
            if let Some(e) = &h.error {
                below.push(format!("cAdvisor {} skipped: {e}", h.url));
            }
        }
        for s in &self.sockets {
            if let Some(e) = &s.error {
                below.push(format!("HAProxy {}: {e}", s.address));
            }
        }
        for line in &below {
            let _ = writeln!(out, "{}", printable(line));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> TickReport {
        TickReport {
            dry_run: true,
            backends: vec![BackendReport {
                name: "app".into(),
                error: None,
                servers: vec![
                    ServerRow {
                        server: "app-1".into(),
                        host: Some("http://h1:8080".into()),
                        container: None,
                        cpu: Some(0.523),
                        current: 100,
                        proposed: 115,
                        action: Action::Set,
                        reason: None,
                        errors: vec![],
                    },
                    ServerRow {
                        server: "app-2".into(),
                        host: None,
                        container: None,
                        cpu: None,
                        current: 100,
                        proposed: 100,
                        action: Action::Skip,
                        reason: Some("MAINT".into()),
                        errors: vec![],
                    },
                ],
                unmatched_containers: vec![UnmatchedContainer {
                    host: "http://h1:8080".into(),
                    alias: "app-9".into(),
                    why: None,
                }],
            }],
            hosts: vec![HostStatus {
                url: "http://h2:8080".into(),
                containers: None,
                error: Some("no reply within 5s".into()),
                kind: Some("timeout".into()),
            }],
            sockets: vec![SocketStatus {
                address: "/run/haproxy/admin.sock".into(),
                error: None,
                applied: 0,
                refused: 0,
                reloaded: false,
                restored: 0,
            }],
        }
    }

    #[test]
    fn table_has_a_row_per_server_and_says_what_was_skipped() {
        let t = report().render_table();
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("BACKEND  SERVER"));
        assert!(
            lines[1].contains("app-1")
                && lines[1].contains("52.3")
                && lines[1].ends_with("would set")
        );
        assert!(lines[2].contains("app-2") && lines[2].ends_with("MAINT"));
        assert!(t.contains("container app-9 on http://h1:8080 matches the pattern but no server"));
        assert!(t.contains("cAdvisor http://h2:8080 skipped: no reply within 5s"));
    }

    #[test]
    fn exit_code_counts_haproxy_failures_not_cadvisor_ones() {
        let mut r = report();
        assert_eq!(r.exit_code(), 0);
        r.sockets[0].refused = 1;
        assert_eq!(r.exit_code(), 1);
        r.sockets[0].refused = 0;
        r.backends[0].error = Some("not found".into());
        assert_eq!(r.exit_code(), 1);
    }

    #[test]
    fn errors_are_failed_sockets_then_failed_backends() {
        let mut r = report();
        assert_eq!(r.render_errors(), "");
        r.backends[0].error = Some("no backend named `app` in HAProxy".into());
        r.sockets[0].error = Some("HAProxy at /run/haproxy/admin.sock: timeout".into());
        r.sockets.push(SocketStatus {
            address: "tcp://10.0.0.5:9999".into(),
            error: None,
            ..r.sockets[0].clone()
        });
        assert_eq!(
            r.render_errors(),
            "error: HAProxy at /run/haproxy/admin.sock: timeout\n\
             error: backend app: no backend named `app` in HAProxy\n"
        );
    }

    /// Table: what is escaped and how; everything else, backslashes and non-Latin text
    /// included, is left as it is.
    #[test]
    fn printable_escapes_control_characters_only() {
        let cases: &[(&str, &str)] = &[
            ("admin level", "admin level"),
            ("", ""),
            ("\x1b[31mred\x1b[0m", "\\x1b[31mred\\x1b[0m"),
            ("a\nok   cAdvisor forged", "a\\nok   cAdvisor forged"),
            ("cr\rtab\t", "cr\\rtab\\t"),
            ("bell\x07 del\x7f nul\0", "bell\\x07 del\\x7f nul\\x00"),
            ("\x1b]0;title\x07", "\\x1b]0;title\\x07"),
            ("c1 csi \u{9b}2J", "c1 csi \\u{9b}2J"),
            ("rlo \u{202e}txt.exe", "rlo \\u{202e}txt.exe"),
            ("isolate \u{2066}x\u{2069}", "isolate \\u{2066}x\\u{2069}"),
            ("C:\\path \\x1b", "C:\\path \\x1b"),
            ("größe 容器 🚀", "größe 容器 🚀"),
        ];
        for &(text, want) in cases {
            assert_eq!(printable(text), want, "{text:?}");
        }
        assert!(matches!(printable("plain"), Cow::Borrowed("plain")));
    }

    /// A peer's words reach the table and the error lines escaped, and the columns still line
    /// up (widths count the escaped text).
    #[test]
    fn table_and_errors_escape_what_peers_sent() {
        let mut r = report();
        r.backends[0].servers[1].server = "app-\x1b[2J2".into();
        r.sockets[0].error = Some("HAProxy said \x1b[31mno\nok   forged".into());
        r.backends[0].error = Some("odd\rreply".into());
        let table = r.render_table();
        let errors = r.render_errors();
        for text in [&table, &errors] {
            assert!(
                !text.chars().any(|c| c.is_control() && c != '\n'),
                "{text:?}"
            );
        }
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[2].starts_with("app      app-\\x1b[2J2  -"), "{table}");
        let note = lines[0].find("NOTE").unwrap();
        assert_eq!(lines[1].find("would set"), Some(note), "{table}");
        assert!(table
            .contains("HAProxy /run/haproxy/admin.sock: HAProxy said \\x1b[31mno\\nok   forged\n"));
        assert!(table.contains("backend app: odd\\rreply\n"));
        assert_eq!(
            errors,
            "error: HAProxy said \\x1b[31mno\\nok   forged\nerror: backend app: odd\\rreply\n"
        );
    }

    #[test]
    fn json_names_the_fields() {
        let v = serde_json::to_value(report()).unwrap();
        assert_eq!(v["backends"][0]["servers"][0]["proposed"], 115);
        assert_eq!(v["backends"][0]["servers"][1]["action"], "skip");
        assert_eq!(v["hosts"][0]["error"], "no reply within 5s");
    }
}
