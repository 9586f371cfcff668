//! Which of the host's interfaces lead into which pod: a pod's veth has
//! its host end here and its other end in the pod's network namespace.
//! From the host's side the kernel names that namespace by a netns id,
//! both on the link (`IFLA_LINK_NETNSID` in a link dump) and for the
//! namespace of any process (`RTM_GETNSID` with the pod's sandbox pid).
//! Both are asked over rtnetlink (the netlink-packet-route crate's
//! messages): no capability, no entry into the pod's namespace, and the
//! same answer for any CNI plugin that gives a pod a veth (bridge, ptp,
//! Calico, Cilium's veth mode).

use std::{collections::HashMap, io};

use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::{
    RouteNetlinkMessage,
    link::{LinkAttribute, LinkMessage},
    nsid::{NsidAttribute, NsidMessage},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

use super::Pod;

/// Host interface name → sandbox id of the pod whose network namespace
/// its other end is in, for every pod whose sandbox pid is known.
pub fn pod_interfaces<'a>(
    pods: impl IntoIterator<Item = &'a Pod>,
) -> io::Result<HashMap<String, String>> {
    let mut rtnl = Rtnl::open()?;
    // Links first: dumping a link gives its peer namespace an id if it had
    // none, so every pod's namespace has one when asked below.
    let links = rtnl.peer_links()?;
    if links.is_empty() {
        return Ok(HashMap::new());
    }
    let mut by_nsid: HashMap<i32, &str> = HashMap::new();
    for pod in pods {
        if pod.pid == 0 {
            continue;
        }
        match rtnl.nsid_of_pid(pod.pid) {
            Ok(Some(nsid)) => {
                by_nsid.insert(nsid, &pod.sandbox_id);
            }
            // A host-network pod (its namespace is ours), or one that has
            // no link to the host.
            Ok(None) => {}
            // Gone since the runtime listed it.
            Err(err) if err.raw_os_error() == Some(libc::ESRCH) => {}
            Err(err) => return Err(err),
        }
    }
    Ok(links
        .into_iter()
        .filter_map(|(name, nsid)| Some((name, (*by_nsid.get(&nsid)?).to_owned())))
        .collect())
}

/// One rtnetlink socket in the agent's network namespace.
struct Rtnl {
    socket: Socket,
    sequence: u32,
    buf: Vec<u8>,
}

impl Rtnl {
    fn open() -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        // The kernel answers at once; a second bounds the refresh task's
        // wait should it not.
        let timeout = libc::timeval {
            tv_sec: 1,
            tv_usec: 0,
        };
        // SAFETY: a valid socket and a timeval of the size passed.
        let rc = unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&socket),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const timeout).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            socket,
            sequence: 0,
            // A dump's messages come in batches of up to 32 KiB.
            buf: vec![0; 64 * 1024],
        })
    }

    /// Every interface of this namespace whose link is in another one:
    /// its name and that namespace's id.
    fn peer_links(&mut self) -> io::Result<Vec<(String, i32)>> {
        let replies = self.ask(RouteNetlinkMessage::GetLink(LinkMessage::default()), true)?;
        Ok(replies
            .into_iter()
            .filter_map(|reply| match reply {
                RouteNetlinkMessage::NewLink(link) => peer_link(&link),
                _ => None,
            })
            .collect())
    }

    /// The id this namespace gives the network namespace of process
    /// `pid`; None for this namespace itself or one without an id.
    fn nsid_of_pid(&mut self, pid: u32) -> io::Result<Option<i32>> {
        let mut request = NsidMessage::default();
        request.attributes.push(NsidAttribute::Pid(pid));
        let replies = self.ask(RouteNetlinkMessage::GetNsId(request), false)?;
        Ok(replies.into_iter().find_map(|reply| match reply {
            RouteNetlinkMessage::NewNsId(m) => m.attributes.iter().find_map(|a| match a {
                NsidAttribute::Id(id) if *id >= 0 => Some(*id),
                _ => None,
            }),
            _ => None,
        }))
    }

    /// Sends `message` and collects the answer: every message up to the
    /// dump's end, or the one reply.
    fn ask(
        &mut self,
        message: RouteNetlinkMessage,
        dump: bool,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.sequence = self.sequence.wrapping_add(1);
        let mut packet =
            NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::from(message));
        packet.header.flags = NLM_F_REQUEST | if dump { NLM_F_DUMP } else { 0 };
        packet.header.sequence_number = self.sequence;
        packet.finalize();
        let mut out = vec![0; packet.buffer_len()];
        packet.serialize(&mut out);
        self.socket.send(&out, 0)?;
        let mut replies = Vec::new();
        loop {
            let size = self.socket.recv(&mut &mut self.buf[..], 0)?;
            let size = size.min(self.buf.len());
            let mut offset = 0;
            while offset < size {
                let reply: NetlinkMessage<RouteNetlinkMessage> =
                    NetlinkMessage::deserialize(&self.buf[offset..size])
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                let len = reply.header.length as usize;
                if len == 0 {
                    break;
                }
                // Messages are 4-byte aligned within a batch.
                offset += (len + 3) & !3;
                if reply.header.sequence_number != self.sequence {
                    continue;
                }
                match reply.payload {
                    NetlinkPayload::Done(_) => return Ok(replies),
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            Some(code) => Err(io::Error::from_raw_os_error(-code.get())),
                            None => Ok(replies),
                        };
                    }
                    NetlinkPayload::InnerMessage(m) => {
                        replies.push(m);
                        if !dump {
                            return Ok(replies);
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}

/// A link's name and its peer namespace's id, when it has one.
fn peer_link(link: &LinkMessage) -> Option<(String, i32)> {
    let name = link.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(name) => Some(name.clone()),
        _ => None,
    })?;
    let nsid = link.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkNetNsId(id) if *id >= 0 => Some(*id),
        _ => None,
    })?;
    Some((name, nsid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_links_into_another_namespace_count() {
        let mut veth = LinkMessage::default();
        veth.attributes
            .push(LinkAttribute::IfName("veth1a2b".into()));
        veth.attributes.push(LinkAttribute::LinkNetNsId(3));
        assert_eq!(peer_link(&veth), Some(("veth1a2b".into(), 3)));
        let mut lo = LinkMessage::default();
        lo.attributes.push(LinkAttribute::IfName("lo".into()));
        assert_eq!(peer_link(&lo), None);
    }

    /// The agent's own namespace, asked for by its own pid, has no id in
    /// itself; the link dump works without any capability beyond a socket.
    #[test]
    fn asks_the_kernel() {
        let mut rtnl = Rtnl::open().expect("an rtnetlink socket");
        assert_eq!(rtnl.nsid_of_pid(std::process::id()).unwrap(), None);
        rtnl.peer_links().expect("a link dump");
        assert!(pod_interfaces(std::iter::empty()).unwrap().is_empty());
    }
}
