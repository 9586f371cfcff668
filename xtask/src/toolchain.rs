//! The pinned toolchain for the kernel programs: a dated nightly with rust-src
//! (for `-Z build-std=core`) and bpf-linker. rustc's LLVM, the nightly and
//! bpf-linker move together: bump these constants together (and
//! `EBPF_TOOLCHAIN` in agent/build.rs, and `.ci/run`).

use anyhow::{Context as _, bail};

use crate::util;

/// The nightly the eBPF crate is built and linted with.
pub const NIGHTLY: &str = "nightly-2026-05-19";
/// bpf-linker, installed with `cargo install --locked`.
pub const BPF_LINKER_VERSION: &str = "0.10.3";
/// cargo-fuzz (`cargo xtask fuzz`, and its smoke in `cargo xtask test`),
/// installed with `cargo install --locked`; it runs on [`NIGHTLY`].
pub const CARGO_FUZZ_VERSION: &str = "0.13.2";
/// The kernel programs' target.
pub const BPF_TARGET: &str = "bpfel-unknown-none";
/// Static binaries (no C library): the FROM-scratch container image and
/// the VM guest's payload.
pub const MUSL_TARGET: &str = "x86_64-unknown-linux-musl";
/// Rust targets besides the host's, which `cargo xtask test` adds before
/// its first build (bootstrap.rs).
pub const RUST_TARGETS: &[(&str, &str)] = &[(
    MUSL_TARGET,
    "static binaries: the FROM-scratch container image and the VM guest",
)];

/// What the toolchain is needed for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Build the agent: nightly + rust-src, bpf-linker.
    Build,
    /// Also lint: clippy on the nightly, rustfmt and clippy on the host toolchain.
    Lint,
}

/// Checks the toolchain and installs what is missing, saying what it does.
/// Quiet apart from one summary line when everything is already there.
pub fn ensure(purpose: Purpose) -> anyhow::Result<()> {
    if util::which("rustup").is_none() {
        bail!(
            "rustup not found on PATH: Sonde pins a nightly for its kernel programs and needs rustup to get it (https://rustup.rs)"
        );
    }
    let mut nightly_components = vec!["rust-src"];
    if purpose == Purpose::Lint {
        nightly_components.push("clippy");
        ensure_components(None, &["rustfmt", "clippy"])?;
    }
    ensure_nightly(&nightly_components)?;
    ensure_bpf_linker()?;
    let mut extra = String::new();
    if purpose == Purpose::Lint {
        ensure_cargo_fuzz()?;
        extra = format!(", cargo-fuzz {CARGO_FUZZ_VERSION}");
    }
    println!(
        "toolchain ok: {NIGHTLY} ({}), bpf-linker {BPF_LINKER_VERSION}{extra}",
        nightly_components.join(", ")
    );
    Ok(())
}

fn ensure_nightly(components: &[&str]) -> anyhow::Result<()> {
    let list = util::stdout_of(util::command("rustup").args(["toolchain", "list"]))
        .context("`rustup toolchain list` failed")?;
    // Lines look like `nightly-2026-05-19-x86_64-unknown-linux-gnu (active)`.
    let installed = list.lines().any(|line| {
        line.split_whitespace()
            .next()
            .is_some_and(|name| name == NIGHTLY || name.starts_with(&format!("{NIGHTLY}-")))
    });
    if !installed {
        println!(
            "Installing Rust toolchain {NIGHTLY} with {}",
            components.join(", ")
        );
        return util::run(util::command("rustup").args([
            "toolchain",
            "install",
            NIGHTLY,
            "--profile",
            "minimal",
            "--component",
            &components.join(","),
        ]));
    }
    ensure_components(Some(NIGHTLY), components)
}

/// Adds the components that `toolchain` (the active one if `None`) lacks.
fn ensure_components(toolchain: Option<&str>, components: &[&str]) -> anyhow::Result<()> {
    let mut list = util::command("rustup");
    list.args(["component", "list", "--installed"]);
    if let Some(t) = toolchain {
        list.args(["--toolchain", t]);
    }
    let shown = util::display(&list);
    let installed = util::stdout_of(&mut list).with_context(|| format!("`{shown}` failed"))?;
    // Lines look like `rust-src` or `clippy-x86_64-unknown-linux-gnu`.
    let missing: Vec<&str> = components
        .iter()
        .copied()
        .filter(|c| {
            !installed
                .lines()
                .any(|l| l.trim() == *c || l.trim().starts_with(&format!("{c}-")))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let name = toolchain.unwrap_or("the active toolchain");
    println!("Adding {} to {name}", missing.join(", "));
    let mut add = util::command("rustup");
    add.args(["component", "add"]);
    if let Some(t) = toolchain {
        add.args(["--toolchain", t]);
    }
    util::run(add.args(&missing))
}

/// The version `bpf-linker --version` reports, if it runs.
fn bpf_linker_version() -> Option<String> {
    let out = util::stdout_of(util::command("bpf-linker").arg("--version"))?;
    // `bpf-linker 0.10.3`
    out.split_whitespace().nth(1).map(str::to_owned)
}

/// The version `cargo fuzz --version` reports, if it runs.
fn cargo_fuzz_version() -> Option<String> {
    let out = util::stdout_of(util::cargo().args(["fuzz", "--version"]))?;
    // `cargo-fuzz 0.13.2`
    out.split_whitespace().nth(1).map(str::to_owned)
}

/// Installs the pinned cargo-fuzz unless it is there, as bpf-linker is.
pub fn ensure_cargo_fuzz() -> anyhow::Result<()> {
    let found = cargo_fuzz_version();
    if found.as_deref() == Some(CARGO_FUZZ_VERSION) {
        return Ok(());
    }
    let mut install = util::cargo();
    install.args([
        "install",
        &format!("cargo-fuzz@{CARGO_FUZZ_VERSION}"),
        "--locked",
    ]);
    match &found {
        Some(v) => {
            println!("cargo-fuzz {v} found, {CARGO_FUZZ_VERSION} is pinned: reinstalling");
            install.arg("--force");
        }
        None => println!("cargo-fuzz not found: installing {CARGO_FUZZ_VERSION} (a few minutes)"),
    }
    util::run(&mut install)?;
    match cargo_fuzz_version() {
        Some(v) if v == CARGO_FUZZ_VERSION => Ok(()),
        other => bail!(
            "installed cargo-fuzz {CARGO_FUZZ_VERSION}, but `cargo fuzz --version` says {other:?}: put cargo's bin directory (usually ~/.cargo/bin) first on PATH"
        ),
    }
}

fn ensure_bpf_linker() -> anyhow::Result<()> {
    let found = bpf_linker_version();
    if found.as_deref() == Some(BPF_LINKER_VERSION) {
        return Ok(());
    }
    let mut install = util::cargo();
    install.args([
        "install",
        &format!("bpf-linker@{BPF_LINKER_VERSION}"),
        "--locked",
    ]);
    match &found {
        Some(v) => {
            println!(
                "bpf-linker {v} found, {BPF_LINKER_VERSION} is pinned: reinstalling (a few minutes)"
            );
            install.arg("--force");
        }
        None => println!("bpf-linker not found: installing {BPF_LINKER_VERSION} (a few minutes)"),
    }
    util::run(&mut install)?;
    match bpf_linker_version() {
        Some(v) if v == BPF_LINKER_VERSION => Ok(()),
        Some(v) => bail!(
            "installed bpf-linker {BPF_LINKER_VERSION}, but the one first on PATH is still {v} ({}): remove it or put cargo's bin directory first",
            util::which("bpf-linker").unwrap_or_default().display()
        ),
        None => bail!(
            "installed bpf-linker {BPF_LINKER_VERSION}, but it is not on PATH: add cargo's bin directory (usually ~/.cargo/bin) to PATH"
        ),
    }
}
