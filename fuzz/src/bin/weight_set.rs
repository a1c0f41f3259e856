//! AFL++ target: `hatune_fuzz::weight_set` on every input (see `fuzz/src/checks.rs`).

fn main() {
    afl::fuzz!(|data: &[u8]| hatune_fuzz::weight_set(data));
}
