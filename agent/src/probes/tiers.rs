//! Hook tiers: for each signal, the ordered ways this agent can observe it,
//! cheapest first. The loader attaches the first tier this kernel offers
//! (or the one the configuration forces) and reports what it chose and why
//! the others were passed over. Keep every signal's choices in this one
//! table rather than in scattered conditions.

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
        }
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
    /// Raw tracepoints, and kernel BTF for the struct offsets.
    RawTracepointsAndBtf,
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
    /// reported (health: degraded) without giving up the tier.
    pub programs: &'static [TierProgram],
}

#[derive(Debug)]
pub struct Signal {
    pub name: &'static str,
    pub tiers: &'static [Tier],
}

const fn program(program: &'static str, hook: Hook) -> TierProgram {
    TierProgram {
        program,
        hook,
        needs: &[],
        partial_before: None,
    }
}

/// TCP lifecycle: handshakes, transitions, retransmits, resets, RTT.
pub const TCP: Signal = Signal {
    name: "tcp",
    tiers: &[
        Tier {
            mode: "fentry",
            min_kernel: (5, 5),
            requires: Requires::Trampolines,
            programs: &[
                TierProgram {
                    program: "sonde_tcp_state_fentry",
                    hook: Hook::Fentry("tcp_set_state"),
                    needs: &["SK_STATE_OFFSET"],
                    partial_before: None,
                },
                // Retransmissions sent: tcp_retransmit_skb's entry and exit
                // and __tcp_retransmit_skb's exit (tail-loss probes call it
                // directly; some kernels inline it into tcp_retransmit_skb),
                // each counted once (agent-ebpf/src/tcp.rs).
                program(
                    "sonde_tcp_retransmit_fentry",
                    Hook::Fentry("tcp_retransmit_skb"),
                ),
                program(
                    "sonde_tcp_retransmit_fexit",
                    Hook::Fexit("tcp_retransmit_skb"),
                ),
                program(
                    "sonde_tcp_retransmit_inner_fexit",
                    Hook::Fexit("__tcp_retransmit_skb"),
                ),
                program("sonde_tcp_receive_reset_fentry", Hook::Fentry("tcp_reset")),
                program(
                    "sonde_tcp_send_reset_fentry",
                    Hook::Fentry("tcp_v4_send_reset"),
                ),
                program(
                    "sonde_tcp_send_active_reset_fentry",
                    Hook::Fentry("tcp_send_active_reset"),
                ),
                TierProgram {
                    program: "sonde_tcp_rtt_fentry",
                    hook: Hook::Fentry("tcp_rcv_established"),
                    needs: &["TCP_SRTT_OFFSET"],
                    partial_before: None,
                },
            ],
        },
        Tier {
            mode: "kprobe",
            min_kernel: (4, 1),
            requires: Requires::Kprobes,
            programs: &[
                TierProgram {
                    program: "sonde_tcp_state_kprobe",
                    hook: Hook::Kprobe("tcp_set_state"),
                    needs: &["SK_STATE_OFFSET"],
                    partial_before: None,
                },
                // The same two functions, each retransmission counted once
                // (attempts: a kprobe sees no return value).
                program(
                    "sonde_tcp_retransmit_kprobe",
                    Hook::Kprobe("tcp_retransmit_skb"),
                ),
                program(
                    "sonde_tcp_retransmit_kretprobe",
                    Hook::Kretprobe("tcp_retransmit_skb"),
                ),
                program(
                    "sonde_tcp_retransmit_inner_kprobe",
                    Hook::Kprobe("__tcp_retransmit_skb"),
                ),
                program("sonde_tcp_receive_reset_kprobe", Hook::Kprobe("tcp_reset")),
                program(
                    "sonde_tcp_send_reset_kprobe",
                    Hook::Kprobe("tcp_v4_send_reset"),
                ),
                program(
                    "sonde_tcp_send_reset_kprobe",
                    Hook::Kprobe("tcp_send_active_reset"),
                ),
                TierProgram {
                    program: "sonde_tcp_rtt_kprobe",
                    hook: Hook::Kprobe("tcp_rcv_established"),
                    needs: &["TCP_SRTT_OFFSET"],
                    partial_before: None,
                },
            ],
        },
        Tier {
            mode: "tracepoint",
            min_kernel: (4, 16),
            requires: Requires::Tracefs,
            programs: &[
                TierProgram {
                    program: "sonde_tcp_state",
                    hook: Hook::Tracepoint("sock", "inet_sock_set_state"),
                    needs: &[
                        "TP_SSS_SKADDR",
                        "TP_SSS_OLDSTATE",
                        "TP_SSS_NEWSTATE",
                        "TP_SSS_PROTOCOL",
                    ],
                    partial_before: None,
                },
                program(
                    "sonde_tcp_retransmit",
                    Hook::Tracepoint("tcp", "tcp_retransmit_skb"),
                ),
                program(
                    "sonde_tcp_receive_reset",
                    Hook::Tracepoint("tcp", "tcp_receive_reset"),
                ),
                TierProgram {
                    // Linux 6.10 (19822a980e19) made it fire without a socket.
                    partial_before: Some((
                        (6, 10),
                        "resets sent without a socket (a SYN to a closed port, a stray \
                         segment) are not seen: the tcp_send_reset tracepoint fires for \
                         them from Linux 6.10",
                    )),
                    ..program(
                        "sonde_tcp_send_reset",
                        Hook::Tracepoint("tcp", "tcp_send_reset"),
                    )
                },
                TierProgram {
                    program: "sonde_tcp_probe",
                    hook: Hook::Tracepoint("tcp", "tcp_probe"),
                    needs: &["TP_PROBE_SRTT"],
                    partial_before: None,
                },
            ],
        },
    ],
};

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_tier_has_a_core_program_and_modes_are_unique() {
        assert_well_formed(&TCP);
    }
}
