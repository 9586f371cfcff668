//! What the kernel's own counters say about an open anomaly, in its
//! notes: for a SYN flood, the SYN cookies it answers with (such a flood
//! is never blocked: its sources are unproven, see guard.rs); for a
//! fragment flood, how its IP reassembly fares. Read only while an
//! anomaly of the kind is open; the note is replaced every cycle, with
//! the totals and what moved since the first reading (the end of the
//! cycle the anomaly opened), so that a closed anomaly's note still says
//! what happened during it.

use super::analyze::Anomaly;
use crate::netstat::Group;

/// A set of the kernel's counters that speaks to one anomaly kind.
pub trait KernelNote: Copy + Sized {
    /// The kind whose anomalies get the note.
    const KIND: &'static str;
    /// How the note starts (so the previous cycle's is found and replaced).
    const START: &'static str;
    fn read() -> Option<Self>;
    /// The note after `START`, from the totals now and `first` (the first
    /// reading while the kind was open), if it was not this one.
    fn text(self, first: Option<Self>) -> String;
}

/// Replaces the note of `T` in every open anomaly of its kind; `first`
/// keeps the first reading while one is open (cleared, and nothing read,
/// while none is).
pub fn update<T: KernelNote>(active: &mut [Anomaly], first: &mut Option<T>) {
    if !active.iter().any(|a| a.kind == T::KIND) {
        *first = None;
        return;
    }
    let Some(now) = T::read() else { return };
    let since = *first;
    first.get_or_insert(now);
    let note = format!("{}{}", T::START, now.text(since));
    for anomaly in active.iter_mut().filter(|a| a.kind == T::KIND) {
        anomaly.notes.retain(|n| !n.starts_with(T::START));
        anomaly.notes.push(note.clone());
    }
}

/// The kernel's SYN-cookie counters (TcpExt SyncookiesSent, Recv, Failed
/// of /proc/net/netstat): how it answers a SYN flood without keeping
/// state, whatever the sources.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SynCookies {
    pub sent: u64,
    pub received: u64,
    pub failed: u64,
}

impl SynCookies {
    /// From /proc/net/netstat's two `TcpExt:` lines (names, then values).
    pub fn parse(netstat: &str) -> Option<SynCookies> {
        let tcp_ext = Group::parse(netstat, "TcpExt:")?;
        Some(SynCookies {
            sent: tcp_ext.get("SyncookiesSent")?,
            received: tcp_ext.get("SyncookiesRecv")?,
            failed: tcp_ext.get("SyncookiesFailed")?,
        })
    }
}

impl KernelNote for SynCookies {
    const KIND: &'static str = "syn_flood";
    const START: &'static str = "not blocked: a SYN flood's sources are unproven";

    fn read() -> Option<Self> {
        Self::parse(&std::fs::read_to_string("/proc/net/netstat").ok()?)
    }

    fn text(self, first: Option<Self>) -> String {
        let since = first.map_or(String::new(), |b| {
            format!(
                " ({} sent, {} valid returned since the cycle it opened)",
                self.sent.saturating_sub(b.sent),
                self.received.saturating_sub(b.received)
            )
        });
        format!(
            " (half-open, often forged); the kernel answers it with SYN cookies: \
             TcpExtSyncookiesSent {}, SyncookiesRecv {}, SyncookiesFailed {}{since}",
            self.sent, self.received, self.failed
        )
    }
}

/// The kernel's IP reassembly counters, IPv4 and IPv6 together (`Ip:`
/// ReasmReqds, ReasmOKs, ReasmFails, ReasmTimeout of /proc/net/snmp, and
/// their `Ip6` namesakes of /proc/net/snmp6; this network namespace):
/// whether the fragments it receives make datagrams, or only take its
/// reassembly memory until they time out.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Reassembly {
    pub fragments: u64,
    pub reassembled: u64,
    pub failed: u64,
    pub timeouts: u64,
}

impl Reassembly {
    /// From /proc/net/snmp's two `Ip:` lines.
    pub fn parse(snmp: &str) -> Option<Reassembly> {
        let ip = Group::parse(snmp, "Ip:")?;
        Some(Reassembly {
            fragments: ip.get("ReasmReqds")?,
            reassembled: ip.get("ReasmOKs")?,
            failed: ip.get("ReasmFails")?,
            timeouts: ip.get("ReasmTimeout")?,
        })
    }

    /// From /proc/net/snmp6, one `Ip6Name value` per line (hand-parsed
    /// for the same reason as netstat.rs: four numbers of one file).
    pub fn parse_v6(snmp6: &str) -> Option<Reassembly> {
        let get = |name: &str| {
            snmp6.lines().find_map(|l| {
                let mut words = l.split_whitespace();
                (words.next()? == name).then_some(())?;
                words.next()?.parse::<u64>().ok()
            })
        };
        Some(Reassembly {
            fragments: get("Ip6ReasmReqds")?,
            reassembled: get("Ip6ReasmOKs")?,
            failed: get("Ip6ReasmFails")?,
            timeouts: get("Ip6ReasmTimeout")?,
        })
    }

    fn plus(self, o: Reassembly) -> Reassembly {
        Reassembly {
            fragments: self.fragments + o.fragments,
            reassembled: self.reassembled + o.reassembled,
            failed: self.failed + o.failed,
            timeouts: self.timeouts + o.timeouts,
        }
    }
}

impl KernelNote for Reassembly {
    const KIND: &'static str = "fragment_flood";
    const START: &'static str = "the kernel's IP reassembly in this node's namespace";

    /// IPv4's, plus IPv6's where the kernel has IPv6.
    fn read() -> Option<Self> {
        let v4 = Self::parse(&std::fs::read_to_string("/proc/net/snmp").ok()?)?;
        let v6 = std::fs::read_to_string("/proc/net/snmp6")
            .ok()
            .and_then(|t| Self::parse_v6(&t))
            .unwrap_or_default();
        Some(v4.plus(v6))
    }

    fn text(self, first: Option<Self>) -> String {
        let since = first.map_or(String::new(), |b| {
            format!(
                " ({} fragments in, {} datagrams put together, {} failed since the cycle it \
                 opened)",
                self.fragments.saturating_sub(b.fragments),
                self.reassembled.saturating_sub(b.reassembled),
                self.failed.saturating_sub(b.failed)
            )
        });
        format!(
            " (IPv4 and IPv6): {} fragments to reassemble, {} datagrams reassembled, {} \
             failed, {} timed out{since} (ReasmReqds, ReasmOKs, ReasmFails, ReasmTimeout of \
             /proc/net/snmp and snmp6); fragments that never complete hold its memory until \
             they time out (net.ipv4.ipfrag_time, ipfrag_high_thresh)",
            self.fragments, self.reassembled, self.failed, self.timeouts
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syn_cookies_come_from_the_tcpext_lines() {
        let netstat = "TcpExt: SyncookiesSent SyncookiesRecv SyncookiesFailed ListenDrops\n\
                       TcpExt: 120 7 2 0\nIpExt: A\nIpExt: 1\n";
        let now = SynCookies::parse(netstat).unwrap();
        assert_eq!(
            now,
            SynCookies {
                sent: 120,
                received: 7,
                failed: 2
            }
        );
        let note = now.text(Some(SynCookies {
            sent: 20,
            received: 7,
            failed: 0,
        }));
        assert!(note.contains("TcpExtSyncookiesSent 120"), "{note}");
        assert!(note.contains("100 sent, 0 valid returned"), "{note}");
        assert_eq!(SynCookies::parse("IpExt: A\nIpExt: 1\n"), None);
    }

    /// The note joins open anomalies of its kind only, replaces the
    /// previous cycle's, and says what moved since.
    #[test]
    fn reassembly_notes_a_fragment_flood_each_cycle() {
        let snmp = |reqds: u64, oks: u64| {
            format!(
                "Ip: Forwarding DefaultTTL InReceives ReasmTimeout ReasmReqds ReasmOKs ReasmFails\n\
                 Ip: 1 64 900 4 {reqds} {oks} 2\nIcmp: InMsgs\nIcmp: 0\n"
            )
        };
        let now = Reassembly::parse(&snmp(9_000, 3_000)).unwrap();
        assert_eq!(
            now,
            Reassembly {
                fragments: 9_000,
                reassembled: 3_000,
                failed: 2,
                timeouts: 4
            }
        );
        let before = Reassembly::parse(&snmp(3_000, 1_000)).unwrap();
        let mut active = vec![
            Anomaly::of_kind("fragment_flood"),
            Anomaly::of_kind("udp_flood"),
        ];
        active[0]
            .notes
            .push(format!("{}: stale", Reassembly::START));
        let mut first = Some(before);
        // `update` reads the live file; the text is what it writes.
        let text = now.text(first);
        assert!(text.contains("9000 fragments to reassemble"), "{text}");
        let v6 = Reassembly::parse_v6("Ip6InReceives 5\nIp6ReasmTimeout 1\nIp6ReasmReqds 30\nIp6ReasmOKs 10\nIp6ReasmFails 0\n")
            .unwrap();
        assert_eq!(now.plus(v6).fragments, 9_030);
        assert!(
            text.contains("6000 fragments in, 2000 datagrams put together, 0 failed"),
            "{text}"
        );
        update::<Reassembly>(&mut active, &mut first);
        assert_eq!(first, Some(before), "the first reading is kept");
        assert_eq!(active[0].notes.len(), 1, "{:?}", active[0].notes);
        assert!(active[0].notes[0].starts_with(Reassembly::START));
        assert!(!active[0].notes[0].contains("stale"));
        assert!(active[1].notes.is_empty());
        // No fragment flood open: nothing read, nothing kept.
        update::<Reassembly>(&mut active[1..], &mut first);
        assert_eq!(first, None);
    }
}
