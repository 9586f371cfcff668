//! Collectors: read the kernel's per-CPU maps on a fixed interval, sum the
//! CPUs, and publish one immutable [`Snapshot`] that /metrics, health and
//! status read. Kernel-side counters only grow, so totals are exported as
//! they are.
//!
//! The collector runs on its own thread (map reads are blocking syscalls) and
//! owns the maps; runtime reconfiguration (SIGHUP) reaches it as a message.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    sync::{
        Arc, RwLock,
        atomic::Ordering,
        mpsc::{self, Receiver, RecvTimeoutError, Sender},
    },
    thread,
    time::{Duration, Instant, SystemTime},
};

use agent_common::{
    config::CFG_BLOCKLIST_ACTIVE,
    counters::{COUNTER_SLOTS, COUNTERS_LEN},
    events::RINGS,
    merge::Merge,
    net::{BlocklistEntry, BlocklistKey, BlocklistStats},
};
use aya::maps::MapError;
use tracing::{debug, warn};

use crate::{
    config::{Config, overlay::Overlay},
    events::RingState,
    probes::{KernelMaps, loader::apply_runtime_config},
    signals::Reading,
    tasks::{Role, Task, Tasks},
    time::{monotonic_ns, unix_seconds},
};

#[derive(Debug, Clone, Copy, Default)]
pub struct RingCounters {
    pub produced: u64,
    pub lost: u64,
    /// Read before `produced` and `lost`, so `received + lost ≤ produced`
    /// always holds in a snapshot, with equality once the ring is quiet.
    pub received: u64,
}

/// Per-program kernel statistics (only non-zero with bpf_stats on).
#[derive(Debug, Clone)]
pub struct ProgramStats {
    pub name: String,
    pub run_count: u64,
    pub run_time_ns: u64,
    /// Runs the kernel skipped (see `recursion_misses`).
    pub missed_runs: u64,
}

/// Everything read from the kernel in one cycle.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// When this snapshot was taken (None: not yet).
    pub taken_at: Option<Instant>,
    pub duration: Duration,
    /// Diagnostic counters, indexed like `COUNTERS`.
    pub counters: Vec<u64>,
    /// By ring label.
    pub rings: BTreeMap<&'static str, RingCounters>,
    pub programs: Vec<ProgramStats>,
    /// Each signal's reading (signals::ALL), by signal name.
    pub signals: Vec<(&'static str, Arc<dyn Reading>)>,
    /// Enforce mode's blocked sources, with what each entry dropped.
    pub blocklist: Vec<(IpAddr, BlocklistEntry)>,
    /// Everything the blocklist ever dropped, summed over CPUs.
    pub blocked: BlocklistStats,
}

impl Snapshot {
    /// Seconds from `prev` to this snapshot, for per-second rates; None
    /// unless both were taken and this one is later.
    pub fn seconds_since(&self, prev: &Snapshot) -> Option<f64> {
        let dt = self
            .taken_at?
            .checked_duration_since(prev.taken_at?)?
            .as_secs_f64();
        (dt > 0.0).then_some(dt)
    }
}

impl Snapshot {
    pub fn counter(&self, slot: u32) -> u64 {
        self.counters.get(slot as usize).copied().unwrap_or(0)
    }

    /// A signal's reading, by its type (e.g. `signals::drops::Drops`);
    /// None when the snapshot has none (taken without kernel maps).
    pub fn reading<R: Reading>(&self) -> Option<&R> {
        self.signals.iter().find_map(|(_, reading)| {
            let any: &dyn std::any::Any = reading.as_ref();
            any.downcast_ref::<R>()
        })
    }
}

pub type SharedSnapshot = Arc<RwLock<Arc<Snapshot>>>;

pub enum Command {
    /// Re-apply runtime settings (SIGHUP).
    Reconfigure(Box<Config>),
    /// The MAPE-K loop's changes on top of them (zoom, cost ladder).
    Adjust(Overlay),
    /// An interface is now accounted: (ifindex, name).
    InterfaceAdded(u32, String),
    /// An interface went away: drop its counters.
    ForgetInterface(u32),
    /// Stop the loop (the agent is exiting).
    Shutdown,
}

/// Handle to the collector thread.
pub struct CollectorHandle {
    pub snapshot: SharedSnapshot,
    /// Signalled each time a new snapshot is published: the MAPE-K loop
    /// analyses it at once rather than on a tick of its own, which could
    /// trail the collection by up to a whole interval (a second's lag on
    /// every detection).
    pub published: Arc<tokio::sync::Notify>,
    commands: Sender<Command>,
    thread: Option<thread::JoinHandle<()>>,
}

impl CollectorHandle {
    pub fn reconfigure(&self, config: Config) {
        let _ = self.commands.send(Command::Reconfigure(Box::new(config)));
    }

    pub fn adjust(&self, overlay: Overlay) {
        let _ = self.commands.send(Command::Adjust(overlay));
    }

    pub fn interface_added(&self, ifindex: u32, name: &str) {
        let _ = self
            .commands
            .send(Command::InterfaceAdded(ifindex, name.to_owned()));
    }

    pub fn forget_interface(&self, ifindex: u32) {
        let _ = self.commands.send(Command::ForgetInterface(ifindex));
    }

    pub fn is_alive(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }
}

impl Drop for CollectorHandle {
    fn drop(&mut self) {
        let _ = self.commands.send(Command::Shutdown);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

pub struct Collector {
    maps: KernelMaps,
    interval: Duration,
    program_ids: Vec<(String, u32)>,
    rings: Vec<Arc<RingState>>,
    cycles: u64,
    /// Runtime settings as configured (start, SIGHUP) and the MAPE-K
    /// loop's changes on top; the kernel programs get the combination.
    configured: Config,
    overlay: Overlay,
    /// Blocks written to the kernel blocklist, with the deadline (Unix
    /// seconds) each was written for.
    blocklist_written: HashMap<IpAddr, f64>,
    /// Whether `CFG_BLOCKLIST_ACTIVE` is on.
    blocklist_active: bool,
}

impl Collector {
    /// Writes the configured settings, with the loop's overlay, into the
    /// kernel programs' config maps.
    fn apply_runtime(&mut self) {
        let config = self.overlay.apply(&self.configured);
        match apply_runtime_config(&mut self.maps, &config) {
            Ok(()) => tracing::info!("runtime settings applied to the kernel programs"),
            Err(err) => warn!("applying runtime settings failed: {err}"),
        }
        self.reconcile_blocklist();
    }

    /// Keeps the kernel blocklist equal to the overlay's unexpired blocks:
    /// adds new ones, re-times extended ones (keeping their counters), and
    /// removes lifted and expired ones, so an expired block is swept even if
    /// the MAPE-K loop stopped. `CFG_BLOCKLIST_ACTIVE` goes on after the
    /// first entry is written and off before the last is removed.
    fn reconcile_blocklist(&mut self) {
        if self.overlay.blocked.is_empty() && self.blocklist_written.is_empty() {
            return;
        }
        let now_unix = unix_seconds(SystemTime::now());
        let now_ns = monotonic_ns();
        let wanted: HashMap<IpAddr, f64> = self
            .overlay
            .blocked
            .iter()
            .filter(|(_, until)| **until > now_unix)
            .map(|(peer, until)| (*peer, *until))
            .collect();
        for (&peer, &until) in &wanted {
            if self.blocklist_written.get(&peer) == Some(&until) {
                continue;
            }
            let key = BlocklistKey::from(peer);
            // An extension keeps what the entry counted so far.
            let kept = self.maps.blocklist.get(&key, 0).unwrap_or_default();
            let entry = BlocklistEntry {
                expires_ns: now_ns + ((until - now_unix) * 1e9) as u64,
                packets: kept.packets,
                bytes: kept.bytes,
            };
            match self.maps.blocklist.insert(key, entry, 0) {
                Ok(()) => {
                    self.blocklist_written.insert(peer, until);
                }
                Err(err) => warn!("blocking {peer} in the kernel failed: {err}"),
            }
        }
        let any = wanted
            .keys()
            .any(|peer| self.blocklist_written.contains_key(peer));
        if any != self.blocklist_active {
            match self
                .maps
                .config
                .set(CFG_BLOCKLIST_ACTIVE, u64::from(any), 0)
            {
                Ok(()) => self.blocklist_active = any,
                Err(err) => warn!("switching the blocklist on or off failed: {err}"),
            }
        }
        let stale: Vec<IpAddr> = self
            .blocklist_written
            .keys()
            .filter(|peer| !wanted.contains_key(peer))
            .copied()
            .collect();
        for peer in stale {
            match self.maps.blocklist.remove(&BlocklistKey::from(peer)) {
                Ok(()) => {
                    self.blocklist_written.remove(&peer);
                }
                Err(MapError::SyscallError(e))
                    if e.io_error.raw_os_error() == Some(libc::ENOENT) =>
                {
                    self.blocklist_written.remove(&peer);
                }
                Err(err) => warn!("unblocking {peer} in the kernel failed: {err}"),
            }
        }
    }

    fn read_blocklist(&self, snapshot: &mut Snapshot) -> Result<(), MapError> {
        snapshot.blocked = BlocklistStats::sum(self.maps.blocklist_stats.get(&0, 0)?.iter());
        if self.blocklist_written.is_empty() {
            return Ok(());
        }
        for entry in self.maps.blocklist.iter() {
            let (key, entry) = entry?;
            if let Some(peer) = key.ip() {
                snapshot.blocklist.push((peer, entry));
            }
        }
        snapshot.blocklist.sort_by_key(|(peer, _)| *peer);
        Ok(())
    }
}

/// Collection cycles between the signals' sweeps of what is gone
/// ([`crate::signals::Source::remove_stale`]).
const GC_EVERY: u64 = 60;

impl Collector {
    pub fn new(
        maps: KernelMaps,
        config: &Config,
        program_ids: Vec<(String, u32)>,
        rings: Vec<Arc<RingState>>,
    ) -> Self {
        Self {
            rings,
            configured: config.clone(),
            overlay: Default::default(),
            blocklist_written: HashMap::new(),
            blocklist_active: false,
            cycles: 0,
            maps,
            interval: Duration::from_millis(config.collector.interval_ms),
            program_ids,
        }
    }

    /// Starts the collection loop on its own thread; the first snapshot is
    /// taken before this returns, so metrics are never empty once ready.
    ///
    /// The loop is the supervised task `collector` (liveness): it beats
    /// every time round, and a panic restarts it in place (the maps and
    /// state survive) within the restart budget of [`Tasks`].
    pub fn spawn(mut self, tasks: Arc<Tasks>) -> std::io::Result<CollectorHandle> {
        let first = self.collect();
        let snapshot: SharedSnapshot = Arc::new(RwLock::new(Arc::new(first)));
        let (commands, receiver) = mpsc::channel();
        let shared = snapshot.clone();
        let published = Arc::new(tokio::sync::Notify::new());
        let notify = published.clone();
        // Three missed collections (the readiness check's limit) and a
        // second of slack.
        let task = tasks.register(
            "collector",
            Role::Liveness,
            self.interval * 3 + Duration::from_secs(1),
        );
        let thread = thread::Builder::new()
            .name("sonde-collector".into())
            .spawn(move || {
                tasks.run_restarting(&task, || self.run(&shared, &notify, &receiver, &task));
            })?;
        Ok(CollectorHandle {
            snapshot,
            published,
            commands,
            thread: Some(thread),
        })
    }

    fn run(
        &mut self,
        shared: &SharedSnapshot,
        published: &tokio::sync::Notify,
        commands: &Receiver<Command>,
        task: &Task,
    ) {
        let mut next = Instant::now() + self.interval;
        // systemd's watchdog is fed from here: a stuck collector is a
        // stuck agent, and the service manager restarts it.
        let mut watchdog = crate::notify::Watchdog::from_env();
        loop {
            task.beat();
            watchdog.tick();
            let wake = watchdog.due().map_or(next, |due| due.min(next));
            match commands.recv_timeout(wake.saturating_duration_since(Instant::now())) {
                Ok(Command::Reconfigure(config)) => {
                    self.configured = *config;
                    self.apply_runtime();
                    continue;
                }
                Ok(Command::Adjust(overlay)) => {
                    self.overlay = overlay;
                    self.apply_runtime();
                    continue;
                }
                Ok(Command::InterfaceAdded(ifindex, name)) => {
                    for (_, source) in &mut self.maps.signals {
                        source.interface_added(ifindex, &name);
                    }
                    continue;
                }
                Ok(Command::ForgetInterface(ifindex)) => {
                    self.forget_interface(ifindex);
                    continue;
                }
                Ok(Command::Shutdown) | Err(RecvTimeoutError::Disconnected) => return,
                Err(RecvTimeoutError::Timeout) => {}
            }
            if Instant::now() < next {
                continue;
            }
            let snapshot = self.collect();
            *shared.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(snapshot);
            // One waiter (the MAPE-K loop); a permit is kept if it is busy.
            published.notify_one();
            next += self.interval;
            let now = Instant::now();
            if next < now {
                // We fell behind (a very large flow table?): skip, don't burst.
                next = now + self.interval;
            }
        }
    }

    /// Reads every map once. Read errors of one map are logged and leave
    /// that part of the snapshot empty; they never stop the loop.
    pub fn collect(&mut self) -> Snapshot {
        let started = Instant::now();
        let mut snapshot = Snapshot {
            taken_at: Some(started),
            ..Default::default()
        };
        self.cycles += 1;
        if self.cycles.is_multiple_of(GC_EVERY) {
            for (_, source) in &mut self.maps.signals {
                source.remove_stale();
            }
            // What anything freed since the last sweep (churn's
            // interfaces, cgroups and series gone, a storm's per-process
            // counts) goes back to the system here; only a flood's flows
            // are given back at once. In a soak hour without it, the
            // 1.3 MiB its first quarter hour of churn freed stayed
            // resident until a flood's flows left and trimmed it.
            crate::heap::give_back();
        }
        snapshot.counters = (0..COUNTERS_LEN)
            .map(|i| {
                self.maps
                    .counters
                    .get(&i, 0)
                    .map(|v| u64::sum(v.iter()))
                    .unwrap_or(0)
            })
            .collect();
        for &(id, _, label) in RINGS {
            let received = self
                .rings
                .iter()
                .find(|r| r.label == label)
                .map(|r| r.received.load(Ordering::Acquire))
                .unwrap_or(0);
            let mut counters = RingCounters {
                received,
                ..Default::default()
            };
            if let Ok(values) = self.maps.ring_stats.get(&id, 0) {
                for cpu in values.iter() {
                    counters.produced += cpu.produced;
                    counters.lost += cpu.lost;
                }
            }
            snapshot.rings.insert(label, counters);
        }
        for (signal, source) in &mut self.maps.signals {
            match source.advance(&snapshot.counters) {
                Ok(settings) => {
                    for (index, value) in settings {
                        if let Err(err) = self.maps.config.set(index, value, 0) {
                            warn!("setting config slot {index} for {}: {err}", signal.reads);
                        }
                    }
                }
                Err(err) => warn!("reading {}: {err}", signal.reads),
            }
            let (reading, error) = source.collect();
            if let Some(err) = error {
                warn!("reading {}: {err}", signal.reads);
            }
            snapshot.signals.push((signal.name(), reading));
        }
        self.reconcile_blocklist();
        if let Err(err) = self.read_blocklist(&mut snapshot) {
            warn!("reading the blocklist: {err}");
        }
        snapshot.programs = self.read_program_stats();
        snapshot.duration = started.elapsed();
        debug!(duration = ?snapshot.duration, "collected");
        snapshot
    }

    /// An interface went away: each signal forgets what it keeps of it.
    fn forget_interface(&mut self, ifindex: u32) {
        for (_, source) in &mut self.maps.signals {
            source.interface_removed(ifindex);
        }
    }

    fn read_program_stats(&self) -> Vec<ProgramStats> {
        let ids: HashMap<u32, &str> = self
            .program_ids
            .iter()
            .map(|(name, id)| (*id, name.as_str()))
            .collect();
        aya::programs::loaded_programs()
            .filter_map(Result::ok)
            .filter_map(|info| {
                ids.get(&info.id()).map(|name| ProgramStats {
                    name: (*name).to_owned(),
                    run_count: info.run_count(),
                    run_time_ns: info.run_time().as_nanos() as u64,
                    missed_runs: recursion_misses(&info).unwrap_or(0),
                })
            })
            .collect()
    }
}

/// Runs of the program the kernel skipped because the CPU was already
/// running a BPF program (its recursion guard: a kprobe or tracepoint
/// program inside another, or an fentry program inside itself). Whatever
/// that run would have counted is missing, so it is exported rather than
/// lost silently. The kernel counts these for fentry/fexit and raw
/// tracepoints since 5.12/6.0-ish and for kprobes and tracepoints since 6.7;
/// older kernels report 0. Read with BPF_OBJ_GET_INFO_BY_FD, as aya's
/// `ProgramInfo` does not expose the field.
fn recursion_misses(info: &aya::programs::ProgramInfo) -> Option<u64> {
    use std::os::fd::{AsFd as _, AsRawFd as _};
    let fd = info.fd().ok()?;
    // SAFETY: a plain C struct of integers, all-zero is its empty value
    // (and what the kernel expects in fields it does not fill).
    let mut prog_info: aya_obj::generated::bpf_prog_info = unsafe { std::mem::zeroed() };
    // BPF_OBJ_GET_INFO_BY_FD's part of `union bpf_attr`.
    #[repr(C)]
    struct InfoByFd {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    let mut attr = InfoByFd {
        bpf_fd: fd.as_fd().as_raw_fd() as u32,
        info_len: size_of::<aya_obj::generated::bpf_prog_info>() as u32,
        info: std::ptr::from_mut(&mut prog_info) as u64,
    };
    // SAFETY: `attr` points at a bpf_prog_info of the length it gives; the
    // kernel writes at most that much.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            aya_obj::generated::bpf_cmd::BPF_OBJ_GET_INFO_BY_FD as libc::c_int,
            std::ptr::from_mut(&mut attr),
            size_of::<InfoByFd>() as u32,
        )
    };
    (ret == 0).then_some(prog_info.recursion_misses)
}

/// Label of a diagnostic counter slot, for metrics.
pub fn counter_slots() -> &'static [(u32, &'static str, agent_common::counters::CounterKind)] {
    COUNTER_SLOTS
}
