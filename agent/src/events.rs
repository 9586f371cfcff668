//! Event reader: one thread for every ring, woken through epoll, draining
//! every event, counting what it received, and keeping a bounded list of
//! recent events (raw, decoded on request) for /api/v1/events. A "ring" is
//! a BPF ring buffer, or on kernels before 5.8 a perf event array's per-CPU
//! buffers (`EventSource`). Loss is counted by the kernel programs
//! (`RING_STATS`) on either; here we count receipt, so
//! `received + lost == produced`.

use std::{
    collections::VecDeque,
    os::fd::AsRawFd,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use agent_common::{
    events::{
        EVENT_NEW_FLOW, EVENT_PROCESS_EXEC, EVENT_PROCESS_EXIT, EVENT_SLOW_SYSCALL, EventHeader,
        FlowEvent, ProcessExecEvent, ProcessExitEvent, ProcessInfo, SlowSyscallEvent,
    },
    net::{FAMILY_IPV4, direction_name, protocol_name},
};
use aya::maps::{
    MapData, RingBuf,
    perf::{PerfEvent, PerfEventArrayBuffer},
};
use serde::Serialize;
use tracing::{debug, warn};

use crate::{
    syscall_table,
    tasks::{Role, Task, Tasks},
    time::{monotonic_ns, now_ms, unix_seconds},
};

/// What one reader has done, shared with metrics and health.
#[derive(Debug)]
pub struct RingState {
    pub label: &'static str,
    pub received: AtomicU64,
    /// Events that could not be decoded (unknown kind or short record).
    pub decode_errors: AtomicU64,
    /// Unix ms of the last time the reader drained the ring.
    pub last_drain_ms: AtomicU64,
    /// Unix ms until which the reader is stalled (fault injection).
    pub stall_until_ms: AtomicU64,
}

impl RingState {
    fn new(label: &'static str) -> Self {
        Self {
            label,
            received: AtomicU64::new(0),
            decode_errors: AtomicU64::new(0),
            last_drain_ms: AtomicU64::new(now_ms()),
            stall_until_ms: AtomicU64::new(0),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EventRecord {
    SlowSyscall {
        time: f64,
        pid: u32,
        tid: u32,
        comm: String,
        cgroup_id: u64,
        syscall: String,
        syscall_id: u32,
        latency_ns: u64,
        ret: i64,
    },
    ProcessExec {
        time: f64,
        pid: u32,
        ppid: u32,
        cgroup_id: u64,
        comm: String,
        filename: String,
    },
    ProcessExit {
        time: f64,
        pid: u32,
        ppid: u32,
        cgroup_id: u64,
        comm: String,
        exit_code: u32,
    },
    NewFlow {
        time: f64,
        ifindex: u32,
        direction: &'static str,
        protocol: String,
        src: String,
        dst: String,
        src_port: u16,
        dst_port: u16,
        bytes: u32,
    },
}

/// An event as it left the kernel: decoded only when someone asks for it
/// (/api/v1/events), so the reader's per-event work is one bounds check and
/// one copy into a reused buffer.
#[derive(Debug, Clone)]
struct RawEvent(Vec<u8>);

/// Recent events and per-ring state.
#[derive(Debug)]
pub struct Events {
    pub rings: Vec<Arc<RingState>>,
    /// How the events arrive: "ring buffer" or "perf event arrays (…)".
    pub transport: &'static str,
    recent: Mutex<VecDeque<RawEvent>>,
    keep: usize,
    /// Process churn per parent since the last [`Events::take_churn`].
    churn: Mutex<std::collections::HashMap<u32, Churn>>,
}

/// Children a parent started (exec) or lost (exit) in a window: who is
/// behind a fork storm.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Churn {
    pub events: u64,
    /// The cgroup of the latest child.
    pub cgroup_id: u64,
}

/// Parents tracked per window; a storm from more parents than this is
/// still counted, just not attributed beyond them.
const MAX_CHURN_PARENTS: usize = 4096;

impl Events {
    /// The newest events, oldest first, decoded now.
    pub fn recent(&self) -> Vec<EventRecord> {
        let raw: Vec<RawEvent> = self
            .recent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect();
        let clock = WallClock::now();
        raw.iter().filter_map(|e| decode(&e.0, &clock)).collect()
    }

    /// Process churn per parent since the last call, busiest first.
    pub fn take_churn(&self) -> Vec<(u32, Churn)> {
        let taken = std::mem::take(&mut *self.churn.lock().unwrap_or_else(|e| e.into_inner()));
        let mut v: Vec<(u32, Churn)> = taken.into_iter().collect();
        v.sort_by(|a, b| b.1.events.cmp(&a.1.events).then(a.0.cmp(&b.0)));
        v
    }

    pub fn ring(&self, label: &str) -> Option<&Arc<RingState>> {
        self.rings.iter().find(|r| r.label == label)
    }
}

/// Keeps the newest `keep` events, reusing the buffers of the ones it
/// forgets (no allocation once full).
fn remember(recent: &mut VecDeque<RawEvent>, keep: usize, bytes: &[u8]) {
    let mut slot = if recent.len() >= keep {
        recent.pop_front().unwrap_or(RawEvent(Vec::new()))
    } else {
        RawEvent(Vec::with_capacity(bytes.len()))
    };
    slot.0.clear();
    slot.0.extend_from_slice(bytes);
    recent.push_back(slot);
}

/// The ring reader thread; stopped (and joined) on shutdown.
#[derive(Debug)]
pub struct RingReader {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl RingReader {
    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// Asks the thread to stop and waits for it (at most one poll timeout).
    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
    }
}

/// Longest a reader waits in poll(). The kernel programs only wake the
/// reader once a ring is 1/16 full (see `emit` in agent-ebpf), so this
/// also bounds how late a trickle of events is read.
const POLL_TIMEOUT_MS: i32 = 50;
/// Events drained per hold of the recent-events lock.
const DRAIN_CHUNK: usize = 1024;

/// Where one ring's events are read from.
pub enum EventSource {
    /// A BPF ring buffer (Linux 5.8 and later).
    Ring(RingBuf<MapData>),
    /// A perf event array's buffers, one per CPU (the fallback before 5.8).
    Perf(Vec<PerfEventArrayBuffer<MapData>>),
}

impl EventSource {
    fn fds(&self) -> Vec<std::os::fd::RawFd> {
        match self {
            EventSource::Ring(ring) => vec![ring.as_raw_fd()],
            EventSource::Perf(buffers) => buffers.iter().map(|b| b.as_raw_fd()).collect(),
        }
    }
}

/// Starts the reader: one thread for every ring. A dedicated thread, not a
/// runtime task: it must react to a filling ring however busy the HTTP
/// server, collector and MAPE-K loop keep the runtime's workers.
///
/// The thread is the supervised task `reader` (readiness): it beats at
/// every wake (at least every poll timeout), and a panic restarts its loop
/// within the restart budget of [`Tasks`].
pub fn spawn_readers(
    rings: Vec<(u32, &'static str, EventSource)>,
    transport: &'static str,
    keep: usize,
    tasks: Arc<Tasks>,
) -> std::io::Result<(Arc<Events>, RingReader)> {
    let events = Arc::new(Events {
        transport,
        rings: rings
            .iter()
            .map(|(_, label, _)| Arc::new(RingState::new(label)))
            .collect(),
        recent: Mutex::new(VecDeque::with_capacity(keep.min(4096))),
        keep: keep.max(1),
        churn: Mutex::new(std::collections::HashMap::new()),
    });
    let mut rings: Vec<EventSource> = rings.into_iter().map(|(_, _, ring)| ring).collect();
    let shared = events.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let stop_flag = stop.clone();
    // The poll timeout is 50 ms; 5 s without coming round (the backlog
    // check's limit) is a stuck reader.
    let task = tasks.register("reader", Role::Readiness, Duration::from_secs(5));
    let thread = std::thread::Builder::new()
        .name("ring-reader".into())
        .spawn(move || {
            tasks.run_restarting(&task, || {
                read_rings(&mut rings, &shared, &stop_flag, &task);
            });
        })?;
    debug!("ring reader started");
    Ok((events, RingReader { stop, thread }))
}

/// Waits on the rings with edge-triggered epoll: woken only when a kernel
/// program signals a ring (once it is 1/16 full, see `emit` in
/// agent-ebpf; a perf buffer signals every event) or after the poll
/// timeout. Level-triggered poll() returned at once whenever a single event
/// was unread, so a steady stream kept the reader spinning: measured under
/// overload, 204,000 poll() calls a second for ~6 events each, 46% of a
/// CPU, 28% of events lost, where a reader woken by the kernel's signal
/// lost 1% on 21%.
fn read_rings(rings: &mut [EventSource], events: &Events, stop: &AtomicBool, task: &Task) {
    // SAFETY: plain syscall; the fd is closed below.
    let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if epoll < 0 {
        warn!(
            "ring reader stopped: epoll_create1: {}",
            std::io::Error::last_os_error()
        );
        return;
    }
    // Closed however the loop ends (a panic restarts it with a new one).
    // SAFETY: a fresh fd that nothing else owns.
    let _owned = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(epoll) };
    let mut waited_on = 0;
    for (index, ring) in rings.iter().enumerate() {
        for fd in ring.fds() {
            let mut interest = libc::epoll_event {
                events: (libc::EPOLLIN | libc::EPOLLET) as u32,
                u64: index as u64,
            };
            // SAFETY: both fds are open; `interest` is a valid epoll_event.
            if unsafe { libc::epoll_ctl(epoll, libc::EPOLL_CTL_ADD, fd, &mut interest) } < 0 {
                warn!(
                    "ring reader: cannot wait on a ring: {}",
                    std::io::Error::last_os_error()
                );
            }
            waited_on += 1;
        }
    }
    let mut ready = vec![libc::epoll_event { events: 0, u64: 0 }; waited_on.max(1)];
    while !stop.load(Ordering::Relaxed) {
        task.beat();
        let now = now_ms();
        for (ring, state) in rings.iter_mut().zip(&events.rings) {
            // A stalled ring (fault injection) is not drained.
            if state.stall_until_ms.load(Ordering::Relaxed) > now {
                continue;
            }
            drain(ring, state, events);
        }
        // Everything was drained before waiting, so an edge can only come
        // from new data; one that came during the drain is still queued.
        // SAFETY: `ready` is a valid array of its length.
        let ret = unsafe {
            libc::epoll_wait(
                epoll,
                ready.as_mut_ptr(),
                ready.len() as libc::c_int,
                POLL_TIMEOUT_MS,
            )
        };
        if ret < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::Interrupted {
                warn!("ring reader stopped: {err}");
                break;
            }
        }
    }
}

/// What one drain took in, under one hold of the recent-events lock.
struct Intake<'a> {
    events: &'a Events,
    recent: std::sync::MutexGuard<'a, VecDeque<RawEvent>>,
    churn: Vec<(u32, u64)>,
    taken: usize,
    errors: u64,
}

impl<'a> Intake<'a> {
    fn new(events: &'a Events) -> Self {
        Self {
            events,
            recent: events.recent.lock().unwrap_or_else(|e| e.into_inner()),
            churn: Vec::new(),
            taken: 0,
            errors: 0,
        }
    }

    fn take(&mut self, bytes: &[u8]) {
        self.taken += 1;
        if well_formed(bytes) {
            if let Some(p) = process_parent(bytes) {
                self.churn.push(p);
            }
            remember(&mut self.recent, self.events.keep, bytes);
        } else {
            self.errors += 1;
        }
    }

    /// Releases the lock, records the churn; returns (taken, errors).
    fn finish(self) -> (usize, u64) {
        let Intake {
            events,
            recent,
            churn,
            taken,
            errors,
        } = self;
        drop(recent);
        if !churn.is_empty() {
            let mut by_parent = events.churn.lock().unwrap_or_else(|e| e.into_inner());
            for (ppid, cgroup_id) in churn {
                let full = by_parent.len() >= MAX_CHURN_PARENTS;
                if let Some(c) = by_parent.get_mut(&ppid) {
                    c.events += 1;
                    c.cgroup_id = cgroup_id;
                } else if !full {
                    by_parent.insert(
                        ppid,
                        Churn {
                            events: 1,
                            cgroup_id,
                        },
                    );
                }
            }
        }
        (taken, errors)
    }
}

/// Takes every event waiting in the ring (or in every CPU's perf buffer).
fn drain(ring: &mut EventSource, state: &RingState, events: &Events) {
    let (mut received, mut errors) = (0u64, 0u64);
    match ring {
        EventSource::Ring(ring) => loop {
            let mut intake = Intake::new(events);
            while intake.taken < DRAIN_CHUNK {
                let Some(item) = ring.next() else { break };
                intake.take(&item);
            }
            let (taken, bad) = intake.finish();
            received += taken as u64;
            errors += bad;
            if taken < DRAIN_CHUNK {
                break;
            }
        },
        EventSource::Perf(buffers) => {
            // A sample that wraps around the buffer's end comes in two
            // pieces; it is joined here.
            let mut joined = Vec::new();
            for buffer in buffers.iter_mut() {
                if !buffer.readable() {
                    continue;
                }
                let mut intake = Intake::new(events);
                buffer.for_each(|event| match event {
                    PerfEvent::Sample { head, tail: [] } => intake.take(head),
                    PerfEvent::Sample { head, tail } => {
                        joined.clear();
                        joined.extend_from_slice(head);
                        joined.extend_from_slice(tail);
                        intake.take(&joined);
                    }
                    // The programs count what bpf_perf_event_output could
                    // not write (RING_STATS); the kernel's own lost record
                    // counts the same samples again.
                    PerfEvent::Lost { .. } => {}
                });
                let (taken, bad) = intake.finish();
                received += taken as u64;
                errors += bad;
            }
        }
    }
    if received > 0 {
        state.received.fetch_add(received, Ordering::Relaxed);
    }
    if errors > 0 {
        state.decode_errors.fetch_add(errors, Ordering::Relaxed);
    }
    state.last_drain_ms.store(now_ms(), Ordering::Relaxed);
}

/// The parent pid and cgroup a process event names (churn).
pub type Parent = (u32, u64);

/// One record as it left the kernel, through every step the reader and
/// /api/v1/events take: the reader's check (`Err` for an unknown kind or
/// a record shorter than its struct, counted as a decode error), the
/// churn it records, and the decoded event.
pub fn decode_record(bytes: &[u8]) -> Result<(Option<Parent>, EventRecord), &'static str> {
    if !well_formed(bytes) {
        return Err("unknown kind or short record");
    }
    let churn = process_parent(bytes);
    let record = decode(bytes, &WallClock::now()).ok_or("undecodable record")?;
    Ok((churn, record))
}

/// (parent, cgroup) of a process exec or exit event.
fn process_parent(bytes: &[u8]) -> Option<(u32, u64)> {
    let header = read::<EventHeader>(bytes)?;
    if !matches!(header.kind, EVENT_PROCESS_EXEC | EVENT_PROCESS_EXIT) {
        return None;
    }
    let info = read::<ProcessInfo>(bytes)?;
    (info.ppid != 0).then_some((info.ppid, info.cgroup_id))
}

/// A known kind, long enough for its struct: what `decode` will accept.
fn well_formed(bytes: &[u8]) -> bool {
    let Some(header) = read::<EventHeader>(bytes) else {
        return false;
    };
    let needed = match header.kind {
        EVENT_SLOW_SYSCALL => size_of::<SlowSyscallEvent>(),
        EVENT_PROCESS_EXEC => size_of::<ProcessExecEvent>(),
        EVENT_PROCESS_EXIT => size_of::<ProcessExitEvent>(),
        EVENT_NEW_FLOW => size_of::<FlowEvent>(),
        _ => return false,
    };
    bytes.len() >= needed
}

/// Turns the kernel's CLOCK_MONOTONIC timestamps into wall-clock time.
struct WallClock {
    wall_s: f64,
    monotonic_ns: u64,
}

impl WallClock {
    fn now() -> Self {
        Self {
            wall_s: unix_seconds(SystemTime::now()),
            monotonic_ns: monotonic_ns(),
        }
    }

    fn at(&self, monotonic_ns: u64) -> f64 {
        let ago_ns = self.monotonic_ns.saturating_sub(monotonic_ns);
        self.wall_s - ago_ns as f64 / 1e9
    }
}

fn read<T: Copy>(bytes: &[u8]) -> Option<T> {
    (bytes.len() >= size_of::<T>())
        // SAFETY: length checked; T is a plain #[repr(C)] integer struct.
        .then(|| unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

fn decode(bytes: &[u8], clock: &WallClock) -> Option<EventRecord> {
    let header: EventHeader = read(bytes)?;
    let time = clock.at(header.ts_ns);
    match header.kind {
        EVENT_SLOW_SYSCALL => {
            let e: SlowSyscallEvent = read(bytes)?;
            Some(EventRecord::SlowSyscall {
                time,
                pid: e.pid,
                tid: e.tid,
                comm: c_string(&e.comm),
                cgroup_id: e.cgroup_id,
                syscall: syscall_table::name(e.syscall_id),
                syscall_id: e.syscall_id,
                latency_ns: e.latency_ns,
                ret: e.ret,
            })
        }
        EVENT_PROCESS_EXEC => {
            let e: ProcessExecEvent = read(bytes)?;
            Some(EventRecord::ProcessExec {
                time,
                pid: e.info.pid,
                ppid: e.info.ppid,
                cgroup_id: e.info.cgroup_id,
                comm: c_string(&e.info.comm),
                filename: c_string(&e.filename),
            })
        }
        EVENT_PROCESS_EXIT => {
            let e: ProcessExitEvent = read(bytes)?;
            Some(EventRecord::ProcessExit {
                time,
                pid: e.info.pid,
                ppid: e.info.ppid,
                cgroup_id: e.info.cgroup_id,
                comm: c_string(&e.info.comm),
                exit_code: e.exit_code,
            })
        }
        EVENT_NEW_FLOW => {
            let e: FlowEvent = read(bytes)?;
            let key = e.key;
            let addr = |a: [u8; 16]| {
                if key.family == FAMILY_IPV4 {
                    std::net::Ipv4Addr::new(a[0], a[1], a[2], a[3]).to_string()
                } else {
                    std::net::Ipv6Addr::from(a).to_string()
                }
            };
            Some(EventRecord::NewFlow {
                time,
                ifindex: key.ifindex,
                direction: direction_name(key.direction),
                protocol: protocol_name(key.family, key.protocol).to_owned(),
                src: addr(key.src_addr),
                dst: addr(key.dst_addr),
                src_port: key.src_port,
                dst_port: key.dst_port,
                bytes: e.bytes,
            })
        }
        _ => None,
    }
}

/// A NUL-terminated byte string from the kernel, as text.
pub fn c_string(bytes: &[u8]) -> String {
    let len = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..len]).into_owned()
}

#[cfg(test)]
mod tests {
    use agent_common::{
        events::{COMM_LEN, FILENAME_LEN},
        net::FlowKey,
    };

    use super::*;

    fn bytes_of<T: Copy>(value: &T) -> Vec<u8> {
        // SAFETY: T is a plain #[repr(C)] struct of integers and arrays.
        unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) }
            .to_vec()
    }

    fn header(kind: u32) -> EventHeader {
        EventHeader {
            kind,
            cpu: 1,
            ts_ns: monotonic_ns(),
        }
    }

    fn process(kind: u32) -> ProcessInfo {
        let mut comm = [0u8; COMM_LEN];
        comm[..4].copy_from_slice(b"true");
        ProcessInfo {
            header: header(kind),
            pid: 5000,
            ppid: 1,
            cgroup_id: 77,
            comm,
        }
    }

    fn exec() -> ProcessExecEvent {
        let mut filename = [0u8; FILENAME_LEN];
        filename[..13].copy_from_slice(b"/usr/bin/true");
        ProcessExecEvent {
            info: process(EVENT_PROCESS_EXEC),
            filename,
        }
    }

    #[test]
    fn decodes_every_kind() {
        let (parent, record) = decode_record(&bytes_of(&exec())).unwrap();
        assert_eq!(parent, Some((1, 77)));
        assert!(
            matches!(record, EventRecord::ProcessExec { pid: 5000, ref filename, .. } if filename == "/usr/bin/true")
        );
        let exit = ProcessExitEvent {
            info: process(EVENT_PROCESS_EXIT),
            exit_code: 256,
            _pad: 0,
        };
        let (parent, record) = decode_record(&bytes_of(&exit)).unwrap();
        assert_eq!(parent, Some((1, 77)));
        assert!(matches!(
            record,
            EventRecord::ProcessExit { pid: 5000, exit_code: 256, ref comm, .. } if comm == "true"
        ));

        let slow = SlowSyscallEvent {
            header: header(EVENT_SLOW_SYSCALL),
            pid: 1,
            tid: 2,
            cgroup_id: 3,
            syscall_id: 39,
            _pad: 0,
            latency_ns: 5,
            ret: -11,
            comm: [b'x'; COMM_LEN],
        };
        let (parent, record) = decode_record(&bytes_of(&slow)).unwrap();
        assert_eq!(parent, None);
        assert!(
            matches!(record, EventRecord::SlowSyscall { ret: -11, ref comm, .. } if comm == "xxxxxxxxxxxxxxxx")
        );

        let mut src_addr = [0u8; 16];
        src_addr[..4].copy_from_slice(&[127, 0, 0, 1]);
        // Zeroed first: FlowEvent ends in padding, which bytes_of reads.
        // SAFETY: all-zero bytes are a valid FlowEvent (integers only).
        let mut flow: FlowEvent = unsafe { std::mem::zeroed() };
        flow.header = header(EVENT_NEW_FLOW);
        flow.key = FlowKey {
            ifindex: 1,
            direction: 0,
            family: FAMILY_IPV4,
            protocol: 6,
            flags: 0,
            src_addr,
            dst_addr: src_addr,
            src_port: 40000,
            dst_port: 8080,
        };
        flow.bytes = 60;
        let (_, record) = decode_record(&bytes_of(&flow)).unwrap();
        assert!(
            matches!(record, EventRecord::NewFlow { ref src, dst_port: 8080, .. } if src == "127.0.0.1")
        );
    }

    /// Short, garbage and oversized records: an error or a decoded event,
    /// never a panic or a read past the record.
    #[test]
    fn short_garbage_and_oversized_records() {
        let full = bytes_of(&exec());
        for len in 0..full.len() {
            assert!(decode_record(&full[..len]).is_err(), "{len} bytes accepted");
        }
        let exit = bytes_of(&ProcessExitEvent {
            info: process(EVENT_PROCESS_EXIT),
            exit_code: 0,
            _pad: 0,
        });
        for len in 0..exit.len() {
            assert!(decode_record(&exit[..len]).is_err(), "{len} bytes accepted");
        }
        let mut unknown = bytes_of(&header(99));
        unknown.extend_from_slice(&[0xff; 200]);
        assert!(decode_record(&unknown).is_err());
        assert!(decode_record(&[0xff; 4096]).is_err());
        // Longer than its struct (a perf sample's padding): the struct is
        // read, the rest ignored.
        let mut oversized = full.clone();
        oversized.extend_from_slice(&[0xff; 64]);
        assert!(decode_record(&oversized).is_ok());
        // Names without a NUL and not UTF-8 are read lossily.
        let mut garbage = exec();
        garbage.info.comm = [0xff; COMM_LEN];
        garbage.filename = [0xc3; FILENAME_LEN];
        let (_, record) = decode_record(&bytes_of(&garbage)).unwrap();
        assert!(
            matches!(record, EventRecord::ProcessExec { ref comm, .. } if comm.chars().count() == COMM_LEN)
        );
    }
}
