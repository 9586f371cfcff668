//! A container's id and a pod's uid from a cgroup path, as the runtimes
//! and kubelet name cgroups under either driver:
//!
//! | driver   | runtime    | container cgroup                                      |
//! |----------|------------|-------------------------------------------------------|
//! | cgroupfs | containerd | `/kubepods/burstable/pod<uid>/<id>`                   |
//! | systemd  | containerd | `…/kubepods-burstable-pod<uid_>.slice/cri-containerd-<id>.scope` |
//! | cgroupfs | CRI-O      | `/kubepods/pod<uid>/crio-<id>`                        |
//! | systemd  | CRI-O      | `…-pod<uid_>.slice/crio-<id>.scope`                   |
//! | systemd  | docker     | `/system.slice/docker-<id>.scope`                     |
//! | cgroupfs | docker     | `/docker/<id>`                                        |
//! | systemd  | podman     | `/machine.slice/libpod-<id>.scope` (v2: `…/container`) |
//! | cgroupfs | podman     | `/libpod_parent/libpod-<id>`                          |
//!
//! The same paths appear in cgroup v2 and in every v1 hierarchy of a
//! hybrid host. An id is 64 hex digits; the monitor processes beside a
//! container (`crio-conmon-<id>`, `libpod-conmon-<id>`) are not it.
//! Hand-written: a handful of prefixes and suffixes, no crate does it.

/// A container named by a cgroup path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerRef {
    /// containerd, crio, docker, podman; `unknown` for a bare id.
    pub runtime: &'static str,
    /// 64 hex digits.
    pub id: String,
}

/// Prefixes of a container's cgroup directory, and the runtime each names.
const PREFIXES: &[(&str, &str)] = &[
    ("cri-containerd-", "containerd"),
    ("crio-", "crio"),
    ("docker-", "docker"),
    ("libpod-", "podman"),
];

fn is_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The innermost container in `path`, if any.
pub fn container_id(path: &str) -> Option<ContainerRef> {
    path.split('/').rev().find_map(|segment| {
        let name = segment.strip_suffix(".scope").unwrap_or(segment);
        if is_id(name) {
            return Some(ContainerRef {
                runtime: "unknown",
                id: name.to_ascii_lowercase(),
            });
        }
        PREFIXES.iter().find_map(|(prefix, runtime)| {
            let id = name.strip_prefix(prefix)?;
            is_id(id).then(|| ContainerRef {
                runtime,
                id: id.to_ascii_lowercase(),
            })
        })
    })
}

/// The uid of the pod whose cgroup `path` lies in: kubelet's
/// `pod<uid>` (cgroupfs) or `kubepods-<qos>-pod<uid with _>.slice`
/// (systemd).
pub fn pod_uid(path: &str) -> Option<String> {
    path.split('/').rev().find_map(|segment| {
        let name = segment.strip_suffix(".slice").unwrap_or(segment);
        let uid = name
            .strip_prefix("pod")
            .or_else(|| name.rsplit_once("-pod").map(|(_, uid)| uid))?
            .replace('_', "-");
        is_uuid(&uid).then_some(uid)
    })
}

fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// Every path of a /proc/PID/cgroup text (`hierarchy:controllers:path`
/// lines: the v2 one and, on hybrid hosts, each v1 hierarchy's).
pub fn proc_cgroup_paths(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .filter_map(|line| line.splitn(3, ':').nth(2))
        .filter(|p| !p.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4e3a1c0f9b8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f";
    const UID: &str = "0a1b2c3d-4e5f-6a7b-8c9d-0e1f2a3b4c5d";

    fn found(path: &str) -> Option<(&'static str, String)> {
        container_id(path).map(|c| (c.runtime, c.id))
    }

    #[test]
    fn every_driver_and_runtime() {
        let uid_ = UID.replace('-', "_");
        let cases: &[(String, &str)] = &[
            (format!("/kubepods/burstable/pod{UID}/{ID}"), "unknown"),
            (format!("/kubepods/pod{UID}/{ID}"), "unknown"),
            (
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/cri-containerd-{ID}.scope"
                ),
                "containerd",
            ),
            (format!("/kubepods/pod{UID}/crio-{ID}"), "crio"),
            (
                format!(
                    "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid_}.slice/crio-{ID}.scope"
                ),
                "crio",
            ),
            (format!("/system.slice/docker-{ID}.scope"), "docker"),
            (format!("/docker/{ID}"), "unknown"),
            (format!("/machine.slice/libpod-{ID}.scope"), "podman"),
            (
                format!("/machine.slice/libpod-{ID}.scope/container"),
                "podman",
            ),
            (format!("/libpod_parent/libpod-{ID}"), "podman"),
            (
                format!(
                    "/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope/container"
                ),
                "podman",
            ),
        ];
        for (path, runtime) in cases {
            assert_eq!(found(path), Some((*runtime, ID.to_owned())), "{path}");
        }
    }

    #[test]
    fn what_is_not_a_container() {
        for path in [
            "/",
            "/system.slice/sshd.service",
            "/user.slice/user-0.slice/session-3.scope",
            "/k8s.io/t1",
            &format!("/machine.slice/libpod-conmon-{ID}.scope"),
            &format!("/system.slice/crio-conmon-{ID}.scope"),
            &format!("/docker/{}", &ID[..12]),
            &format!("/kubepods/pod{UID}"),
        ] {
            assert_eq!(found(path), None, "{path}");
        }
    }

    #[test]
    fn pod_uids_under_both_drivers() {
        let uid_ = UID.replace('-', "_");
        for path in [
            format!("/kubepods/burstable/pod{UID}/{ID}"),
            format!("/kubepods/pod{UID}"),
            format!("/kubepods.slice/kubepods-pod{uid_}.slice"),
            format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/cri-containerd-{ID}.scope"
            ),
        ] {
            assert_eq!(pod_uid(&path).as_deref(), Some(UID), "{path}");
        }
        assert_eq!(pod_uid("/kubepods/burstable"), None);
        assert_eq!(pod_uid("/system.slice/podman.service"), None);
        assert_eq!(pod_uid("/kubepods/podnot-a-uid"), None);
    }

    #[test]
    fn proc_cgroup_lines_of_a_hybrid_host() {
        let text = format!(
            "9:name=systemd:/kubepods/pod{UID}/{ID}\n8:pids:/\n1:cpu:/kubepods/pod{UID}/{ID}\n0::/\n"
        );
        let paths: Vec<&str> = proc_cgroup_paths(&text).collect();
        assert_eq!(paths.len(), 4);
        assert_eq!(
            paths.iter().find_map(|p| container_id(p)).map(|c| c.id),
            Some(ID.to_owned())
        );
    }
}
