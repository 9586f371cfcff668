//! Peers that proved their address is real, for enforce mode: on
//! `sock:inet_sock_set_state`, every TCP socket reaching ESTABLISHED from
//! SYN_RECV (the peer completed a handshake with this node) or SYN_SENT
//! (it answered one of ours) records the peer's address and the time in
//! `HANDSHAKE_PEERS`. A program of its own rather than a branch of the TCP
//! signal's, so the proof does not depend on which TCP tier is attached
//! (or on the TCP signal being on); it leaves after one 4-byte read of
//! the record unless the new state is ESTABLISHED. Each peer is keyed by
//! the socket's network namespace too: user space trusts only its own.

use agent_common::{
    handshakes::{HandshakeKey, HandshakePeer, MAX_HANDSHAKE_PEERS},
    tcp::{PEER_FAMILY_IPV4, PEER_FAMILY_IPV6},
};
use aya_ebpf::{
    Global,
    bindings::BPF_NOEXIST,
    helpers::{bpf_ktime_get_ns, bpf_probe_read_kernel},
    macros::{map, tracepoint},
    maps::LruHashMap,
    programs::TracePointContext,
};
use core::intrinsics::{AtomicOrdering, atomic_xadd};

use crate::addr::Addr;

#[map(name = "HANDSHAKE_PEERS")]
static HANDSHAKE_PEERS: LruHashMap<HandshakeKey, HandshakePeer> =
    LruHashMap::with_max_entries(MAX_HANDSHAKE_PEERS, 0);

// Offsets in the inet_sock_set_state record, from this kernel's format
// file (u32::MAX: not resolved; the loader then leaves the program out).
#[unsafe(no_mangle)]
static TP_HS_OLDSTATE: Global<u32> = Global::new(u32::MAX);
#[unsafe(no_mangle)]
static TP_HS_NEWSTATE: Global<u32> = Global::new(u32::MAX);
#[unsafe(no_mangle)]
static TP_HS_PROTOCOL: Global<u32> = Global::new(u32::MAX);
#[unsafe(no_mangle)]
static TP_HS_FAMILY: Global<u32> = Global::new(u32::MAX);
#[unsafe(no_mangle)]
static TP_HS_DADDR: Global<u32> = Global::new(u32::MAX);
#[unsafe(no_mangle)]
static TP_HS_DADDR_V6: Global<u32> = Global::new(u32::MAX);
#[unsafe(no_mangle)]
static TP_HS_SKADDR: Global<u32> = Global::new(u32::MAX);
// The socket's network namespace: `sock_common.skc_net` (a possible_net_t,
// whose only member is the `struct net *`), `net.ns`, `ns_common.inum`,
// from this kernel's BTF.
#[unsafe(no_mangle)]
static HS_SK_NET_OFFSET: Global<u32> = Global::new(u32::MAX);
#[unsafe(no_mangle)]
static HS_NET_NS_OFFSET: Global<u32> = Global::new(u32::MAX);
#[unsafe(no_mangle)]
static HS_NS_INUM_OFFSET: Global<u32> = Global::new(u32::MAX);

const IPPROTO_TCP: u16 = 6;
const TCP_ESTABLISHED: i32 = 1;
const TCP_SYN_SENT: i32 = 2;
const TCP_SYN_RECV: i32 = 3;

#[tracepoint(category = "sock", name = "inet_sock_set_state")]
pub fn sonde_handshakes(ctx: TracePointContext) -> u32 {
    let _ = try_handshakes(&ctx);
    0
}

#[inline(always)]
fn try_handshakes(ctx: &TracePointContext) -> Result<(), i32> {
    // SAFETY (all reads): offsets from this kernel's format file.
    let new: i32 = unsafe { ctx.read_at(TP_HS_NEWSTATE.load() as usize)? };
    if new != TCP_ESTABLISHED {
        return Ok(());
    }
    let protocol: u16 = unsafe { ctx.read_at(TP_HS_PROTOCOL.load() as usize)? };
    if protocol != IPPROTO_TCP {
        return Ok(());
    }
    let old: i32 = unsafe { ctx.read_at(TP_HS_OLDSTATE.load() as usize)? };
    let passive = match old {
        TCP_SYN_RECV => true,
        TCP_SYN_SENT => false,
        _ => return Ok(()),
    };
    let family = u32::from(unsafe { ctx.read_at::<u16>(TP_HS_FAMILY.load() as usize)? });
    let addr = if family == PEER_FAMILY_IPV4 {
        Addr::v4(&unsafe { ctx.read_at::<[u8; 4]>(TP_HS_DADDR.load() as usize)? })
    } else if family == PEER_FAMILY_IPV6 {
        Addr::v6(&unsafe { ctx.read_at::<[u8; 16]>(TP_HS_DADDR_V6.load() as usize)? })
    } else {
        return Ok(());
    };
    let skaddr: u64 = unsafe { ctx.read_at(TP_HS_SKADDR.load() as usize)? };
    let key = HandshakeKey {
        family,
        netns: netns(skaddr)?,
        addr: addr.bytes(),
    };
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if HANDSHAKE_PEERS.get_ptr_mut(key).is_none() {
        // BPF_NOEXIST: another CPU may have inserted it meanwhile; the
        // lookup below finds either.
        let _ = HANDSHAKE_PEERS.insert(key, HandshakePeer::default(), u64::from(BPF_NOEXIST));
    }
    let Some(peer) = HANDSHAKE_PEERS.get_ptr_mut(key) else {
        return Ok(());
    };
    // SAFETY: a map value from a successful lookup, valid for this run;
    // counters only ever added to atomically, times plain stores (any
    // recent time will do).
    unsafe {
        if passive {
            (*peer).passive_ns = now;
            atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*peer).passive, 1);
        } else {
            (*peer).active_ns = now;
            atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*peer).active, 1);
        }
    }
    Ok(())
}

/// The inode number of `sk`'s network namespace.
#[inline(always)]
fn netns(sk: u64) -> Result<u32, i32> {
    let (sk_net, ns, inum) = (
        HS_SK_NET_OFFSET.load(),
        HS_NET_NS_OFFSET.load(),
        HS_NS_INUM_OFFSET.load(),
    );
    if sk_net == u32::MAX || ns == u32::MAX || inum == u32::MAX {
        return Err(0);
    }
    // SAFETY (both reads): kernel pointers read with the probe helper, at
    // offsets from this kernel's BTF.
    let net =
        unsafe { bpf_probe_read_kernel((sk + u64::from(sk_net)) as *const u64) }.map_err(|_| 0)?;
    unsafe { bpf_probe_read_kernel((net + u64::from(ns + inum)) as *const u32) }.map_err(|_| 0)
}
