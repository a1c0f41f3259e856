//! The connection side of the runtime API: one command per connection for reads, one
//! interactive connection for a batch of `set weight`.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

use super::reply::{
    strip_severity, weight_command, weight_verdict, PromptFramer, Verdict, MAX_IN_FLIGHT,
    PERMISSION_DENIED,
};
use super::stat::{parse_servers_state, parse_show_info, parse_show_stat};
use super::{Address, Error, Info, Stat, WeightChange, WeightOutcome};
use crate::controller::ServerKey;

/// A reply larger than this is refused rather than buffered: `show stat` of 1,000 servers is
/// ~240 KB, so this leaves room for configurations a thousand times larger.
const MAX_REPLY: usize = 256 * 1024 * 1024;

/// A client for one HAProxy stats socket. Cheap to clone; holds no connection between calls,
/// so a reload (new process, same socket path) is picked up by the next call.
#[derive(Debug, Clone)]
pub struct Client {
    addr: Address,
    timeout: Duration,
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

impl Client {
    /// A client for `addr`; every connect, write and read must finish within `timeout`.
    pub fn new(addr: Address, timeout: Duration) -> Client {
        Client { addr, timeout }
    }

    /// The socket this client talks to.
    pub fn address(&self) -> &Address {
        &self.addr
    }

    /// One command on its own connection; the whole reply read to EOF, under the timeout.
    ///
    /// `Permission denied` becomes [`Error::PermissionDenied`] and `Unknown command...`
    /// [`Error::BadReply`]; any other text is returned as is (non-UTF-8 bytes replaced).
    pub async fn command(&self, cmd: &str) -> Result<String, Error> {
        if cmd.contains(['\n', '\r']) {
            return Err(self.bad_reply(cmd, "a command must be a single line (nothing sent)"));
        }
        let exchange = async {
            let mut stream = self.connect().await?;
            let line = format!("{cmd}\n");
            stream
                .write_all(line.as_bytes())
                .await
                .map_err(|e| self.io(e))?;
            // Non-interactive mode: HAProxy answers and closes, so EOF ends the reply. One
            // read() is not enough (the 2015 tool lost every server past ~30 that way).
            let mut reply = Vec::new();
            let mut limited = (&mut stream).take(MAX_REPLY as u64 + 1);
            limited
                .read_to_end(&mut reply)
                .await
                .map_err(|e| self.io(e))?;
            if reply.len() > MAX_REPLY {
                return Err(self.bad_reply(cmd, "reply larger than 256 MiB"));
            }
            Ok(String::from_utf8_lossy(&reply).into_owned())
        };
        // One deadline for the whole exchange, so a peer dripping bytes cannot hold a tick.
        let reply = self.timed(exchange).await??;
        let message = strip_severity(reply.trim());
        if message == PERMISSION_DENIED {
            return Err(Error::PermissionDenied {
                addr: self.addr.clone(),
                command: cmd.to_string(),
                reply: reply.trim().to_string(),
            });
        }
        if message.starts_with("Unknown command") {
            return Err(self.bad_reply(cmd, first_line(&reply)));
        }
        Ok(reply)
    }

    /// `show stat`, parsed (see [`parse_show_stat`]).
    pub async fn show_stat(&self) -> Result<Stat, Error> {
        let reply = self.command("show stat").await?;
        parse_show_stat(&reply).map_err(|detail| self.bad_reply("show stat", detail))
    }

    /// `show servers state`: every server's initial weight (the config's), by key (see
    /// [`parse_servers_state`]).
    pub async fn initial_weights(&self) -> Result<HashMap<ServerKey, u32>, Error> {
        const CMD: &str = "show servers state";
        let reply = self.command(CMD).await?;
        let rows = parse_servers_state(&reply).map_err(|detail| self.bad_reply(CMD, detail))?;
        Ok(rows
            .into_iter()
            .map(|(b, s, w)| (ServerKey::new(b, s), w))
            .collect())
    }

    /// `show info`, parsed (see [`parse_show_info`]).
    pub async fn show_info(&self) -> Result<Info, Error> {
        let reply = self.command("show info").await?;
        parse_show_info(&reply).map_err(|detail| self.bad_reply("show info", detail))
    }

    /// Ok when the socket is at `level admin`, which `set weight` needs.
    ///
    /// Asks `show cli level` (in 2.x and 3.x, any level may run it; it prints `admin`,
    /// `operator` or `user`), so nothing is changed to find out.
    pub async fn check_admin(&self) -> Result<(), Error> {
        const CMD: &str = "show cli level";
        let reply = self.command(CMD).await?;
        match strip_severity(reply.trim()) {
            "admin" => Ok(()),
            "operator" | "user" => Err(Error::PermissionDenied {
                addr: self.addr.clone(),
                command: CMD.to_string(),
                reply: format!("level {}", reply.trim()),
            }),
            _ => Err(self.bad_reply(CMD, first_line(&reply))),
        }
    }

    /// Applies all changes over ONE connection and returns one outcome per change, in order:
    /// `Ok(())` when HAProxy printed nothing, `Err(text)` with HAProxy's message otherwise
    /// (e.g. a static algorithm's refusal), or with the reason a change was not sent (a name
    /// the CLI cannot take, a weight above 256).
    ///
    /// The session runs in prompt mode with commands pipelined, at most 8 KB of them
    /// unanswered at any time (see `reply.rs` for the framing in 2.6 and 3.x).
    /// Each connect, write and read must progress within the timeout. A connection that
    /// fails or closes midway is an `Err(Error)`: some changes may then have been applied,
    /// and the next `show stat` tells which. A socket below `level admin` gives
    /// [`Error::PermissionDenied`].
    pub async fn set_weights(&self, changes: &[WeightChange]) -> Result<Vec<WeightOutcome>, Error> {
        let mut outcomes: Vec<Option<WeightOutcome>> = Vec::with_capacity(changes.len());
        let mut commands: Vec<(usize, String)> = Vec::new();
        for (i, change) in changes.iter().enumerate() {
            match weight_command(change) {
                Ok(line) => {
                    outcomes.push(None);
                    commands.push((i, line));
                }
                Err(why) => outcomes.push(Some(Err(why))),
            }
        }
        if !commands.is_empty() {
            self.run_batch(&commands, &mut outcomes).await?;
        }
        Ok(outcomes
            .into_iter()
            .map(|o| o.unwrap_or_else(|| Err("no reply from HAProxy".to_string())))
            .collect())
    }

    async fn run_batch(
        &self,
        commands: &[(usize, String)],
        outcomes: &mut [Option<WeightOutcome>],
    ) -> Result<(), Error> {
        /// What the next reply answers.
        enum Awaiting {
            Prompt,
            /// The command at this index of `commands`.
            Change(usize),
        }
        const PROMPT_CMD: &str = "prompt\n";

        let mut stream = self.timed(self.connect()).await??;
        let mut framer = PromptFramer::new();
        let mut awaiting: VecDeque<(Awaiting, usize)> = VecDeque::new();
        let mut unanswered = 0usize;
        let mut next = 0usize;
        let mut answered = 0usize;
        let mut out = String::from(PROMPT_CMD);
        awaiting.push_back((Awaiting::Prompt, PROMPT_CMD.len()));
        unanswered += PROMPT_CMD.len();
        let mut buf = vec![0u8; 64 * 1024];

        loop {
            while next < commands.len()
                && (unanswered + commands[next].1.len() <= MAX_IN_FLIGHT || awaiting.is_empty())
            {
                let line = &commands[next].1;
                out.push_str(line);
                unanswered += line.len();
                awaiting.push_back((Awaiting::Change(next), line.len()));
                next += 1;
            }
            if !out.is_empty() {
                self.timed(stream.write_all(out.as_bytes()))
                    .await?
                    .map_err(|e| self.io(e))?;
                out.clear();
            }
            if awaiting.is_empty() {
                break;
            }
            let n = self
                .timed(stream.read(&mut buf))
                .await?
                .map_err(|e| self.io(e))?;
            if n == 0 {
                // e.g. 3.2+ refusing a line longer than tune.bufsize closes after its message.
                let rest = String::from_utf8_lossy(framer.pending());
                let rest = rest.trim();
                let rest = if rest.is_empty() {
                    String::new()
                } else {
                    format!("; it last said: {}", first_line(rest))
                };
                return Err(self.bad_reply(
                    "set weight",
                    format!(
                        "HAProxy closed the connection after {answered} of {} replies{rest}",
                        commands.len()
                    ),
                ));
            }
            framer.push(&buf[..n]);
            while let Some(reply) = framer.next_reply() {
                let Some((what, len)) = awaiting.pop_front() else {
                    // More replies than commands: the stream is not what we think it is.
                    return Err(self.bad_reply("set weight", "more replies than commands sent"));
                };
                unanswered -= len;
                match what {
                    Awaiting::Prompt => {
                        if !reply.trim().is_empty() {
                            return Err(self.bad_reply("prompt", first_line(&reply)));
                        }
                    }
                    Awaiting::Change(index) => {
                        answered += 1;
                        let (change_index, line) = &commands[index];
                        let command = line.trim_end().to_string();
                        match weight_verdict(&reply) {
                            Verdict::Applied => outcomes[*change_index] = Some(Ok(())),
                            Verdict::Refused(text) => outcomes[*change_index] = Some(Err(text)),
                            // The level belongs to the socket: every other command would get
                            // the same answer, so stop here.
                            Verdict::PermissionDenied(reply) => {
                                return Err(Error::PermissionDenied {
                                    addr: self.addr.clone(),
                                    command,
                                    reply,
                                })
                            }
                            Verdict::UnknownCommand(text) => {
                                return Err(self.bad_reply(&command, first_line(&text)))
                            }
                        }
                    }
                }
            }
        }
        // Polite close; HAProxy also copes with a plain disconnect, so errors do not matter.
        let _ = tokio::time::timeout(self.timeout, stream.write_all(b"quit\n")).await;
        Ok(())
    }

    async fn connect(&self) -> Result<Box<dyn Stream>, Error> {
        let connect_error = |source| Error::Connect {
            addr: self.addr.clone(),
            source,
        };
        Ok(match &self.addr {
            Address::Unix(path) => {
                Box::new(UnixStream::connect(path).await.map_err(connect_error)?)
            }
            Address::Tcp(hostport) => {
                let stream = TcpStream::connect(hostport.as_str())
                    .await
                    .map_err(connect_error)?;
                // Pipelined commands are small writes; do not let Nagle hold them back.
                stream.set_nodelay(true).map_err(connect_error)?;
                Box::new(stream)
            }
        })
    }

    async fn timed<T>(&self, fut: impl Future<Output = T>) -> Result<T, Error> {
        tokio::time::timeout(self.timeout, fut)
            .await
            .map_err(|_| Error::Timeout {
                addr: self.addr.clone(),
                timeout: self.timeout,
            })
    }

    fn io(&self, source: std::io::Error) -> Error {
        Error::Io {
            addr: self.addr.clone(),
            source,
        }
    }

    fn bad_reply(&self, command: &str, detail: impl Into<String>) -> Error {
        Error::BadReply {
            addr: self.addr.clone(),
            command: command.to_string(),
            detail: detail.into(),
        }
    }
}

fn first_line(text: &str) -> String {
    let line = text.trim().lines().next().unwrap_or("(empty reply)");
    let line: String = line.chars().take(200).collect();
    if line.is_empty() {
        "(empty reply)".to_string()
    } else {
        line
    }
}
