//! TCP lifecycle aggregation shared types: handshake latency, failures,
//! retransmits, resets, smoothed RTT samples and state transitions, from the
//! `sock` and `tcp` tracepoints (field offsets read from the running
//! kernel's tracepoint formats by the loader).

use crate::syscalls::LATENCY_SLOTS;

/// `PerCpuArray<TcpStats>`, one slot.
pub const TCP_STATS_MAP: &str = "TCP_STATS";
/// `PerCpuArray<u64>` indexed by `old_state * TCP_STATES + new_state`.
pub const TCP_TRANSITIONS_MAP: &str = "TCP_TRANSITIONS";
/// `HashMap<u64 socket address, u64 start ns>`: handshakes in flight.
pub const TCP_CONNECT_START_MAP: &str = "TCP_CONNECT_START";

/// TCP states are 1..=12 (TCP_ESTABLISHED .. TCP_NEW_SYN_RECV); 16 slots.
pub const TCP_STATES: u32 = 16;
/// Handshakes in flight that can be timed at once.
pub const MAX_CONNECTS_IN_FLIGHT: u32 = 16384;

/// Names of TCP states by number (include/net/tcp_states.h).
pub const TCP_STATE_NAMES: [&str; 13] = [
    "unknown",
    "established",
    "syn_sent",
    "syn_recv",
    "fin_wait1",
    "fin_wait2",
    "time_wait",
    "close",
    "close_wait",
    "last_ack",
    "listen",
    "closing",
    "new_syn_recv",
];

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct TcpStats {
    /// Active opens that reached ESTABLISHED (timed).
    pub connects: u64,
    /// Active opens that went from SYN_SENT to CLOSE (refused, timed out).
    pub connect_failures: u64,
    /// Passive opens: SYN_RECV → ESTABLISHED.
    pub accepts: u64,
    pub retransmits: u64,
    pub resets_sent: u64,
    pub resets_received: u64,
    pub connect_latency_sum_ns: u64,
    /// Same slots as the syscall latency histogram.
    pub connect_latency_slots: [u64; LATENCY_SLOTS],
    pub rtt_samples: u64,
    pub rtt_sum_us: u64,
    /// Smoothed RTT samples in the same slots (as ns).
    pub rtt_slots: [u64; LATENCY_SLOTS],
}

/// `LruHashMap<TcpPeerKey, TcpPeerStats>`: the passive mesh view, per remote
/// peer (bounded; shared, updated with atomic adds).
pub const TCP_PEERS_MAP: &str = "TCP_PEERS";
/// Remote peers tracked in the kernel (the agent exports the top ones).
pub const MAX_TCP_PEERS: u32 = 4096;

pub const PEER_FAMILY_IPV4: u32 = 2;
pub const PEER_FAMILY_IPV6: u32 = 10;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TcpPeerKey {
    /// AF_INET or AF_INET6.
    pub family: u32,
    /// IPv4 in the first 4 bytes.
    pub addr: [u8; 16],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct TcpPeerStats {
    pub connects: u64,
    pub connect_failures: u64,
    pub retransmits: u64,
    pub connect_latency_sum_ns: u64,
    pub connect_latency_slots: [u64; LATENCY_SLOTS],
    pub rtt_samples: u64,
    pub rtt_sum_us: u64,
}
