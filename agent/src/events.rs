//! Ring-buffer readers: one tokio task per ring, woken through `AsyncFd`,
//! draining every event, counting what it received, and keeping a bounded
//! list of recent events for /api/v1/events. Loss is counted by the kernel
//! (`RING_STATS`); here we count receipt, so `received + lost == produced`.

use std::{
    collections::VecDeque,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use agent_common::{
    events::{
        EVENT_NEW_FLOW, EVENT_PROCESS_EXEC, EVENT_PROCESS_EXIT, EVENT_SLOW_SYSCALL, EventHeader,
        FlowEvent, ProcessEvent, SlowSyscallEvent,
    },
    net::FAMILY_IPV4,
};
use aya::maps::{MapData, RingBuf};
use serde::Serialize;
use tokio::io::unix::AsyncFd;
use tracing::{debug, warn};

use crate::{collectors::unix_seconds, metrics::protocol_name, syscall_table};

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

/// Recent events and per-ring state.
#[derive(Debug)]
pub struct Events {
    pub rings: Vec<Arc<RingState>>,
    recent: Mutex<VecDeque<EventRecord>>,
    keep: usize,
}

impl Events {
    pub fn recent(&self) -> Vec<EventRecord> {
        self.recent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    pub fn ring(&self, label: &str) -> Option<&Arc<RingState>> {
        self.rings.iter().find(|r| r.label == label)
    }

    fn push_all(&self, records: Vec<EventRecord>) {
        if records.is_empty() {
            return;
        }
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        for record in records {
            if recent.len() >= self.keep {
                recent.pop_front();
            }
            recent.push_back(record);
        }
    }
}

/// Starts one reader task per ring.
pub fn spawn_readers(
    rings: Vec<(u32, &'static str, RingBuf<MapData>)>,
    keep: usize,
) -> std::io::Result<(Arc<Events>, Vec<tokio::task::JoinHandle<()>>)> {
    let events = Arc::new(Events {
        rings: rings
            .iter()
            .map(|(_, label, _)| Arc::new(RingState::new(label)))
            .collect(),
        recent: Mutex::new(VecDeque::with_capacity(keep.min(4096))),
        keep: keep.max(1),
    });
    let mut tasks = Vec::new();
    for (index, (_, label, ring)) in rings.into_iter().enumerate() {
        // SAFETY: the RingBuf owns its fd and outlives the registration
        // (AsyncFd owns the RingBuf); nothing else closes it.
        let fd = unsafe { AsyncFd::register(ring) }.map_err(std::io::Error::from)?;
        let state = events.rings[index].clone();
        let events = events.clone();
        debug!(ring = label, "ring reader started");
        tasks.push(tokio::spawn(read_ring(fd, state, events)));
    }
    Ok((events, tasks))
}

async fn read_ring(mut fd: AsyncFd<RingBuf<MapData>>, state: Arc<RingState>, events: Arc<Events>) {
    loop {
        let stall_until = state.stall_until_ms.load(Ordering::Relaxed);
        let now = now_ms();
        if stall_until > now {
            tokio::time::sleep(Duration::from_millis(stall_until - now)).await;
            continue;
        }
        let mut guard = match fd.readable_mut().await {
            Ok(guard) => guard,
            Err(err) => {
                warn!(ring = state.label, "ring reader stopped: {err}");
                return;
            }
        };
        let ring = guard.get_inner_mut();
        // Decode the whole batch first, then take the recent-events lock
        // once: one lock per wake-up instead of one per event.
        let mut batch = Vec::new();
        let (mut received, mut errors) = (0u64, 0u64);
        while let Some(item) = ring.next() {
            received += 1;
            match decode(&item) {
                Some(record) => batch.push(record),
                None => errors += 1,
            }
            drop(item);
            if batch.len() >= events.keep {
                // Only the newest `keep` can survive: stop decoding the rest.
                batch.drain(..batch.len() - events.keep / 2);
            }
        }
        state.received.fetch_add(received, Ordering::Relaxed);
        state.decode_errors.fetch_add(errors, Ordering::Relaxed);
        events.push_all(batch);
        state.last_drain_ms.store(now_ms(), Ordering::Relaxed);
        guard.clear_ready();
    }
}

fn read<T: Copy>(bytes: &[u8]) -> Option<T> {
    (bytes.len() >= size_of::<T>())
        // SAFETY: length checked; T is a plain #[repr(C)] integer struct.
        .then(|| unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

fn decode(bytes: &[u8]) -> Option<EventRecord> {
    let header: EventHeader = read(bytes)?;
    let time = unix_seconds(SystemTime::now());
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
        EVENT_PROCESS_EXEC | EVENT_PROCESS_EXIT => {
            let e: ProcessEvent = read(bytes)?;
            let comm = c_string(&e.comm);
            Some(if header.kind == EVENT_PROCESS_EXEC {
                EventRecord::ProcessExec {
                    time,
                    pid: e.pid,
                    ppid: e.ppid,
                    cgroup_id: e.cgroup_id,
                    comm,
                    filename: c_string(&e.filename),
                }
            } else {
                EventRecord::ProcessExit {
                    time,
                    pid: e.pid,
                    ppid: e.ppid,
                    cgroup_id: e.cgroup_id,
                    comm,
                    exit_code: e.exit_code,
                }
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
                direction: crate::metrics::direction_name(key.direction),
                protocol: protocol_name(key.family, key.protocol).into_owned(),
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
fn c_string(bytes: &[u8]) -> String {
    let len = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..len]).into_owned()
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
