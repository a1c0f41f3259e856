//! AFL++ target: `hatune_fuzz::config` on every input (see `fuzz/src/checks.rs`).

fn main() {
    afl::fuzz!(|data: &[u8]| hatune_fuzz::config(data));
}
