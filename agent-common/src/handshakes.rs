//! Peers that proved their address is real: they completed a TCP
//! handshake with this node (a passive open, SYN_RECV → ESTABLISHED) or
//! answered one of its own (an active open, SYN_SENT → ESTABLISHED). A
//! forged source address can send SYNs, UDP or ICMP, but it cannot
//! complete a handshake without receiving the node's SYN-ACK, so MAPE-K's
//! enforce mode blocks only sources found here.

/// `LruHashMap<HandshakeKey, HandshakePeer>`.
pub const HANDSHAKE_PEERS_MAP: &str = "HANDSHAKE_PEERS";
/// Peers remembered (least recently seen ones make room).
pub const MAX_HANDSHAKE_PEERS: u32 = 8192;

/// A peer, in the network namespace of the socket that completed the
/// handshake: user space trusts only its own namespace's (in another, an
/// unprivileged user namespace can hold any address and connect to
/// itself).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct HandshakeKey {
    /// AF_INET or AF_INET6 (`tcp::PEER_FAMILY_*`).
    pub family: u32,
    /// The socket's network namespace (its inode number).
    pub netns: u32,
    /// IPv4 in the first 4 bytes.
    pub addr: [u8; 16],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HandshakePeer {
    /// Monotonic time (bpf_ktime_get_ns) of its latest passive open; 0:
    /// none.
    pub passive_ns: u64,
    /// Of its latest answered active open; 0: none.
    pub active_ns: u64,
    /// Passive opens it completed.
    pub passive: u64,
    /// Active opens of this node it answered.
    pub active: u64,
}
