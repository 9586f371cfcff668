//! Network interfaces: resolving configured names, choosing the default
//! set (every non-loopback interface that is up), the node's own
//! addresses, and which interfaces and network namespaces still exist.

use std::{
    collections::HashSet,
    ffi::CString,
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::unix::fs::MetadataExt as _,
};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum InterfaceError {
    #[error("unknown network interface {0:?} (see `ip link` for the interfaces of this host)")]
    Unknown(String),
}

const IFF_UP: u32 = 0x1;
const IFF_LOOPBACK: u32 = 0x8;

pub fn ifindex(name: &str) -> Option<u32> {
    let c = CString::new(name).ok()?;
    // SAFETY: valid C string.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (index != 0).then_some(index)
}

/// Resolves `names`, or discovers the defaults when `names` is empty.
pub fn resolve(names: &[String]) -> Result<Vec<(String, u32)>, InterfaceError> {
    if names.is_empty() {
        return Ok(default_interfaces());
    }
    names
        .iter()
        .map(|name| {
            ifindex(name)
                .map(|i| (name.clone(), i))
                .ok_or_else(|| InterfaceError::Unknown(name.clone()))
        })
        .collect()
}

pub fn default_interfaces() -> Vec<(String, u32)> {
    let Ok(dir) = fs::read_dir("/sys/class/net") else {
        return Vec::new();
    };
    let mut found: Vec<(String, u32)> = dir
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let flags = fs::read_to_string(entry.path().join("flags")).ok()?;
            let flags = u32::from_str_radix(flags.trim().trim_start_matches("0x"), 16).ok()?;
            (flags & IFF_UP != 0 && flags & IFF_LOOPBACK == 0)
                .then(|| ifindex(&name).map(|i| (name, i)))
                .flatten()
        })
        .collect();
    found.sort_by_key(|(_, i)| *i);
    found
}

/// Every address on this network namespace's interfaces (getifaddrs), up
/// or not: what enforce mode must never block.
pub fn own_addresses() -> std::io::Result<Vec<IpAddr>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: valid out-pointer; the list is freed below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut found = Vec::new();
    let mut cursor = head;
    while !cursor.is_null() {
        // SAFETY: a node of the list getifaddrs returned, not yet freed.
        let ifa = unsafe { &*cursor };
        cursor = ifa.ifa_next;
        if ifa.ifa_addr.is_null() {
            continue;
        }
        // SAFETY: non-null sockaddr whose family says which struct it is.
        let addr = unsafe {
            match i32::from((*ifa.ifa_addr).sa_family) {
                libc::AF_INET => {
                    let sin = &*ifa.ifa_addr.cast::<libc::sockaddr_in>();
                    IpAddr::V4(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)))
                }
                libc::AF_INET6 => {
                    let sin6 = &*ifa.ifa_addr.cast::<libc::sockaddr_in6>();
                    IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr))
                }
                _ => continue,
            }
        };
        if !found.contains(&addr) {
            found.push(addr);
        }
    }
    // SAFETY: the list getifaddrs returned, freed once.
    unsafe { libc::freeifaddrs(head) };
    Ok(found)
}

/// The inode number the kernel gives the initial PID namespace
/// (`PROC_PID_INIT_INO`).
const INIT_PID_NS_INODE: u64 = 0xEFFF_FFFC;

/// Where `ip netns` and container runtimes bind-mount namespaces that
/// may have no process in them.
const NETNS_BIND_DIRS: [&str; 3] = ["/run/netns", "/var/run/netns", "/run/docker/netns"];

/// Inode numbers of the network namespaces that exist: those of every
/// process, and those held by a bind mount. `None` when this process does
/// not see every process (outside the initial PID namespace, e.g. a pod
/// without hostPID), so a namespace it does not find may still be alive.
pub fn live_namespaces() -> Option<HashSet<u32>> {
    let own_pid_ns = fs::metadata("/proc/self/ns/pid").ok()?.ino();
    if own_pid_ns != INIT_PID_NS_INODE {
        return None;
    }
    let processes = fs::read_dir("/proc")
        .ok()?
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        })
        .map(|e| e.path().join("ns/net"));
    let mounted = NETNS_BIND_DIRS
        .iter()
        .filter_map(|dir| fs::read_dir(dir).ok())
        .flatten()
        .filter_map(Result::ok)
        .map(|e| e.path());
    Some(
        processes
            .chain(mounted)
            .filter_map(|path| fs::metadata(path).ok())
            .map(|m| m.ino() as u32)
            .collect(),
    )
}

/// Interface indexes of this network namespace (if_nameindex); `None`
/// when the kernel would not list them.
pub fn own_ifindexes() -> Option<HashSet<u32>> {
    // SAFETY: if_nameindex returns a heap array ending with a zero entry,
    // or null; it is read up to that entry and freed once.
    unsafe {
        let list = libc::if_nameindex();
        if list.is_null() {
            return None;
        }
        let mut found = HashSet::new();
        let mut entry = list;
        while (*entry).if_index != 0 {
            found.insert((*entry).if_index);
            entry = entry.add(1);
        }
        libc::if_freenameindex(list);
        Some(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_addresses_include_loopback() {
        let own = own_addresses().unwrap();
        assert!(own.contains(&IpAddr::V4(Ipv4Addr::LOCALHOST)), "{own:?}");
    }
}
