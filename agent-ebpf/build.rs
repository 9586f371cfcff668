use std::env;

/// Building this crate has an undeclared dependency on the `bpf-linker`
/// binary: rebuild whenever the one on PATH changes, so a bumped linker never
/// leaves stale bytecode behind.
fn main() {
    let Some(path) = env::var_os("PATH") else {
        return;
    };
    if let Ok(linker) = which::which_in("bpf-linker", Some(path), ".") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
