//! Kernel-side diagnostic counters: one `PerCpuArray<u64>` (`COUNTERS`)
//! indexed by the constants below. Every failure or suppression in a kernel
//! program increments one of these, so nothing is ever lost silently.

/// Name of the `PerCpuArray<u64>` map of diagnostic counters.
pub const COUNTERS_MAP: &str = "COUNTERS";

/// The per-thread syscall start map was full: that syscall's latency is unknown.
pub const SYSCALL_START_MAP_FULL: u32 = 0;
/// A syscall id outside `0..MAX_SYSCALLS` (e.g. -1 from a ptrace restart).
pub const SYSCALL_ID_OUT_OF_RANGE: u32 = 1;
/// The per-(interface, direction, protocol) counter map was full.
pub const PACKET_MAP_FULL: u32 = 2;
/// A flow could not be inserted in the flow table.
pub const FLOW_INSERT_FAILED: u32 = 3;
/// New flows inserted in the flow table (evictions are derived from this).
pub const FLOW_CREATED: u32 = 4;
/// New-flow events suppressed by the kernel-side rate limit.
pub const FLOW_EVENT_RATE_LIMITED: u32 = 5;
/// Frame shorter than an Ethernet header (or its VLAN tags).
pub const PKT_SHORT_ETHERNET: u32 = 6;
/// IP packet too short for its IP header, or a bad header length.
pub const PKT_BAD_IP_HEADER: u32 = 7;
/// TCP/UDP/ICMP packet too short for its transport header.
pub const PKT_SHORT_TRANSPORT: u32 = 8;
// Slot 9 counted non-first IP fragments; they are counted per interface
// now (`net::PacketCounters::ip_fragments`).

/// The in-flight TCP handshake map was full: that handshake is not timed.
pub const TCP_CONNECT_MAP_FULL: u32 = 10;

/// The runnable-task map was full: that wait is not measured.
pub const RUNQ_MAP_FULL: u32 = 11;

/// Programs exec'd.
pub const PROCESS_EXEC: u32 = 12;
/// Processes exited (thread-group leaders).
pub const PROCESS_EXIT: u32 = 13;

/// The in-flight block request map was full: that request is not timed.
pub const BLOCK_START_MAP_FULL: u32 = 14;
/// The (device, operation) block statistics map was full.
pub const BLOCK_MAP_FULL: u32 = 15;
/// The per-interface drop map was full: that drop is counted by reason only.
pub const DROP_DEVICE_MAP_FULL: u32 = 16;

/// Number of slots in `COUNTERS`.
pub const COUNTERS_LEN: u32 = 32;

/// How user space should export a counter slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CounterKind {
    /// Something went wrong or data was dropped: `sonde_kernel_errors_total{kind}`.
    Error,
    /// A packet the parsers could not fully read: `sonde_packets_malformed_total{reason}`.
    Malformed,
    /// Plain activity counter, each exported as a counter of its own
    /// (`sonde_flows_created_total`, `sonde_flow_events_rate_limited_total`).
    Activity,
    /// Process lifecycle: `sonde_process_events_total{event}`.
    Process,
}

/// Every slot with its label value and kind; user space iterates this.
pub const COUNTER_SLOTS: &[(u32, &str, CounterKind)] = &[
    (
        SYSCALL_START_MAP_FULL,
        "syscall_start_map_full",
        CounterKind::Error,
    ),
    (
        SYSCALL_ID_OUT_OF_RANGE,
        "syscall_id_out_of_range",
        CounterKind::Error,
    ),
    (PACKET_MAP_FULL, "packet_map_full", CounterKind::Error),
    (FLOW_INSERT_FAILED, "flow_insert_failed", CounterKind::Error),
    (FLOW_CREATED, "flow_created", CounterKind::Activity),
    (
        FLOW_EVENT_RATE_LIMITED,
        "flow_event_rate_limited",
        CounterKind::Activity,
    ),
    (PKT_SHORT_ETHERNET, "short_ethernet", CounterKind::Malformed),
    (PKT_BAD_IP_HEADER, "bad_ip_header", CounterKind::Malformed),
    (
        PKT_SHORT_TRANSPORT,
        "short_transport",
        CounterKind::Malformed,
    ),
    (
        TCP_CONNECT_MAP_FULL,
        "tcp_connect_map_full",
        CounterKind::Error,
    ),
    (RUNQ_MAP_FULL, "runqueue_map_full", CounterKind::Error),
    (PROCESS_EXEC, "exec", CounterKind::Process),
    (PROCESS_EXIT, "exit", CounterKind::Process),
    (
        BLOCK_START_MAP_FULL,
        "block_start_map_full",
        CounterKind::Error,
    ),
    (BLOCK_MAP_FULL, "block_map_full", CounterKind::Error),
    (
        DROP_DEVICE_MAP_FULL,
        "drop_device_map_full",
        CounterKind::Error,
    ),
];

#[cfg(test)]
mod tests {
    use std::vec::Vec;

    use super::*;

    #[test]
    fn every_slot_is_listed_once_and_fits() {
        let mut slots: Vec<u32> = COUNTER_SLOTS.iter().map(|s| s.0).collect();
        slots.sort_unstable();
        let n = slots.len();
        slots.dedup();
        assert_eq!(slots.len(), n, "a slot is listed twice");
        assert!(slots.iter().all(|&s| s < COUNTERS_LEN));
        // Every constant defined above is listed (they are 0..=last, but
        // for the retired slot 9).
        let defined: Vec<u32> = (0..=DROP_DEVICE_MAP_FULL).filter(|&s| s != 9).collect();
        assert_eq!(slots, defined);
    }
}
