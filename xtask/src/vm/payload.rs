//! What runs inside the guest: the agent and the workload helper built
//! statically for musl (the guest has no C library), and a static busybox
//! for the shell, mount, insmod, ip and wget.

use std::{
    fs,
    path::{Path, PathBuf},
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
}

/// Builds `sonde` and `sonde-workload` for musl (adding the target if
/// needed) and finds a static busybox. The eBPF object inside `sonde` is
/// built by agent/build.rs for bpfel whatever the host target.
pub fn build() -> anyhow::Result<Payload> {
    let busybox = find_busybox()?;
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
    fn non_elf_is_an_error() {
        assert!(elf_is_static(b"#!/bin/sh\n").is_none());
    }
}
