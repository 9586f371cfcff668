//! Builds the kernel programs (`agent-ebpf`) for bpfel-unknown-none with the
//! pinned nightly, so the daemon can embed the object from OUT_DIR and never
//! ships stale bytecode. `AYA_BUILD_SKIP=1` skips it (aya-build's own switch)
//! for tools that only need metadata.
use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

/// The dated nightly the eBPF crate is built with; bump it together with
/// bpf-linker (both embed the same LLVM).
const EBPF_TOOLCHAIN: &str = "nightly-2026-05-19";

/// Writes OUT_DIR/signals.rs, which agent/src/signals/mod.rs includes: a
/// `pub mod` for every other file in that directory (or directory with a
/// mod.rs, for a signal in several files) and `ALL`, their `SIGNAL`s by
/// name. A new signal is then one new file there, not also a line in a
/// list.
fn list_signals() -> anyhow::Result<()> {
    let dir = std::path::Path::new(&std::env::var("CARGO_MANIFEST_DIR")?).join("src/signals");
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let mut path = entry?.path();
        let Some(file_name) = path.file_name().and_then(|n| n.to_str()).map(str::to_owned) else {
            continue;
        };
        let name = if path.join("mod.rs").is_file() {
            println!("cargo:rerun-if-changed={}", path.display());
            path = path.join("mod.rs");
            file_name.as_str()
        } else if let Some(name) = file_name.strip_suffix(".rs") {
            name
        } else {
            continue;
        };
        if name != "mod" {
            names.push((name.to_owned(), path.display().to_string()));
        }
    }
    names.sort();
    let mut out = String::new();
    for (name, path) in &names {
        out += &format!("#[path = {path:?}]\npub mod {name};\n");
    }
    out += "/// Every signal, by module name: the order the loader attaches them.\n";
    out += "pub const ALL: &[&Signal] = &[";
    for (name, _) in &names {
        out += &format!("&{name}::SIGNAL, ");
    }
    out += "];\n";
    let target = std::path::Path::new(&std::env::var("OUT_DIR")?).join("signals.rs");
    std::fs::write(&target, out).with_context(|| format!("writing {}", target.display()))
}

/// `git ARGS` in this crate's directory, its trimmed output if it succeeded.
fn git(args: &[&str]) -> Option<String> {
    std::process::Command::new("git")
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
}

/// Rebuilds when HEAD moves: HEAD itself (a checkout) and the branch it
/// names (a commit), wherever git keeps them — in a worktree `.git` is a
/// file and HEAD lives under the main repository's `worktrees/`. Only
/// existing files are watched: cargo reruns every time for a missing one.
fn watch_head() {
    let branch = git(&["symbolic-ref", "-q", "HEAD"]);
    for name in ["HEAD", "packed-refs"]
        .into_iter()
        .map(str::to_owned)
        .chain(branch)
    {
        if let Some(path) = git(&["rev-parse", "--path-format=absolute", "--git-path", &name])
            && std::path::Path::new(&path).is_file()
        {
            println!("cargo:rerun-if-changed={path}");
        }
    }
}

fn main() -> anyhow::Result<()> {
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = metadata
        .packages
        .into_iter()
        .find(|p| p.name.as_str() == "agent-ebpf")
        .ok_or_else(|| anyhow!("agent-ebpf package not found in the workspace"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("agent-ebpf manifest has no parent directory"))?
        .as_str()
        .to_owned();
    println!("cargo:rerun-if-changed=../agent-common/src");
    list_signals()?;
    let sha = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=SONDE_GIT_SHA={sha}");
    watch_head();
    aya_build::build_ebpf(
        [Package {
            name: "agent-ebpf",
            root_dir: &root_dir,
            ..Default::default()
        }],
        Toolchain::Custom(EBPF_TOOLCHAIN),
    )
}
