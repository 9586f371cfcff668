//! Hook tiers: for each signal, the ordered ways this agent can observe it,
//! cheapest first. The loader attaches the first tier this kernel offers
//! (or the one the configuration forces) and reports what it chose and why
//! the others were passed over. These are the types of those choices; each
//! signal's own table is in its module (agent/src/signals/).

/// Where a program attaches.
#[derive(Debug, Clone, Copy)]
pub enum Hook {
    /// A BTF trampoline on a kernel function's entry.
    Fentry(&'static str),
    /// A BTF trampoline on a kernel function's return (sees its arguments
    /// and its return value).
    Fexit(&'static str),
    /// A kprobe on a kernel function (needs CONFIG_KPROBES and the symbol).
    Kprobe(&'static str),
    /// A kretprobe on its return.
    Kretprobe(&'static str),
    /// A classic tracepoint (category, name), through tracefs.
    Tracepoint(&'static str, &'static str),
    /// A raw tracepoint: the tracepoint's own arguments, no record.
    RawTracepoint(&'static str),
    /// Each accounted network interface's ingress: XDP where the interface
    /// and the configuration make it the cheap path (and no other program
    /// owns the hook), else the TC ingress program named here.
    XdpOrTc(&'static str),
    /// Each accounted network interface's egress, with TC.
    TcEgress,
}

impl Hook {
    pub fn describe(&self) -> String {
        match self {
            Hook::Fentry(f) => format!("fentry:{f}"),
            Hook::Fexit(f) => format!("fexit:{f}"),
            Hook::Kprobe(f) => format!("kprobe:{f}"),
            Hook::Kretprobe(f) => format!("kretprobe:{f}"),
            Hook::Tracepoint(c, n) => format!("tracepoint:{c}:{n}"),
            Hook::RawTracepoint(n) => format!("raw_tracepoint:{n}"),
            Hook::XdpOrTc(_) => "xdp".to_owned(),
            Hook::TcEgress => "tc_egress".to_owned(),
        }
    }

    /// Attached to each accounted network interface rather than once.
    pub fn per_interface(&self) -> bool {
        matches!(self, Hook::XdpOrTc(_) | Hook::TcEgress)
    }
}

/// What a tier needs from the kernel before it is tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requires {
    /// BTF and BPF trampolines (fentry programs load).
    Trampolines,
    /// CONFIG_KPROBES.
    Kprobes,
    /// A mounted tracefs (tracepoint ids and formats).
    Tracefs,
    /// Raw tracepoints (their arguments only: no struct offsets).
    RawTracepoints,
    /// Raw tracepoints, and kernel BTF for the struct offsets.
    RawTracepointsAndBtf,
    /// TC classifier programs on network interfaces (each interface is
    /// tried as it is attached; see the loader).
    SchedCls,
}

#[derive(Debug)]
pub struct TierProgram {
    pub program: &'static str,
    pub hook: Hook,
    /// Globals (offsets) that must have been resolved for this program.
    pub needs: &'static [&'static str],
    /// Before this kernel (major, minor) the hook sees only part of the
    /// signal, and what it misses: reported when attached there.
    pub partial_before: Option<((u8, u8), &'static str)>,
}

#[derive(Debug)]
pub struct Tier {
    /// Reported as the attachment's mode; also the name to force it with.
    pub mode: &'static str,
    pub min_kernel: (u8, u8),
    pub requires: Requires,
    /// The first program is the tier's core: the tier is chosen only if it
    /// attaches. The others are attached one by one; one that fails is
    /// reported (health: degraded) without giving up the tier — unless the
    /// signal is required, where every program is.
    pub programs: &'static [TierProgram],
}

#[derive(Debug)]
pub struct Signal {
    pub name: &'static str,
    /// The agent cannot run without it (syscalls): every program of a tier
    /// must attach or the next tier is tried (what attached of it is
    /// unloaded), no usable tier stops the agent, and its attachments
    /// count for readiness. Their hooks are labelled `mode:tracepoint`
    /// (`tracepoint:sys_exit`), as they were before tiers.
    pub required: bool,
    pub tiers: &'static [Tier],
}

/// A program that needs nothing resolved and sees all of its signal.
pub const fn program(program: &'static str, hook: Hook) -> TierProgram {
    TierProgram {
        program,
        hook,
        needs: &[],
        partial_before: None,
    }
}

/// Every tier has a core program, and no two tiers share a mode (the
/// name that forces it). For the signals' own tests too.
#[cfg(test)]
pub fn assert_well_formed(signal: &Signal) {
    let mut modes: Vec<&str> = signal.tiers.iter().map(|t| t.mode).collect();
    modes.sort_unstable();
    modes.dedup();
    assert_eq!(modes.len(), signal.tiers.len(), "{}", signal.name);
    for tier in signal.tiers {
        assert!(!tier.programs.is_empty(), "{} {}", signal.name, tier.mode);
    }
}
