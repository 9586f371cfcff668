//! Kernel signals, one module each, holding everything the agent knows of
//! one: its tier options (with the tracepoint fields their programs
//! read), how it is turned on, the maps it reads (its collector) and the
//! metric families it exports. The loader, the collector and the
//! exposition iterate over [`ALL`]; adding a signal means adding a file
//! in this directory exporting a `SIGNAL`, nothing else here: agent/build.rs
//! declares every `signals/*.rs` as a module and lists its `SIGNAL` in
//! [`ALL`] (by file name, the order the loader attaches them).
//!
//! A signal in several files is a directory with a mod.rs.
//!
//! Every kernel signal is in this shape (block I/O, listen-queue
//! overflows, packet drops, handshakes, packets, processes, run-queue
//! latency, syscalls, TCP); the loader, collector and exposition keep only
//! what the signals share: the config map, the diagnostic counters, the
//! event rings and enforce mode's blocklist.

use std::{any::Any, fmt, sync::Arc};

use aya::{
    Ebpf,
    maps::{Map, MapError},
};
use prometheus::proto::MetricFamily;
use thiserror::Error;

use crate::{config::Config, probes::tiers};

// `pub mod <file>;` for every signals/<file>.rs, and
// `pub const ALL: &[&Signal]` listing their `SIGNAL`s.
include!(concat!(env!("OUT_DIR"), "/signals.rs"));

/// A classic tracepoint field a program reads, resolved from this kernel's
/// format file into a global of the object: (global, category,
/// tracepoint, field).
pub type TracepointField = (&'static str, &'static str, &'static str, &'static str);

/// A kernel struct member's offset a program reads, resolved from this
/// kernel's BTF into a global of the object: (global, struct, member
/// names tried in turn). Globals end in `_OFFSET`.
pub type BtfField = (&'static str, &'static str, &'static [&'static str]);

/// The value of a name in a tracepoint field's `__print_symbolic` table
/// (an enum such as `skb_drop_reason`, whose values move between
/// kernels), resolved from this kernel's format file into a global of the
/// object: (global, category, tracepoint, field, name).
pub type TracepointSymbol = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
);

/// A global of the object whose value the agent knows before loading it,
/// from nothing of the kernel's tracepoints or BTF (a syscall number of
/// this architecture): (global, value).
pub type Constant = (&'static str, fn() -> u32);

/// How a signal takes its maps from the loaded object.
pub type Open = fn(&mut Ebpf, &Config) -> Result<Box<dyn Source>, OpenError>;

/// A map whose size the configuration sets before the object is loaded:
/// (map, entries).
pub type MapSize = (&'static str, fn(&Config) -> u32);

/// The maps of every signal sized by the configuration (most keep the
/// size their kernel module declares, and have none here).
pub const MAP_SIZES: &[&[MapSize]] = &[packets::MAP_SIZES];

/// One kernel signal, as the loader, collector and exposition see it.
pub struct Signal {
    /// Its tier options (the name is the signal's, as attachments and
    /// logs report it).
    pub tiers: &'static tiers::Signal,
    /// The tracepoint fields its programs read; a program whose fields
    /// are not all resolved is not attached.
    pub tracepoint_fields: &'static [TracepointField],
    /// The struct member offsets its programs read, from BTF.
    pub btf_fields: &'static [BtfField],
    /// The enum values its programs compare with, from tracepoint formats.
    pub symbols: &'static [TracepointSymbol],
    /// Globals its programs read that the agent sets from what it knows.
    pub constants: &'static [Constant],
    /// Whether the configuration turns it on (its programs attached).
    pub enabled: fn(&Config) -> bool,
    /// The tier the configuration forces, if any.
    pub forced_tier: fn(&Config) -> Option<&str>,
    /// What the collector reads, for its log line on failure ("reading
    /// {reads}: …").
    pub reads: &'static str,
    /// Takes its maps from the loaded object (always, even when off: its
    /// families then stay empty), with what it needs of the running
    /// kernel when the configuration turns it on.
    pub open: Open,
}

impl Signal {
    pub fn name(&self) -> &'static str {
        self.tiers.name
    }

    /// Whether its programs attach to each accounted network interface
    /// (the loader's interface machinery) rather than once.
    pub fn per_interface(&self) -> bool {
        self.tiers
            .tiers
            .iter()
            .flat_map(|t| t.programs)
            .any(|p| p.hook.per_interface())
    }
}

impl fmt::Debug for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signal")
            .field("name", &self.name())
            .finish_non_exhaustive()
    }
}

/// A signal's maps, read once per collector cycle.
pub trait Source: Send {
    /// What the maps hold now; on a read error, what was read before it
    /// and the error.
    fn collect(&self) -> (Arc<dyn Reading>, Option<MapError>);
    /// Every few cycles: removes what the maps keep of things gone (the
    /// collector's garbage collection).
    fn remove_stale(&mut self) {}
    /// At start and whenever runtime settings change (SIGHUP, the MAPE-K
    /// loop's overlay): takes the settings it keeps (in user space or in
    /// its own maps) and returns the slots of the programs' shared config
    /// map (agent-common's `CFG_*`) to set, with their values.
    fn reconfigure(&mut self, _config: &Config) -> Result<Vec<(u32, u64)>, OpenError> {
        Ok(Vec::new())
    }
    /// Every cycle, before `collect`, with the diagnostic counters just
    /// read: moves on what the source keeps between cycles (a flow
    /// table's per-peer deltas, its idle entries), and returns the config
    /// slots whose values follow what it measured (drops' sampling period),
    /// with their values, when they change.
    fn advance(&mut self, _counters: &[u64]) -> Result<Vec<(u32, u64)>, MapError> {
        Ok(Vec::new())
    }
    /// A network interface is now accounted (its programs attached).
    fn interface_added(&mut self, _ifindex: u32, _name: &str) {}
    /// A network interface went away: forgets what is kept of it (an
    /// ifindex can be reused by a new interface).
    fn interface_removed(&mut self, _ifindex: u32) {}
}

/// A signal's part of a collector snapshot. Its concrete type is the
/// signal module's (`Any`), so a reader below the exposition (MAPE-K) can
/// ask a snapshot for it typed.
pub trait Reading: Any + fmt::Debug + Send + Sync {
    /// Its metric families.
    fn families(&self, out: &mut Vec<MetricFamily>);
    /// For `sonde_data_completeness_ratio`: the observations counted, and the
    /// diagnostic counter slot of those lost (a full map), if the signal
    /// can lose any.
    fn completeness(&self) -> Option<(u64, u32)> {
        None
    }
    /// The `signal` label of that ratio, when not the signal's name.
    fn completeness_signal(&self) -> Option<&'static str> {
        None
    }
}

/// Why a signal's maps could not be taken from the object (or, when
/// reconfiguring, written).
#[derive(Debug, Error)]
pub enum OpenError {
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error("map {0} is missing from the eBPF object")]
    MissingMap(&'static str),
}

/// Takes one map from the object, typed.
pub fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, OpenError>
where
    T: TryFrom<Map, Error = MapError>,
{
    let map = ebpf.take_map(name).ok_or(OpenError::MissingMap(name))?;
    T::try_from(map).map_err(|source| OpenError::Map { name, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_signal_is_well_formed() {
        let mut names: Vec<&str> = ALL.iter().map(|s| s.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ALL.len(), "signal names are unique");
        for signal in ALL {
            tiers::assert_well_formed(signal.tiers);
            // Every global a program needs is one the signal resolves.
            for tier in signal.tiers.tiers {
                for program in tier.programs {
                    for need in program.needs {
                        assert!(
                            signal.btf_fields.iter().any(|f| f.0 == *need)
                                || signal.tracepoint_fields.iter().any(|f| f.0 == *need)
                                || signal.symbols.iter().any(|f| f.0 == *need),
                            "{}: {} needs {need}, which it does not resolve",
                            signal.name(),
                            program.program
                        );
                    }
                }
            }
            for (global, ..) in signal.btf_fields {
                assert!(global.ends_with("_OFFSET"), "{}: {global}", signal.name());
            }
        }
    }
}
