//! Pure parsers for `show stat` (CSV) and `show info` (`Key: value` lines).
//!
//! `show stat` columns move between versions (2.4 adds `uweight`, 3.x adds `srid` and protocol
//! counters, then a literal `-` column and per-module stats), so every value is read by the
//! name the header gives it, never by position.

use std::collections::HashMap;

use super::{BackendStat, Info, ServerStat, Stat};

/// `type` column values (HAProxy's `stats_type`): 0 frontend, 1 backend, 2 server, 3 listener.
const TYPE_BACKEND: &str = "1";
const TYPE_SERVER: &str = "2";

/// Parses the reply to `show stat`.
///
/// The reply must contain a `# pxname,svname,...` header naming at least `pxname`, `svname`,
/// `type`, `status` and `weight`; otherwise it is an `Err`. A row that cannot be read (too
/// few fields, a weight that is not a number) is skipped, so one garbled line never hides the
/// other servers.
pub fn parse_show_stat(text: &str) -> Result<Stat, String> {
    let mut records = CsvRecords::new(text);
    let header = loop {
        match records.next() {
            None => return Err(no_header(text)),
            Some(Record { first_raw, fields }) => {
                if first_raw.starts_with('#') {
                    break fields;
                }
                // Anything before the header (a banner, a stray prompt) is not stat data.
            }
        }
    };
    let columns = Columns::new(&header)?;

    let mut stat = Stat::default();
    for Record { first_raw, fields } in records {
        // A second header (some tools concatenate replies) or a comment is not a row.
        if first_raw.starts_with('#') || (fields.len() == 1 && fields[0].is_empty()) {
            continue;
        }
        match columns.get(&fields, columns.kind) {
            Some(TYPE_SERVER) => {
                if let Some(server) = columns.server(&fields) {
                    stat.servers.push(server);
                }
            }
            Some(TYPE_BACKEND) => {
                if let Some(name) = columns.get(&fields, columns.pxname) {
                    if !name.is_empty() {
                        stat.backends.push(BackendStat {
                            name: name.to_string(),
                            algo: columns
                                .algo
                                .and_then(|i| fields.get(i))
                                .filter(|a| !a.is_empty())
                                .cloned(),
                        });
                    }
                }
            }
            _ => {}
        }
    }
    Ok(stat)
}

fn no_header(text: &str) -> String {
    let start: String = text.trim_start().chars().take(80).collect();
    if start.is_empty() {
        "`show stat` returned an empty reply (no `# pxname,svname,...` header)".to_string()
    } else {
        format!("`show stat` reply has no `# pxname,svname,...` header; it starts with {start:?}")
    }
}

/// Where each column hatune reads sits in this HAProxy's `show stat`.
struct Columns {
    pxname: usize,
    svname: usize,
    kind: usize,
    status: usize,
    weight: usize,
    uweight: Option<usize>,
    bck: Option<usize>,
    throttle: Option<usize>,
    agent_status: Option<usize>,
    stot: Option<usize>,
    lbtot: Option<usize>,
    algo: Option<usize>,
    addr: Option<usize>,
}

impl Columns {
    fn new(header: &[String]) -> Result<Columns, String> {
        let mut index: HashMap<&str, usize> = HashMap::new();
        for (i, name) in header.iter().enumerate() {
            let name = if i == 0 {
                name.trim_start_matches('#').trim()
            } else {
                name.trim()
            };
            // First occurrence wins: per-module stats after the `-` column must never shadow
            // a base column of the same name.
            index.entry(name).or_insert(i);
        }
        let need = |name: &str| {
            index.get(name).copied().ok_or_else(|| {
                format!("`show stat` header has no `{name}` column (is this HAProxy's stats CSV?)")
            })
        };
        Ok(Columns {
            pxname: need("pxname")?,
            svname: need("svname")?,
            kind: need("type")?,
            status: need("status")?,
            weight: need("weight")?,
            uweight: index.get("uweight").copied(),
            bck: index.get("bck").copied(),
            throttle: index.get("throttle").copied(),
            agent_status: index.get("agent_status").copied(),
            stot: index.get("stot").copied(),
            lbtot: index.get("lbtot").copied(),
            algo: index.get("algo").copied(),
            addr: index.get("addr").copied(),
        })
    }

    fn get<'a>(&self, fields: &'a [String], i: usize) -> Option<&'a str> {
        fields.get(i).map(String::as_str)
    }

    fn opt<'a>(&self, fields: &'a [String], i: Option<usize>) -> Option<&'a str> {
        i.and_then(|i| self.get(fields, i))
    }

    fn server(&self, fields: &[String]) -> Option<ServerStat> {
        let backend = self.get(fields, self.pxname)?;
        let server = self.get(fields, self.svname)?;
        if backend.is_empty() || server.is_empty() {
            return None;
        }
        Some(ServerStat {
            backend: backend.to_string(),
            server: server.to_string(),
            status: self.get(fields, self.status)?.to_string(),
            weight: self.get(fields, self.weight)?.trim().parse().ok()?,
            uweight: self
                .opt(fields, self.uweight)
                .and_then(|v| v.trim().parse().ok()),
            backup: self.opt(fields, self.bck).map(str::trim) == Some("1"),
            throttle: self
                .opt(fields, self.throttle)
                .and_then(|v| v.trim().trim_end_matches('%').trim().parse().ok()),
            agent_status: self
                .opt(fields, self.agent_status)
                .unwrap_or_default()
                .to_string(),
            sessions_total: self
                .opt(fields, self.stot)
                .and_then(|v| v.trim().parse().ok()),
            lb_total: self
                .opt(fields, self.lbtot)
                .and_then(|v| v.trim().parse().ok()),
            address: self.opt(fields, self.addr).and_then(parse_addr),
        })
    }
}

/// Parses the reply to `show servers state`: each server's initial weight (`srv_iweight`, the
/// config's), by (backend, server). Columns are read by the names of the `# be_id be_name ...`
/// header (version 1 format, HAProxy 1.6 to 3.x); rows that cannot be read are skipped.
pub fn parse_servers_state(text: &str) -> Result<Vec<(String, String, u32)>, String> {
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let header = lines
        .by_ref()
        .find(|l| l.starts_with('#'))
        .ok_or_else(|| "`show servers state` reply has no `# be_id ...` header".to_string())?;
    let names: Vec<&str> = header.trim_start_matches('#').split_whitespace().collect();
    let col = |name: &str| {
        names
            .iter()
            .position(|n| *n == name)
            .ok_or_else(|| format!("`show servers state` header has no `{name}` column"))
    };
    let (be, srv, iweight) = (col("be_name")?, col("srv_name")?, col("srv_iweight")?);
    Ok(lines
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some((
                f.get(be)?.to_string(),
                f.get(srv)?.to_string(),
                f.get(iweight)?.parse().ok()?,
            ))
        })
        .collect())
}

/// The `addr` column: `10.0.0.11:8080`, `[::1]:8080`, `10.0.0.11:0` (no port of its own);
/// `unix`, empty (not resolved yet) or anything else is no address. A mapped port (`:+100`,
/// `:-100`: an offset from the client's port) is no port of its own either: port 0.
pub fn parse_addr(text: &str) -> Option<std::net::SocketAddr> {
    let (host, port) = text.trim().rsplit_once(':')?;
    let port = if port.starts_with(['+', '-']) {
        "0"
    } else {
        port
    };
    format!("{host}:{port}").parse().ok()
}

/// One CSV record, plus how its first field looked before unquoting (to tell `# header` and
/// comment lines from a quoted value that happens to start with `#`).
struct Record {
    first_raw: String,
    fields: Vec<String>,
}

/// Iterates over the CSV records of a text: `,`-separated, `"`-quoted values with `""` for a
/// quote, records ending at a newline outside quotes. A quote inside an unquoted value is
/// kept as is, and an unterminated quote ends at the end of the text: garbage degrades into
/// odd values, never into a panic or a lost reply.
struct CsvRecords<'a> {
    rest: &'a str,
}

impl<'a> CsvRecords<'a> {
    fn new(text: &'a str) -> Self {
        CsvRecords { rest: text }
    }
}

impl Iterator for CsvRecords<'_> {
    type Item = Record;

    fn next(&mut self) -> Option<Record> {
        if self.rest.is_empty() {
            return None;
        }
        let mut fields = Vec::new();
        let mut field = String::new();
        let mut first_raw = String::new();
        let mut at_field_start = true;
        let mut in_quotes = false;
        let mut chars = self.rest.char_indices().peekable();
        let mut consumed = self.rest.len();
        while let Some((i, c)) = chars.next() {
            if fields.is_empty() && !in_quotes && c != ',' && c != '\n' && c != '\r' {
                first_raw.push(c);
            }
            if in_quotes {
                if c == '"' {
                    if matches!(chars.peek(), Some((_, '"'))) {
                        chars.next();
                        field.push('"');
                    } else {
                        in_quotes = false;
                    }
                } else {
                    field.push(c);
                }
                continue;
            }
            match c {
                '"' if at_field_start => {
                    in_quotes = true;
                    at_field_start = false;
                }
                ',' => {
                    fields.push(std::mem::take(&mut field));
                    at_field_start = true;
                }
                '\n' => {
                    consumed = i + 1;
                    break;
                }
                '\r' if matches!(chars.peek(), Some((_, '\n'))) => {}
                _ => {
                    field.push(c);
                    at_field_start = false;
                }
            }
        }
        // HAProxy ends every row with a `,`, which leaves an empty last field: drop it so
        // the field count matches the header's (which ends with a `,` too).
        if !field.is_empty() || !at_field_start || fields.is_empty() {
            fields.push(field);
        }
        self.rest = &self.rest[consumed..];
        Some(Record { first_raw, fields })
    }
}

/// Parses the reply to `show info`: `Key: value` lines. `Version`, `Pid` and `Uptime_sec` are
/// required; `Start_time_sec` is optional (not every version prints it).
pub fn parse_show_info(text: &str) -> Result<Info, String> {
    let mut values: HashMap<&str, &str> = HashMap::new();
    for line in text.lines() {
        if let Some((key, value)) = line.split_once(':') {
            values.entry(key.trim()).or_insert(value.trim());
        }
    }
    let field = |name: &str| {
        values.get(name).copied().ok_or_else(|| {
            let start: String = text.trim_start().chars().take(80).collect();
            format!("`show info` reply has no `{name}:` line; it starts with {start:?}")
        })
    };
    let number = |name: &str| -> Result<u64, String> {
        let value = field(name)?;
        value
            .parse()
            .map_err(|_| format!("`show info` has `{name}: {value}`, not a number"))
    };
    let pid = number("Pid")?;
    Ok(Info {
        version: field("Version")?.to_string(),
        pid: u32::try_from(pid).map_err(|_| format!("`show info` has `Pid: {pid}`, too large"))?,
        uptime_sec: number("Uptime_sec")?,
        start_time_sec: values.get("Start_time_sec").and_then(|v| v.parse().ok()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reply as HAProxy 2.6 gives it (version line, header, rows; a unix-socket server
    /// has fewer columns at the end).
    #[test]
    fn servers_state_gives_initial_weights() {
        let reply = "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port\n\
            2 b 1 a 127.0.1.1 2 0 51 10 0 1 0 2 0 0 0 0 - 8080 - 0 0 - - 0\n\
            2 b 2 v6 ::1 2 0 1 1 0 1 0 2 0 0 0 0 - 9090 - 0 0 - - 0\n\
            2 b 5 u - 2 0 1 1 0 1 0\n\
            2 b 6 bad - 2 0 1 x\n\n";
        assert_eq!(
            parse_servers_state(reply).unwrap(),
            [
                ("b".to_string(), "a".to_string(), 10),
                ("b".into(), "v6".into(), 1),
                ("b".into(), "u".into(), 1),
            ]
        );
        assert!(parse_servers_state("Unknown command.\n").is_err());
        assert!(parse_servers_state("1\n# be_id be_name\n")
            .unwrap_err()
            .contains("srv_name"));
    }

    #[test]
    fn addr_is_an_ip_and_port_or_nothing() {
        let cases: &[(&str, Option<&str>)] = &[
            ("127.0.1.1:8080", Some("127.0.1.1:8080")),
            ("[::1]:9090", Some("[::1]:9090")),
            ("127.0.1.2:0", Some("127.0.1.2:0")),
            ("127.0.1.3:+100", Some("127.0.1.3:0")),
            ("127.0.1.3:-100", Some("127.0.1.3:0")),
            (" 10.0.0.1:80 ", Some("10.0.0.1:80")),
            ("unix", None),
            ("", None),
            ("web.example:80", None),
            ("::1", None),
        ];
        for (text, want) in cases {
            let want = want.map(|w| w.parse::<std::net::SocketAddr>().unwrap());
            assert_eq!(parse_addr(text), want, "{text:?}");
        }
    }

    const HEADER_22: &str = "# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,status,weight,act,bck,chkfail,chkdown,lastchg,downtime,qlimit,pid,iid,sid,throttle,lbtot,tracked,type,rate,rate_lim,rate_max,check_status,check_code,check_duration,hrsp_1xx,hrsp_2xx,hrsp_3xx,hrsp_4xx,hrsp_5xx,hrsp_other,hanafail,req_rate,req_rate_max,req_tot,cli_abrt,srv_abrt,comp_in,comp_out,comp_byp,comp_rsp,lastsess,last_chk,last_agt,qtime,ctime,rtime,ttime,agent_status,agent_code,agent_duration,check_desc,agent_desc,check_rise,check_fall,check_health,agent_rise,agent_fall,agent_health,addr,cookie,mode,algo,conn_rate,conn_rate_max,conn_tot,intercepted,dcon,dses,wrew,connect,reuse,cache_lookups,cache_hits,srv_icur,src_ilim,qtime_max,ctime_max,rtime_max,ttime_max,eint,idle_conn_cur,safe_conn_cur,used_conn_cur,need_conn_est,\n";

    /// A row in the 2.2 layout (no `uweight`): values by column name, everything else empty.
    fn row_22(pairs: &[(&str, &str)]) -> String {
        let names: Vec<&str> = HEADER_22
            .trim_start_matches("# ")
            .trim_end()
            .trim_end_matches(',')
            .split(',')
            .collect();
        let mut row: Vec<String> = vec![String::new(); names.len()];
        for (k, v) in pairs {
            let i = names.iter().position(|n| n == k).unwrap();
            row[i] = v.to_string();
        }
        format!("{},\n", row.join(","))
    }

    #[test]
    fn reads_columns_by_name_in_the_22_layout() {
        let text = format!(
            "{HEADER_22}{}{}{}\n",
            row_22(&[
                ("pxname", "app"),
                ("svname", "a1"),
                ("type", "2"),
                ("status", "UP"),
                ("weight", "7"),
                ("bck", "0"),
                ("stot", "12"),
                ("lbtot", "11")
            ]),
            row_22(&[
                ("pxname", "app"),
                ("svname", "a2"),
                ("type", "2"),
                ("status", "UP"),
                ("weight", "3"),
                ("bck", "1"),
                ("throttle", "40")
            ]),
            row_22(&[
                ("pxname", "app"),
                ("svname", "BACKEND"),
                ("type", "1"),
                ("status", "UP"),
                ("weight", "10"),
                ("algo", "roundrobin")
            ]),
        );
        let stat = parse_show_stat(&text).unwrap();
        assert_eq!(stat.servers.len(), 2);
        let a1 = &stat.servers[0];
        assert_eq!((a1.backend.as_str(), a1.server.as_str()), ("app", "a1"));
        assert_eq!((a1.weight, a1.uweight, a1.backup), (7, None, false));
        assert_eq!((a1.sessions_total, a1.lb_total), (Some(12), Some(11)));
        assert_eq!(a1.throttle, None);
        assert_eq!(a1.user_weight(), 7);
        let a2 = &stat.servers[1];
        assert_eq!((a2.backup, a2.throttle), (true, Some(40)));
        assert_eq!((a2.sessions_total, a2.lb_total), (None, None));
        assert_eq!(
            stat.backends,
            vec![BackendStat {
                name: "app".into(),
                algo: Some("roundrobin".into())
            }]
        );
    }

    #[test]
    fn columns_in_any_order_and_quoted_values() {
        let text = "# type,weight,svname,status,pxname,uweight,check_desc,agent_status,\n\
                    2,5,\"s,1\",\"DOWN 1/2\",\"b\"\"e\",9,\"Layer4 timeout, info: x\",\"UP\",\n";
        let stat = parse_show_stat(text).unwrap();
        let s = &stat.servers[0];
        assert_eq!(s.backend, "b\"e");
        assert_eq!(s.server, "s,1");
        assert_eq!(s.status, "DOWN 1/2");
        assert_eq!((s.weight, s.uweight), (5, Some(9)));
        assert_eq!(s.agent_status, "UP");
        assert_eq!(s.user_weight(), 9);
    }

    #[test]
    fn garbled_rows_are_skipped_not_fatal() {
        let cases: &[(&str, &str, usize)] = &[
            // (what, rows after the header, servers expected)
            ("truncated row", "app,s1,2\napp,s2,2,UP,4,\n", 1),
            ("weight not a number", "app,s1,2,UP,x,\napp,s2,2,UP,4,\n", 1),
            ("blank lines", "\n\napp,s2,2,UP,4,\n\n", 1),
            (
                "unterminated quote",
                "app,s2,2,UP,4,\n\"app,s3,2,UP,4,\n",
                1,
            ),
            ("empty names", ",,2,UP,4,\napp,s2,2,UP,4,\n", 1),
            (
                "frontend and listener rows",
                "fe,FRONTEND,0,OPEN,,\nfe,l1,3,OPEN,,\n",
                0,
            ),
            ("crlf line ends", "app,s1,2,UP,4,\r\napp,s2,2,UP,5,\r\n", 2),
            ("second header", "# x,y\napp,s2,2,UP,4,\n", 1),
            (
                "replacement chars",
                "app,s\u{fffd},2,UP,4,\n\u{fffd}\u{fffd}\n",
                1,
            ),
        ];
        for (what, rows, want) in cases {
            let text = format!("# pxname,svname,type,status,weight,\n{rows}");
            let stat = parse_show_stat(&text).unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(stat.servers.len(), *want, "{what}");
        }
    }

    #[test]
    fn a_reply_without_header_is_an_error() {
        let cases = [
            "",
            "\n",
            "Unknown command. Please enter one of the following commands only:\n",
            "app,s1,2,UP,4,\n",
            "# svname,type,status,weight,\n",
        ];
        for text in cases {
            assert!(parse_show_stat(text).is_err(), "{text:?}");
        }
    }

    #[test]
    fn module_stats_after_the_dash_never_shadow_base_columns() {
        let text = "# pxname,svname,type,status,weight,-,weight,\napp,s1,2,UP,4,-,99,\n";
        assert_eq!(parse_show_stat(text).unwrap().servers[0].weight, 4);
    }

    #[test]
    fn info_fields() {
        let text = "Name: HAProxy\nVersion: 2.6.12-1\nPid: 42\nUptime: 0d 0h00m03s\nUptime_sec: 3\nStart_time_sec: 1700000000\nnode: a:b\n\n";
        let info = parse_show_info(text).unwrap();
        assert_eq!(
            info,
            Info {
                version: "2.6.12-1".into(),
                pid: 42,
                uptime_sec: 3,
                start_time_sec: Some(1700000000)
            }
        );
        let no_start = parse_show_info("Version: 2.2.0\nPid: 1\nUptime_sec: 9\n").unwrap();
        assert_eq!(no_start.start_time_sec, None);
        for bad in [
            "",
            "Version: 1\nUptime_sec: 3\n",
            "Version: 1\nPid: x\nUptime_sec: 3\n",
            "Version: 1\nPid: 99999999999\nUptime_sec: 3\n",
            "Pid: 1\nUptime_sec: 3\n",
            "Permission denied\n",
        ] {
            assert!(parse_show_info(bad).is_err(), "{bad:?}");
        }
    }

    proptest::proptest! {
        /// Whatever comes back, the parsers return; they never panic.
        #[test]
        fn never_panics_on_any_text(text in "(?s).{0,400}") {
            let _ = parse_show_stat(&text);
            let _ = parse_show_info(&text);
        }

        /// A real header followed by noise: still Ok (rows are skipped, not fatal), and every
        /// server read has both names.
        #[test]
        fn noise_after_a_header_is_skipped(rows in "[a-z0-9,\"\r\n# -]{0,300}") {
            let text = format!("# pxname,svname,type,status,weight,uweight,\n{rows}");
            let stat = parse_show_stat(&text).unwrap();
            proptest::prop_assert!(stat
                .servers
                .iter()
                .all(|s| !s.backend.is_empty() && !s.server.is_empty()));
        }

        /// A capture cut anywhere parses without panicking; cut after the header it is Ok.
        #[test]
        fn a_truncated_capture_is_never_fatal_past_the_header(cut in 0usize..5000) {
            let text = include_str!("../../../tests/fixtures/haproxy/2.6.12/show_stat.csv");
            let cut = cut.min(text.len());
            let header_end = text.find('\n').unwrap() + 1;
            let result = parse_show_stat(&text[..cut]);
            if cut >= header_end {
                proptest::prop_assert!(result.unwrap().servers.len() <= 10);
            }
        }
    }
}
