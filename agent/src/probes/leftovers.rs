//! What a killed Sonde left in the kernel, removed at the next start.
//!
//! A SIGKILL or an OOM kill gives the agent no chance to detach. What
//! survives it depends on how a program was attached:
//!
//! - **TC through netlink** (clsact + cls_bpf filters: kernels before 6.6,
//!   or `[network] tc_attach = "netlink"`): the filter holds the program,
//!   so it stays on the interface and every restart would add another
//!   (aya#986). These are what this module removes.
//! - **tcx and XDP links** are bpf_links owned by the process's file
//!   descriptors: the kernel detaches them when the process dies. Sonde
//!   attaches XDP only through links (kernel 5.9+; the loader refuses
//!   netlink XDP), so a crashed Sonde leaves no XDP program behind, and
//!   nothing here touches a link or an XDP hook.
//! - **Pins**: Sonde pins nothing in bpffs.
//!
//! The rule for "ours": a cls_bpf filter whose name (TCA_BPF_NAME, which
//! aya sets to the program's full name) is one of Sonde's per-interface
//! TC programs, on any interface of this network namespace, in either
//! direction — and only when no other live Sonde owns this namespace. A
//! live Sonde holds an exclusive `flock` on
//! `<lock_dir>/netns-<namespace inode>.lock` for as long as it runs (the
//! kernel drops the lock when the process dies, however it dies); a start
//! that finds the lock held leaves every filter alone and says which pid
//! holds it. Filters of any other name (u32, matchall, another tool's
//! bpf), the clsact qdisc itself (it may be shared) and links are never
//! touched.

use std::{
    fs::{self, File, OpenOptions},
    io::{Read, Seek, Write},
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
};

use aya::programs::{TcAttachType, tc};
use tracing::{info, warn};

use super::tiers::Hook;
use crate::signals;

/// What the start found and removed, and the lock that marks this agent
/// as the namespace's live Sonde (held while this value lives).
#[derive(Debug, Default)]
pub struct Leftovers {
    /// (kind, filters removed): kind is `tc_ingress` or `tc_egress`.
    pub removed: Vec<(&'static str, u64)>,
    _lock: Option<File>,
}

/// Sonde's per-interface TC program names, as its filters are named.
fn tc_program_names() -> Vec<&'static str> {
    let mut names: Vec<&'static str> = signals::ALL
        .iter()
        .flat_map(|s| s.tiers.tiers.iter().flat_map(|t| t.programs))
        .filter_map(|p| match p.hook {
            Hook::XdpOrTc(tc) => Some(tc),
            Hook::TcEgress => Some(p.program),
            _ => None,
        })
        .collect();
    names.sort_unstable();
    names.dedup();
    names
}

/// The lock file of this network namespace under `lock_dir`.
fn lock_path(lock_dir: &Path) -> std::io::Result<PathBuf> {
    let netns = fs::metadata("/proc/self/ns/net")?.ino();
    Ok(lock_dir.join(format!("netns-{netns}.lock")))
}

enum Lock {
    /// We hold it: no other live Sonde in this namespace.
    Held(File),
    /// Another live process holds it (its pid, as it wrote it).
    Busy(String),
}

fn take_lock(path: &Path) -> std::io::Result<Lock> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    // SAFETY: flock on a descriptor this function owns.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            return Ok(Lock::Busy(pid.trim().to_owned()));
        }
        return Err(err);
    }
    file.set_len(0)?;
    file.rewind()?;
    writeln!(file, "{}", std::process::id())?;
    Ok(Lock::Held(file))
}

/// Names of this namespace's interfaces (if_nameindex).
fn interface_names() -> Vec<String> {
    let mut names = Vec::new();
    // SAFETY: if_nameindex returns a heap array ending with a zero entry,
    // or null; it is read up to that entry and freed once.
    unsafe {
        let list = libc::if_nameindex();
        if list.is_null() {
            return names;
        }
        let mut entry = list;
        while (*entry).if_index != 0 {
            if !(*entry).if_name.is_null() {
                names.push(
                    std::ffi::CStr::from_ptr((*entry).if_name)
                        .to_string_lossy()
                        .into_owned(),
                );
            }
            entry = entry.add(1);
        }
        libc::if_freenameindex(list);
    }
    names
}

/// Takes this namespace's Sonde lock and, holding it, removes the TC
/// filters a dead Sonde left on any interface (see the module docs for
/// what counts as ours). Never fails the start: what it cannot do it logs.
pub fn clean(lock_dir: &Path) -> Leftovers {
    let path = match lock_path(lock_dir) {
        Ok(p) => p,
        Err(err) => {
            warn!("crash leftovers not checked: cannot identify the network namespace: {err}");
            return Leftovers::default();
        }
    };
    let lock = match take_lock(&path) {
        Ok(Lock::Held(file)) => file,
        Ok(Lock::Busy(pid)) => {
            warn!(
                lock = %path.display(),
                pid,
                "another live Sonde runs in this network namespace; leaving its TC filters alone (two agents on one node count every packet twice)"
            );
            return Leftovers::default();
        }
        Err(err) => {
            warn!(
                lock = %path.display(),
                "crash leftovers not removed: cannot take the lock that tells whether another Sonde runs here: {err}"
            );
            return Leftovers::default();
        }
    };
    let names = tc_program_names();
    let mut removed = vec![("tc_ingress", 0), ("tc_egress", 0)];
    for iface in interface_names() {
        for (slot, (kind, attach_type)) in [
            ("tc_ingress", TcAttachType::Ingress),
            ("tc_egress", TcAttachType::Egress),
        ]
        .into_iter()
        .enumerate()
        {
            for name in &names {
                match tc::qdisc_detach_program(&iface, attach_type, name) {
                    Ok(()) => {
                        removed[slot].1 += 1;
                        info!(
                            interface = iface,
                            hook = kind,
                            program = name,
                            "removed a TC filter a previous Sonde left attached (killed before it could detach)"
                        );
                    }
                    Err(tc::TcError::IoError(e)) if e.kind() == std::io::ErrorKind::NotFound => {}
                    // No clsact qdisc: nothing attached through netlink.
                    Err(tc::TcError::NetlinkError(e))
                        if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOENT)) => {}
                    Err(err) => warn!(
                        interface = iface,
                        hook = kind,
                        program = name,
                        "could not check for or remove a left-over TC filter: {err}"
                    ),
                }
            }
        }
    }
    Leftovers {
        removed,
        _lock: Some(lock),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_sondes_tc_programs() {
        let names = tc_program_names();
        assert!(names.contains(&"sonde_tc_ingress"), "{names:?}");
        assert!(names.contains(&"sonde_tc_egress"), "{names:?}");
        assert!(names.iter().all(|n| n.starts_with("sonde_")), "{names:?}");
    }

    #[test]
    fn a_second_holder_is_refused_and_sees_the_first_pid() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("netns-1.lock");
        let first = take_lock(&path).unwrap();
        assert!(matches!(first, Lock::Held(_)));
        match take_lock(&path).unwrap() {
            Lock::Busy(pid) => assert_eq!(pid, std::process::id().to_string()),
            Lock::Held(_) => panic!("lock taken twice"),
        }
        drop(first);
        assert!(matches!(take_lock(&path).unwrap(), Lock::Held(_)));
    }
}
