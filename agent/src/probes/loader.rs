//! Loads Sonde's kernel programs and attaches them, choosing at run time the
//! best hook this kernel offers and saying what it chose (or could not do):
//!
//! | hook     | preferred                  | fallback                          |
//! |----------|----------------------------|-----------------------------------|
//! | ingress  | XDP native (link)          | XDP generic → TC ingress          |
//! | egress   | TC (tcx link ≥ 6.6)        | TC clsact (netlink)               |
//!
//! The other hooks are each signal's tiers (agent/src/signals/), tried in
//! their order. An interface whose XDP hook is already owned by another
//! program (a CNI's, say) is never touched: its ingress is accounted with
//! TC instead.
//! Everything attached here is owned by [`Probes`]; dropping it detaches all.

use std::{collections::BTreeMap, os::fd::OwnedFd, path::Path};

use agent_common::{
    config::{CFG_IGNORE_TGID, CONFIG_MAP},
    counters::COUNTERS_MAP,
    events::{RING_STATS_MAP, RINGS, RingStats},
    net::{BLOCKLIST_MAP, BLOCKLIST_STATS_MAP, BlocklistEntry, BlocklistKey, BlocklistStats},
};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, MapData, MapError, PerCpuArray},
    programs::{
        LinkOrder, ProgramError, RawTracePoint, SchedClassifier, TcAttachType, TracePoint, Xdp,
        XdpMode,
        tc::SchedClassifierLinkId,
        tc::{self, TcAttachOptions},
        xdp::XdpLinkId,
    },
};
use serde::Serialize;
use thiserror::Error;
use tracing::{info, warn};

use super::{
    capabilities::{self, Capabilities},
    tiers,
};
use crate::{
    config::{Config, EventTransport, TcAttachConfig, XdpModeConfig},
    events::EventSource,
    signals::{self, OpenError, Signal, Source, take},
};

pub(crate) static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/agent"));
/// The same programs with events on perf event arrays (agent-ebpf's
/// main_perf.rs), for kernels without the BPF ring buffer (before 5.8).
pub(crate) static EBPF_OBJECT_PERF: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/agent-perf"));

/// How events reach user space on this kernel: the configured transport, or
/// for `auto` the ring buffer where the kernel has the map type.
pub fn event_transport(configured: EventTransport) -> (EventTransport, &'static str) {
    match configured {
        EventTransport::Auto => {
            if aya::sys::is_map_supported(aya::maps::MapType::RingBuf).unwrap_or(false) {
                (EventTransport::RingBuffer, "ring buffer")
            } else {
                (
                    EventTransport::PerfEventArray,
                    "perf event arrays (this kernel has no BPF ring buffer, Linux 5.8+)",
                )
            }
        }
        EventTransport::RingBuffer => (EventTransport::RingBuffer, "ring buffer (configured)"),
        EventTransport::PerfEventArray => (
            EventTransport::PerfEventArray,
            "perf event arrays (configured)",
        ),
    }
}

/// Pages for each CPU's perf buffer: the ring's size shared among the
/// CPUs, rounded down to a power of two, at least one page.
fn perf_pages_per_cpu(ring_bytes: u32, cpus: usize, page_size: usize) -> usize {
    let pages = ring_bytes as usize / page_size.max(1) / cpus.max(1);
    if pages <= 1 {
        1
    } else {
        1 << (usize::BITS - 1 - pages.leading_zeros())
    }
}

#[derive(Debug, Error)]
pub enum ProbeError {
    #[error(
        "missing privileges: Sonde needs {} (or CAP_SYS_ADMIN / root) to load eBPF programs",
        .0.join(", ")
    )]
    Privileges(Vec<&'static str>),
    #[error("loading the eBPF object failed: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error(transparent)]
    Signal(#[from] OpenError),
    #[error("{signal}: this kernel offers no usable hook: {reasons}")]
    NoHook {
        signal: &'static str,
        reasons: String,
    },
    #[error("interface {interface}: {reason}")]
    Interface { interface: String, reason: String },
    #[error("perf event array {name}: {reason}")]
    Perf { name: &'static str, reason: String },
}

/// Why one program could not be loaded or attached. These become the
/// reasons a tier, a hook or an interface was passed over (logged, and in
/// `Attachment::error`); each names what failed.
#[derive(Debug, Error)]
pub enum AttachError {
    #[error("program {0} missing from the eBPF object")]
    MissingProgram(String),
    /// The object's program has another type than the loader expects.
    #[error("{0}")]
    WrongType(#[source] ProgramError),
    #[error("{0} could not be resolved on this kernel")]
    Unresolved(&'static str),
    #[error("kernel BTF: {0}")]
    Btf(#[source] aya::BtfError),
    /// Loading (the verifier's last lines) or attaching failed.
    #[error("{}", describe(.0))]
    Program(#[source] ProgramError),
    /// Closing a link failed.
    #[error("{0}")]
    Detach(#[source] ProgramError),
    #[error("adding clsact qdisc: {0}")]
    Qdisc(#[source] tc::TcError),
    /// Known before trying: the kernel lacks what the program needs.
    #[error("{0}")]
    Unavailable(String),
}

/// One attachment (or failed attempt) of a program to a hook.
#[derive(Debug, Clone, Serialize)]
pub struct Attachment {
    pub program: &'static str,
    /// What it is attached to, e.g. `raw_tracepoint:sys_enter`, `xdp:eth0`.
    pub hook: String,
    /// How, e.g. `native`, `generic`, `tcx`, `netlink`, `raw_tracepoint`.
    pub mode: String,
    pub attached: bool,
    /// Whether readiness depends on it.
    pub required: bool,
    pub error: Option<String>,
    /// The network interface, for packet programs.
    pub interface: Option<String>,
}

/// What detaches one interface attachment: the program and its link.
enum LinkHandle {
    Xdp(&'static str, XdpLinkId),
    Tc(&'static str, SchedClassifierLinkId),
}

/// The maps user space reads and writes, taken out of the loaded object.
pub struct KernelMaps {
    pub config: Array<MapData, u64>,
    pub counters: PerCpuArray<MapData, u64>,
    pub ring_stats: PerCpuArray<MapData, RingStats>,
    /// The maps of each signal in [`signals::ALL`], in that order.
    pub signals: Vec<(&'static Signal, Box<dyn Source>)>,
    /// Enforce mode's blocked sources (the collector keeps it in step
    /// with the MAPE-K overlay).
    pub blocklist: aya::maps::HashMap<MapData, BlocklistKey, BlocklistEntry>,
    pub blocklist_stats: PerCpuArray<MapData, BlocklistStats>,
}

/// Everything loaded into the kernel. Dropping it detaches every program.
pub struct Probes {
    ebpf: Ebpf,
    pub attachments: Vec<Attachment>,
    /// ifindex → interface name for the interfaces we account.
    pub interfaces: BTreeMap<u32, String>,
    /// ifindex → what to detach when the interface goes away.
    links: BTreeMap<u32, Vec<LinkHandle>>,
    /// What attached hooks cannot see on this kernel ("program hook: why").
    pub limitations: Vec<String>,
    /// Tracepoint fields listed again for a tracepoint whose record has
    /// them elsewhere (see [`resolve_tracepoint_fields`]).
    misplaced: Vec<Misplaced>,
    /// Rings, by (ring id, label), handed to the event readers.
    pub rings: Vec<(u32, &'static str, EventSource)>,
    /// How events reach user space, as `sonde check` says it.
    pub event_transport: &'static str,
    pub maps: Option<KernelMaps>,
    /// `[network] tc_attach` (a restart setting).
    tc_attach: TcAttachConfig,
    _bpf_stats: Option<OwnedFd>,
}

impl Probes {
    /// Loads and attaches everything `config` asks for on the interfaces
    /// given (already resolved to ifindexes by the caller).
    pub fn load(
        config: &Config,
        interfaces: &[(String, u32)],
        caps: &Capabilities,
        bpf_stats: bool,
    ) -> Result<Self, ProbeError> {
        if !caps.missing_caps.is_empty() {
            return Err(ProbeError::Privileges(caps.missing_caps.clone()));
        }
        raise_memlock_limit();

        // Classic-tracepoint field offsets come from this kernel's format
        // files; they are only needed (and tracefs only mounted) when a
        // signal may attach to tracepoints.
        let need_tracefs = signals::ALL
            .iter()
            .any(|s| (s.enabled)(config) && needs_tracefs(s, config, caps));
        let tracefs = if need_tracefs {
            match capabilities::ensure_tracefs() {
                Ok(dir) => Some(dir),
                Err(err) => {
                    warn!("{err}");
                    None
                }
            }
        } else {
            capabilities::tracefs_dir()
        };

        // Classic-tracepoint fields the programs read, from this kernel's
        // formats (None: that program cannot be attached here).
        let (tp_offsets, misplaced) = resolve_tracepoint_fields(
            signals::ALL.iter().flat_map(|s| s.tracepoint_fields),
            |category, tp, field| {
                tracefs.and_then(|t| capabilities::tracepoint_field_offset(t, category, tp, field))
            },
        );
        // Struct offsets the programs read, from this kernel's BTF.
        let btf_fields = || signals::ALL.iter().flat_map(|s| s.btf_fields);
        let mut btf_offsets: Vec<(&'static str, Option<u32>)> = match super::btf::Btf::from_sys_fs()
        {
            Ok(btf) => btf_fields()
                .map(|&(global, st, members)| {
                    let offset = members
                        .iter()
                        .find_map(|member| btf.member_offset(st, member).ok());
                    (global, offset)
                })
                .collect(),
            Err(err) => {
                tracing::debug!("no kernel BTF for struct offsets: {err}");
                btf_fields().map(|&(global, ..)| (global, None)).collect()
            }
        };
        // Enum values the signals' programs compare with, by name.
        for &(global, category, tp, field, name) in signals::ALL.iter().flat_map(|s| s.symbols) {
            let value = tracefs.and_then(|t| {
                capabilities::tracepoint_symbols(t, category, tp, field)
                    .into_iter()
                    .find_map(|(value, n)| (n == name).then_some(value))
            });
            btf_offsets.push((global, value));
        }
        let mut loader = EbpfLoader::new();
        for (global, offset) in tp_offsets.iter().chain(&btf_offsets) {
            if let Some(offset) = offset {
                loader.override_global(global, offset, true);
            }
        }
        let resolved: Vec<&'static str> = tp_offsets
            .iter()
            .chain(&btf_offsets)
            .filter(|(_, o)| o.is_some())
            .map(|(g, _)| *g)
            .collect();
        let constants: Vec<(&str, u32)> = signals::ALL
            .iter()
            .flat_map(|s| s.constants)
            .map(|&(global, value)| (global, value()))
            .collect();
        for (global, value) in &constants {
            loader.override_global(global, value, true);
        }
        for &(map, entries) in signals::MAP_SIZES.iter().copied().flatten() {
            loader.map_max_entries(map, entries(config));
        }
        let (transport, event_transport) = event_transport(config.events.transport);
        let object = match transport {
            EventTransport::PerfEventArray => EBPF_OBJECT_PERF,
            _ => {
                for &(id, name, _) in RINGS {
                    loader.map_max_entries(name, config.events.ring_bytes(id));
                }
                EBPF_OBJECT
            }
        };
        let mut ebpf = loader.load(object)?;

        let mut maps = KernelMaps {
            signals: signals::ALL
                .iter()
                .map(|&signal| Ok((signal, (signal.open)(&mut ebpf, config)?)))
                .collect::<Result<_, ProbeError>>()?,
            config: take(&mut ebpf, CONFIG_MAP)?,
            counters: take(&mut ebpf, COUNTERS_MAP)?,
            ring_stats: take(&mut ebpf, RING_STATS_MAP)?,
            blocklist: take(&mut ebpf, BLOCKLIST_MAP)?,
            blocklist_stats: take(&mut ebpf, BLOCKLIST_STATS_MAP)?,
        };
        apply_runtime_config(&mut maps, config)?;
        let mut rings = Vec::new();
        for &(id, name, label) in RINGS {
            let source = match transport {
                EventTransport::PerfEventArray => EventSource::Perf(open_perf_buffers(
                    &mut ebpf,
                    name,
                    config.events.ring_bytes(id),
                )?),
                _ => EventSource::Ring(take(&mut ebpf, name)?),
            };
            rings.push((id, label, source));
        }

        // Per-program run time and count, held on for as long as we run.
        let bpf_stats = if bpf_stats {
            match aya::sys::enable_stats(aya::sys::Stats::RunTime) {
                Ok(fd) => Some(fd),
                Err(err) => {
                    warn!("could not enable BPF run-time statistics: {err}");
                    None
                }
            }
        } else {
            None
        };

        let mut probes = Self {
            ebpf,
            attachments: Vec::new(),
            interfaces: BTreeMap::new(),
            links: BTreeMap::new(),
            limitations: Vec::new(),
            misplaced,
            rings,
            event_transport,
            maps: Some(maps),
            tc_attach: config.network.tc_attach,
            _bpf_stats: bpf_stats,
        };
        // Required signals first: without them nothing else is attached.
        let attached_once = |s: &&&Signal| (s.enabled)(config) && !s.per_interface();
        for signal in signals::ALL.iter().filter(attached_once) {
            if signal.tiers.required {
                probes.attach_signal(
                    signal.tiers,
                    (signal.forced_tier)(config),
                    caps,
                    &resolved,
                )?;
            }
        }
        if signals::ALL
            .iter()
            .any(|s| (s.enabled)(config) && s.per_interface())
        {
            for (name, ifindex) in interfaces {
                probes.attach_interface(name, *ifindex, config, caps)?;
            }
        }
        for signal in signals::ALL.iter().filter(attached_once) {
            if !signal.tiers.required {
                probes.attach_signal(
                    signal.tiers,
                    (signal.forced_tier)(config),
                    caps,
                    &resolved,
                )?;
            }
        }
        Ok(probes)
    }

    /// Attaches the first tier of `signal` this kernel offers (or only the
    /// `forced` one) and records what was chosen, or why nothing was: an
    /// optional signal never stops the agent, it makes health `degraded`;
    /// a required one with no tier does ([`ProbeError::NoHook`]).
    fn attach_signal(
        &mut self,
        signal: &tiers::Signal,
        forced: Option<&str>,
        caps: &Capabilities,
        resolved: &[&str],
    ) -> Result<(), ProbeError> {
        if signal.required {
            return self.attach_required(signal, forced, caps, resolved);
        }
        let mut reasons = Vec::new();
        for tier in signal.tiers {
            if forced.is_some_and(|f| f != tier.mode) {
                continue;
            }
            if let Some(why) = tier_unavailable(tier, caps) {
                reasons.push(format!("{}: {why}", tier.mode));
                continue;
            }
            let core = &tier.programs[0];
            if let Err(why) = self.attach_tier_program(core, resolved) {
                reasons.push(format!("{}: {why}", tier.mode));
                continue;
            }
            let mut attachments = vec![tier_attachment(core, tier.mode, None)];
            for program in &tier.programs[1..] {
                let result = self.attach_tier_program(program, resolved);
                if let Err(err) = &result {
                    warn!(
                        "{} ({}): {} unavailable: {err}",
                        signal.name,
                        tier.mode,
                        program.hook.describe()
                    );
                }
                if result.is_ok()
                    && let Some(((major, minor), misses)) = program.partial_before
                    && caps.kernel_version.is_some()
                    && !caps.at_least(major, minor)
                {
                    let line = format!("{} {}: {misses}", program.program, program.hook.describe());
                    warn!(
                        signal = signal.name,
                        tier = tier.mode,
                        "partial signal: {line}"
                    );
                    self.limitations.push(line);
                }
                let error = result.err().map(|e| e.to_string());
                attachments.push(tier_attachment(program, tier.mode, error));
            }
            if reasons.is_empty() {
                info!(signal = signal.name, tier = tier.mode, "signal attached");
            } else {
                warn!(
                    signal = signal.name,
                    tier = tier.mode,
                    "signal attached through a fallback tier: {}",
                    reasons.join("; ")
                );
            }
            self.attachments.extend(attachments);
            return Ok(());
        }
        let why = if reasons.is_empty() {
            format!("no tier named {forced:?}")
        } else {
            reasons.join("; ")
        };
        warn!(
            signal = signal.name,
            "signal unavailable on this kernel: {why}"
        );
        self.attachments.push(Attachment {
            program: signal.name,
            hook: "none".to_owned(),
            mode: "none".to_owned(),
            attached: false,
            required: false,
            error: Some(why),
            interface: None,
        });
        Ok(())
    }

    /// A required signal: the first tier whose every program attaches (in
    /// order; a tier that fails half way is unloaded again), or
    /// [`ProbeError::NoHook`].
    fn attach_required(
        &mut self,
        signal: &tiers::Signal,
        forced: Option<&str>,
        caps: &Capabilities,
        resolved: &[&str],
    ) -> Result<(), ProbeError> {
        let mut reasons = Vec::new();
        for tier in signal.tiers {
            if forced.is_some_and(|f| f != tier.mode) {
                continue;
            }
            if let Some(why) = tier_unavailable(tier, caps) {
                reasons.push(format!("{}: {why}", tier.mode));
                continue;
            }
            let failed = tier.programs.iter().enumerate().find_map(|(i, program)| {
                let result = self.attach_tier_program(program, resolved);
                result.err().map(|err| (i, program, err))
            });
            if let Some((attached, program, err)) = failed {
                reasons.push(format!("{}: {}: {err}", tier.mode, program.hook.describe()));
                for program in &tier.programs[..attached] {
                    if let Some(p) = self.ebpf.program_mut(program.program) {
                        let _ = program_unload(p);
                    }
                }
                continue;
            }
            info!(
                signal = signal.name,
                tier = tier.mode,
                "signal attached: every program of the tier"
            );
            if !reasons.is_empty() {
                warn!(
                    signal = signal.name,
                    tier = tier.mode,
                    "signal attached through a fallback tier: {}",
                    reasons.join("; ")
                );
            }
            for program in tier.programs {
                let mut attachment = tier_attachment(program, tier.mode, None);
                // Labelled as before tiers: `tracepoint:sys_exit`.
                let name = match program.hook {
                    tiers::Hook::Tracepoint(_, name) | tiers::Hook::RawTracepoint(name) => name,
                    _ => "",
                };
                if !name.is_empty() {
                    attachment.hook = format!("{}:{name}", tier.mode);
                }
                attachment.required = true;
                self.attachments.push(attachment);
            }
            return Ok(());
        }
        Err(ProbeError::NoHook {
            signal: signal.name,
            reasons: if reasons.is_empty() {
                format!("no tier named {forced:?}")
            } else {
                reasons.join("; ")
            },
        })
    }

    fn attach_tier_program(
        &mut self,
        program: &tiers::TierProgram,
        resolved: &[&str],
    ) -> Result<(), AttachError> {
        if let Some(missing) = program.needs.iter().find(|g| !resolved.contains(g)) {
            return Err(AttachError::Unresolved(missing));
        }
        if let tiers::Hook::Tracepoint(category, tp) = program.hook
            && let Some(&(global, ..)) = self
                .misplaced
                .iter()
                .find(|m| (m.1, m.2) == (category, tp) && program.needs.contains(&m.0))
        {
            return Err(AttachError::Unresolved(global));
        }
        let name = program.program;
        match program.hook {
            tiers::Hook::Fentry(function) => {
                let btf = aya::Btf::from_sys_fs().map_err(AttachError::Btf)?;
                let prog: &mut aya::programs::FEntry = program_mut(&mut self.ebpf, name)?;
                if prog.fd().is_err() {
                    prog.load(function, &btf).map_err(AttachError::Program)?;
                }
                prog.attach().map(drop).map_err(AttachError::Program)
            }
            tiers::Hook::Fexit(function) => {
                let btf = aya::Btf::from_sys_fs().map_err(AttachError::Btf)?;
                let prog: &mut aya::programs::FExit = program_mut(&mut self.ebpf, name)?;
                if prog.fd().is_err() {
                    prog.load(function, &btf).map_err(AttachError::Program)?;
                }
                prog.attach().map(drop).map_err(AttachError::Program)
            }
            // The program's section (kprobe or kretprobe) says which.
            tiers::Hook::Kprobe(function) | tiers::Hook::Kretprobe(function) => {
                let prog: &mut aya::programs::KProbe = program_mut(&mut self.ebpf, name)?;
                if prog.fd().is_err() {
                    prog.load().map_err(AttachError::Program)?;
                }
                prog.attach(function, 0)
                    .map(drop)
                    .map_err(AttachError::Program)
            }
            tiers::Hook::RawTracepoint(tp) => {
                let prog: &mut RawTracePoint = program_mut(&mut self.ebpf, name)?;
                if prog.fd().is_err() {
                    prog.load().map_err(AttachError::Program)?;
                }
                prog.attach(tp).map(drop).map_err(AttachError::Program)
            }
            tiers::Hook::Tracepoint(category, tp) => {
                let prog: &mut TracePoint = program_mut(&mut self.ebpf, name)?;
                if prog.fd().is_err() {
                    prog.load().map_err(AttachError::Program)?;
                }
                prog.attach(category, tp)
                    .map(drop)
                    .map_err(AttachError::Program)
            }
            tiers::Hook::XdpOrTc(_) | tiers::Hook::TcEgress => Err(AttachError::Unavailable(
                format!("{}: attached per interface", program.hook.describe()),
            )),
        }
    }

    /// Detaches everything now (dropping the programs closes every link),
    /// even while other handles to this `Probes` still exist.
    pub fn detach_all(&mut self) {
        self.interfaces.clear();
        self.links.clear();
        self.attachments.clear();
        let names: Vec<String> = self.ebpf.programs().map(|(n, _)| n.to_owned()).collect();
        for name in names {
            if let Some(program) = self.ebpf.program_mut(&name) {
                let _ = program_unload(program);
            }
        }
    }

    /// Stops accounting an interface that went away: forgets it and closes
    /// its links (the kernel already detached them with the device).
    pub fn forget_interface(&mut self, ifindex: u32) {
        let Some(name) = self.interfaces.remove(&ifindex) else {
            return;
        };
        if let Some(maps) = &mut self.maps {
            for (_, source) in &mut maps.signals {
                source.interface_removed(ifindex);
            }
        }
        for link in self.links.remove(&ifindex).unwrap_or_default() {
            let result = match link {
                LinkHandle::Xdp(program, id) => program_mut::<Xdp>(&mut self.ebpf, program)
                    .and_then(|p| p.detach(id).map_err(AttachError::Detach)),
                LinkHandle::Tc(program, id) => {
                    program_mut::<SchedClassifier>(&mut self.ebpf, program)
                        .and_then(|p| p.detach(id).map_err(AttachError::Detach))
                }
            };
            if let Err(err) = result {
                tracing::debug!(interface = name, "closing link: {err}");
            }
        }
        self.attachments
            .retain(|a| a.interface.as_deref() != Some(name.as_str()));
    }

    /// Loaded programs' kernel ids by name (for bpf_stats).
    pub fn program_infos(&self) -> Vec<(String, aya::programs::ProgramInfo)> {
        self.ebpf
            .programs()
            .filter_map(|(name, prog)| prog.info().ok().map(|info| (name.to_owned(), info)))
            .collect()
    }

    /// Attaches the per-interface programs of every signal `config` turns
    /// on (their ingress and egress accounting) to one interface, and tells
    /// the signals' maps while the loader still holds them. On error
    /// nothing of this interface stays attached.
    pub fn attach_interface(
        &mut self,
        iface: &str,
        ifindex: u32,
        config: &Config,
        caps: &Capabilities,
    ) -> Result<(), ProbeError> {
        self.interfaces.insert(ifindex, iface.to_owned());
        let programs = signals::ALL
            .iter()
            .filter(|s| (s.enabled)(config))
            .flat_map(|s| s.tiers.tiers.iter().flat_map(|t| t.programs));
        for program in programs {
            let attached = match program.hook {
                tiers::Hook::XdpOrTc(tc) => {
                    self.attach_ingress(iface, program.program, tc, config.network.xdp_mode, caps)
                }
                tiers::Hook::TcEgress => self
                    .attach_tc(iface, program.program, TcAttachType::Egress, caps)
                    .map_err(|reason| ProbeError::Interface {
                        interface: iface.to_owned(),
                        reason: format!("TC egress: {reason}"),
                    }),
                _ => continue,
            };
            match attached {
                Ok((attachment, link)) => {
                    self.attachments.push(attachment);
                    self.links.entry(ifindex).or_default().push(link);
                }
                Err(err) => {
                    self.forget_interface(ifindex);
                    return Err(err);
                }
            }
        }
        if let Some(maps) = &mut self.maps {
            for (_, source) in &mut maps.signals {
                source.interface_added(ifindex, iface);
            }
        }
        Ok(())
    }

    /// `xdp` on the interface's ingress where it is the cheap path (see
    /// below), else `tc`.
    fn attach_ingress(
        &mut self,
        iface: &str,
        xdp: &'static str,
        tc: &'static str,
        xdp_mode: XdpModeConfig,
        caps: &Capabilities,
    ) -> Result<(Attachment, LinkHandle), ProbeError> {
        let mut reasons = Vec::new();
        // Auto takes XDP only where it is the cheap path: a NIC driver's
        // native XDP. On virtual interfaces (veth, bridges, loopback) XDP is
        // the expensive path — native XDP on veth gives up GSO/GRO, generic
        // XDP linearises every skb — and TC observes the same packets for
        // less (measured: docs/performance.md).
        let physical = Path::new("/sys/class/net")
            .join(iface)
            .join("device")
            .exists();
        let modes: &[(XdpMode, &str)] = match xdp_mode {
            XdpModeConfig::Auto if physical => &[(XdpMode::Driver, "native")],
            XdpModeConfig::Auto => {
                reasons.push("virtual interface: TC is cheaper than XDP here".to_owned());
                &[]
            }
            XdpModeConfig::Native => &[(XdpMode::Driver, "native")],
            XdpModeConfig::Generic => &[(XdpMode::Skb, "generic")],
            XdpModeConfig::Off => &[],
        };
        // Before 5.9 XDP has no links, and aya's netlink fallback would
        // replace whatever program the interface already runs.
        let xdp_links = caps.at_least(5, 9);
        if !modes.is_empty() && !xdp_links {
            reasons.push("kernel < 5.9 has no XDP links (would replace other programs)".to_owned());
        }
        if !modes.is_empty() && xdp_links {
            let prog: &mut Xdp =
                program_mut(&mut self.ebpf, xdp).map_err(|reason| ProbeError::Interface {
                    interface: iface.to_owned(),
                    reason: reason.to_string(),
                })?;
            if prog.fd().is_err()
                && let Err(e) = prog.load()
            {
                reasons.push(format!("XDP load: {}", describe(&e)));
            }
            if prog.fd().is_ok() {
                for &(mode, label) in modes {
                    match prog.attach(iface, mode) {
                        Ok(id) => {
                            info!(
                                interface = iface,
                                mode = label,
                                "ingress accounted with XDP"
                            );
                            let attachment = Attachment {
                                program: xdp,
                                hook: format!("xdp:{iface}"),
                                mode: label.to_owned(),
                                attached: true,
                                required: true,
                                error: None,
                                interface: Some(iface.to_owned()),
                            };
                            return Ok((attachment, LinkHandle::Xdp(xdp, id)));
                        }
                        Err(e) => {
                            // EBUSY: a program is attached; EEXIST: one is
                            // attached in another mode. Either way, not ours.
                            let busy = matches!(&e, ProgramError::SyscallError(s)
                                if matches!(s.io_error.raw_os_error(), Some(libc::EBUSY | libc::EEXIST)));
                            if busy {
                                reasons.push(
                                    "another program owns this interface's XDP hook; leaving it alone"
                                        .to_owned(),
                                );
                                break;
                            }
                            reasons.push(format!("XDP {label}: {}", describe(&e)));
                        }
                    }
                }
            }
        }
        let attachment = self
            .attach_tc(iface, tc, TcAttachType::Ingress, caps)
            .map_err(|reason| {
                reasons.push(format!("TC ingress: {reason}"));
                ProbeError::Interface {
                    interface: iface.to_owned(),
                    reason: format!("no ingress hook: {}", reasons.join("; ")),
                }
            })?;
        let chosen =
            xdp_mode == XdpModeConfig::Off || (xdp_mode == XdpModeConfig::Auto && !physical);
        if chosen {
            info!(
                interface = iface,
                "ingress accounted with TC: {}",
                reasons.join("; ")
            );
        } else {
            warn!(
                interface = iface,
                "ingress accounted with TC instead of XDP: {}",
                reasons.join("; ")
            );
        }
        Ok(attachment)
    }

    fn attach_tc(
        &mut self,
        iface: &str,
        program: &'static str,
        attach_type: TcAttachType,
        caps: &Capabilities,
    ) -> Result<(Attachment, LinkHandle), AttachError> {
        let tcx = match self.tc_attach {
            TcAttachConfig::Auto => caps.at_least(6, 6),
            TcAttachConfig::Netlink => false,
            TcAttachConfig::Tcx => true,
        };
        if !tcx {
            // Netlink attachment needs the clsact qdisc; it may already be
            // there (ours from a previous attach, or someone else's).
            if let Err(e) = tc::qdisc_add_clsact(iface) {
                let exists = matches!(&e, tc::TcError::NetlinkError(n) if n.raw_os_error() == Some(libc::EEXIST));
                if !exists {
                    return Err(AttachError::Qdisc(e));
                }
            }
        }
        let prog: &mut SchedClassifier = program_mut(&mut self.ebpf, program)?;
        if prog.fd().is_err() {
            prog.load().map_err(AttachError::Program)?;
        }
        // First in the tcx chain so that we see every packet; our programs
        // return "no verdict" and never change what runs after them.
        let options = if tcx {
            TcAttachOptions::TcxOrder(LinkOrder::first())
        } else {
            TcAttachOptions::Netlink(Default::default())
        };
        let id = prog
            .attach_with_options(iface, attach_type, options)
            .map_err(AttachError::Program)?;
        let direction = if attach_type == TcAttachType::Egress {
            "egress"
        } else {
            "ingress"
        };
        let attachment = Attachment {
            program,
            hook: format!("tc_{direction}:{iface}"),
            mode: if tcx { "tcx" } else { "netlink" }.to_owned(),
            attached: true,
            required: true,
            error: None,
            interface: Some(iface.to_owned()),
        };
        Ok((attachment, LinkHandle::Tc(program, id)))
    }
}

/// A tracepoint field's global listed for a tracepoint whose record has
/// the field elsewhere than the first listing's: (global, category,
/// tracepoint).
type Misplaced = (&'static str, &'static str, &'static str);

/// The offset of each tracepoint field's global (None: unresolved), in
/// order, and the listings whose tracepoint has the field elsewhere:
/// (global, category, tracepoint). A global listed for several
/// tracepoints is read by one program on each (one wakeup program serves
/// sched_wakeup and sched_wakeup_new): it takes the first listing's
/// offset, and a tracepoint whose record puts the field elsewhere cannot
/// have that program.
fn resolve_tracepoint_fields<'a>(
    fields: impl Iterator<Item = &'a signals::TracepointField>,
    offset: impl Fn(&str, &str, &str) -> Option<u32>,
) -> (Vec<(&'static str, Option<u32>)>, Vec<Misplaced>) {
    let mut offsets: Vec<(&'static str, Option<u32>)> = Vec::new();
    let mut misplaced = Vec::new();
    for &(global, category, tp, field) in fields {
        let found = offset(category, tp, field);
        match offsets.iter().find(|(g, _)| *g == global) {
            Some((_, first)) if *first != found => misplaced.push((global, category, tp)),
            Some(_) => {}
            None => offsets.push((global, found)),
        }
    }
    (offsets, misplaced)
}

/// Whether an enabled signal may need tracefs: an optional one attached
/// once always may (its formats name its fields); a required one only if
/// the first tier it would try that this kernel offers (tracefs aside)
/// is on classic tracepoints.
fn needs_tracefs(signal: &Signal, config: &Config, caps: &Capabilities) -> bool {
    if signal.per_interface() {
        return false;
    }
    if !signal.tiers.required {
        return true;
    }
    let forced = (signal.forced_tier)(config);
    signal
        .tiers
        .tiers
        .iter()
        .filter(|t| forced.is_none_or(|f| f == t.mode))
        .find(|t| t.requires == tiers::Requires::Tracefs || tier_unavailable(t, caps).is_none())
        .is_some_and(|t| t.requires == tiers::Requires::Tracefs)
}

/// Why a tier cannot be tried on this kernel, if it cannot.
fn tier_unavailable(tier: &tiers::Tier, caps: &Capabilities) -> Option<String> {
    let (major, minor) = tier.min_kernel;
    if caps.kernel_version.is_some() && !caps.at_least(major, minor) {
        return Some(format!("needs kernel ≥ {major}.{minor}"));
    }
    match tier.requires {
        tiers::Requires::Trampolines if !caps.btf => Some("no kernel BTF".into()),
        tiers::Requires::Trampolines if !caps.fentry => {
            Some("this kernel refuses fentry (tracing) programs".into())
        }
        tiers::Requires::Kprobes if !caps.kprobes => {
            Some("no kprobes on this kernel (CONFIG_KPROBES)".into())
        }
        tiers::Requires::Tracefs if capabilities::tracefs_dir().is_none() => {
            Some("tracefs is not mounted".into())
        }
        tiers::Requires::RawTracepoints | tiers::Requires::RawTracepointsAndBtf
            if !caps.raw_tracepoint =>
        {
            Some("no raw tracepoints on this kernel".into())
        }
        tiers::Requires::RawTracepointsAndBtf if !caps.btf => Some("no kernel BTF".into()),
        _ => None,
    }
}

fn tier_attachment(program: &tiers::TierProgram, mode: &str, error: Option<String>) -> Attachment {
    Attachment {
        program: program.program,
        hook: program.hook.describe(),
        mode: mode.to_owned(),
        attached: error.is_none(),
        required: false,
        error,
        interface: None,
    }
}

/// Unloads a program of any type, which detaches all its links.
fn program_unload(program: &mut aya::programs::Program) -> Result<(), ProgramError> {
    use aya::programs::Program;
    match program {
        Program::RawTracePoint(p) => p.unload(),
        Program::TracePoint(p) => p.unload(),
        Program::Xdp(p) => p.unload(),
        Program::SchedClassifier(p) => p.unload(),
        _ => Ok(()),
    }
}

/// Writes the settings that can change while running (also on SIGHUP).
pub fn apply_runtime_config(maps: &mut KernelMaps, config: &Config) -> Result<(), ProbeError> {
    let map_err = |source| ProbeError::Map {
        name: CONFIG_MAP,
        source,
    };
    // Shared: every program skips the agent's own process.
    maps.config
        .set(CFG_IGNORE_TGID, u64::from(std::process::id()), 0)
        .map_err(map_err)?;
    for (_, source) in &mut maps.signals {
        for (index, value) in source.reconfigure(config)? {
            maps.config.set(index, value, 0).map_err(map_err)?;
        }
    }
    Ok(())
}

/// One perf buffer per online CPU of the perf event array `name`.
fn open_perf_buffers(
    ebpf: &mut Ebpf,
    name: &'static str,
    ring_bytes: u32,
) -> Result<Vec<aya::maps::perf::PerfEventArrayBuffer<MapData>>, ProbeError> {
    let mut array: aya::maps::PerfEventArray<MapData> = take(ebpf, name)?;
    let cpus = aya::util::online_cpus().map_err(|(what, err)| ProbeError::Perf {
        name,
        reason: format!("{what}: {err}"),
    })?;
    // SAFETY: sysconf has no preconditions.
    let page_size = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    let pages = perf_pages_per_cpu(ring_bytes, cpus.len(), page_size);
    cpus.into_iter()
        .map(|cpu| {
            array
                .open(cpu, Some(pages))
                .map_err(|err| ProbeError::Perf {
                    name,
                    reason: format!("CPU {cpu}: {err}"),
                })
        })
        .collect()
}

pub(crate) fn program_mut<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T, AttachError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    let prog = ebpf
        .program_mut(name)
        .ok_or_else(|| AttachError::MissingProgram(name.to_owned()))?;
    prog.try_into().map_err(AttachError::WrongType)
}

/// A one-line description of a program error; the verifier log, when there
/// is one, is kept to its last lines (where the reason is).
fn describe(err: &ProgramError) -> String {
    match err {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            let log = verifier_log.to_string();
            let tail: Vec<&str> = log.lines().rev().take(3).collect();
            format!(
                "load failed: {io_error} (verifier: {})",
                tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
            )
        }
        other => {
            let mut msg = other.to_string();
            let mut source = std::error::Error::source(other);
            while let Some(s) = source {
                msg.push_str(&format!(": {s}"));
                source = s.source();
            }
            msg
        }
    }
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; lift it when we
/// may. Newer kernels use memory cgroups and ignore it.
fn raise_memlock_limit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain setrlimit with a valid struct.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) };
    if rc != 0 && !capabilities::has_sys_resource() {
        tracing::debug!(
            "could not lift RLIMIT_MEMLOCK (no CAP_SYS_RESOURCE); fine on kernels ≥ 5.11"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::{AttachError, needs_tracefs, perf_pages_per_cpu, resolve_tracepoint_fields};
    use crate::{
        config::{Config, SyscallHook},
        probes::capabilities::Capabilities,
        signals,
    };

    #[test]
    fn tracefs_is_needed_by_optional_signals_and_a_required_one_on_tracepoints() {
        let mut caps = Capabilities {
            kernel_release: "6.18.0".into(),
            kernel_version: Some((6, 18, 0)),
            btf: true,
            raw_tracepoint: true,
            tracepoint: true,
            xdp: true,
            tc: true,
            kprobes: false,
            fentry: false,
            ringbuf_map: true,
            tracefs_mounted: true,
            bpffs_mounted: false,
            bpf_stats_enabled: false,
            missing_caps: Vec::new(),
        };
        let mut config = Config::default();
        let syscalls = &signals::syscalls::SIGNAL;
        assert!(!needs_tracefs(syscalls, &config, &caps));
        assert!(needs_tracefs(&signals::block::SIGNAL, &config, &caps));
        assert!(!needs_tracefs(&signals::packets::SIGNAL, &config, &caps));
        config.syscalls.hook = SyscallHook::Tracepoint;
        assert!(needs_tracefs(syscalls, &config, &caps));
        config.syscalls.hook = SyscallHook::Auto;
        caps.raw_tracepoint = false;
        assert!(needs_tracefs(syscalls, &config, &caps));
    }

    #[test]
    fn a_global_listed_twice_is_resolved_once_and_checked_on_the_other_hook() {
        let fields = [
            ("TP_WAKEUP_PID", "sched", "sched_wakeup", "pid"),
            ("TP_WAKEUP_PID", "sched", "sched_wakeup_new", "pid"),
            ("TP_A", "c", "a", "x"),
            ("TP_A", "c", "a", "x"),
        ];
        let agree = |_: &str, _: &str, _: &str| Some(24);
        let (offsets, misplaced) = resolve_tracepoint_fields(fields.iter(), agree);
        assert_eq!(offsets, [("TP_WAKEUP_PID", Some(24)), ("TP_A", Some(24))]);
        assert!(misplaced.is_empty());
        let apart =
            |_: &str, tp: &str, _: &str| Some(if tp == "sched_wakeup_new" { 32 } else { 24 });
        let (offsets, misplaced) = resolve_tracepoint_fields(fields.iter(), apart);
        assert_eq!(offsets[0], ("TP_WAKEUP_PID", Some(24)));
        assert_eq!(misplaced, [("TP_WAKEUP_PID", "sched", "sched_wakeup_new")]);
    }

    #[test]
    fn attach_errors_name_what_failed() {
        assert_eq!(
            AttachError::Unresolved("TP_BLK_ISSUE_DEV").to_string(),
            "TP_BLK_ISSUE_DEV could not be resolved on this kernel"
        );
        assert_eq!(
            AttachError::MissingProgram("sonde_tc_egress".into()).to_string(),
            "program sonde_tc_egress missing from the eBPF object"
        );
    }

    #[test]
    fn perf_buffers_share_the_ring_size_in_powers_of_two_of_pages() {
        assert_eq!(perf_pages_per_cpu(256 * 1024, 2, 4096), 32);
        assert_eq!(perf_pages_per_cpu(256 * 1024, 3, 4096), 16); // 21 → 16
        assert_eq!(perf_pages_per_cpu(256 * 1024, 64, 4096), 1);
        assert_eq!(perf_pages_per_cpu(4096, 2, 4096), 1);
        assert_eq!(perf_pages_per_cpu(4096, 0, 4096), 1);
    }
}
