//! Types shared by Sonde's kernel programs (`agent-ebpf`) and its daemon
//! (`sonde`): the layout of every map key, map value and ring-buffer event,
//! and the names and indices both sides must agree on.
//!
//! Every type here is `#[repr(C)]`, made of fixed-width integers with
//! explicit padding, so its bytes mean the same thing on both sides of the
//! map. User-space-only impls (`aya::Pod`) live behind the `user` feature.
#![no_std]

#[cfg(test)]
extern crate std;

pub mod block;
pub mod config;
pub mod counters;
pub mod drops;
pub mod events;
pub mod handshakes;
#[cfg(feature = "user")]
pub mod merge;
pub mod net;
pub mod sched;
pub mod syscalls;
pub mod tcp;

/// Implements `aya::Pod` for types that are plain old data: `#[repr(C)]`,
/// only integers and arrays of integers, no implicit padding.
#[cfg(feature = "user")]
macro_rules! impl_pod {
    ($($t:ty),* $(,)?) => {
        $(
            // SAFETY: the type is #[repr(C)], made only of integers with
            // explicit padding fields, so every bit pattern is valid.
            unsafe impl aya::Pod for $t {}
        )*
    };
}

#[cfg(feature = "user")]
impl_pod!(
    syscalls::SyscallStats,
    syscalls::SyscallStart,
    syscalls::ProcessSyscalls,
    net::PacketKey,
    net::PacketCounters,
    net::FlowKey,
    net::FlowStats,
    net::BlocklistKey,
    net::BlocklistEntry,
    net::BlocklistStats,
    events::RingStats,
    events::TokenBucket,
    tcp::TcpStats,
    tcp::TcpPeerKey,
    tcp::TcpPeerStats,
    sched::RunqStats,
    sched::RunqCgroupSlot,
    block::BlockKey,
    block::BlockRequest,
    block::BlockStart,
    block::BlockStats,
    drops::DropDeviceKey,
    drops::DropDeviceStats,
    drops::DropPeerKey,
    handshakes::HandshakeKey,
    handshakes::HandshakePeer,
);
