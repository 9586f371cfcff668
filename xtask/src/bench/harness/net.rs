//! The benchmark's network: one namespace with a veth pair into it, both
//! removed on drop. The host end stays in the root namespace, where the
//! agent attaches; traffic flows only over this pair. Addresses come from
//! 198.18.0.0/15, the range reserved for benchmarking (RFC 2544).

use std::{path::Path, process::Command};

use anyhow::Context as _;

use super::process::output;

pub const NETNS: &str = "sonde-bench";
/// Host end (root namespace) and namespace end of the veth pair.
pub const HOST_IF: &str = "sbench0";
pub const PEER_IF: &str = "sbench1";
pub const HOST_IP: &str = "198.18.0.1";
pub const PEER_IP: &str = "198.18.0.2";
/// Extra source addresses (peers) live behind the namespace end:
/// `PEERS_FIRST` onwards, routed from the host via `PEER_IP`.
pub const PEERS_FIRST: &str = "198.19.0.1";
const PEERS_NET: &str = "198.19.0.0/16";

/// The namespace and the veth pair, torn down on drop.
pub struct BenchNet {
    _private: (),
}

impl BenchNet {
    pub fn create() -> anyhow::Result<BenchNet> {
        // Leftovers of a killed run first.
        Self::teardown();
        output(Command::new("ip").args(["netns", "add", NETNS]))?;
        // From here on, drop cleans up whatever exists.
        let net = BenchNet { _private: () };
        let ns = |args: &[&str]| -> anyhow::Result<String> {
            output(Command::new("ip").args(["netns", "exec", NETNS]).args(args))
        };
        let host = |args: &[&str]| output(Command::new("ip").args(args));
        host(&[
            "link", "add", HOST_IF, "type", "veth", "peer", "name", PEER_IF,
        ])?;
        host(&["link", "set", PEER_IF, "netns", NETNS])?;
        // No IPv6: nothing but the benchmark's own traffic on the pair.
        set_sysctl(&format!("net/ipv6/conf/{HOST_IF}/disable_ipv6"), "1")?;
        ns(&[
            "sh",
            "-c",
            &format!("echo 1 > /proc/sys/net/ipv6/conf/{PEER_IF}/disable_ipv6"),
        ])?;
        host(&["addr", "add", &format!("{HOST_IP}/24"), "dev", HOST_IF])?;
        ns(&[
            "ip",
            "addr",
            "add",
            &format!("{PEER_IP}/24"),
            "dev",
            PEER_IF,
        ])?;
        host(&["link", "set", HOST_IF, "up"])?;
        ns(&["ip", "link", "set", "lo", "up"])?;
        ns(&["ip", "link", "set", PEER_IF, "up"])?;
        host(&["route", "add", PEERS_NET, "via", PEER_IP, "dev", HOST_IF])?;
        Ok(net)
    }

    fn teardown() {
        if Path::new("/sys/class/net").join(HOST_IF).exists() {
            let _ = output(Command::new("ip").args(["link", "del", HOST_IF]));
        }
        if Path::new("/run/netns").join(NETNS).exists() {
            let _ = output(Command::new("ip").args(["netns", "del", NETNS]));
        }
    }

    /// `ip link show` of the host end, e.g. to see the XDP mode attached.
    pub fn host_link() -> String {
        output(Command::new("ip").args(["link", "show", "dev", HOST_IF])).unwrap_or_default()
    }
}

impl Drop for BenchNet {
    fn drop(&mut self) {
        Self::teardown();
    }
}

fn set_sysctl(key: &str, value: &str) -> anyhow::Result<()> {
    let path = Path::new("/proc/sys").join(key);
    std::fs::write(&path, value).with_context(|| format!("writing {}", path.display()))
}

/// `/sys/class/net/IF/statistics/NAME` of a root-namespace interface.
pub fn iface_stat(iface: &str, name: &str) -> anyhow::Result<u64> {
    let p = format!("/sys/class/net/{iface}/statistics/{name}");
    let s = std::fs::read_to_string(&p).with_context(|| format!("reading {p}"))?;
    s.trim()
        .parse()
        .with_context(|| format!("{p} holds {s:?}, not a number"))
}
