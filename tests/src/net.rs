//! RAII network namespaces and veth pairs. Test traffic stays on loopback or
//! on a veth pair whose peer lives in a namespace the test created; both are
//! removed on drop, even when the test panics.

use std::io;
use std::path::Path;
use std::process::Command;

use crate::sys::{cmd, output, quiet};

/// A network namespace (`ip netns add NAME`), deleted on drop.
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates namespace `name` (deleting a stale one of that name left by
    /// a killed run) and brings its loopback up.
    pub fn new(name: &str) -> NetNs {
        NetNs::try_new(name).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like [`NetNs::new`], returning the error of the `ip` command that
    /// failed.
    pub fn try_new(name: &str) -> io::Result<NetNs> {
        if Path::new("/run/netns").join(name).exists() {
            quiet(&mut cmd("ip", &["netns", "del", name]));
        }
        output(&mut cmd("ip", &["netns", "add", name]))?;
        // From here on, drop deletes it.
        let ns = NetNs {
            name: name.to_string(),
        };
        output(&mut ns.exec(&["ip", "link", "set", "lo", "up"]))?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace's inode number: how the kernel (and the agent's
    /// `netns` label) identifies it.
    pub fn inode(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(Path::new("/run/netns").join(&self.name))
            .expect("reading the namespace's bind mount")
            .ino()
    }

    /// `ip netns exec NAME args...`, ready to spawn or run.
    pub fn exec(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).args(args);
        c
    }

    /// Runs `iptables RULE...` inside the namespace (its tables go with
    /// it); panics unless it succeeds.
    pub fn iptables(&self, rule: &[&str]) {
        let status = self
            .exec(&[&["iptables"], rule].concat())
            .status()
            .expect("running iptables in the test namespace");
        assert!(
            status.success(),
            "iptables {rule:?} failed in the test namespace"
        );
    }

    /// Writes a sysctl inside the namespace (`key` as a /proc/sys path
    /// relative to /proc/sys, e.g. `net/ipv6/conf/p0/disable_ipv6`).
    pub fn write_sysctl(&self, key: &str, value: &str) {
        self.try_write_sysctl(key, value)
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// Like [`NetNs::write_sysctl`], returning the error.
    pub fn try_write_sysctl(&self, key: &str, value: &str) -> io::Result<()> {
        let script = format!("echo {value} > /proc/sys/{key}");
        output(&mut self.exec(&["sh", "-c", &script])).map(drop)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        quiet(&mut cmd("ip", &["netns", "del", &self.name]));
    }
}

/// A veth pair: `host` stays in the root namespace, `peer` is moved into a
/// [`NetNs`]. Both ends get an address and are brought up, with IPv6
/// disabled so the kernel sends no router or neighbour solicitations on its
/// own. Deleted on drop (deleting one end deletes both).
pub struct VethPair {
    host: String,
    peer: String,
    host_ip: String,
    peer_ip: String,
}

impl VethPair {
    /// `host_cidr`/`peer_cidr` like `10.213.0.1/30`.
    pub fn new(host: &str, peer: &str, ns: &NetNs, host_cidr: &str, peer_cidr: &str) -> VethPair {
        VethPair::try_new(host, peer, ns, host_cidr, peer_cidr).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like [`VethPair::new`], returning the error of the step that failed.
    pub fn try_new(
        host: &str,
        peer: &str,
        ns: &NetNs,
        host_cidr: &str,
        peer_cidr: &str,
    ) -> io::Result<VethPair> {
        if host.len() >= 16 || peer.len() >= 16 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("interface names are limited to 15 bytes: {host:?}, {peer:?}"),
            ));
        }
        if Path::new("/sys/class/net").join(host).exists() {
            quiet(&mut cmd("ip", &["link", "del", host]));
        }
        output(&mut cmd(
            "ip",
            &["link", "add", host, "type", "veth", "peer", "name", peer],
        ))?;
        // From here on, drop deletes it.
        let pair = VethPair {
            host: host.to_string(),
            peer: peer.to_string(),
            host_ip: strip_prefix_len(host_cidr),
            peer_ip: strip_prefix_len(peer_cidr),
        };
        output(&mut cmd("ip", &["link", "set", peer, "netns", ns.name()]))?;
        let v6 = format!("/proc/sys/net/ipv6/conf/{host}/disable_ipv6");
        if Path::new(&v6).exists() {
            std::fs::write(&v6, "1")
                .map_err(|e| io::Error::new(e.kind(), format!("cannot write {v6}: {e}")))?;
            ns.try_write_sysctl(&format!("net/ipv6/conf/{peer}/disable_ipv6"), "1")?;
        }
        output(&mut cmd("ip", &["addr", "add", host_cidr, "dev", host]))?;
        output(&mut ns.exec(&["ip", "addr", "add", peer_cidr, "dev", peer]))?;
        output(&mut cmd("ip", &["link", "set", host, "up"]))?;
        output(&mut ns.exec(&["ip", "link", "set", peer, "up"]))?;
        Ok(pair)
    }

    /// Routes `net` (a CIDR) from the root namespace through the namespace
    /// end, so addresses behind the peer are reachable; the route goes with
    /// the pair.
    pub fn route_via_peer(&self, net: &str) -> io::Result<()> {
        output(&mut cmd(
            "ip",
            &["route", "add", net, "via", &self.peer_ip, "dev", &self.host],
        ))
        .map(drop)
    }

    /// Name of the end in the root namespace.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Name of the end inside the namespace.
    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// Address of the host end, without prefix length.
    pub fn host_ip(&self) -> &str {
        &self.host_ip
    }

    /// Address of the namespace end, without prefix length.
    pub fn peer_ip(&self) -> &str {
        &self.peer_ip
    }
}

impl Drop for VethPair {
    fn drop(&mut self) {
        quiet(&mut cmd("ip", &["link", "del", &self.host]));
    }
}

fn strip_prefix_len(cidr: &str) -> String {
    cidr.split('/').next().unwrap_or(cidr).to_string()
}

/// A counter from `/sys/class/net/IFACE/statistics/NAME` (root namespace).
pub fn iface_stat(iface: &str, name: &str) -> u64 {
    try_iface_stat(iface, name).unwrap_or_else(|e| panic!("{e}"))
}

/// Like [`iface_stat`], returning the error.
pub fn try_iface_stat(iface: &str, name: &str) -> io::Result<u64> {
    let p = format!("/sys/class/net/{iface}/statistics/{name}");
    let s = std::fs::read_to_string(&p)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot read {p}: {e}")))?;
    s.trim()
        .parse()
        .map_err(|e| io::Error::other(format!("{p} holds {s:?}, not a number: {e}")))
}

/// A field of /proc/net/snmp: the line of names after `prefix`, then the
/// line of values (the kernel's fixed two-line layout, not worth a crate).
pub fn snmp_field(text: &str, prefix: &str, name: &str) -> Option<f64> {
    let mut lines = text.lines().filter(|l| l.starts_with(prefix));
    let names = lines.next()?;
    let values = lines.next()?;
    let i = names.split_whitespace().position(|n| n == name)?;
    values.split_whitespace().nth(i)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snmp_fields_parse() {
        let text = "Ip: Forwarding DefaultTTL\nIp: 1 64\nTcp: RtoAlgorithm RetransSegs InErrs\n\
                    Tcp: 1 17 0\n";
        assert_eq!(snmp_field(text, "Tcp:", "RetransSegs"), Some(17.0));
        assert_eq!(snmp_field(text, "Tcp:", "Nope"), None);
    }
}
