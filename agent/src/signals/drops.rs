//! Packets the kernel dropped, by its own drop reason and by interface and
//! network namespace: skb:kfree_skb (kernel side: agent-ebpf's drops
//! module, `sonde_kfree_skb_raw` on the raw tracepoint where the kernel
//! has drop reasons, `sonde_kfree_skb` on the record before; types in
//! agent-common's `drops`).
//! `[drops] enabled` turns it on.
//!
//! Reasons are named as this kernel's tracepoint format names them (the
//! `skb_drop_reason` values move between kernels); before 5.17 the
//! tracepoint has no reason and every drop is "unknown". Drops of packets
//! that had a device are also counted per (namespace, interface, reason),
//! at most 4,096 keys: series of interfaces or namespaces gone are removed
//! every few cycles, and counted (in a namespace the agent cannot look
//! into, an interface is gone once a newer one took its name); an
//! accounted interface's go as soon as the agent sees it go. While
//! `[drops] per_peer` is on, or MAPE-K attributes a packet loss, drops of
//! IP packets are also counted by (reason, source, destination), the 4,096
//! most recent triples: not exported (an address per series has no
//! bound), read by MAPE-K to say whose packets a loss dropped.
//!
//! The count by interface is most of what a drop costs the kernel. Up to
//! `[drops] exact_device_drops_per_second` every drop is counted there;
//! above, one drop in N (a power of two, at most 1,024), chosen at random,
//! is counted N times, N the smallest that keeps the sampled rate under
//! that: the per-interface split is then an estimate, and
//! `sonde_interface_drops_sample_period` says so. The count by reason is
//! exact at any rate.

use std::{borrow::Cow, collections::HashMap, net::IpAddr, sync::Arc, time::Instant};

use agent_common::{
    config::{CFG_DROP_DEVICE_SAMPLE_PERIOD, CFG_DROP_PEERS},
    drops::{
        DROP_DEVICES_MAP, DROP_PEERS_MAP, DROP_REASON_OTHER, DROP_REASONS_MAP, DropDeviceKey,
        DropDeviceStats, DropPeerKey,
    },
    merge::Merge,
    net::ip_addr,
};
use aya::{
    Ebpf,
    maps::{HashMap as BpfHashMap, MapData, MapError, PerCpuArray, PerCpuHashMap},
};
use prometheus::proto::{MetricFamily, MetricType};
use tracing::{debug, info, warn};

use super::{BtfField, OpenError, Reading, Signal, Source, TracepointField, take};
use crate::{
    map_batch,
    config::Config,
    family::Family,
    probes::{
        capabilities,
        tiers::{self, Hook, Requires, Tier, TierProgram},
    },
};

/// What the names of the programs counting drops begin with (the classic
/// tracepoint's and the raw one's): one attached means drops are counted
/// (MAPE-K watches `packet_drops_per_second` only then).
pub const PROGRAM_PREFIX: &str = "sonde_kfree_skb";

pub const SIGNAL: Signal = Signal {
    tiers: &TIERS,
    tracepoint_fields: TRACEPOINT_FIELDS,
    btf_fields: BTF_FIELDS,
    symbols: &[],
    constants: &[],
    enabled: |config| config.drops.enabled,
    forced_tier: |_| None,
    reads: "drop reasons",
    open,
};

/// The raw tracepoint's arguments where the tracepoint has a drop reason
/// (5.17: `kfree_skb(skb, location, reason, ...)`), the skb:kfree_skb
/// record before (old as tracepoints go). Nothing else they read is
/// required: without the reason field every drop is "unknown", without
/// the device offsets drops are counted by reason only.
const TIERS: tiers::Signal = tiers::Signal {
    name: "drops",
    required: false,
    tiers: &[
        Tier {
            mode: "raw_tracepoint",
            min_kernel: (5, 17),
            requires: Requires::RawTracepoints,
            programs: &[TierProgram {
                program: "sonde_kfree_skb_raw",
                hook: Hook::RawTracepoint("kfree_skb"),
                needs: &["TP_KFREE_SKB_REASON"],
                partial_before: None,
            }],
        },
        Tier {
            mode: "tracepoint",
            min_kernel: (2, 6),
            requires: Requires::Tracefs,
            programs: &[TierProgram {
                program: "sonde_kfree_skb",
                hook: Hook::Tracepoint("skb", "kfree_skb"),
                needs: &[],
                partial_before: None,
            }],
        },
    ],
};

const TRACEPOINT_FIELDS: &[TracepointField] = &[
    ("TP_KFREE_SKB_REASON", "skb", "kfree_skb", "reason"),
    ("TP_KFREE_SKB_SKBADDR", "skb", "kfree_skb", "skbaddr"),
    ("TP_KFREE_SKB_PROTOCOL", "skb", "kfree_skb", "protocol"),
];

/// Drops by interface and network namespace: skb → device → its ifindex,
/// name and namespace's inode; by source and destination: skb → its IP
/// header.
const BTF_FIELDS: &[BtfField] = &[
    ("SKB_HEAD_OFFSET", "sk_buff", &["head"]),
    ("SKB_NETWORK_HEADER_OFFSET", "sk_buff", &["network_header"]),
    ("SKB_PROTOCOL_OFFSET", "sk_buff", &["protocol"]),
    ("SKB_DEV_OFFSET", "sk_buff", &["dev"]),
    ("NETDEV_IFINDEX_OFFSET", "net_device", &["ifindex"]),
    ("NETDEV_NAME_OFFSET", "net_device", &["name"]),
    ("NETDEV_ND_NET_OFFSET", "net_device", &["nd_net"]),
    ("NET_NS_OFFSET", "net", &["ns"]),
    ("NS_COMMON_INUM_OFFSET", "ns_common", &["inum"]),
];

fn open(ebpf: &mut Ebpf, config: &Config) -> Result<Box<dyn Source>, OpenError> {
    let mut reason_names = HashMap::new();
    if (SIGNAL.enabled)(config) {
        let tracefs = capabilities::tracefs_dir();
        reason_names = tracefs
            .map(|t| capabilities::tracepoint_symbols(t, "skb", "kfree_skb", "reason"))
            .unwrap_or_default()
            .into_iter()
            .collect();
        let reason = tracefs
            .and_then(|t| capabilities::tracepoint_field_offset(t, "skb", "kfree_skb", "reason"));
        if reason.is_none() {
            warn!(
                "skb:kfree_skb has no drop reason on this kernel (< 5.17): drops counted as reason \"unknown\""
            );
        }
    }
    Ok(Box::new(Maps {
        reasons: take(ebpf, DROP_REASONS_MAP)?,
        devices: take(ebpf, DROP_DEVICES_MAP)?,
        peers: take(ebpf, DROP_PEERS_MAP)?,
        per_peer: false,
        exact_below: config.drops.exact_device_drops_per_second,
        sample_period: 1,
        last_total: None,
        reason_counts: None,
        reason_names,
        own_netns: std::fs::metadata("/proc/self/ns/net")
            .ok()
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m) as u32),
        removed: 0,
    }))
}

struct Maps {
    reasons: PerCpuArray<MapData, u64>,
    devices: PerCpuHashMap<MapData, DropDeviceKey, DropDeviceStats>,
    peers: BpfHashMap<MapData, DropPeerKey, u64>,
    /// Whether the kernel counts drops per peer now: `peers` is read only
    /// then, and emptied before counting starts, so that each counting
    /// starts from zero (its first cycle has no earlier reading to
    /// subtract).
    per_peer: bool,
    /// `[drops] exact_device_drops_per_second`.
    exact_below: u64,
    /// The device sampling period written to the kernel (1: exact).
    sample_period: u64,
    /// When the drops by reason were last read, and their sum then.
    last_total: Option<(Instant, u64)>,
    /// This cycle's drops by reason slot (`advance` reads them for the
    /// rate; `collect` exports them).
    reason_counts: Option<Vec<u64>>,
    /// This kernel's names of the skb drop reasons, by value.
    reason_names: HashMap<u32, String>,
    /// Inode of the agent's own network namespace: drops there are
    /// labelled `netns="host"`.
    own_netns: Option<u32>,
    /// Interface drop series removed so far.
    removed: u64,
}

impl Maps {
    /// Removes these device entries from the kernel map, counting each.
    fn remove(&mut self, keys: Vec<DropDeviceKey>) {
        for key in keys {
            if self.devices.remove(&key).is_ok() {
                self.removed += 1;
            }
        }
    }

    /// The running kernel's name for a drop reason slot, lower-cased.
    fn reason_name(&self, reason: u32) -> String {
        match self.reason_names.get(&reason) {
            Some(name) => name.to_ascii_lowercase(),
            None if reason == DROP_REASON_OTHER => "other".to_owned(),
            None if reason == 0 => "unknown".to_owned(),
            None => format!("reason_{reason}"),
        }
    }

    fn read(&self, drops: &mut Drops) -> Result<(), MapError> {
        let counts = match &self.reason_counts {
            Some(counts) => Cow::Borrowed(counts),
            None => Cow::Owned(map_batch::per_cpu_array_summed(&self.reasons)?),
        };
        for (reason, &n) in (0..).zip(counts.iter()) {
            if n == 0 {
                continue;
            }
            drops.reasons.push((self.reason_name(reason), n));
        }
        for (key, stats) in map_batch::per_cpu_hash_summed(&self.devices)? {
            if stats.drops == 0 {
                continue;
            }
            let name = crate::events::c_string(&stats.name);
            drops.devices.push(DeviceDrops {
                netns: match key.netns {
                    0 => "unknown".to_owned(),
                    ns if Some(ns) == self.own_netns => "host".to_owned(),
                    ns => ns.to_string(),
                },
                interface: if name.is_empty() {
                    format!("ifindex_{}", key.ifindex)
                } else {
                    name
                },
                reason: self.reason_name(key.reason),
                drops: stats.drops,
            });
        }
        merge_devices(&mut drops.devices);
        if self.per_peer {
            // Attribution only: a failed read leaves the peers out rather
            // than failing the reading.
            let entries = map_batch::hash_entries(&self.peers).unwrap_or_else(|err| {
                debug!("reading the drop peers failed: {err}");
                Vec::new()
            });
            drops.peers = entries
                .into_iter()
                .filter(|(_, n)| *n > 0)
                .map(|(key, drops)| PeerDrops {
                    reason: self.reason_name(key.reason),
                    src: ip_addr(key.family, key.src),
                    dst: ip_addr(key.family, key.dst),
                    drops,
                })
                .collect();
        }
        Ok(())
    }

    /// Empties the drop-peer map (the kernel does not count into it now).
    fn clear_peers(&mut self) {
        use aya::maps::IterableMap as _;
        let keys: Vec<DropPeerKey> = map_batch::hash_entries(&self.peers)
            .unwrap_or_default()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        if let Ok(Some(_)) = map_batch::delete_all(self.peers.map(), &keys) {
            return;
        }
        for key in keys {
            let _ = self.peers.remove(&key);
        }
    }
}

/// Sorts the device drops and sums those that share a series: inside a
/// namespace the agent cannot look into, a deleted interface's entry stays
/// until the namespace goes, and a new interface of the same name (another
/// ifindex) must not print a second series with the same labels (a scrape
/// with duplicate series is rejected). The sum only falls when an entry is
/// removed, which Prometheus reads as a counter reset.
fn merge_devices(devices: &mut Vec<DeviceDrops>) {
    devices.sort_by(|a, b| {
        (&a.netns, &a.interface, &a.reason).cmp(&(&b.netns, &b.interface, &b.reason))
    });
    devices.dedup_by(|later, kept| {
        let same = (&later.netns, &later.interface, &later.reason)
            == (&kept.netns, &kept.interface, &kept.reason);
        if same {
            kept.drops += later.drops;
        }
        same
    });
}

impl Source for Maps {
    fn reconfigure(&mut self, config: &Config) -> Result<Vec<(u32, u64)>, OpenError> {
        let per_peer = config.drops.enabled && config.drops.per_peer;
        if per_peer && !self.per_peer {
            self.clear_peers();
        }
        self.per_peer = per_peer;
        self.exact_below = config.drops.exact_device_drops_per_second;
        if self.exact_below == 0 {
            self.sample_period = 1;
        }
        Ok(vec![
            (CFG_DROP_PEERS, u64::from(per_peer)),
            (CFG_DROP_DEVICE_SAMPLE_PERIOD, self.sample_period),
        ])
    }

    /// Reads the drops by reason, and from their rate since the last cycle
    /// sets the device sampling period.
    fn advance(&mut self, _counters: &[u64]) -> Result<Vec<(u32, u64)>, MapError> {
        self.reason_counts = None;
        let counts = map_batch::per_cpu_array_summed(&self.reasons)?;
        let total: u64 = counts.iter().sum();
        let now = Instant::now();
        let mut settings = Vec::new();
        if let Some((then, before)) = self.last_total {
            let seconds = now.duration_since(then).as_secs_f64();
            let rate = total.saturating_sub(before) as f64 / seconds;
            let period = device_sample_period(self.sample_period, rate, self.exact_below);
            if period != self.sample_period {
                if period == 1 {
                    info!("packet drops at {rate:.0}/s: every drop counted by interface again");
                } else {
                    info!(
                        "packet drops at {rate:.0}/s: one drop in {period} counted by interface \
                         (sonde_interface_packet_drops_total estimated; by reason still exact)"
                    );
                }
                self.sample_period = period;
                settings.push((CFG_DROP_DEVICE_SAMPLE_PERIOD, period));
            }
        }
        self.last_total = Some((now, total));
        self.reason_counts = Some(counts);
        Ok(settings)
    }

    fn collect(&self) -> (Arc<dyn Reading>, Option<MapError>) {
        let mut drops = Drops {
            series_removed: self.removed,
            device_sample_period: self.sample_period,
            ..Default::default()
        };
        let error = self.read(&mut drops).err();
        (Arc::new(drops), error)
    }

    /// Drop counts of interfaces or namespaces that no longer exist (a
    /// node's pods come and go, each with its own namespace and veth)
    /// would fill the map's 4,096 keys over weeks and linger in /metrics:
    /// remove them. A namespace lives while a process is in it or a bind
    /// mount (`ip netns`, container runtimes) holds it; entries of unknown
    /// namespace (0) are kept.
    fn remove_stale(&mut self) {
        let keys: Vec<DropDeviceKey> = self
            .devices
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.netns != 0)
            .collect();
        if keys.is_empty() {
            return;
        }
        let namespaces = crate::netif::live_namespaces();
        let own_interfaces = crate::netif::own_ifindexes();
        let mut stale = Vec::new();
        let mut foreign = Vec::new();
        for key in keys {
            let gone = if Some(key.netns) == self.own_netns {
                own_interfaces
                    .as_ref()
                    .is_some_and(|live| !live.contains(&key.ifindex))
            } else {
                namespaces
                    .as_ref()
                    .is_some_and(|live| !live.contains(&key.netns))
            };
            if gone {
                stale.push(key);
            } else if Some(key.netns) != self.own_netns {
                foreign.push(key);
            }
        }
        // In a namespace that lives on, the agent cannot list the
        // interfaces; an entry whose name a newer interface took is stale.
        let named: Vec<(DropDeviceKey, String)> = foreign
            .into_iter()
            .filter_map(|key| {
                let values = self.devices.get(&key, 0).ok()?;
                let stats = DropDeviceStats::sum(values.iter());
                Some((key, crate::events::c_string(&stats.name)))
            })
            .collect();
        stale.extend(superseded(&named));
        self.remove(stale);
    }

    /// An accounted interface of the agent's namespace went away (a pod's
    /// veth): its drop series go now, not at the next sweep. Drops its
    /// teardown causes after this are swept later.
    fn interface_removed(&mut self, ifindex: u32) {
        let Some(own) = self.own_netns else {
            return;
        };
        // One batched read, not two syscalls per key: pods' veths go ten
        // at a time in a rollout.
        let keys = map_batch::per_cpu_hash_summed(&self.devices)
            .unwrap_or_default()
            .into_iter()
            .map(|(k, _)| k)
            .filter(|k| k.netns == own && k.ifindex == ifindex)
            .collect();
        self.remove(keys);
    }
}


/// The largest device sampling period: past 1,024 times the exact rate the
/// count by device costs more again, but an estimate from fewer samples
/// would be too coarse to name an interface by.
const MAX_DEVICE_SAMPLE_PERIOD: u64 = 1024;

/// The device sampling period for `rate` drops per second: 1 up to
/// `exact_below` (0: always 1); above, the smallest power of two that
/// brings the sampled rate down to it. Raised at once; lowered only once
/// the rate is under half of what the lower period allows, so that a rate
/// near an edge does not switch between two every cycle.
fn device_sample_period(current: u64, rate: f64, exact_below: u64) -> u64 {
    if exact_below == 0 {
        return 1;
    }
    let wanted = |rate: f64| {
        let ratio = (rate / exact_below as f64).ceil();
        // NaN (no time between two reads) or at most the exact rate.
        if ratio.is_nan() || ratio <= 1.0 {
            1
        } else {
            (ratio.min(MAX_DEVICE_SAMPLE_PERIOD as f64) as u64)
                .next_power_of_two()
                .min(MAX_DEVICE_SAMPLE_PERIOD)
        }
    };
    let up = wanted(rate);
    if up >= current {
        up
    } else {
        wanted(rate * 2.0).min(current)
    }
}

/// Entries of interfaces a newer one of the same name replaced, in the
/// same namespace: two live interfaces of a namespace never share a name,
/// and a namespace hands out growing ifindexes, so of the entries sharing
/// a (namespace, name) only those of the highest ifindex can be live
/// (an interface moved in with a lower ifindex than a dead namesake loses
/// its count so far: a counter reset). Unnamed entries are kept.
fn superseded(entries: &[(DropDeviceKey, String)]) -> Vec<DropDeviceKey> {
    let mut newest: HashMap<(u32, &str), u32> = HashMap::new();
    for (key, name) in entries.iter().filter(|(_, n)| !n.is_empty()) {
        let top = newest.entry((key.netns, name)).or_insert(key.ifindex);
        *top = (*top).max(key.ifindex);
    }
    entries
        .iter()
        .filter(|(key, name)| {
            newest
                .get(&(key.netns, name.as_str()))
                .is_some_and(|top| *top > key.ifindex)
        })
        .map(|(key, _)| *key)
        .collect()
}

/// Drops of packets that had a network device, per device and reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceDrops {
    /// "host" (the agent's namespace), the namespace inode, or "unknown".
    pub netns: String,
    pub interface: String,
    pub reason: String,
    pub drops: u64,
}

/// Drops of IP packets between two addresses, of one reason (the count
/// since the triple was last made room for).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerDrops {
    pub reason: String,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub drops: u64,
}

/// Drops by reason and by device, summed over CPUs, non-zero only.
#[derive(Debug, Clone, Default)]
pub struct Drops {
    /// (drop reason name, drops).
    pub reasons: Vec<(String, u64)>,
    pub devices: Vec<DeviceDrops>,
    /// By (reason, source, destination); not exported.
    pub peers: Vec<PeerDrops>,
    /// Interface drop series removed because their interface or network
    /// namespace no longer exists.
    pub series_removed: u64,
    /// One drop in this many is counted by device, weighted by it (1:
    /// every drop, `devices` exact).
    pub device_sample_period: u64,
}

/// Drop reasons that are not loss on a live path. Teardown: a deleted or
/// downed interface's queue, its dead neighbour entries, a socket closed
/// with data unread; a node that churns pods and veths drops these all day.
/// And a packet socket's copy (`packet_sock_error`): a capture (tcpdump,
/// nmap's sniffer) that fell behind or closed loses its clone, while the
/// packet itself went on. They are exported like any other, but are not
/// packet loss.
pub const NOT_LOSS_REASONS: &[&str] = &[
    "queue_purge",
    "dev_ready",
    "neigh_dead",
    "socket_close",
    "unix_disconnect",
    "unix_skip_oob",
    "packet_sock_error",
];

/// Whether drops of `reason` are loss (not [`NOT_LOSS_REASONS`]).
pub fn is_loss(reason: &str) -> bool {
    !NOT_LOSS_REASONS.contains(&reason)
}

impl Drops {
    /// Every drop counted, whatever its reason.
    pub fn total(&self) -> u64 {
        self.reasons.iter().map(|(_, n)| *n).sum()
    }

    /// Drops of every reason that is loss ([`is_loss`]).
    pub fn loss(&self) -> u64 {
        self.reasons
            .iter()
            .filter(|(r, _)| is_loss(r))
            .map(|(_, n)| *n)
            .sum()
    }
}

impl Reading for Drops {
    fn families(&self, out: &mut Vec<MetricFamily>) {
        let mut drops = Family::new(
            "sonde_packet_drops_total",
            "Packets the kernel dropped, by the kernel's own drop reason (skb:kfree_skb)",
            MetricType::COUNTER,
        );
        for (reason, n) in &self.reasons {
            drops.sample(&[("reason", reason)], *n as f64);
        }
        drops.done(out);
        let mut device_drops = Family::new(
            "sonde_interface_packet_drops_total",
            "Packets the kernel dropped while they had a network device, by namespace (\"host\": the agent's), interface (with the Kubernetes namespace and pod of a pod's veth or network namespace) and drop reason (skb:kfree_skb)",
            MetricType::COUNTER,
        );
        // A pod's veth (host end, in the agent's namespace) and the
        // interfaces in a pod's own namespace also carry its pod and
        // namespace (`[kubernetes]`).
        let pods = crate::pods::cache().view();
        for d in &self.devices {
            let mut labels = vec![
                ("netns", d.netns.as_str()),
                ("interface", d.interface.as_str()),
                ("reason", d.reason.as_str()),
            ];
            pods.label_interface(&d.netns, &d.interface, &mut labels);
            device_drops.sample(&labels, d.drops as f64);
        }
        device_drops.done(out);
        let mut removed = Family::new(
            "sonde_interface_drop_series_removed_total",
            "Interface drop series (sonde_interface_packet_drops_total) removed because their interface or network namespace no longer exists",
            MetricType::COUNTER,
        );
        removed.sample(&[], self.series_removed as f64);
        removed.done(out);
        let mut period = Family::new(
            "sonde_interface_drops_sample_period",
            "Drops counted by interface: 1, every one; N > 1, one in N chosen at random and counted N times, while drops outrun [drops] exact_device_drops_per_second (sonde_interface_packet_drops_total is then an estimate; sonde_packet_drops_total stays exact)",
            MetricType::GAUGE,
        );
        period.sample(&[], self.device_sample_period as f64);
        period.done(out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn older_interfaces_of_a_name_are_superseded() {
        let key = |netns, ifindex, reason| DropDeviceKey {
            netns,
            ifindex,
            reason,
            _pad: 0,
        };
        let entries = [
            (key(7, 10, 2), "skv0".to_owned()),
            (key(7, 12, 2), "skv0".to_owned()),
            (key(7, 12, 3), "skv0".to_owned()),
            (key(7, 11, 2), "skw0".to_owned()),
            // Same name, another namespace: its own newest.
            (key(8, 5, 2), "skv0".to_owned()),
            // Unnamed: kept.
            (key(7, 3, 2), String::new()),
        ];
        let mut gone = superseded(&entries);
        gone.sort_by_key(|k| (k.netns, k.ifindex, k.reason));
        assert_eq!(gone, [key(7, 10, 2)]);
        assert!(superseded(&[]).is_empty());
    }

    #[test]
    fn interfaces_of_one_name_make_one_series() {
        let d = |netns: &str, interface: &str, reason: &str, drops| DeviceDrops {
            netns: netns.to_owned(),
            interface: interface.to_owned(),
            reason: reason.to_owned(),
            drops,
        };
        // Three veths called skv0 (three ifindexes) in one namespace, as
        // `cargo xtask soak`'s churn makes them.
        let mut devices = vec![
            d("4026532310", "skv0", "not_specified", 3),
            d("host", "lo", "no_socket", 1),
            d("4026532310", "skv0", "not_specified", 2),
            d("4026532310", "skv0", "no_socket", 1),
            d("4026532310", "skv0", "not_specified", 4),
        ];
        merge_devices(&mut devices);
        assert_eq!(
            devices,
            [
                d("4026532310", "skv0", "no_socket", 1),
                d("4026532310", "skv0", "not_specified", 9),
                d("host", "lo", "no_socket", 1),
            ]
        );
    }

    #[test]
    fn families_from_reasons_and_devices() {
        let reading = Drops {
            reasons: vec![("no_socket".to_owned(), 4), ("other".to_owned(), 1)],
            devices: vec![DeviceDrops {
                netns: "host".to_owned(),
                interface: "lo".to_owned(),
                reason: "no_socket".to_owned(),
                drops: 4,
            }],
            peers: Vec::new(),
            series_removed: 2,
            device_sample_period: 1,
        };
        assert_eq!(reading.total(), 5);
        let mut out = Vec::new();
        reading.families(&mut out);
        let names: Vec<&str> = out.iter().map(|f| f.name()).collect();
        assert_eq!(
            names,
            [
                "sonde_packet_drops_total",
                "sonde_interface_packet_drops_total",
                "sonde_interface_drop_series_removed_total",
                "sonde_interface_drops_sample_period"
            ]
        );
        assert_eq!(reading.completeness(), None);
        let mut quiet = Vec::new();
        Drops::default().families(&mut quiet);
        let names: Vec<&str> = quiet.iter().map(|f| f.name()).collect();
        assert_eq!(
            names,
            [
                "sonde_interface_drop_series_removed_total",
                "sonde_interface_drops_sample_period"
            ],
            "no drop, only the removal counter and the sampling period"
        );
    }

    #[test]
    fn devices_are_sampled_only_while_drops_outrun_the_exact_rate() {
        let exact = 10_000;
        // Up to the exact rate, and whatever the rate with sampling off.
        assert_eq!(device_sample_period(1, 0.0, exact), 1);
        assert_eq!(device_sample_period(1, 10_000.0, exact), 1);
        assert_eq!(device_sample_period(1, f64::NAN, exact), 1);
        assert_eq!(device_sample_period(64, 5e6, 0), 1);
        // Above: the smallest power of two that brings it down to 10,000/s.
        assert_eq!(device_sample_period(1, 10_001.0, exact), 2);
        assert_eq!(device_sample_period(1, 220_000.0, exact), 32);
        assert_eq!(device_sample_period(1, 320_000.0, exact), 32);
        assert_eq!(device_sample_period(2, 320_001.0, exact), 64);
        assert_eq!(device_sample_period(1, 1e12, exact), 1024);
        assert_eq!(device_sample_period(1, f64::INFINITY, exact), 1024);
        // Lowered only under half of what the lower period allows.
        assert_eq!(device_sample_period(32, 200_000.0, exact), 32);
        assert_eq!(device_sample_period(32, 150_000.0, exact), 32);
        assert_eq!(device_sample_period(32, 120_000.0, exact), 32);
        assert_eq!(device_sample_period(32, 70_000.0, exact), 16);
        assert_eq!(device_sample_period(16, 9_000.0, exact), 2);
        assert_eq!(device_sample_period(2, 9_000.0, exact), 2);
        assert_eq!(device_sample_period(2, 4_999.0, exact), 1);
        // A flood that stops: exact at once.
        assert_eq!(device_sample_period(1024, 0.0, exact), 1);
    }
}
