//! What runs inside the guest: the agent, the workload helper and the
//! integration-test binaries built statically for musl (the guest has no C
//! library), a static busybox for
//! the shell, mount, insmod and wget, and the host's iproute2 `tc` and `ip`
//! with the shared libraries they load (busybox's cannot set up netem, veth
//! pairs or network namespaces; no static iproute2 is packaged).

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

use crate::{toolchain::MUSL_TARGET, util};

#[derive(Debug)]
pub struct Payload {
    pub sonde: PathBuf,
    pub workload: PathBuf,
    /// The integration-test binaries of tests/tests/, by name (`syscalls`).
    pub tests: BTreeMap<String, PathBuf>,
    pub busybox: PathBuf,
    /// iproute2's tc and ip, dynamically linked.
    pub tools: Vec<PathBuf>,
    /// What they load: their libraries and the dynamic loader, each to be
    /// placed in the guest at the same path as on the host.
    pub tool_libraries: Vec<PathBuf>,
}

/// Builds `sonde`, `sonde-workload` and the integration-test binaries for
/// musl (adding the target if needed) and finds a static busybox. The eBPF object inside `sonde` is
/// built by agent/build.rs for bpfel whatever the host target.
pub fn build() -> anyhow::Result<Payload> {
    let busybox = find_busybox()?;
    let mut tools = Vec::new();
    let mut tool_libraries: Vec<PathBuf> = Vec::new();
    for name in ["tc", "ip"] {
        let tool = util::which(name)
            .or_else(|| Some(PathBuf::from("/usr/sbin").join(name)).filter(|p| p.is_file()))
            .with_context(|| {
                format!("{name} not found: apt-get install iproute2 (the guest needs it)")
            })?;
        for lib in shared_libraries(&tool)? {
            if !tool_libraries.contains(&lib) {
                tool_libraries.push(lib);
            }
        }
        tools.push(tool);
    }
    crate::bootstrap::ensure_build()?;
    // The musl target, declared with the rest in bootstrap.rs (which
    // `cargo xtask test` also uses to install musl-tools for ring's C parts).
    crate::bootstrap::ensure_rust_targets()?;
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
    let tests = build_tests()?;
    let dir = util::target_dir().join(MUSL_TARGET).join("release");
    let payload = Payload {
        sonde: dir.join("sonde"),
        workload: dir.join("sonde-workload"),
        tests,
        busybox,
        tools,
        tool_libraries,
    };
    for bin in [&payload.sonde, &payload.workload]
        .into_iter()
        .chain(payload.tests.values())
    {
        if !is_static(bin)? {
            bail!(
                "{} is dynamically linked; the guest has no C library (built for {MUSL_TARGET}?)",
                bin.display()
            );
        }
    }
    Ok(payload)
}

/// `cargo test -p sonde-tests --no-run` for musl, as aya's VM runner does:
/// the executables come from cargo's JSON messages (their file names carry
/// a hash).
fn build_tests() -> anyhow::Result<BTreeMap<String, PathBuf>> {
    let mut cmd = util::cargo();
    cmd.args([
        "test",
        "--release",
        "--target",
        MUSL_TARGET,
        "-p",
        "sonde-tests",
        "--tests",
        "--no-run",
        "--message-format=json",
    ])
    .stderr(Stdio::inherit());
    let out = cmd
        .output()
        .with_context(|| format!("could not run `{}`", util::display(&cmd)))?;
    util::check(out.status, &util::display(&cmd))?;
    let tests = test_executables(&String::from_utf8_lossy(&out.stdout));
    if tests.is_empty() {
        bail!("`{}` named no test executable", util::display(&cmd));
    }
    Ok(tests)
}

/// The integration-test executables in cargo's JSON messages: artifacts of
/// targets of kind `test` (the library's unit tests are kind `lib`).
fn test_executables(messages: &str) -> BTreeMap<String, PathBuf> {
    messages
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|m| m["reason"] == "compiler-artifact")
        .filter(|m| {
            m["target"]["kind"]
                .as_array()
                .is_some_and(|k| k.iter().any(|k| k == "test"))
        })
        .filter_map(|m| {
            Some((
                m["target"]["name"].as_str()?.to_owned(),
                PathBuf::from(m["executable"].as_str()?),
            ))
        })
        .collect()
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
    fn test_executables_come_from_test_targets_only() {
        let messages = r#"{"reason":"compiler-artifact","target":{"kind":["lib"],"name":"sonde_tests"},"executable":null}
{"reason":"compiler-artifact","target":{"kind":["test"],"name":"syscalls"},"executable":"/t/deps/syscalls-0a1b"}
{"reason":"compiler-artifact","target":{"kind":["bin"],"name":"sonde-workload"},"executable":"/t/sonde-workload"}
{"reason":"build-finished","success":true}"#;
        assert_eq!(
            test_executables(messages),
            BTreeMap::from([(
                "syscalls".to_owned(),
                PathBuf::from("/t/deps/syscalls-0a1b")
            )])
        );
    }

    #[test]
    fn non_elf_is_an_error() {
        assert!(elf_is_static(b"#!/bin/sh\n").is_none());
    }
}
