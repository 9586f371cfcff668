//! What the suite needs from the machine beyond rustup, declared once:
//! Debian packages (with the commands they provide), Rust targets, and pip
//! tools. `cargo xtask test` installs what is missing before its first build
//! and says what it installed; `.ci/run` only calls it. A unit test below
//! reads the sources of tests/ and xtask/ and fails when they run a command
//! or build for a target that this file does not install, so the two cannot
//! drift.

use anyhow::{Context as _, bail};

use sonde_tests::sys;

use crate::{
    toolchain::{self, RUST_TARGETS},
    util,
};

/// A Debian package the suite needs, the commands it is needed for (looked
/// up on PATH to decide whether it is present when dpkg cannot say), and why.
#[derive(Debug)]
pub struct Package {
    pub name: &'static str,
    pub commands: &'static [&'static str],
    pub why: &'static str,
}

/// Every system package the integration tests, the kernel matrix, the stack,
/// the benchmark and the evaluation use. Debian/Ubuntu names.
pub const PACKAGES: &[Package] = &[
    Package {
        name: "bpftrace",
        commands: &["bpftrace"],
        why: "the independent referee of the counts",
    },
    Package {
        name: "bpftool",
        commands: &["bpftool"],
        why: "inspects the programs the agent loaded",
    },
    Package {
        name: "iproute2",
        commands: &["ip", "tc", "ss"],
        why: "network namespaces, veth pairs, qdiscs, sockets' RTT (the eval's referee); tc in the VM guest",
    },
    Package {
        name: "iptables",
        commands: &["iptables"],
        why: "drops with a known reason; loss without sch_netem",
    },
    Package {
        name: "prometheus",
        commands: &["prometheus", "promtool"],
        why: "promtool checks the exposition and rules; the stack's server",
    },
    Package {
        name: "prometheus-alertmanager",
        commands: &["prometheus-alertmanager"],
        why: "the stack's Alertmanager",
    },
    Package {
        name: "stress-ng",
        commands: &["stress-ng"],
        why: "CPU contention for the run-queue signal",
    },
    Package {
        name: "iperf3",
        commands: &["iperf3"],
        why: "packet-path load in bench and eval",
    },
    Package {
        name: "wrk",
        commands: &["wrk"],
        why: "scrape latency in bench; the HTTP flood of the web tests",
    },
    Package {
        name: "openssl",
        commands: &["openssl"],
        why: "certificates (server, CA, client) of the TLS and mTLS tests",
    },
    Package {
        name: "curl",
        commands: &["curl"],
        why: "the TLS client of the web tests, and over the admin socket",
    },
    Package {
        name: "hping3",
        commands: &["hping3"],
        why: "SYN floods in the MAPE-K tests and eval",
    },
    Package {
        name: "nmap",
        commands: &["nmap", "nping"],
        why: "port scans in eval; nping sends what an OUTPUT rule refuses in the detection tests",
    },
    Package {
        name: "iputils-ping",
        commands: &["ping"],
        why: "ICMPv6 echo floods (ping -f) in the detection tests",
    },
    Package {
        name: "systemd",
        commands: &["systemd-analyze"],
        why: "verifies the systemd unit",
    },
    Package {
        name: "podman",
        commands: &["podman"],
        why: "builds and runs the container image",
    },
    Package {
        name: "protobuf-compiler",
        commands: &[],
        why: "protoc, run by k8s-cri's build script (the agent's CRI client)",
    },
    Package {
        name: "containerd",
        commands: &["containerd", "ctr"],
        why: "the real container runtime the pod identity tests drive over CRI",
    },
    Package {
        name: "containernetworking-plugins",
        commands: &[],
        why: "CNI bridge, host-local and loopback for the pods containerd runs",
    },
    Package {
        name: "runc",
        commands: &["runc"],
        why: "podman's runtime here: crun refuses hybrid cgroups",
    },
    Package {
        name: "file",
        commands: &["file"],
        why: "checks the container's binary is static",
    },
    Package {
        name: "python3-pip",
        commands: &["python3", "pip3"],
        why: "installs kubernetes-validate; reads YAML manifests",
    },
    Package {
        name: "qemu-system-x86",
        commands: &["qemu-system-x86_64"],
        why: "boots the kernel matrix's Debian kernels",
    },
    Package {
        name: "busybox-static",
        commands: &["busybox"],
        why: "the VM guest's shell and tools",
    },
    Package {
        name: "xz-utils",
        commands: &["xz"],
        why: "unpacks 6.12's compressed kernel modules",
    },
    Package {
        name: "musl-tools",
        // Run by cargo's build scripts (ring's, through the cc crate), not
        // by the suite's own code.
        commands: &[],
        why: "x86_64-linux-musl-gcc: the C parts of the TLS stack in the static build",
    },
    Package {
        name: "fonts-dejavu-core",
        commands: &[],
        why: "the text of the benchmark's chart",
    },
];

/// Commands the suite runs that every Debian or Ubuntu machine has (its
/// essential packages: coreutils, util-linux, mount, libc-bin, dpkg, apt),
/// or that come with rustup or the checkout itself. Nothing to install.
#[cfg(test)]
const BASE_COMMANDS: &[&str] = &[
    "apt-cache",
    "apt-get",
    "bash",
    "cargo",
    "cat",
    "dd",
    "dpkg-deb",
    "git",
    "kill",
    "ldd",
    "losetup",
    "mount",
    "rustup",
    "setpriv",
    "sh",
    "sleep",
    "taskset",
    "timeout",
    "true",
    "umount",
];

/// Commands the suite uses only when present, saying so when absent;
/// nothing in Debian's archive provides them.
#[cfg(test)]
const OPTIONAL_COMMANDS: &[(&str, &str)] = &[
    (
        "kubectl",
        "renders the kustomizations when present (not packaged by Debian)",
    ),
    ("sudo", "runs the privileged steps when not root"),
];

/// Tools from PyPI, by package name (its command has the same name).
pub const PIP_TOOLS: &[(&str, &str)] = &[(
    "kubernetes-validate",
    "validates the Kubernetes manifests offline against the API schemas",
)];

/// Installs every Rust target, Debian package and pip tool the suite needs
/// that this machine lacks. On a machine without apt it prints what to
/// install and fails, naming the packages.
pub fn ensure_all() -> anyhow::Result<()> {
    ensure_rust_targets()?;
    ensure_packages()?;
    ensure_pip_tools()?;
    Ok(())
}

/// Adds the Rust targets the suite builds for (quiet when present).
pub fn ensure_rust_targets() -> anyhow::Result<()> {
    let mut list = util::command("rustup");
    list.args(["target", "list", "--installed"]);
    let installed =
        util::stdout_of(&mut list).context("`rustup target list --installed` failed")?;
    for (target, why) in RUST_TARGETS {
        if installed.lines().any(|l| l.trim() == *target) {
            continue;
        }
        println!("Adding the Rust target {target} ({why})");
        util::run(util::command("rustup").args(["target", "add", target]))?;
    }
    Ok(())
}

fn package_installed(name: &str) -> bool {
    util::stdout_of(util::command("dpkg-query").args(["-W", "-f=${Status}", name]))
        .is_some_and(|status| status.contains("install ok installed"))
}

/// What building the agent itself needs beyond Rust (`cargo xtask run`
/// on a machine with only rustup installs these, not the whole suite's).
pub const BUILD_PACKAGES: &[&str] = &["protobuf-compiler"];

/// The packages of `wanted` (None: all) this machine lacks: by dpkg where
/// there is one, else by their commands on PATH.
fn missing_packages(wanted: Option<&[&str]>) -> Vec<&'static Package> {
    let dpkg = util::which("dpkg-query").is_some();
    PACKAGES
        .iter()
        .filter(|p| wanted.is_none_or(|w| w.contains(&p.name)))
        .filter(|p| {
            if dpkg {
                !package_installed(p.name)
            } else {
                p.commands.iter().any(|c| util::which(c).is_none())
            }
        })
        .collect()
}

/// Installs the missing Debian packages with apt-get (through sudo when not
/// root), saying which and why.
pub fn ensure_packages() -> anyhow::Result<()> {
    install_missing(None)
}

/// Installs what building the agent needs ([`BUILD_PACKAGES`]), if missing.
pub fn ensure_build_packages() -> anyhow::Result<()> {
    install_missing(Some(BUILD_PACKAGES))
}

/// Everything building the agent needs: the pinned nightly, bpf-linker and
/// [`BUILD_PACKAGES`] (protoc, for the CRI client). Every command that
/// builds the agent calls this first, so each works on a machine with only
/// rustup, not just `cargo xtask test`.
pub fn ensure_build() -> anyhow::Result<()> {
    toolchain::ensure(toolchain::Purpose::Build)?;
    ensure_build_packages()
}

/// Installs the packages of whichever `tools` ((command, Debian package))
/// are not on PATH, so `cargo xtask bench`, `eval`, `soak` and `stack` run
/// on a fresh machine as `cargo xtask test` does; `what` names the caller
/// in the error when some are still missing after it.
pub fn ensure_tools(tools: &[(&str, &str)], what: &str) -> anyhow::Result<()> {
    let packages: Vec<&str> = tools
        .iter()
        .filter(|(program, _)| !sys::have(program))
        .map(|&(_, package)| package)
        .collect();
    if packages.is_empty() {
        return Ok(());
    }
    install_missing(Some(&packages))?;
    let missing = sys::missing_tools(tools);
    if !missing.is_empty() {
        bail!("{what} needs: {}", missing.join(", "));
    }
    Ok(())
}

fn install_missing(wanted: Option<&[&str]>) -> anyhow::Result<()> {
    let missing = missing_packages(wanted);
    if missing.is_empty() {
        let n = wanted.map_or(PACKAGES.len(), <[&str]>::len);
        println!("system packages: all {n} present");
        return Ok(());
    }
    let names: Vec<&str> = missing.iter().map(|p| p.name).collect();
    let install_line = format!(
        "apt-get install -y --no-install-recommends {}",
        names.join(" ")
    );
    if util::which("apt-get").is_none() {
        bail!(
            "the suite needs these packages (Debian names), and this machine has no apt-get to \
             install them: {}. Install the equivalents with your package manager, or on \
             Debian/Ubuntu run: {install_line}",
            describe(&missing)
        );
    }
    let sudo: &[&str] = if util::is_root() {
        &[]
    } else if util::which("sudo").is_some() {
        &["sudo"]
    } else {
        bail!(
            "not root and no sudo: cannot install {}. As root run: apt-get update && {install_line}",
            describe(&missing)
        );
    };
    println!("Installing system packages: {}", describe(&missing));
    let apt = |args: &[&str]| {
        let mut cmd = util::command(sudo.first().copied().unwrap_or("apt-get"));
        if !sudo.is_empty() {
            cmd.arg("apt-get");
        }
        cmd.env("DEBIAN_FRONTEND", "noninteractive").args(args);
        cmd
    };
    util::run(&mut apt(&["update", "-q"]))?;
    let mut install = apt(&["install", "-y", "-q", "--no-install-recommends"]);
    util::run(install.args(&names))?;
    let still: Vec<&str> = missing_packages(wanted).iter().map(|p| p.name).collect();
    if !still.is_empty() {
        bail!(
            "apt-get ran, but these are still missing: {}",
            still.join(", ")
        );
    }
    println!("installed: {}", names.join(", "));
    Ok(())
}

fn describe(packages: &[&Package]) -> String {
    packages
        .iter()
        .map(|p| format!("{} ({})", p.name, p.why))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Installs the pip tools that are not on PATH: with pip, falling back to
/// `python3 -m pip --break-system-packages` where the distribution's Python
/// is externally managed (PEP 668).
pub fn ensure_pip_tools() -> anyhow::Result<()> {
    for (tool, why) in PIP_TOOLS {
        if util::which(tool).is_some() {
            continue;
        }
        println!("Installing {tool} from PyPI ({why})");
        let pip = util::which("pip3")
            .or_else(|| util::which("pip"))
            .context("pip not found (the python3-pip package should have brought it)")?;
        let plain = util::command(&pip).args(["install", "-q", tool]).status();
        if !plain.is_ok_and(|s| s.success()) {
            util::run(util::command("python3").args([
                "-m",
                "pip",
                "install",
                "-q",
                "--break-system-packages",
                tool,
            ]))?;
        }
        if util::which("pyenv").is_some() {
            let _ = util::command("pyenv").arg("rehash").status();
        }
        if util::which(tool).is_none() {
            bail!(
                "installed {tool} with pip, but it is not on PATH: add pip's script directory \
                 (for root usually /usr/local/bin, else ~/.local/bin) to PATH"
            );
        }
    }
    Ok(())
}

/// The commands the sources run: the first string literal of every call to
/// `Command::new`, `command`, `which`, `have` and `tool`.
#[cfg(test)]
fn commands_in(source: &str) -> Vec<String> {
    const CALLS: &[&str] = &["Command::new(", "command(", "which(", "have(", "tool("];
    let mut found = Vec::new();
    for call in CALLS {
        let mut rest = source;
        while let Some(at) = rest.find(call) {
            // `fn command(` and friends are definitions, not calls.
            let before = rest[..at].trim_end();
            rest = &rest[at + call.len()..];
            if before.ends_with("fn") {
                continue;
            }
            if let Some(literal) = first_literal_argument(rest) {
                found.push(literal);
            }
        }
    }
    found
}

/// The first string literal among a call's top-level arguments (`rest`
/// starts just after its opening parenthesis).
#[cfg(test)]
fn first_literal_argument(rest: &str) -> Option<String> {
    let mut depth = 0usize;
    let mut chars = rest.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' if depth == 0 => return None,
            ')' | ']' | '}' => depth -= 1,
            '"' if depth == 0 => {
                let end = rest[i + 1..].find('"')?;
                return Some(rest[i + 1..i + 1 + end].to_owned());
            }
            '"' => {
                // Skip a nested literal whole.
                for (_, c) in chars.by_ref() {
                    if c == '"' {
                        break;
                    }
                }
            }
            _ => {}
        }
    }
    None
}

/// Every `.rs` file below `dir`.
#[cfg(test)]
fn rust_files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n != "target") {
                rust_files(&path, out);
            }
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Rust sources of `dirs`, with their paths from the workspace root.
    fn sources(dirs: &[&str]) -> Vec<(String, String)> {
        let root = util::workspace_root();
        let mut files = Vec::new();
        for dir in dirs {
            rust_files(&root.join(dir), &mut files);
        }
        files
            .into_iter()
            // This file names every command on purpose.
            .filter(|p| !p.ends_with("xtask/src/bootstrap.rs"))
            .map(|p| {
                let text = std::fs::read_to_string(&p).unwrap();
                (p.strip_prefix(&root).unwrap().display().to_string(), text)
            })
            .collect()
    }

    fn known(command: &str) -> bool {
        PACKAGES.iter().any(|p| p.commands.contains(&command))
            || BASE_COMMANDS.contains(&command)
            || OPTIONAL_COMMANDS.iter().any(|(c, _)| *c == command)
            || PIP_TOOLS.iter().any(|(t, _)| *t == command)
            // cargo-installed by toolchain.rs, pinned with the nightly.
            || command == "bpf-linker"
    }

    /// Looks like a program name, not a path, a format string or an empty
    /// placeholder.
    fn is_program_name(s: &str) -> bool {
        !s.is_empty()
            && !s.contains(['/', '{', ' ', '.'])
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    }

    #[test]
    fn every_command_the_suite_runs_is_installed_by_the_bootstrap() {
        let mut unknown = Vec::new();
        let sources = sources(&["tests", "xtask"]);
        for (file, text) in &sources {
            for command in commands_in(text) {
                if !is_program_name(&command) {
                    continue;
                }
                if !known(&command) {
                    unknown.push(format!("{file}: {command}"));
                }
            }
        }
        assert!(
            unknown.is_empty(),
            "commands the suite runs that xtask/src/bootstrap.rs neither installs nor lists as \
             part of every Debian machine (add the package to PACKAGES, or the command to \
             BASE_COMMANDS or OPTIONAL_COMMANDS):\n  {}",
            unknown.join("\n  ")
        );
        // And nothing installed for nothing: every package's commands are
        // named somewhere, if only in a constant (fonts-dejavu-core is read as
        // a file by the chart; musl-tools is run by a build script).
        let named = |c: &str| sources.iter().any(|(_, t)| t.contains(&format!("\"{c}\"")));
        let unused: Vec<&str> = PACKAGES
            .iter()
            .filter(|p| !p.commands.is_empty())
            .filter(|p| !p.commands.iter().any(|c| named(c)))
            .map(|p| p.name)
            .collect();
        assert!(
            unused.is_empty(),
            "bootstrap installs packages whose commands nothing runs: {unused:?}"
        );
    }

    #[test]
    fn every_target_the_suite_builds_for_is_installed_by_the_bootstrap() {
        let mut unknown = Vec::new();
        for (file, text) in sources(&["tests", "xtask", "agent"]) {
            for (i, _) in text.match_indices("-unknown-linux-") {
                let start = text[..i]
                    .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .map_or(0, |s| s + 1);
                let end = i
                    + "-unknown-linux-".len()
                    + text[i + "-unknown-linux-".len()..]
                        .find(|c: char| !c.is_ascii_alphanumeric())
                        .unwrap_or(0);
                let target = &text[start..end];
                if target == "x86_64-unknown-linux-gnu" {
                    continue;
                }
                if !RUST_TARGETS.iter().any(|(t, _)| *t == target) {
                    unknown.push(format!("{file}: {target}"));
                }
            }
        }
        assert!(
            unknown.is_empty(),
            "targets the suite builds for that bootstrap's RUST_TARGETS does not install:\n  {}",
            unknown.join("\n  ")
        );
    }

    #[test]
    fn finds_commands_in_call_shapes() {
        let src = r#"
            Command::new("ip").args(["netns"]);
            util::command("rustup");
            command(Some(net().netns), "nmap");
            which("bpf-linker");
            pub fn command(program: &str) {}
            Command::new(format!("{x}"));
        "#;
        assert_eq!(commands_in(src), ["ip", "rustup", "nmap", "bpf-linker"]);
    }
}
