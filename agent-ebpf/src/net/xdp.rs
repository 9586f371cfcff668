//! XDP ingress accounting (native mode where the driver has it, generic
//! otherwise; the loader chooses and reports the mode), and the blocklist's
//! drops.

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

use agent_common::events::{FlowEvent, RING_FLOW};

use super::{PacketSource, Verdict, ingress};
use crate::events::flush;

struct XdpPacket<'a>(&'a XdpContext);

impl PacketSource for XdpPacket<'_> {
    #[inline(always)]
    fn load<T: Copy>(&self, offset: usize) -> Option<T> {
        let start = self.0.data();
        let end = self.0.data_end();
        if start + offset + size_of::<T>() > end {
            return None;
        }
        // SAFETY: bounds checked against data_end just above.
        Some(unsafe { core::ptr::read_unaligned((start + offset) as *const T) })
    }

    #[inline(always)]
    fn len(&self) -> u32 {
        (self.0.data_end() - self.0.data()) as u32
    }

    #[inline(always)]
    fn ifindex(&self) -> u32 {
        self.0.ingress_ifindex() as u32
    }
}

#[xdp]
pub fn sonde_xdp_ingress(ctx: XdpContext) -> u32 {
    let verdict = ingress(&XdpPacket(&ctx));
    flush::<FlowEvent, _>(&ctx, RING_FLOW);
    match verdict {
        Verdict::Pass => xdp_action::XDP_PASS,
        Verdict::Drop => xdp_action::XDP_DROP,
    }
}
