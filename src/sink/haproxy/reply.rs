//! Pure pieces of the `set weight` exchange: checking a change before it is sent, splitting the
//! byte stream of an interactive session into one reply per command, and reading a reply.
//!
//! # How replies are framed
//!
//! hatune sends `prompt` and then one command per line on one connection. In prompt mode
//! HAProxy ends every reply with `"\n> "`, so the stream reads
//!
//! ```text
//! "\n> "                         reply to `prompt` itself (empty)
//! "\n> "                         `set weight` that worked: nothing but the end marker
//! "No such server.\n" "\n> "     an error: the message, its newline, then the end marker
//! ```
//!
//! Measured on HAProxy 2.6.12 here: exactly that. The 2.x errors that lack their newline
//! (`Empty weight string empty or preceded by garbage`, `Trailing garbage in weight string`)
//! come out as `"Trailing garbage in weight string\n> "`: still one frame, which is why the
//! prompt marker, not the empty line of non-interactive mode, is what we split on (in
//! non-interactive mode those two messages swallow the next command's empty line and every
//! later reply is attributed to the wrong server). We also refuse such weights before sending.
//!
//! HAProxy 3.x, from `src/cli.c` (`cli_io_handler`, `cli_output_msg`, `cli_parse_simple`):
//! bare `prompt` still toggles prompt mode (3.2 adds `prompt n|i|p|timed`, but `prompt` alone
//! keeps its meaning); after each command the handler prints `"\n> "` when the prompt flag is
//! set (the timed variant `"\n[d:hh:mm:ss]> "` only after `prompt timed`, which we never send);
//! and every message is normalised to end with exactly one `"\n"` before that marker. So the
//! framing is identical in 2.6, 3.2 and 3.4. Commands are read one line (or `;`) at a time
//! from a buffer of `tune.bufsize`, and 3.2.0 crashed with ~23 KB pipelined unread, so the
//! client keeps at most [`MAX_IN_FLIGHT`] bytes of commands unanswered.

use super::WeightChange;

/// The end-of-reply marker in prompt mode.
pub(crate) const PROMPT: &[u8] = b"\n> ";

/// At most this many bytes of commands are sent and not yet answered. Half of 3.2+'s default
/// `tune.bufsize` (16,384): never more than one buffer of requests queued in HAProxy.
pub(crate) const MAX_IN_FLIGHT: usize = 8 * 1024;

/// The text HAProxy prints when a socket's level is too low for a command.
pub(crate) const PERMISSION_DENIED: &str = "Permission denied";

/// The `set weight` line for a change, or why it must not be sent.
///
/// Names are checked because the CLI splits on spaces, `;` and newlines and treats `\` as an
/// escape: a name with any of them would run a different command. Weights above 256 are
/// refused by HAProxy anyway; checking here keeps its reply out of the stream.
pub(crate) fn weight_command(change: &WeightChange) -> Result<String, String> {
    for (what, name) in [("backend", &change.backend), ("server", &change.server)] {
        if name.is_empty() {
            return Err(format!("empty {what} name: not sent"));
        }
        if let Some(c) = name
            .chars()
            .find(|c| c.is_whitespace() || c.is_control() || matches!(c, ';' | '\\' | '/'))
        {
            return Err(format!(
                "{what} name {name:?} contains {c:?}, which the HAProxy CLI cannot take: not sent"
            ));
        }
    }
    if change.weight > 256 {
        return Err(format!(
            "weight {} is outside 0..=256: not sent",
            change.weight
        ));
    }
    Ok(format!(
        "set weight {}/{} {}\n",
        change.backend, change.server, change.weight
    ))
}

/// Splits the bytes of a prompt-mode session into replies, as they arrive.
///
/// Public (like [`weight_verdict`]) only so that the fuzz targets in `fuzz/` can feed it a
/// peer's bytes; the client is its one user.
#[derive(Debug, Default)]
pub struct PromptFramer {
    buf: Vec<u8>,
    /// Where to resume looking for the marker, so a reply arriving in many reads is scanned
    /// once.
    scanned: usize,
}

impl PromptFramer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds bytes read from the socket.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete reply, without its end marker, if one has arrived.
    pub fn next_reply(&mut self) -> Option<String> {
        let from = self.scanned.saturating_sub(PROMPT.len() - 1);
        match find(&self.buf[from..], PROMPT) {
            Some(at) => {
                let end = from + at;
                let reply = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                self.buf.drain(..end + PROMPT.len());
                self.scanned = 0;
                Some(reply)
            }
            None => {
                self.scanned = self.buf.len();
                None
            }
        }
    }

    /// Bytes received after the last complete reply.
    pub fn pending(&self) -> &[u8] {
        &self.buf
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// What one reply to `set weight` means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// HAProxy printed nothing: the weight is set.
    Applied,
    /// HAProxy refused this change; its message, trimmed.
    Refused(String),
    /// The socket is below `level admin`: every command will get the same answer.
    PermissionDenied(String),
    /// Not a stats socket that knows `set weight` (e.g. a master CLI without `@1`).
    UnknownCommand(String),
}

/// Reads one prompt-mode reply to `set weight`.
pub fn weight_verdict(reply: &str) -> Verdict {
    let text = reply.trim();
    if text.is_empty() {
        return Verdict::Applied;
    }
    // `severity-output number|string` on the socket prefixes messages with `[3]: ` or
    // `[err]: `; compare what follows.
    let message = strip_severity(text);
    if message == PERMISSION_DENIED {
        Verdict::PermissionDenied(text.to_string())
    } else if message.starts_with("Unknown command") {
        Verdict::UnknownCommand(text.to_string())
    } else {
        Verdict::Refused(text.to_string())
    }
}

/// Removes a leading `[N]: ` or `[word]: ` severity tag, if any.
pub(crate) fn strip_severity(text: &str) -> &str {
    if let Some(rest) = text.strip_prefix('[') {
        if let Some((tag, after)) = rest.split_once("]: ") {
            if !tag.is_empty() && tag.chars().all(|c| c.is_ascii_alphanumeric()) {
                return after;
            }
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(b: &str, s: &str, w: u32) -> WeightChange {
        WeightChange {
            backend: b.into(),
            server: s.into(),
            weight: w,
        }
    }

    #[test]
    fn only_safe_changes_become_commands() {
        let cases: &[(WeightChange, Option<&str>)] = &[
            (change("app", "a-1", 0), Some("set weight app/a-1 0\n")),
            (
                change("app", "a.1_x", 256),
                Some("set weight app/a.1_x 256\n"),
            ),
            (change("app", "a", 257), None),
            (change("app", "a", u32::MAX), None),
            (change("", "a", 1), None),
            (change("app", "", 1), None),
            (change("a pp", "a", 1), None),
            (change("app", "a;show info", 1), None),
            (change("app", "a\\", 1), None),
            (change("app", "a\nshow", 1), None),
            (change("app", "a\r", 1), None),
            (change("app", "a\t", 1), None),
            (change("app/x", "a", 1), None),
            (change("app", "a\u{0}", 1), None),
        ];
        for (c, want) in cases {
            let got = weight_command(c);
            assert_eq!(got.as_deref().ok(), *want, "{c:?}: {got:?}");
        }
    }

    #[test]
    fn frames_split_on_the_prompt_however_the_bytes_arrive() {
        // As measured on 2.6.12: `prompt`, ok, two errors, the two newline-less errors, ok.
        let stream: &[u8] = b"\n> \n> No such server.\n\n> Backend is using a static LB algorithm and only accepts weights '0%' and '100%'.\n\n> Empty weight string empty or preceded by garbage\n> Trailing garbage in weight string\n> \n> ";
        let want = vec![
            "",
            "",
            "No such server.\n",
            "Backend is using a static LB algorithm and only accepts weights '0%' and '100%'.\n",
            "Empty weight string empty or preceded by garbage",
            "Trailing garbage in weight string",
            "",
        ];
        for chunk in [1, 2, 3, 5, 7, 64, stream.len()] {
            let mut framer = PromptFramer::new();
            let mut got = Vec::new();
            for piece in stream.chunks(chunk) {
                framer.push(piece);
                while let Some(r) = framer.next_reply() {
                    got.push(r);
                }
            }
            assert_eq!(got, want, "chunks of {chunk}");
            assert!(framer.pending().is_empty());
        }
    }

    #[test]
    fn an_incomplete_reply_stays_pending() {
        let mut framer = PromptFramer::new();
        framer.push(b"\n> No such ser");
        assert_eq!(framer.next_reply().as_deref(), Some(""));
        assert_eq!(framer.next_reply(), None);
        assert_eq!(framer.pending(), b"No such ser");
        framer.push(b"ver.\n\n");
        assert_eq!(framer.next_reply(), None);
        framer.push(b"> ");
        assert_eq!(framer.next_reply().as_deref(), Some("No such server.\n"));
    }

    #[test]
    fn non_utf8_replies_are_read_lossily() {
        let mut framer = PromptFramer::new();
        framer.push(b"\xff\xfe oops\n\n> ");
        let reply = framer.next_reply().unwrap();
        assert!(matches!(weight_verdict(&reply), Verdict::Refused(_)));
    }

    #[test]
    fn verdicts() {
        let cases: &[(&str, Verdict)] = &[
            ("", Verdict::Applied),
            ("\n", Verdict::Applied),
            (
                "No such server.\n",
                Verdict::Refused("No such server.".into()),
            ),
            (
                "Permission denied\n",
                Verdict::PermissionDenied("Permission denied".into()),
            ),
            (
                "[3]: Permission denied\n",
                Verdict::PermissionDenied("[3]: Permission denied".into()),
            ),
            (
                "[err]: No such backend.\n",
                Verdict::Refused("[err]: No such backend.".into()),
            ),
            (
                "Unknown command, but maybe one of the following ones is a better match:\n  x\n",
                Verdict::UnknownCommand(
                    "Unknown command, but maybe one of the following ones is a better match:\n  x"
                        .into(),
                ),
            ),
        ];
        for (reply, want) in cases {
            assert_eq!(&weight_verdict(reply), want, "{reply:?}");
        }
    }

    proptest::proptest! {
        /// Any bytes, cut anywhere: the framer yields the same replies as in one piece and
        /// never panics.
        #[test]
        fn framing_does_not_depend_on_read_boundaries(
            bytes in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::strategy::Just(b'\n'),
                    proptest::strategy::Just(b'>'),
                    proptest::strategy::Just(b' '),
                    proptest::num::u8::ANY,
                ],
                0..300,
            ),
            cut in 1usize..50,
        ) {
            let whole = {
                let mut f = PromptFramer::new();
                f.push(&bytes);
                std::iter::from_fn(|| f.next_reply()).collect::<Vec<_>>()
            };
            let mut f = PromptFramer::new();
            let mut pieces = Vec::new();
            for chunk in bytes.chunks(cut) {
                f.push(chunk);
                while let Some(r) = f.next_reply() {
                    pieces.push(r);
                }
            }
            proptest::prop_assert_eq!(&whole, &pieces);
            for r in &whole {
                let _ = weight_verdict(r);
            }
        }
    }
}
