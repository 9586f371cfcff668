//! TC (clsact / tcx) accounting: egress always, ingress where XDP cannot be
//! attached (another program owns the interface's XDP hook, or the kernel
//! predates XDP links).

use agent_common::{
    events::{FlowEvent, RING_FLOW},
    net::DIRECTION_EGRESS,
};
use core::mem::MaybeUninit;

use aya_ebpf::{
    bindings::{TC_ACT_SHOT, TC_ACT_UNSPEC},
    helpers::generated::bpf_skb_load_bytes,
    macros::classifier,
    programs::TcContext,
};

use super::{PacketSource, Verdict, account, ingress};
use crate::events::flush;

struct TcPacket<'a>(&'a TcContext);

impl PacketSource for TcPacket<'_> {
    #[inline(always)]
    fn load<T: Copy>(&self, offset: usize) -> Option<T> {
        // Headers are almost always in the skb's linear part: read them
        // directly (no helper call), like XDP does.
        let start = self.0.data();
        if start + offset + size_of::<T>() <= self.0.data_end() {
            // SAFETY: bounds checked against data_end just above.
            return Some(unsafe { core::ptr::read_unaligned((start + offset) as *const T) });
        }
        // bpf_skb_load_bytes also reads non-linear (paged) skb data. Loaded
        // straight into our slot: returning a large Result by value is not
        // something the BPF backend can compile.
        let mut value = MaybeUninit::<T>::uninit();
        // SAFETY: the helper writes exactly size_of::<T>() bytes on success.
        let ret = unsafe {
            bpf_skb_load_bytes(
                self.0.skb.skb.cast(),
                offset as u32,
                value.as_mut_ptr().cast(),
                size_of::<T>() as u32,
            )
        };
        // SAFETY: fully written when the helper succeeded.
        (ret == 0).then(|| unsafe { value.assume_init() })
    }

    #[inline(always)]
    fn len(&self) -> u32 {
        self.0.len()
    }

    #[inline(always)]
    fn ifindex(&self) -> u32 {
        // SAFETY: the context pointer is the kernel's __sk_buff.
        unsafe { (*self.0.skb.skb).ifindex }
    }
}

/// TC_ACT_UNSPEC: "no verdict". With tcx it means "run the next program",
/// with cls_bpf "try the next filter", so an observer never short-circuits
/// a CNI's programs the way TC_ACT_OK would. Egress is never blocked.
#[classifier]
pub fn sonde_tc_egress(ctx: TcContext) -> i32 {
    account(&TcPacket(&ctx), DIRECTION_EGRESS);
    flush::<FlowEvent, _>(&ctx, RING_FLOW);
    TC_ACT_UNSPEC
}

/// TC_ACT_SHOT (drop) for a blocked source, "no verdict" otherwise.
#[classifier]
pub fn sonde_tc_ingress(ctx: TcContext) -> i32 {
    let verdict = ingress(&TcPacket(&ctx));
    flush::<FlowEvent, _>(&ctx, RING_FLOW);
    match verdict {
        Verdict::Pass => TC_ACT_UNSPEC,
        Verdict::Drop => TC_ACT_SHOT,
    }
}
