//! AFL++ target: `hatune_fuzz::exposition` on every input (see `fuzz/src/checks.rs`).

fn main() {
    afl::fuzz!(|data: &[u8]| hatune_fuzz::exposition(data));
}
