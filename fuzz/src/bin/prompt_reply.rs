//! AFL++ target: `hatune_fuzz::prompt_reply` on every input (see `fuzz/src/checks.rs`).

fn main() {
    afl::fuzz!(|data: &[u8]| hatune_fuzz::prompt_reply(data));
}
