//! User space only: adding up the per-CPU copies of a map value.
//!
//! Every impl destructures the value, so that a field added to a struct
//! and not summed here is a compile error, not a metric stuck at zero.

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
        let SyscallStats {
            count,
            errors,
            latency_sum_ns,
            latency_slots,
        } = o;
        self.count += count;
        self.errors += errors;
        self.latency_sum_ns += latency_sum_ns;
        add_slots(&mut self.latency_slots, latency_slots);
    }
}

impl Merge for PacketCounters {
    fn merge(&mut self, o: &Self) {
        let PacketCounters {
            packets,
            bytes,
            tcp_syn,
            tcp_synack,
            tcp_rst,
            tcp_fin,
            icmpv6_link_control,
            ip_fragments,
        } = o;
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
        let TcpStats {
            connects,
            connect_failures,
            accepts,
            retransmits,
            resets_sent,
            resets_received,
            connect_latency_sum_ns,
            connect_latency_slots,
            rtt_samples,
            rtt_sum_us,
            rtt_slots,
        } = o;
        self.connects += connects;
        self.connect_failures += connect_failures;
        self.accepts += accepts;
        self.retransmits += retransmits;
        self.resets_sent += resets_sent;
        self.resets_received += resets_received;
        self.connect_latency_sum_ns += connect_latency_sum_ns;
        add_slots(&mut self.connect_latency_slots, connect_latency_slots);
        self.rtt_samples += rtt_samples;
        self.rtt_sum_us += rtt_sum_us;
        add_slots(&mut self.rtt_slots, rtt_slots);
    }
}

impl Merge for RunqStats {
    fn merge(&mut self, o: &Self) {
        let RunqStats {
            samples,
            sum_ns,
            slots,
            run_ns,
            behind_ns,
        } = o;
        self.samples += samples;
        self.sum_ns += sum_ns;
        add_slots(&mut self.slots, slots);
        self.run_ns += run_ns;
        self.behind_ns += behind_ns;
    }
}

impl Merge for BlockStats {
    fn merge(&mut self, o: &Self) {
        let BlockStats {
            requests,
            bytes,
            errors,
            sum_ns,
            slots,
        } = o;
        self.requests += requests;
        self.bytes += bytes;
        self.errors += errors;
        self.sum_ns += sum_ns;
        add_slots(&mut self.slots, slots);
    }
}

impl Merge for DropDeviceStats {
    fn merge(&mut self, o: &Self) {
        let DropDeviceStats { drops, name } = o;
        self.drops += drops;
        // Not a count: the first copy that recorded a name gives it.
        if self.name[0] == 0 {
            self.name = *name;
        }
    }
}

impl Merge for BlocklistStats {
    fn merge(&mut self, o: &Self) {
        let BlocklistStats { packets, bytes } = o;
        self.packets += packets;
        self.bytes += bytes;
    }
}

impl Merge for crate::syscalls::ProcessSyscalls {
    fn merge(&mut self, o: &Self) {
        let crate::syscalls::ProcessSyscalls { calls, errors } = o;
        self.calls += calls;
        self.errors += errors;
    }
}

impl Merge for u64 {
    fn merge(&mut self, o: &Self) {
        *self += o;
    }
}
