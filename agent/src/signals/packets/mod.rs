//! Packets and bytes per interface, direction, address family and IP
//! protocol, TCP flags, ICMPv6 link control, the flow table and the top
//! remote peers (kernel side: agent-ebpf's net module, XDP or TC on
//! ingress and TC on egress of every accounted interface; types in
//! agent-common's `net`). `[network] enabled` turns it on; `[network]
//! xdp_mode`, `max_flows`, `flow_idle_timeout_s` and `top_peers` tune it.
//!
//! The flow table's entries come and go (idle ones removed here, the
//! kernel's LRU evicting others when it is full), so its traffic is turned
//! into per-peer deltas, and an evicted flow never makes a counter go
//! back. The interfaces accounted come and go too: the collector is told
//! ([`Source::interface_added`], [`Source::interface_removed`]), and each
//! reading names them as they were when it was taken.

mod peers;

use std::{
    collections::{BTreeMap, HashMap, HashSet, hash_map::Entry},
    net::IpAddr,
    sync::Arc,
};

use agent_common::{
    config::{CFG_FLOW_EVENTS_BURST, CFG_FLOW_EVENTS_PER_SEC},
    counters::FLOW_CREATED,
    net::{
        DIRECTION_INGRESS, FAMILY_IPV6, FLOW_FRAGMENTS, FLOWS_MAP, FlowKey, FlowStats,
        IPPROTO_ICMPV6, IPPROTO_TCP, PACKET_COUNTERS_MAP, PacketCounters, PacketKey,
        direction_name, family_name, ip_addr, is_icmpv6_link_control, protocol_name,
    },
};
use aya::{
    Ebpf,
    maps::{HashMap as BpfHashMap, MapData, MapError, PerCpuHashMap},
};
pub use peers::{PeerKey, PeerRow, PeerTracker};
use prometheus::proto::{MetricFamily, MetricType};
use tracing::debug;

use super::{MapSize, OpenError, Reading, Signal, Source, take};
use crate::{
    config::Config,
    family::Family,
    map_batch,
    probes::tiers::{self, Hook, Requires, Tier, program},
    time::monotonic_ns,
};

pub const SIGNAL: Signal = Signal {
    tiers: &TIERS,
    tracepoint_fields: &[],
    btf_fields: &[],
    symbols: &[],
    constants: &[],
    enabled: |config| config.network.enabled,
    forced_tier: |_| None,
    reads: "packet counters and the flow table",
    open,
};

/// The flow table holds `[network] max_flows` entries.
pub const MAP_SIZES: &[MapSize] = &[(FLOWS_MAP, |config| config.network.max_flows)];

/// Attached to every accounted interface rather than once: ingress with
/// XDP where the interface and `[network] xdp_mode` make it the cheap path,
/// else TC; egress with TC. The loader's interface machinery chooses the
/// ingress hook and the link type, and says why.
const TIERS: tiers::Signal = tiers::Signal {
    name: "packets",
    required: false,
    tiers: &[Tier {
        mode: "interface",
        min_kernel: (4, 5),
        requires: Requires::SchedCls,
        programs: &[
            program("sonde_xdp_ingress", Hook::XdpOrTc("sonde_tc_ingress")),
            program("sonde_tc_egress", Hook::TcEgress),
        ],
    }],
};

fn open(ebpf: &mut Ebpf, config: &Config) -> Result<Box<dyn Source>, OpenError> {
    Ok(Box::new(Maps {
        counters: take(ebpf, PACKET_COUNTERS_MAP)?,
        flows: take(ebpf, FLOWS_MAP)?,
        interfaces: BTreeMap::new(),
        flow_idle_timeout_ns: config
            .network
            .flow_idle_timeout_s
            .saturating_mul(1_000_000_000),
        peers: PeerTracker::new(config.network.top_peers),
        seen: HashMap::default(),
        generation: 0,
        flows_expired: 0,
        flow_evictions: 0,
        flow_view: FlowView::default(),
    }))
}

/// What the previous cycle saw of one flow.
#[derive(Default)]
struct FlowState {
    packets: u64,
    bytes: u64,
    first_seen_ns: u64,
    /// The read that last saw its counts move, or first saw it: when it was
    /// last active, to a cycle (the kernel stamps no packet with a time).
    last_active_ns: u64,
    /// The read that last saw it.
    generation: u32,
}

/// Flows of at most this many packets are expired after
/// [`UNREPLIED_IDLE_NS`] idle rather than the configured timeout: a
/// refused SYN, its RST, a probe or a one-shot datagram. A flood or a scan
/// leaves tens of thousands of them, and holding them for the full timeout
/// kept every collection reading a full table for minutes after it ended
/// (conntrack, likewise, gives unreplied UDP 30 s, not its 180 s).
const UNREPLIED_PACKETS: u64 = 2;
const UNREPLIED_IDLE_NS: u64 = 10_000_000_000;

struct Maps {
    counters: PerCpuHashMap<MapData, PacketKey, PacketCounters>,
    flows: BpfHashMap<MapData, FlowKey, FlowStats>,
    /// ifindex → name of the interfaces accounted.
    interfaces: BTreeMap<u32, String>,
    flow_idle_timeout_ns: u64,
    peers: PeerTracker,
    /// Every flow of the last read. Its keys are whatever 5-tuples the
    /// network sent, hashed with foldhash (seeded per process) rather than
    /// SipHash: a few times cheaper per flow, and still not predictable
    /// from outside.
    seen: HashMap<FlowKey, FlowState, foldhash::fast::RandomState>,
    /// Counts the reads of the flow table (marks the flows each saw).
    generation: u32,
    flows_expired: u64,
    flow_evictions: u64,
    /// The flow table as the last cycle left it.
    flow_view: FlowView,
}

/// The flow table's part of a reading.
#[derive(Debug, Clone, Default)]
pub struct FlowView {
    /// Live flows per ifindex.
    pub active: BTreeMap<u32, u64>,
    /// Flows the kernel created (its diagnostic counter).
    pub created: u64,
    /// Idle flows removed by the agent.
    pub expired: u64,
    /// Flows evicted by the kernel's LRU.
    pub evictions: u64,
    pub peers: Vec<PeerRow>,
    /// The remote peer that opened new flows to the most distinct local
    /// ports since the previous cycle, and how many (scan evidence).
    pub widest_peer: Option<(IpAddr, u64)>,
    /// What each remote peer sent this node since the previous cycle, per
    /// IP protocol (ICMPv6 link control apart), heaviest by packets first
    /// (at most [`CYCLE_PEERS_KEPT`]): who is behind a traffic feature's
    /// move.
    pub inbound: Vec<InboundPeer>,
    /// Packets and bytes of all inbound flows since the previous cycle,
    /// per IP protocol, ICMPv6 link control not included (the
    /// denominators of the peers' shares).
    pub inbound_totals: BTreeMap<u8, (u64, u64)>,
    /// Packets and bytes of inbound ICMPv6 link control since the
    /// previous cycle.
    pub inbound_link_control: (u64, u64),
    /// Packets and bytes of inbound IP fragments since the previous
    /// cycle (part of `inbound_totals`: a fragment is its protocol's).
    pub inbound_fragments: (u64, u64),
    /// Inbound flows first seen since the previous cycle, per IP protocol,
    /// ICMPv6 link control not included: it opens nothing (the
    /// denominator of the flow openers' shares).
    pub inbound_new_flows: BTreeMap<u8, u64>,
}

/// Inbound peers kept per cycle for attribution.
pub const CYCLE_PEERS_KEPT: usize = 16;

/// One remote peer's inbound traffic of one IP protocol in one cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InboundPeer {
    pub peer: IpAddr,
    pub protocol: u8,
    /// ICMPv6 link control ([`is_icmpv6_link_control`]): kept apart from
    /// the rest of ICMPv6, so that pods coming up are no ICMP flood's
    /// culprits, while a traffic surge of it still names its source.
    pub link_control: bool,
    /// Fragments of datagrams ([`FLOW_FRAGMENTS`]): kept apart so that a
    /// fragment flood names who sent the fragments, while a flood of
    /// their protocol still counts them as its own.
    pub fragments: bool,
    pub packets: u64,
    pub bytes: u64,
    /// New flows it opened (distinct 5-tuples first seen this cycle).
    pub new_flows: u64,
}

impl Maps {
    fn read_counters(&self, out: &mut Vec<(PacketKey, PacketCounters)>) -> Result<(), MapError> {
        out.extend(map_batch::per_cpu_hash_summed(&self.counters)?);
        out.sort_by_key(|(k, _)| (k.ifindex, k.direction, k.family, k.protocol));
        Ok(())
    }


    /// Removes idle flows from the kernel's table and from `seen`, in a
    /// few batched syscalls where the kernel can (a flood's flows go idle
    /// together, tens of thousands in one cycle).
    fn remove_idle(&mut self, idle: &[FlowKey], active: &mut BTreeMap<u32, u64>) {
        use aya::maps::IterableMap as _;
        if idle.is_empty() {
            return;
        }
        let gone: Vec<&FlowKey> = match map_batch::delete_all(self.flows.map(), idle) {
            Ok(Some(n)) => {
                self.flows_expired += n as u64;
                idle.iter().collect()
            }
            Ok(None) => idle
                .iter()
                .filter(|key| match self.flows.remove(key) {
                    Ok(()) => {
                        self.flows_expired += 1;
                        true
                    }
                    Err(err) => matches!(err, MapError::KeyNotFound),
                })
                .collect(),
            // Still in the table: `seen` keeps them, so their packets are
            // not counted again next cycle.
            Err(err) => {
                debug!("removing idle flows failed ({err}); next cycle retries");
                return;
            }
        };
        // Removed here, or evicted by the kernel meanwhile.
        for key in gone {
            if self.seen.remove(key).is_some()
                && let Some(n) = active.get_mut(&key.ifindex)
            {
                *n = n.saturating_sub(1);
            }
        }
    }

    /// Idle long enough for user space to remove it (never with a 0
    /// timeout: the LRU alone bounds the table then). `last_active_ns` is
    /// the read that last saw the flow's counts move, so a flow leaves up
    /// to one collection interval later than its last packet's time would
    /// have it.
    fn is_idle(&self, flow: &FlowStats, last_active_ns: u64, now: u64) -> bool {
        let timeout = match self.flow_idle_timeout_ns {
            0 => return false,
            t if flow.packets <= UNREPLIED_PACKETS => t.min(UNREPLIED_IDLE_NS),
            t => t,
        };
        now.saturating_sub(last_active_ns) > timeout
    }

    /// The flow table's view this cycle, and whether a burst's flows left
    /// it (`seen` shrank).
    fn read_flows(&mut self, created: u64) -> Result<(FlowView, bool), MapError> {
        let now = monotonic_ns();
        self.generation = self.generation.wrapping_add(1);
        let generation = self.generation;
        let mut view = FlowView {
            created,
            ..Default::default()
        };
        let mut deltas: HashMap<PeerKey, (u64, u64)> = HashMap::new();
        // Distinct local ports each remote peer opened new flows to.
        let mut fan_out: HashMap<IpAddr, HashSet<u16>> = HashMap::new();
        // Inbound packets, bytes and new flows per (peer, protocol, link
        // control, fragments).
        let mut inbound: HashMap<InboundKey, (u64, u64, u64)> = HashMap::new();
        let mut idle = Vec::new();
        // Live flows per ifindex: a handful of interfaces, counted in a
        // small list rather than hashed once per flow.
        let mut active: Vec<(u32, u64)> = Vec::new();
        for (key, flow) in map_batch::hash_entries(&self.flows)? {
            let link_control = is_link_control(&key);
            let fragments = !link_control && key.flags & FLOW_FRAGMENTS != 0;
            // Updated in place: a full table is tens of thousands of
            // flows, most of them unchanged since last cycle, and
            // rebuilding the table each cycle cost as much as reading it.
            let (dp, db, last_active_ns) = match self.seen.entry(key) {
                // Same incarnation: count what is new since last cycle.
                Entry::Occupied(mut e)
                    if e.get().first_seen_ns == flow.first_seen_ns
                        && flow.bytes >= e.get().bytes =>
                {
                    let prev = e.get_mut();
                    let (dp, db) = (flow.packets - prev.packets, flow.bytes - prev.bytes);
                    if dp > 0 {
                        prev.last_active_ns = now;
                    }
                    (prev.packets, prev.bytes, prev.generation) =
                        (flow.packets, flow.bytes, generation);
                    (dp, db, prev.last_active_ns)
                }
                // New flow, or evicted and re-created since: all of it is new.
                e => {
                    let state = FlowState {
                        packets: flow.packets,
                        bytes: flow.bytes,
                        first_seen_ns: flow.first_seen_ns,
                        last_active_ns: now,
                        generation,
                    };
                    match e {
                        Entry::Occupied(mut e) => *e.get_mut() = state,
                        Entry::Vacant(e) => {
                            e.insert(state);
                        }
                    }
                    // The rest of fragmented datagrams open nothing: their
                    // first fragment (with the ports) is the flow.
                    if key.direction == DIRECTION_INGRESS
                        && !link_control
                        && !is_fragments_rest(&key)
                    {
                        fan_out
                            .entry(remote_addr(&key))
                            .or_default()
                            .insert(key.dst_port);
                        inbound
                            .entry((remote_addr(&key), key.protocol, false, fragments))
                            .or_default()
                            .2 += 1;
                        *view.inbound_new_flows.entry(key.protocol).or_default() += 1;
                    }
                    (flow.packets, flow.bytes, now)
                }
            };
            if key.direction == DIRECTION_INGRESS && dp > 0 {
                let e = inbound
                    .entry((remote_addr(&key), key.protocol, link_control, fragments))
                    .or_default();
                e.0 += dp;
                e.1 += db;
                let t = if link_control {
                    &mut view.inbound_link_control
                } else {
                    view.inbound_totals.entry(key.protocol).or_default()
                };
                t.0 += dp;
                t.1 += db;
                if fragments {
                    view.inbound_fragments.0 += dp;
                    view.inbound_fragments.1 += db;
                }
            }
            if db > 0 || dp > 0 {
                let peer = PeerKey {
                    ifindex: key.ifindex,
                    direction: key.direction,
                    addr: remote_addr(&key),
                    local: local_addr(&key),
                };
                let d = deltas.entry(peer).or_default();
                d.0 += db;
                d.1 += dp;
            }
            match active.iter_mut().find(|(i, _)| *i == key.ifindex) {
                Some((_, n)) => *n += 1,
                None => active.push((key.ifindex, 1)),
            }
            if self.is_idle(&flow, last_active_ns, now) {
                idle.push(key);
            }
        }
        // Flows not in this read were evicted by the kernel.
        self.seen.retain(|_, s| s.generation == generation);
        view.active = active.into_iter().collect();
        self.remove_idle(&idle, &mut view.active);
        let shrunk = give_back_capacity(&mut self.seen);
        self.peers.observe(&deltas);
        view.widest_peer = fan_out
            .into_iter()
            .map(|(peer, ports)| (peer, ports.len() as u64))
            .max_by_key(|(_, n)| *n);
        view.inbound = heaviest_inbound(inbound);

        // Whatever was created and is neither live nor expired by us was
        // evicted by the kernel's LRU.
        let live: u64 = view.active.values().sum();
        let evicted = created.saturating_sub(live + self.flows_expired);
        self.flow_evictions = self.flow_evictions.max(evicted);
        view.expired = self.flows_expired;
        view.evictions = self.flow_evictions;
        view.peers = self.peers.rows();
        Ok((view, shrunk))
    }
}

impl Source for Maps {
    fn collect(&self) -> (Arc<dyn Reading>, Option<MapError>) {
        let mut packets = Packets {
            interfaces: self.interfaces.clone(),
            flows: self.flow_view.clone(),
            ..Default::default()
        };
        let error = self.read_counters(&mut packets.counters).err();
        (Arc::new(packets), error)
    }

    fn advance(&mut self, counters: &[u64]) -> Result<Vec<(u32, u64)>, MapError> {
        let created = counters.get(FLOW_CREATED as usize).copied().unwrap_or(0);
        // A failed read leaves the flow families empty this cycle.
        self.flow_view = FlowView::default();
        let (view, shrunk) = self.read_flows(created)?;
        self.flow_view = view;
        if shrunk {
            // The burst's flows are gone and so is this cycle's reading of
            // them (freed on return from read_flows): give the pages back.
            crate::heap::give_back();
        }
        Ok(Vec::new())
    }

    fn reconfigure(&mut self, config: &Config) -> Result<Vec<(u32, u64)>, OpenError> {
        self.peers.set_k(config.network.top_peers);
        Ok(vec![
            (
                CFG_FLOW_EVENTS_PER_SEC,
                config.network.flow_events_per_second,
            ),
            (CFG_FLOW_EVENTS_BURST, config.network.flow_events_burst),
        ])
    }

    fn interface_added(&mut self, ifindex: u32, name: &str) {
        self.interfaces.insert(ifindex, name.to_owned());
    }

    /// Drops what the kernel and we keep of a removed interface, so dead
    /// interfaces neither fill the counter map nor linger in /metrics (an
    /// ifindex can be reused by a new interface).
    fn interface_removed(&mut self, ifindex: u32) {
        self.interfaces.remove(&ifindex);
        // One batched read, not two syscalls per key: pods' veths go ten
        // at a time in a rollout.
        let keys: Vec<PacketKey> = map_batch::per_cpu_hash_summed(&self.counters)
            .unwrap_or_default()
            .into_iter()
            .map(|(k, _)| k)
            .filter(|k| k.ifindex == ifindex)
            .collect();
        for key in keys {
            let _ = self.counters.remove(&key);
        }
        self.peers.forget_interface(ifindex);
    }
}

/// Below this many slots a map is not shrunk (a few tens of KiB, not
/// worth a rehash).
const MIN_SHRINK_CAPACITY: usize = 1024;

/// A map keeps the capacity it grew to: after a flood's flows leave, the
/// table that held them (about 80 bytes a flow, 5 MiB after a 40,000-flow
/// SYN flood in the soak) would stay allocated for the agent's life.
/// Shrunk once it is under a quarter full, to twice what it holds, so a
/// table that only breathes is not reallocated every cycle. True when it
/// shrank.
fn give_back_capacity<K: Eq + std::hash::Hash, V, S: std::hash::BuildHasher>(
    map: &mut HashMap<K, V, S>,
) -> bool {
    if map.capacity() > MIN_SHRINK_CAPACITY && map.len() < map.capacity() / 4 {
        map.shrink_to(map.len() * 2);
        return true;
    }
    false
}

/// An inbound row's key: (peer, protocol, link control, fragments).
type InboundKey = (IpAddr, u8, bool, bool);

/// The [`CYCLE_PEERS_KEPT`] heaviest (peer, protocol) rows by packets,
/// ties broken by address so the order is stable.
fn heaviest_inbound(rows: HashMap<InboundKey, (u64, u64, u64)>) -> Vec<InboundPeer> {
    let mut rows: Vec<InboundPeer> = rows
        .into_iter()
        .map(
            |((peer, protocol, link_control, fragments), (packets, bytes, new_flows))| {
                InboundPeer {
                    peer,
                    protocol,
                    link_control,
                    fragments,
                    packets,
                    bytes,
                    new_flows,
                }
            },
        )
        .collect();
    let key = |r: &InboundPeer| (r.peer, r.protocol, r.link_control, r.fragments);
    rows.sort_by(|a, b| {
        b.packets
            .cmp(&a.packets)
            .then(b.new_flows.cmp(&a.new_flows))
            .then(key(a).cmp(&key(b)))
    });
    rows.truncate(CYCLE_PEERS_KEPT);
    rows
}

/// An ICMPv6 link-control flow (its "source port" is the ICMP type).
fn is_link_control(key: &FlowKey) -> bool {
    key.family == FAMILY_IPV6
        && key.protocol == IPPROTO_ICMPV6
        && u8::try_from(key.src_port).is_ok_and(is_icmpv6_link_control)
}

/// The fragments after the first of a flow's datagrams: marked, and
/// without ports (they carry no transport header).
fn is_fragments_rest(key: &FlowKey) -> bool {
    key.flags & FLOW_FRAGMENTS != 0 && key.src_port == 0 && key.dst_port == 0
}

/// The remote end of a flow: the source of what we receive, the destination
/// of what we send.
pub fn remote_addr(key: &FlowKey) -> IpAddr {
    if key.direction == DIRECTION_INGRESS {
        ip_addr(key.family, key.src_addr)
    } else {
        ip_addr(key.family, key.dst_addr)
    }
}

/// The local end of a flow (this side of the interface): the destination
/// of what we receive, the source of what we send.
pub fn local_addr(key: &FlowKey) -> IpAddr {
    if key.direction == DIRECTION_INGRESS {
        ip_addr(key.family, key.dst_addr)
    } else {
        ip_addr(key.family, key.src_addr)
    }
}


/// Packet counters summed over CPUs, the flow table's view and the
/// interfaces' names as of one cycle.
#[derive(Debug, Clone, Default)]
pub struct Packets {
    /// By (ifindex, direction, family, protocol).
    pub counters: Vec<(PacketKey, PacketCounters)>,
    pub flows: FlowView,
    /// ifindex → name of the interfaces accounted.
    pub interfaces: BTreeMap<u32, String>,
}

impl Packets {
    /// `field` summed over every interface's counters of one direction
    /// (received: ingress; else egress) and every protocol.
    fn total(&self, received: bool, field: fn(&PacketCounters) -> u64) -> u64 {
        self.counters
            .iter()
            .filter(|(k, _)| (k.direction == DIRECTION_INGRESS) == received)
            .map(|(_, c)| field(c))
            .sum()
    }

    /// TCP SYNs (without ACK) received, on every interface.
    pub fn syns_received(&self) -> u64 {
        self.total(true, |c| c.tcp_syn)
    }

    /// TCP RSTs this node sent, on every interface (refusals: a closed
    /// port's or a REJECT rule's answer to a SYN).
    pub fn resets_sent(&self) -> u64 {
        self.total(false, |c| c.tcp_rst)
    }

    /// Packets received of IP protocol `protocol` (all protocols: None),
    /// on every interface.
    pub fn received(&self, protocol: Option<u8>) -> u64 {
        self.counters
            .iter()
            .filter(|(k, _)| {
                k.direction == DIRECTION_INGRESS && protocol.is_none_or(|p| k.protocol == p)
            })
            .map(|(_, c)| c.packets)
            .sum()
    }

    /// IP fragments received ([`PacketCounters::ip_fragments`]), on
    /// every interface.
    pub fn fragments_received(&self) -> u64 {
        self.total(true, |c| c.ip_fragments)
    }

    /// ICMPv6 link control received ([`is_icmpv6_link_control`]), on
    /// every interface: part of [`Self::received`]'s ICMPv6.
    pub fn link_control_received(&self) -> u64 {
        self.total(true, |c| c.icmpv6_link_control)
    }

    fn interface_name(&self, ifindex: u32) -> String {
        self.interfaces
            .get(&ifindex)
            .cloned()
            .unwrap_or_else(|| format!("if{ifindex}"))
    }
}

impl Reading for Packets {
    fn families(&self, out: &mut Vec<MetricFamily>) {
        let mut packets = Family::new(
            "sonde_packets_total",
            "Packets seen, by interface (with its namespace and pod on a pod's veth), direction, address family and IP protocol",
            MetricType::COUNTER,
        );
        let mut bytes = Family::new(
            "sonde_bytes_total",
            "L2 frame bytes seen, by interface (with its namespace and pod on a pod's veth), direction, address family and IP protocol",
            MetricType::COUNTER,
        );
        // A pod's veth also carries its pod and namespace (`[kubernetes]`).
        let pods = crate::pods::cache().view();
        let mut flags: BTreeMap<(String, &str, &str), u64> = BTreeMap::new();
        let mut link_control: BTreeMap<(String, &str), u64> = BTreeMap::new();
        let mut fragments = Family::new(
            "sonde_ip_fragments_total",
            "Fragments of IP datagrams seen (the first included; part of sonde_packets_total), by interface (with its namespace and pod on a pod's veth), direction, address family and IP protocol",
            MetricType::COUNTER,
        );
        for (key, c) in &self.counters {
            let iface = self.interface_name(key.ifindex);
            let direction = direction_name(key.direction);
            let protocol = protocol_name(key.family, key.protocol);
            let mut labels = vec![
                ("interface", iface.as_str()),
                ("direction", direction),
                ("family", family_name(key.family)),
                ("protocol", protocol),
            ];
            pods.label_interface("host", &iface, &mut labels);
            packets.sample(&labels, c.packets as f64);
            bytes.sample(&labels, c.bytes as f64);
            if c.ip_fragments > 0 {
                fragments.sample(&labels, c.ip_fragments as f64);
            }
            if key.protocol == IPPROTO_TCP {
                for (flag, n) in [
                    ("syn", c.tcp_syn),
                    ("synack", c.tcp_synack),
                    ("rst", c.tcp_rst),
                    ("fin", c.tcp_fin),
                ] {
                    *flags.entry((iface.clone(), direction, flag)).or_default() += n;
                }
            }
            if key.protocol == IPPROTO_ICMPV6 && c.icmpv6_link_control > 0 {
                *link_control.entry((iface.clone(), direction)).or_default() +=
                    c.icmpv6_link_control;
            }
        }
        packets.done(out);
        bytes.done(out);
        fragments.done(out);
        let mut tcp_flags = Family::new(
            "sonde_tcp_flags_total",
            "TCP segments with a flag set (syn: SYN without ACK), by interface (with its namespace and pod on a pod's veth) and direction",
            MetricType::COUNTER,
        );
        for ((iface, direction, flag), n) in &flags {
            let mut labels = vec![
                ("interface", iface.as_str()),
                ("direction", *direction),
                ("flag", *flag),
            ];
            pods.label_interface("host", iface, &mut labels);
            tcp_flags.sample(&labels, *n as f64);
        }
        tcp_flags.done(out);
        let mut link = Family::new(
            "sonde_icmpv6_link_control_packets_total",
            "ICMPv6 neighbour and router discovery, redirects and multicast listener reports (part of sonde_packets_total's icmpv6), by interface (with its namespace and pod on a pod's veth) and direction",
            MetricType::COUNTER,
        );
        for ((iface, direction), n) in &link_control {
            let mut labels = vec![("interface", iface.as_str()), ("direction", *direction)];
            pods.label_interface("host", iface, &mut labels);
            link.sample(&labels, *n as f64);
        }
        link.done(out);

        let flows = &self.flows;
        let mut active = Family::new(
            "sonde_flows_active",
            "Flows currently in the kernel flow table, by interface (with its namespace and pod on a pod's veth)",
            MetricType::GAUGE,
        );
        for (&ifindex, name) in &self.interfaces {
            let n = flows.active.get(&ifindex).copied().unwrap_or(0);
            let mut labels = vec![("interface", name.as_str())];
            pods.label_interface("host", name, &mut labels);
            active.sample(&labels, n as f64);
        }
        active.done(out);
        for (name, help, value) in [
            (
                "sonde_flows_created_total",
                "Flows inserted in the kernel flow table",
                flows.created,
            ),
            (
                "sonde_flow_evictions_total",
                "Flows evicted by the kernel's LRU because the flow table was full",
                flows.evictions,
            ),
            (
                "sonde_flows_expired_total",
                "Idle flows removed from the flow table by the agent",
                flows.expired,
            ),
        ] {
            let mut f = Family::new(name, help, MetricType::COUNTER);
            f.sample(&[], value as f64);
            f.done(out);
        }

        let mut peer_bytes = Family::new(
            "sonde_peer_bytes_total",
            "L2 bytes exchanged with the top remote peers (peer=\"other\": all the rest), by interface, direction and the local address (ingress: peer sent to local)",
            MetricType::COUNTER,
        );
        let mut peer_packets = Family::new(
            "sonde_peer_packets_total",
            "Packets exchanged with the top remote peers (peer=\"other\": all the rest), by interface, direction and the local address (ingress: peer sent to local)",
            MetricType::COUNTER,
        );
        for row in &flows.peers {
            let iface = self.interface_name(row.ifindex);
            let peer = row
                .peer
                .map(|p| p.to_string())
                .unwrap_or_else(|| "other".into());
            let local = row
                .local
                .map(|p| p.to_string())
                .unwrap_or_else(|| "other".into());
            // No pod labels here: `local` and `peer` join sonde_pod_info.
            let labels = [
                ("interface", iface.as_str()),
                ("peer", peer.as_str()),
                ("local", local.as_str()),
                ("direction", direction_name(row.direction)),
            ];
            peer_bytes.sample(&labels, row.bytes as f64);
            peer_packets.sample(&labels, row.packets as f64);
        }
        peer_bytes.done(out);
        peer_packets.done(out);
    }
}

#[cfg(test)]
mod tests {
    use agent_common::net::FAMILY_IPV4;

    use super::*;

    #[test]
    fn a_table_a_flood_grew_gives_its_memory_back_once_the_flood_left() {
        let mut seen: HashMap<u32, FlowState, foldhash::fast::RandomState> = HashMap::default();
        seen.extend((0..40_000).map(|i| (i, FlowState::default())));
        // Breathing in the upper three quarters keeps the allocation
        // (`capacity` counts free slots, less those deletions left).
        seen.retain(|&i, _| i < 20_000);
        assert!(!give_back_capacity(&mut seen));
        assert!(seen.capacity() > 40_000, "kept {} slots", seen.capacity());
        // The flood's flows leave: a few hundred stay.
        seen.retain(|&i, _| i < 300);
        assert!(give_back_capacity(&mut seen));
        assert!(seen.capacity() < 2_048, "kept {} slots", seen.capacity());
        assert_eq!(seen.len(), 300);
        // Small tables are left alone.
        seen.retain(|&i, _| i < 3);
        let small = seen.capacity();
        assert!(!give_back_capacity(&mut seen));
        assert_eq!(seen.capacity(), small);
    }

    #[test]
    fn families_name_interfaces_as_the_reading_knew_them() {
        let key = PacketKey {
            ifindex: 7,
            direction: DIRECTION_INGRESS,
            family: FAMILY_IPV4,
            protocol: IPPROTO_TCP,
            ..Default::default()
        };
        let reading = Packets {
            counters: vec![(
                key,
                PacketCounters {
                    packets: 3,
                    tcp_syn: 2,
                    ..Default::default()
                },
            )],
            flows: FlowView {
                active: BTreeMap::from([(7, 1)]),
                ..Default::default()
            },
            interfaces: BTreeMap::from([(7, "veth7".to_owned()), (8, "veth8".to_owned())]),
        };
        assert_eq!(reading.syns_received(), 2);
        let mut out = Vec::new();
        reading.families(&mut out);
        let family = |name: &str| out.iter().find(|f| f.name() == name).unwrap();
        let labels = |f: &MetricFamily| -> Vec<String> {
            f.get_metric()
                .iter()
                .flat_map(|m| m.get_label().iter())
                .filter(|l| l.name() == "interface")
                .map(|l| l.value().to_owned())
                .collect()
        };
        assert_eq!(labels(family("sonde_packets_total")), ["veth7"]);
        // Every accounted interface has a flow gauge, zero or not.
        assert_eq!(labels(family("sonde_flows_active")), ["veth7", "veth8"]);
        assert!(out.iter().any(|f| f.name() == "sonde_tcp_flags_total"));
    }
}
