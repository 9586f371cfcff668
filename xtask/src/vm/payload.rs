//! What runs inside the guest: the agent and the workload helper built
//! statically for musl (the guest has no C library), a static busybox for
//! the shell, mount, insmod, ip and wget, and the host's iproute2 `tc` with
//! the shared libraries it loads (busybox's tc cannot set up netem; no
//! static iproute2 is packaged).

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::{
    toolchain::{self, Purpose},
    util,
};

/// Static binaries: no dynamic loader, no C library needed in the guest.
pub const MUSL_TARGET: &str = "x86_64-unknown-linux-musl";

#[derive(Debug)]
pub struct Payload {
    pub sonde: PathBuf,
    pub workload: PathBuf,
    pub busybox: PathBuf,
    /// iproute2's tc, dynamically linked.
    pub tc: PathBuf,
    /// What tc loads: its libraries and the dynamic loader, each to be
    /// placed in the guest at the same path as on the host.
    pub tc_libraries: Vec<PathBuf>,
}

/// Builds `sonde` and `sonde-workload` for musl (adding the target if
/// needed) and finds a static busybox. The eBPF object inside `sonde` is
/// built by agent/build.rs for bpfel whatever the host target.
pub fn build() -> anyhow::Result<Payload> {
    let busybox = find_busybox()?;
    let tc = util::which("tc")
        .or_else(|| Some(PathBuf::from("/usr/sbin/tc")).filter(|p| p.is_file()))
        .context("tc not found: apt-get install iproute2 (the guest sets up netem with it)")?;
    let tc_libraries = shared_libraries(&tc)?;
    toolchain::ensure(Purpose::Build)?;
    ensure_musl_target()?;
    util::run(util::cargo().args([
        "build",
        "--release",
        "--target",
        MUSL_TARGET,
        "-p",
        "sonde",
        "-p",
        "sonde-tests",
        "--bin",
        "sonde",
        "--bin",
        "sonde-workload",
    ]))?;
    let dir = util::target_dir().join(MUSL_TARGET).join("release");
    let payload = Payload {
        sonde: dir.join("sonde"),
        workload: dir.join("sonde-workload"),
        busybox,
        tc,
        tc_libraries,
    };
    for bin in [&payload.sonde, &payload.workload] {
        if !is_static(bin)? {
            bail!(
                "{} is dynamically linked; the guest has no C library (built for {MUSL_TARGET}?)",
                bin.display()
            );
        }
    }
    Ok(payload)
}

fn ensure_musl_target() -> anyhow::Result<()> {
    let mut list = util::command("rustup");
    list.args(["target", "list", "--installed"]);
    let installed =
        util::stdout_of(&mut list).context("`rustup target list --installed` failed")?;
    if installed.lines().any(|l| l.trim() == MUSL_TARGET) {
        return Ok(());
    }
    println!("Adding the {MUSL_TARGET} target (static binaries for the guest)");
    util::run(util::command("rustup").args(["target", "add", MUSL_TARGET]))
}

fn find_busybox() -> anyhow::Result<PathBuf> {
    let candidates = [
        PathBuf::from("/bin/busybox"),
        PathBuf::from("/usr/bin/busybox"),
    ];
    for path in candidates.iter().cloned().chain(util::which("busybox")) {
        if path.is_file() && is_static(&path)? {
            return Ok(path);
        }
    }
    if candidates.iter().any(|p| p.is_file()) {
        bail!(
            "busybox here is dynamically linked; the guest needs the static one: apt-get install busybox-static"
        );
    }
    bail!("busybox not found: apt-get install busybox-static")
}

/// The shared libraries and the dynamic loader `bin` loads, as `ldd` lists
/// them (absolute paths; the kernel's vDSO has none).
fn shared_libraries(bin: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let listing = util::stdout_of(Command::new("ldd").arg(bin))
        .with_context(|| format!("`ldd {}` failed", bin.display()))?;
    let libraries = parse_ldd(&listing);
    if !libraries
        .iter()
        .any(|l| l.to_string_lossy().contains("ld-linux"))
    {
        bail!(
            "`ldd {}` named no dynamic loader:\n{listing}",
            bin.display()
        );
    }
    Ok(libraries)
}

/// `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)` and
/// `/lib64/ld-linux-x86-64.so.2 (0x…)` lines → their absolute paths.
fn parse_ldd(listing: &str) -> Vec<PathBuf> {
    listing
        .lines()
        .filter_map(|line| {
            let path = match line.split_once("=>") {
                Some((_, right)) => right.split_whitespace().next()?,
                None => line.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// True when the ELF file has no program interpreter (PT_INTERP): a static
/// or static-pie executable.
pub fn is_static(path: &Path) -> anyhow::Result<bool> {
    let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    elf_is_static(&bytes).with_context(|| format!("{} is not a 64-bit ELF file", path.display()))
}

fn elf_is_static(b: &[u8]) -> Option<bool> {
    const PT_INTERP: u32 = 3;
    if b.len() < 64 || &b[..4] != b"\x7fELF" || b[4] != 2 || b[5] != 1 {
        return None; // not ELF64 little-endian
    }
    let u16_at = |o: usize| Some(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?));
    let u32_at = |o: usize| Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?));
    let u64_at = |o: usize| Some(u64::from_le_bytes(b.get(o..o + 8)?.try_into().ok()?));
    let phoff = usize::try_from(u64_at(0x20)?).ok()?;
    let phentsize = usize::from(u16_at(0x36)?);
    let phnum = usize::from(u16_at(0x38)?);
    for i in 0..phnum {
        if u32_at(phoff + i * phentsize)? == PT_INTERP {
            return Some(false);
        }
    }
    Some(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_test_binary_is_recognised() {
        // Built for the host: dynamic on glibc, static on musl.
        let me = std::env::current_exe().unwrap();
        let dynamic = cfg!(target_env = "gnu");
        assert_eq!(is_static(&me).unwrap(), !dynamic);
    }

    #[test]
    fn ldd_lines_give_library_and_loader_paths() {
        let listing = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                       \tlibmnl.so.0 => /lib/x86_64-linux-gnu/libmnl.so.0 (0x00007f13)\n\
                       \t/lib64/ld-linux-x86-64.so.2 (0x00007f14)\n";
        assert_eq!(
            parse_ldd(listing),
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libmnl.so.0"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2")
            ]
        );
    }

    #[test]
    fn non_elf_is_an_error() {
        assert!(elf_is_static(b"#!/bin/sh\n").is_none());
    }
}
