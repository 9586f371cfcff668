//! The container image test's pieces: a seccomp profile that lets the agent
//! load programs with CAP_BPF/CAP_PERFMON instead of CAP_SYS_ADMIN, and an
//! image removed on drop.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use crate::sys::{cmd, quiet, run_with_timeout};

/// Podman's default seccomp profile (Debian's containers-common).
pub const PODMAN_DEFAULT_SECCOMP: &str = "/usr/share/containers/seccomp.json";

/// Syscalls the default profile allows only with CAP_SYS_ADMIN, and the
/// capability that should allow each instead.
const GATED: [(&str, &str); 2] = [("bpf", "CAP_BPF"), ("perf_event_open", "CAP_PERFMON")];

/// Derives a profile from a runtime's default one: `bpf` and
/// `perf_event_open` leave the rules gated on CAP_SYS_ADMIN and are allowed
/// with CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN, as before).
pub fn bpf_seccomp_profile(default_profile: &Value) -> Value {
    let mut p = default_profile.clone();
    let rules = p["syscalls"]
        .as_array_mut()
        .expect("a seccomp profile has a syscalls array");
    for rule in rules.iter_mut() {
        let gated_on_admin = ["includes", "excludes"].iter().any(|k| {
            rule[*k]["caps"]
                .as_array()
                .is_some_and(|caps| caps.iter().any(|c| c == "CAP_SYS_ADMIN"))
        });
        if !gated_on_admin {
            continue;
        }
        if let Some(names) = rule["names"].as_array_mut() {
            names.retain(|n| !GATED.iter().any(|(s, _)| n == s));
        }
    }
    rules.retain(|r| r["names"].as_array().is_none_or(|n| !n.is_empty()));
    for (syscall, cap) in GATED {
        for c in [cap, "CAP_SYS_ADMIN"] {
            rules.push(json!({
                "names": [syscall],
                "action": "SCMP_ACT_ALLOW",
                "args": [],
                "includes": {"caps": [c]},
                "excludes": {},
            }));
        }
    }
    p
}

/// A locally built image, removed (`podman rmi -f`) on drop.
pub struct Image {
    pub tag: String,
}

impl Image {
    /// `podman build -t TAG -f CONTAINERFILE CONTEXT`; panics with podman's
    /// output on failure.
    pub fn build(tag: &str, containerfile: &Path, context: &Path) -> Image {
        let out = run_with_timeout(
            cmd("podman", &["build", "-t", tag, "-f"])
                .arg(containerfile)
                .arg(context),
            Duration::from_secs(300),
        );
        assert!(
            out.status.success(),
            "podman build failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Image {
            tag: tag.to_string(),
        }
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        quiet(&mut cmd("podman", &["rmi", "-f", &self.tag]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moves_bpf_from_sys_admin_to_cap_bpf() {
        let default = json!({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
            {"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"},
            {"names": ["bpf", "perf_event_open", "setns"], "action": "SCMP_ACT_ALLOW",
             "includes": {"caps": ["CAP_SYS_ADMIN"]}, "excludes": {}},
            {"names": ["bpf"], "action": "SCMP_ACT_ERRNO",
             "includes": {}, "excludes": {"caps": ["CAP_SYS_ADMIN"]}},
        ]});
        let p = bpf_seccomp_profile(&default);
        let rules = p["syscalls"].as_array().unwrap();
        // The errno-only-bpf rule is gone, setns stays gated on CAP_SYS_ADMIN.
        assert_eq!(rules[1]["names"], json!(["setns"]));
        assert!(!rules.iter().any(|r| r["action"] == "SCMP_ACT_ERRNO"));
        assert!(
            rules.iter().any(
                |r| r["names"] == json!(["bpf"]) && r["includes"]["caps"] == json!(["CAP_BPF"])
            )
        );
        assert!(
            rules
                .iter()
                .any(|r| r["names"] == json!(["perf_event_open"])
                    && r["includes"]["caps"] == json!(["CAP_PERFMON"]))
        );
    }
}
