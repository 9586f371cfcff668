//! A bounded, verifier-friendly parser of Ethernet → (VLAN) → IPv4/IPv6 →
//! TCP/UDP/ICMP headers. Short or malformed packets are counted and still
//! accounted with whatever was read; nothing is ever dropped here.

use agent_common::{
    counters::{PKT_BAD_IP_HEADER, PKT_SHORT_ETHERNET, PKT_SHORT_TRANSPORT},
    net::{
        FAMILY_ARP, FAMILY_IPV4, FAMILY_IPV6, FAMILY_OTHER, IPPROTO_ICMP, IPPROTO_ICMPV6,
        IPPROTO_TCP, IPPROTO_UDP, PROTO_NONE,
    },
};

use crate::{addr::Addr, maps::count};

/// Where packet bytes come from (XDP direct access, or skb loads in TC).
pub trait PacketSource {
    /// Reads a `T` at `offset` from the start of the L2 header, or `None`
    /// past the end of the packet.
    fn load<T: Copy>(&self, offset: usize) -> Option<T>;
    /// L2 frame length in bytes.
    fn len(&self) -> u32;
    fn ifindex(&self) -> u32;
}

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_ARP: u16 = 0x0806;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;
const IPV6_HLEN: usize = 40;
const MAX_IPV6_EXT_HEADERS: usize = 4;

pub struct Parsed {
    pub family: u8,
    pub protocol: u8,
    pub has_ports: bool,
    /// A fragment of a datagram, the first included.
    pub fragment: bool,
    pub tcp_flags: u8,
    pub src: Addr,
    pub dst: Addr,
    pub src_port: u16,
    pub dst_port: u16,
}

impl Parsed {
    pub fn is_ip(&self) -> bool {
        self.family == FAMILY_IPV4 || self.family == FAMILY_IPV6
    }
}

#[inline(always)]
pub fn parse<P: PacketSource>(packet: &P) -> Parsed {
    let mut parsed = Parsed {
        family: FAMILY_OTHER,
        protocol: PROTO_NONE,
        has_ports: false,
        fragment: false,
        tcp_flags: 0,
        src: Addr::ZERO,
        dst: Addr::ZERO,
        src_port: 0,
        dst_port: 0,
    };
    let Some(mut ethertype) = packet.load::<u16>(12).map(u16::from_be) else {
        count(PKT_SHORT_ETHERNET);
        return parsed;
    };
    let mut l3 = ETH_HLEN;
    // Up to two VLAN tags (802.1ad outer, 802.1Q inner).
    for _ in 0..2 {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        let Some(inner) = packet.load::<u16>(l3 + 2).map(u16::from_be) else {
            count(PKT_SHORT_ETHERNET);
            return parsed;
        };
        ethertype = inner;
        l3 += 4;
    }

    let l4 = match ethertype {
        ETH_P_IP => parse_ipv4(packet, l3, &mut parsed),
        ETH_P_IPV6 => parse_ipv6(packet, l3, &mut parsed),
        ETH_P_ARP => {
            parsed.family = FAMILY_ARP;
            None
        }
        _ => None,
    };
    if let Some(l4) = l4 {
        parse_transport(packet, l4, &mut parsed);
    }
    parsed
}

/// Fills addresses and protocol; returns the transport header offset when
/// the packet carries one (not for non-first fragments). Each header is read
/// with one bounds-checked load, which keeps the verifier's job simple.
#[inline(always)]
fn parse_ipv4<P: PacketSource>(packet: &P, l3: usize, parsed: &mut Parsed) -> Option<usize> {
    parsed.family = FAMILY_IPV4;
    let Some(header) = packet.load::<[u8; 20]>(l3) else {
        count(PKT_BAD_IP_HEADER);
        return None;
    };
    let ihl = usize::from(header[0] & 0x0f) * 4;
    if header[0] >> 4 != 4 || ihl < 20 {
        count(PKT_BAD_IP_HEADER);
        return None;
    }
    parsed.protocol = header[9];
    parsed.src = Addr::v4(&header[12..16]);
    parsed.dst = Addr::v4(&header[16..20]);
    let frag = u16::from_be_bytes([header[6], header[7]]);
    // More Fragments, or an offset: a piece of a datagram.
    parsed.fragment = frag & 0x3fff != 0;
    if frag & 0x1fff != 0 {
        return None;
    }
    Some(l3 + ihl)
}

#[inline(always)]
fn parse_ipv6<P: PacketSource>(packet: &P, l3: usize, parsed: &mut Parsed) -> Option<usize> {
    parsed.family = FAMILY_IPV6;
    let Some(header) = packet.load::<[u8; IPV6_HLEN]>(l3) else {
        count(PKT_BAD_IP_HEADER);
        return None;
    };
    parsed.src = Addr::v6(&header[8..24]);
    parsed.dst = Addr::v6(&header[24..40]);
    let mut next = header[6];
    let mut offset = l3 + IPV6_HLEN;
    // Walk a bounded number of extension headers to find the transport.
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        if next != 0 && next != 43 && next != 44 && next != 60 {
            break;
        }
        // Every extension header starts with (next header, length).
        let Some(ext) = packet.load::<[u8; 4]>(offset) else {
            count(PKT_BAD_IP_HEADER);
            parsed.protocol = next;
            return None;
        };
        if next == 44 {
            // Fragment header: 8 bytes; only the first fragment has ports.
            let frag_offset = u16::from_be_bytes([ext[2], ext[3]]) & 0xfff8;
            parsed.fragment = true;
            next = ext[0];
            offset += 8;
            if frag_offset != 0 {
                parsed.protocol = next;
                return None;
            }
        } else {
            // Hop-by-hop, routing, destination options: (len + 1) * 8 bytes.
            next = ext[0];
            offset += (usize::from(ext[1]) + 1) * 8;
        }
    }
    parsed.protocol = next;
    Some(offset)
}

#[inline(always)]
fn parse_transport<P: PacketSource>(packet: &P, l4: usize, parsed: &mut Parsed) {
    match parsed.protocol {
        IPPROTO_TCP => {
            // Ports, sequence, ack, offset, flags: the first 14 bytes.
            let Some(header) = packet.load::<[u8; 14]>(l4) else {
                count(PKT_SHORT_TRANSPORT);
                return;
            };
            parsed.src_port = u16::from_be_bytes([header[0], header[1]]);
            parsed.dst_port = u16::from_be_bytes([header[2], header[3]]);
            parsed.tcp_flags = header[13];
            parsed.has_ports = true;
        }
        IPPROTO_UDP => {
            let Some(header) = packet.load::<[u8; 8]>(l4) else {
                count(PKT_SHORT_TRANSPORT);
                return;
            };
            parsed.src_port = u16::from_be_bytes([header[0], header[1]]);
            parsed.dst_port = u16::from_be_bytes([header[2], header[3]]);
            parsed.has_ports = true;
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            // Type and code stand in for ports, so echo requests and
            // replies are distinct flows.
            let Some(header) = packet.load::<[u8; 2]>(l4) else {
                count(PKT_SHORT_TRANSPORT);
                return;
            };
            parsed.src_port = u16::from(header[0]);
            parsed.dst_port = u16::from(header[1]);
        }
        _ => {}
    }
}
