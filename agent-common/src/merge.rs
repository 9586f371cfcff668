//! User space only: adding up the per-CPU copies of a map value.

use crate::{
    block::BlockStats,
    drops::DropDeviceStats,
    net::{BlocklistStats, PacketCounters},
    sched::RunqStats,
    syscalls::SyscallStats,
    tcp::TcpStats,
};

/// A map value whose per-CPU copies add up to the total.
pub trait Merge: Default {
    fn merge(&mut self, other: &Self);

    /// The total of every CPU's copy.
    fn sum<'a>(values: impl IntoIterator<Item = &'a Self>) -> Self
    where
        Self: 'a,
    {
        let mut total = Self::default();
        for value in values {
            total.merge(value);
        }
        total
    }
}

fn add_slots<const N: usize>(total: &mut [u64; N], other: &[u64; N]) {
    for (t, o) in total.iter_mut().zip(other) {
        *t += o;
    }
}

impl Merge for SyscallStats {
    fn merge(&mut self, o: &Self) {
        self.count += o.count;
        self.errors += o.errors;
        self.latency_sum_ns += o.latency_sum_ns;
        add_slots(&mut self.latency_slots, &o.latency_slots);
    }
}

impl Merge for PacketCounters {
    fn merge(&mut self, o: &Self) {
        // Destructured, so that a counter added to the struct and not
        // summed here is a compile error, not a metric stuck at zero.
        let PacketCounters {
            packets,
            bytes,
            tcp_syn,
            tcp_synack,
            tcp_rst,
            tcp_fin,
            icmpv6_link_control,
            ip_fragments,
        } = *o;
        self.packets += packets;
        self.bytes += bytes;
        self.tcp_syn += tcp_syn;
        self.tcp_synack += tcp_synack;
        self.tcp_rst += tcp_rst;
        self.tcp_fin += tcp_fin;
        self.icmpv6_link_control += icmpv6_link_control;
        self.ip_fragments += ip_fragments;
    }
}

impl Merge for TcpStats {
    fn merge(&mut self, o: &Self) {
        self.connects += o.connects;
        self.connect_failures += o.connect_failures;
        self.accepts += o.accepts;
        self.retransmits += o.retransmits;
        self.resets_sent += o.resets_sent;
        self.resets_received += o.resets_received;
        self.connect_latency_sum_ns += o.connect_latency_sum_ns;
        add_slots(&mut self.connect_latency_slots, &o.connect_latency_slots);
        self.rtt_samples += o.rtt_samples;
        self.rtt_sum_us += o.rtt_sum_us;
        add_slots(&mut self.rtt_slots, &o.rtt_slots);
    }
}

impl Merge for RunqStats {
    fn merge(&mut self, o: &Self) {
        self.samples += o.samples;
        self.sum_ns += o.sum_ns;
        add_slots(&mut self.slots, &o.slots);
        self.run_ns += o.run_ns;
        self.behind_ns += o.behind_ns;
    }
}

impl Merge for BlockStats {
    fn merge(&mut self, o: &Self) {
        self.requests += o.requests;
        self.bytes += o.bytes;
        self.errors += o.errors;
        self.sum_ns += o.sum_ns;
        add_slots(&mut self.slots, &o.slots);
    }
}

impl Merge for DropDeviceStats {
    fn merge(&mut self, o: &Self) {
        self.drops += o.drops;
        if self.name[0] == 0 {
            self.name = o.name;
        }
    }
}

impl Merge for BlocklistStats {
    fn merge(&mut self, o: &Self) {
        self.packets += o.packets;
        self.bytes += o.bytes;
    }
}

impl Merge for crate::syscalls::ProcessSyscalls {
    fn merge(&mut self, o: &Self) {
        self.calls += o.calls;
        self.errors += o.errors;
    }
}

impl Merge for u64 {
    fn merge(&mut self, o: &Self) {
        *self += o;
    }
}
