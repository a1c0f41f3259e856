//! Applying: a real HAProxy (the installed one, 2.6 here) with 10,000 servers (100 backends ×
//! 100), read `show stat` and set a new weight on every server, every reply checked.
//!
//! `cargo bench --bench apply` prints two tables:
//! 1. hatune's own client ([`hatune::sink::haproxy::Client`], in-process): `show stat` read and
//!    parsed, then `set_weights` of 10,000 changes (one prompt-mode connection, pipelined, at
//!    most 8 KB of commands unanswered), over the unix and the TCP socket. Median of 5 rounds;
//!    each round sets weights different from the last, and every outcome must be `Ok`.
//! 2. How far commands can be batched per connection, with raw sockets: one connection per
//!    command, `;`-joined lines of K commands (non-interactive mode), and prompt mode with
//!    different amounts of commands in flight. Every reply is read and checked (empty = set).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use hatune::sink::haproxy::{Address, Client, WeightChange};
use hatune::testkit::fleet::{self, FleetSpec};
use hatune::testkit::haproxy::Haproxy;

const ROUNDS: usize = 5;

fn main() {
    let spec = FleetSpec {
        hosts: 1000,
        containers_per_host: 10,
        ..FleetSpec::default()
    };
    let haproxy = Haproxy::start(&fleet::haproxy_backends(&spec)).expect("haproxy");
    let version = haproxy_version();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "machine: {} cores; {version}",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    println!("\n1. hatune's client, 10,000 servers (median of {ROUNDS}, min in brackets)");
    println!(
        "{:<8} {:>9} {:>16} {:>18} {:>16}",
        "socket", "servers", "show stat", "set 10,000 weights", "total"
    );
    let sockets = [
        ("unix", haproxy.admin_socket()),
        ("tcp", haproxy.tcp_socket().expect("tcp socket")),
    ];
    let mut round = 0u32;
    for (name, addr) in &sockets {
        let client = Client::new(addr.clone(), Duration::from_secs(10));
        let mut reads = vec![];
        let mut sets = vec![];
        let mut totals = vec![];
        let mut servers = 0;
        for _ in 0..ROUNDS {
            round += 1;
            let (read, set, n) = runtime.block_on(async {
                let t0 = Instant::now();
                let stat = client.show_stat().await.expect("show stat");
                let read = t0.elapsed();
                let changes: Vec<WeightChange> = stat
                    .servers
                    .iter()
                    .enumerate()
                    .map(|(i, s)| WeightChange {
                        backend: s.backend.clone(),
                        server: s.server.clone(),
                        weight: 1 + (i as u32 + round * 7) % 256,
                    })
                    .collect();
                let t1 = Instant::now();
                let outcomes = client.set_weights(&changes).await.expect("set weights");
                let set = t1.elapsed();
                assert_eq!(outcomes.len(), changes.len());
                assert!(outcomes.iter().all(Result::is_ok), "a weight was refused");
                (read, set, changes.len())
            });
            servers = n;
            reads.push(read);
            sets.push(set);
            totals.push(read + set);
        }
        // The last round's weights really are in place.
        let stat = runtime.block_on(client.show_stat()).expect("show stat");
        for (i, s) in stat.servers.iter().enumerate() {
            assert_eq!(
                s.user_weight(),
                1 + (i as u32 + round * 7) % 256,
                "{}",
                s.server
            );
        }
        println!(
            "{:<8} {:>9} {:>16} {:>18} {:>16}",
            name,
            servers,
            fmt(&mut reads),
            fmt(&mut sets),
            fmt(&mut totals)
        );
    }

    let Address::Unix(sock) = haproxy.admin_socket() else {
        unreachable!()
    };
    let commands: Vec<String> = (0..spec.hosts)
        .flat_map(|h| {
            (0..spec.containers_per_host).map(move |c| {
                format!(
                    "set weight {}/{} {}",
                    fleet::group_backend(h / 10),
                    fleet::alias(h, c),
                    1 + (h * 10 + c) % 200
                )
            })
        })
        .collect();
    println!(
        "\n2. batching, 10,000 `set weight` over the unix socket (one run each; bytes of commands: {})",
        commands.iter().map(|c| c.len() + 1).sum::<usize>()
    );
    println!("{:<44} {:>12} {:>10}", "strategy", "connections", "time");
    let t = Instant::now();
    for c in &commands {
        let reply = one_shot(&sock, c).expect("command");
        assert_eq!(reply, "\n", "{c}: {reply:?}");
    }
    row("one command per connection", commands.len(), t.elapsed());
    for k in [10usize, 100, 1000, 10_000] {
        let t = Instant::now();
        let mut conns = 0;
        let mut ok = true;
        for chunk in commands.chunks(k) {
            conns += 1;
            let reply = one_shot(&sock, &chunk.join(";")).expect("line");
            // Each command's reply ends with an empty line; success prints nothing else.
            ok &= reply == "\n".repeat(chunk.len());
            if !ok {
                println!(
                    "   line of {k} commands ({} bytes) refused: {:?}",
                    chunk.join(";").len(),
                    reply.chars().take(100).collect::<String>()
                );
                break;
            }
        }
        if ok {
            let longest = commands.chunks(k).map(|c| c.join(";").len()).max();
            row(
                &format!("`;`-joined lines of {k} (≤ {} bytes)", longest.unwrap_or(0)),
                conns,
                t.elapsed(),
            );
        }
    }
    for window in [1usize, 1024, 8 * 1024, 64 * 1024, usize::MAX] {
        let t = Instant::now();
        prompt_pipelined(&sock, &commands, window).expect("prompt session");
        let label = match window {
            1 => "prompt mode, one command at a time".to_string(),
            usize::MAX => "prompt mode, all written at once".to_string(),
            w => format!("prompt mode, ≤ {} KB unanswered", w / 1024),
        };
        row(&label, 1, t.elapsed());
    }
}

fn fmt(times: &mut [Duration]) -> String {
    times.sort();
    format!(
        "{:.1} ms ({:.1})",
        times[times.len() / 2].as_secs_f64() * 1e3,
        times[0].as_secs_f64() * 1e3
    )
}

fn row(label: &str, conns: usize, took: Duration) {
    println!(
        "{label:<44} {conns:>12} {:>7.1} ms",
        took.as_secs_f64() * 1e3
    );
}

/// One line on its own connection (non-interactive mode), the reply read to EOF.
fn one_shot(sock: &Path, line: &str) -> std::io::Result<String> {
    let mut s = UnixStream::connect(sock)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(line.as_bytes())?;
    s.write_all(b"\n")?;
    let mut reply = String::new();
    s.read_to_string(&mut reply)?;
    Ok(reply)
}

/// Prompt mode on one connection: `prompt`, then the commands with at most `window` bytes of
/// them unanswered (at least one command in flight), then `quit`. Every reply must be empty.
fn prompt_pipelined(sock: &Path, commands: &[String], window: usize) -> std::io::Result<()> {
    let s = UnixStream::connect(sock)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut w = s.try_clone()?;
    if window == usize::MAX {
        // Everything at once: a writer thread, so neither side blocks on a full buffer.
        let mut all = String::from("prompt\n");
        for c in commands {
            all.push_str(c);
            all.push('\n');
        }
        all.push_str("quit\n");
        let writer = std::thread::spawn(move || w.write_all(all.as_bytes()));
        let replies = read_replies(&s, commands.len() + 1)?;
        writer.join().expect("writer")?;
        check(&replies)
    } else {
        let mut r = BufReader::new(s);
        w.write_all(b"prompt\n")?;
        let mut replies = vec![read_reply(&mut r)?];
        let mut sent = 0;
        let mut in_flight: std::collections::VecDeque<usize> = Default::default();
        let mut bytes = 0;
        while replies.len() < commands.len() + 1 {
            let mut out = String::new();
            while sent < commands.len()
                && (in_flight.is_empty() || bytes + commands[sent].len() < window)
            {
                out.push_str(&commands[sent]);
                out.push('\n');
                bytes += commands[sent].len() + 1;
                in_flight.push_back(commands[sent].len() + 1);
                sent += 1;
            }
            if !out.is_empty() {
                w.write_all(out.as_bytes())?;
            }
            replies.push(read_reply(&mut r)?);
            bytes -= in_flight.pop_front().expect("a command in flight");
        }
        w.write_all(b"quit\n")?;
        check(&replies)
    }
}

/// Replies are framed by `"\n> "` in prompt mode.
fn read_reply(r: &mut BufReader<UnixStream>) -> std::io::Result<String> {
    let mut reply = Vec::new();
    loop {
        let n = r.read_until(b' ', &mut reply)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if reply.ends_with(b"\n> ") {
            reply.truncate(reply.len() - 3);
            return Ok(String::from_utf8_lossy(&reply).into_owned());
        }
    }
}

fn read_replies(s: &UnixStream, n: usize) -> std::io::Result<Vec<String>> {
    let mut r = BufReader::new(s.try_clone()?);
    (0..n).map(|_| read_reply(&mut r)).collect()
}

fn check(replies: &[String]) -> std::io::Result<()> {
    match replies.iter().find(|r| !r.trim().is_empty()) {
        None => Ok(()),
        Some(r) => Err(std::io::Error::other(format!("HAProxy said: {r}"))),
    }
}

fn haproxy_version() -> String {
    std::process::Command::new("haproxy")
        .arg("-v")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(str::to_string))
        .unwrap_or_else(|| "HAProxy (version unknown)".into())
}
