//! AFL++ target: `hatune_fuzz::show_stat` on every input (see `fuzz/src/checks.rs`).

fn main() {
    afl::fuzz!(|data: &[u8]| hatune_fuzz::show_stat(data));
}
