//! AFL++ target: `hatune_fuzz::cadvisor_machine` on every input (see `fuzz/src/checks.rs`).

fn main() {
    afl::fuzz!(|data: &[u8]| hatune_fuzz::cadvisor_machine(data));
}
