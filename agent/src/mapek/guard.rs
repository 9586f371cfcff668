//! Enforce mode's guard: the sources a block must never hit, and the proof
//! a source must show before it can be blocked, so that an attacker who
//! forges source addresses cannot aim the blocklist at the node's own
//! infrastructure.
//!
//! - **Protected** (each with its reason, reported at /api/v1/anomalies):
//!   loopback, unspecified, multicast and broadcast addresses; the cloud
//!   metadata addresses and the link-local ranges; `[mapek] never_block`;
//!   the node's own addresses; every gateway of its routing tables
//!   (/proc/net/route, /proc/net/ipv6_route); the nameservers of
//!   /etc/resolv.conf; the Kubernetes API server (KUBERNETES_SERVICE_HOST);
//!   peers that scraped /metrics recently ([`Scrapers`], filled by the HTTP
//!   layer). Read again whenever a source is about to be blocked, so a
//!   changed route or resolver counts at once.
//! - **Proof of reality**: a source is blocked only if it completed a TCP
//!   handshake with this node, or answered one of its own, within the last
//!   [`PROOF_SECONDS`] (the kernel records them: `signals::handshakes`).
//!   Twenty forged SYNs or datagrams can name any address; a completed
//!   handshake needs the node's SYN-ACK, which goes to the real owner of
//!   the address. A SYN flood is never blocked: its sources are half-open
//!   by definition (the kernel's SYN cookies answer it; its anomaly
//!   reports them, see `kernel_notes`).

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use agent_common::handshakes::HandshakePeer;
use serde::Serialize;

use crate::{
    config::{Cidr, MapekConfig},
    signals::handshakes::Handshakes,
};

/// How recent a source's completed handshake must be to prove it real.
pub const PROOF_SECONDS: u64 = 300;
/// How long a peer that scraped /metrics stays protected.
pub const SCRAPER_SECONDS: u64 = 600;
/// Scrapers remembered at most (the oldest make room).
const MAX_SCRAPERS: usize = 256;

/// A protected network and why.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Protected {
    pub net: String,
    pub reason: String,
    #[serde(skip)]
    cidr: Option<Cidr>,
}

impl Protected {
    fn new(net: &str, reason: impl Into<String>) -> Option<Protected> {
        let cidr = Cidr::try_from(net.to_owned()).ok()?;
        Some(Protected {
            net: String::from(cidr),
            reason: reason.into(),
            cidr: Some(cidr),
        })
    }

    fn contains(&self, peer: IpAddr) -> bool {
        self.cidr.is_some_and(|c| c.contains(peer))
    }
}

/// Peers that fetched /metrics lately: a monitoring system must not be
/// blockable by an attacker who forges its address. The HTTP layer calls
/// [`Scrapers::note`]; cloning shares the record.
#[derive(Debug, Clone, Default)]
pub struct Scrapers(Arc<Mutex<BTreeMap<IpAddr, Instant>>>);

impl Scrapers {
    /// `peer` fetched /metrics now.
    pub fn note(&self, peer: IpAddr) {
        let mut seen = self.0.lock().unwrap_or_else(|e| e.into_inner());
        seen.insert(peer.to_canonical(), Instant::now());
        if seen.len() > MAX_SCRAPERS
            && let Some(oldest) = seen.iter().min_by_key(|(_, t)| **t).map(|(p, _)| *p)
        {
            seen.remove(&oldest);
        }
    }

    /// Peers that scraped within [`SCRAPER_SECONDS`].
    pub fn recent(&self) -> Vec<IpAddr> {
        let window = Duration::from_secs(SCRAPER_SECONDS);
        let seen = self.0.lock().unwrap_or_else(|e| e.into_inner());
        seen.iter()
            .filter(|(_, t)| t.elapsed() < window)
            .map(|(p, _)| *p)
            .collect()
    }
}

/// What the protected set is read from; [`System::read`] takes it from
/// the running node, tests build it by hand.
#[derive(Debug)]
pub struct System {
    pub route: Option<String>,
    pub ipv6_route: Option<String>,
    pub resolv_conf: Option<String>,
    pub kubernetes_service_host: Option<String>,
    /// The node's own addresses (Err: why they could not be read).
    pub own: Result<Vec<IpAddr>, String>,
    pub scrapers: Vec<IpAddr>,
}

impl System {
    pub fn read(scrapers: &Scrapers) -> System {
        let read = |path: &str| std::fs::read_to_string(path).ok();
        System {
            route: read("/proc/net/route"),
            ipv6_route: read("/proc/net/ipv6_route"),
            resolv_conf: read("/etc/resolv.conf"),
            kubernetes_service_host: std::env::var("KUBERNETES_SERVICE_HOST").ok(),
            own: crate::netif::own_addresses().map_err(|e| e.to_string()),
            scrapers: scrapers.recent(),
        }
    }
}

/// The protected set, most specific reasons first (the first match names
/// the reason), and whether the node's own addresses are known (Err: why
/// not; then nothing may be blocked).
pub fn protected(m: &MapekConfig, system: &System) -> (Vec<Protected>, Result<(), String>) {
    let mut out = Vec::new();
    let mut add = |net: String, reason: String| out.extend(Protected::new(&net, reason));
    for (net, reason) in [
        ("127.0.0.0/8", "a loopback address"),
        ("::1/128", "a loopback address"),
        ("0.0.0.0/32", "the unspecified address"),
        ("::/128", "the unspecified address"),
        ("224.0.0.0/4", "a multicast or broadcast address"),
        ("255.255.255.255/32", "a multicast or broadcast address"),
        ("ff00::/8", "a multicast or broadcast address"),
        ("169.254.169.254/32", "the cloud metadata service"),
        ("fd00:ec2::254/128", "the cloud metadata service"),
        ("169.254.0.0/16", "a link-local address"),
        ("fe80::/10", "a link-local address"),
    ] {
        add(net.into(), reason.into());
    }
    for net in &m.never_block {
        let net = String::from(*net);
        add(net.clone(), format!("in [mapek] never_block ({net})"));
    }
    let own = match &system.own {
        Ok(own) => {
            for ip in own {
                add(ip.to_string(), "one of this node's own addresses".into());
            }
            Ok(())
        }
        Err(err) => Err(format!(
            "this node's own addresses could not be read ({err}): nothing is blocked"
        )),
    };
    for (gateway, route) in gateways(system) {
        add(
            gateway.to_string(),
            format!("a gateway of this node (route {route})"),
        );
    }
    if let Some(text) = &system.resolv_conf {
        for ns in nameservers(text) {
            add(
                ns.to_string(),
                "a nameserver of this node (/etc/resolv.conf)".into(),
            );
        }
    }
    if let Some(host) = &system.kubernetes_service_host
        && let Ok(ip) = host.trim().parse::<IpAddr>()
    {
        add(
            ip.to_string(),
            "the Kubernetes API server (KUBERNETES_SERVICE_HOST)".into(),
        );
    }
    for ip in &system.scrapers {
        add(
            ip.to_string(),
            format!("scraped /metrics within the last {SCRAPER_SECONDS} s"),
        );
    }
    (out, own)
}

/// Why `peer` must not be blocked, if it must not: protected, or not
/// proven real. `handshakes`: the kernel's record (None: the program is
/// not attached); `now_ns`: monotonic now, the record's clock.
pub fn refusal(
    peer: IpAddr,
    protected: &(Vec<Protected>, Result<(), String>),
    handshakes: Option<&Handshakes>,
    now_ns: u64,
) -> Option<String> {
    let peer = peer.to_canonical();
    if let Some(p) = protected.0.iter().find(|p| p.contains(peer)) {
        return Some(format!("protected: {} ({})", p.reason, p.net));
    }
    if let Err(err) = &protected.1 {
        return Some(err.clone());
    }
    let Some(handshakes) = handshakes else {
        return Some(format!(
            "{peer} cannot be proven real: the handshake record (program {}) is not \
             attached ([mapek] mode must be enforce when the agent starts)",
            crate::signals::handshakes::PROGRAM
        ));
    };
    unproven(peer, handshakes.proof(peer), now_ns)
}

/// Why `proof` does not prove `peer` real now, if it does not.
fn unproven(peer: IpAddr, proof: Option<HandshakePeer>, now_ns: u64) -> Option<String> {
    let forged = "its address may be forged (SYNs, UDP and ICMP prove nothing)";
    let Some(proof) = proof else {
        return Some(format!(
            "{peer} never completed a TCP handshake with this node: {forged}"
        ));
    };
    let last = proof.passive_ns.max(proof.active_ns);
    let age = now_ns.saturating_sub(last) / 1_000_000_000;
    if last == 0 || age > PROOF_SECONDS {
        return Some(format!(
            "{peer} last completed a TCP handshake with this node {age} s ago (more than \
             {PROOF_SECONDS} s): {forged}"
        ));
    }
    None
}

/// The proof, as a block's reason states it.
pub fn proof_text(peer: IpAddr, handshakes: Option<&Handshakes>, now_ns: u64) -> String {
    let Some(p) = handshakes.and_then(|h| h.proof(peer)) else {
        return String::new();
    };
    let last = p.passive_ns.max(p.active_ns);
    format!(
        "; proven real: {} handshakes completed with this node, {} of its own answered, \
         the latest {} s ago",
        p.passive,
        p.active,
        now_ns.saturating_sub(last) / 1_000_000_000
    )
}

/// Every gateway of the routing tables, with the route it serves.
/// /proc/net/route and /proc/net/ipv6_route are fixed-column tables of
/// hex numbers, simple enough to read by hand.
fn gateways(system: &System) -> Vec<(IpAddr, String)> {
    const RTF_GATEWAY: u32 = 0x2;
    let mut out = Vec::new();
    for line in system.route.iter().flat_map(|t| t.lines().skip(1)) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let hex = |i: usize| f.get(i).and_then(|v| u32::from_str_radix(v, 16).ok());
        let (Some(dest), Some(gw), Some(flags), Some(mask)) = (hex(1), hex(2), hex(3), hex(7))
        else {
            continue;
        };
        if flags & RTF_GATEWAY == 0 || gw == 0 {
            continue;
        }
        // The kernel prints the network-order word as a native integer.
        let ip = |v: u32| Ipv4Addr::from(v.to_ne_bytes());
        let route = if mask == 0 {
            "default".to_owned()
        } else {
            format!("{}/{}", ip(dest), mask.count_ones())
        };
        out.push((IpAddr::V4(ip(gw)), format!("{route} dev {}", f[0])));
    }
    for line in system.ipv6_route.iter().flat_map(|t| t.lines()) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 10 {
            continue;
        }
        let addr = |v: &str| u128::from_str_radix(v, 16).ok().map(Ipv6Addr::from);
        let (Some(dest), Some(prefix), Some(gw), Ok(flags)) = (
            addr(f[0]),
            u8::from_str_radix(f[1], 16).ok(),
            addr(f[4]),
            u32::from_str_radix(f[8], 16),
        ) else {
            continue;
        };
        if flags & RTF_GATEWAY == 0 || gw.is_unspecified() {
            continue;
        }
        let route = if prefix == 0 {
            "default".to_owned()
        } else {
            format!("{dest}/{prefix}")
        };
        out.push((IpAddr::V6(gw), format!("{route} dev {}", f[9])));
    }
    out
}

/// The `nameserver` addresses of a resolv.conf (a zone index such as
/// `fe80::1%eth0` dropped).
fn nameservers(text: &str) -> Vec<IpAddr> {
    text.lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            (words.next()? == "nameserver").then_some(())?;
            let addr = words.next()?;
            addr.split('%').next()?.parse().ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    const ROUTE: &str = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
        eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
        eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
        sondet0\t006433C6\t0300D50A\t0003\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";
    const IPV6_ROUTE: &str = "fd000000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth0\n\
        00000000000000000000000000000000 00 00000000000000000000000000000000 00 fd000000000000000000000000000001 00000400 00000003 00000000 00000003     eth0\n";

    fn system() -> System {
        System {
            route: Some(ROUTE.into()),
            ipv6_route: Some(IPV6_ROUTE.into()),
            resolv_conf: Some(
                "# generated\nsearch example\nnameserver 10.255.255.53\nnameserver fe80::53%eth0\n"
                    .into(),
            ),
            kubernetes_service_host: Some("10.96.0.1".into()),
            own: Ok(vec![ip("10.213.0.1"), ip("fd00::9")]),
            scrapers: vec![ip("10.9.9.9")],
        }
    }

    #[test]
    fn gateways_come_from_both_routing_tables() {
        let found = gateways(&system());
        assert_eq!(
            found,
            [
                (ip("192.0.2.1"), "default dev eth0".to_owned()),
                (ip("10.213.0.3"), "198.51.100.0/24 dev sondet0".to_owned()),
                (ip("fd00::1"), "default dev eth0".to_owned()),
            ]
        );
    }

    #[test]
    fn every_protected_source_is_refused_with_its_reason() {
        let m = MapekConfig {
            never_block: vec![Cidr::try_from("192.0.2.128/25".to_owned()).unwrap()],
            ..Default::default()
        };
        let set = protected(&m, &system());
        let proven = None;
        for (peer, why) in [
            ("127.0.0.1", "loopback"),
            ("::1", "loopback"),
            ("0.0.0.0", "unspecified"),
            ("224.0.0.1", "multicast"),
            ("255.255.255.255", "broadcast"),
            ("169.254.169.254", "metadata"),
            ("fd00:ec2::254", "metadata"),
            ("169.254.3.4", "link-local"),
            ("fe80::1234", "link-local"),
            ("192.0.2.200", "never_block (192.0.2.128/25)"),
            ("10.213.0.1", "this node's own addresses"),
            ("::ffff:10.213.0.1", "this node's own addresses"),
            ("192.0.2.1", "gateway of this node (route default dev eth0)"),
            ("10.213.0.3", "gateway of this node (route 198.51.100.0/24"),
            ("fd00::1", "gateway"),
            ("10.255.255.53", "nameserver"),
            ("fe80::53", "link-local"),
            ("10.96.0.1", "Kubernetes API server"),
            ("10.9.9.9", "scraped /metrics"),
        ] {
            let reason = refusal(ip(peer), &set, proven, 0).unwrap();
            assert!(
                reason.starts_with("protected: ") && reason.contains(why),
                "{peer}: {reason}"
            );
        }
        // Not protected, and nothing proves it real: refused as such.
        let reason = refusal(ip("10.213.0.4"), &set, proven, 0).unwrap();
        assert!(reason.contains("not attached"), "{reason}");
        let reason = refusal(ip("10.213.0.4"), &set, Some(&Handshakes::default()), 0).unwrap();
        assert!(
            reason.contains("never completed a TCP handshake"),
            "{reason}"
        );
        // Own addresses unknown: nothing is blocked.
        let mut s = system();
        s.own = Err("no getifaddrs".into());
        let set = protected(&m, &s);
        let reason = refusal(ip("10.213.0.4"), &set, proven, 0).unwrap();
        assert!(reason.contains("could not be read"), "{reason}");
    }

    #[test]
    fn only_a_recent_handshake_proves_a_source_real() {
        let peer = ip("10.213.0.2");
        let s = 1_000_000_000;
        let passive = HandshakePeer {
            passive_ns: 1000 * s,
            passive: 3,
            ..Default::default()
        };
        assert_eq!(unproven(peer, Some(passive), 1010 * s), None);
        let stale = unproven(peer, Some(passive), (1001 + PROOF_SECONDS) * s).unwrap();
        assert!(stale.contains("301 s ago"), "{stale}");
        let answered = HandshakePeer {
            active_ns: 50 * s,
            active: 1,
            ..Default::default()
        };
        assert_eq!(unproven(peer, Some(answered), 60 * s), None);
        assert!(unproven(peer, None, s).unwrap().contains("never"));
    }

    #[test]
    fn scrapers_are_remembered_and_bounded() {
        let scrapers = Scrapers::default();
        scrapers.note(ip("::ffff:10.0.0.7"));
        assert_eq!(scrapers.recent(), [ip("10.0.0.7")]);
        for i in 0..300u32 {
            scrapers
                .clone()
                .note(IpAddr::V4(Ipv4Addr::from(0x0a01_0000 + i)));
        }
        assert_eq!(scrapers.recent().len(), MAX_SCRAPERS);
    }
}
