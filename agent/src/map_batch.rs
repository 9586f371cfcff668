//! Batched reads and deletes of kernel maps with `BPF_MAP_LOOKUP_BATCH` and
//! `BPF_MAP_DELETE_BATCH` (Linux 5.6): one syscall per few thousand
//! entries, where walking a hash map with aya's iterator (0.14 has no
//! batch API) costs two per entry, reading an array one per slot, and
//! removing one per entry — 40,000 syscalls a cycle after a SYN flood
//! leaves 20,000 flows behind, 5,000 for 500 interfaces' packet counters,
//! each also counted by the syscall programs as the agent's own. Kernels
//! or map types without batch ops answer EINVAL/ENOTSUPP: the callers fall
//! back to one entry at a time.

use std::{
    io,
    mem::size_of,
    os::fd::{AsFd as _, AsRawFd as _},
};

use agent_common::merge::Merge;
use aya::{
    Pod,
    maps::{HashMap, IterableMap as _, MapData, MapError, PerCpuArray, PerCpuHashMap},
};
use tracing::debug;

/// `union bpf_attr`'s batch member (include/uapi/linux/bpf.h).
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;
/// The kernel's internal "not supported" (not in libc: it never reaches
/// user space through glibc, but does through the bpf syscall).
const ENOTSUPP: i32 = 524;
/// Entries asked for per call.
const CHUNK: usize = 4096;
/// Bytes of values asked for per call: a per-CPU map's entries are one
/// copy per CPU, so fewer entries per call on a machine with many.
const VALUE_BYTES: usize = 4 << 20;

/// One batch command on `attr`; the error, if any.
fn batch_command(cmd: libc::c_long, attr: &mut BatchAttr) -> Option<io::Error> {
    // SAFETY: every pointer in the attr points at a buffer of at least
    // `count` keys (and values), or a token buffer larger than any map's
    // token; the kernel reads or writes at most `count` entries and sets
    // `count` to how many it handled.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut BatchAttr,
            size_of::<BatchAttr>() as libc::c_uint,
        )
    };
    (ret < 0).then(io::Error::last_os_error)
}

/// Removes `keys` from a hash map; keys already gone (the kernel's LRU
/// evicted them meanwhile) are skipped. `Ok(None)`: this kernel cannot
/// batch this map, and nothing was removed.
pub fn delete_all<K: Pod>(map: &MapData, keys: &[K]) -> io::Result<Option<usize>> {
    let fd = map.fd().as_fd().as_raw_fd();
    let mut done = 0;
    let mut deleted = 0;
    while done < keys.len() {
        let rest = &keys[done..(done + CHUNK).min(keys.len())];
        let mut attr = BatchAttr {
            keys: rest.as_ptr() as u64,
            count: rest.len() as u32,
            map_fd: fd as u32,
            ..Default::default()
        };
        let err = batch_command(BPF_MAP_DELETE_BATCH, &mut attr);
        // The kernel stops at the first key it cannot delete; `count`
        // says how many before it went.
        let n = (attr.count as usize).min(rest.len());
        deleted += n;
        done += n;
        match err.as_ref().and_then(io::Error::raw_os_error) {
            None => {}
            Some(libc::ENOENT) => done += 1,
            Some(libc::EINVAL | ENOTSUPP | libc::EOPNOTSUPP) if done == 0 => return Ok(None),
            _ => return Err(err.unwrap_or_else(|| io::Error::other("batch delete failed"))),
        }
    }
    Ok(Some(deleted))
}

/// Every (key, value) of a hash map whose values are plain `V` (not
/// per-CPU). `Ok(None)`: this kernel cannot batch this map.
pub fn lookup_all<K: Pod, V: Pod>(map: &MapData) -> io::Result<Option<Vec<(K, V)>>> {
    Ok(lookup_raw::<K, V>(map, 1)?.map(|(keys, values)| keys.into_iter().zip(values).collect()))
}

/// Every key of a per-CPU hash or array map with its values added up over
/// the CPUs. `Ok(None)`: this kernel cannot batch this map, or `V`'s size
/// is not a multiple of 8 (the kernel pads each CPU's copy to 8 bytes).
fn lookup_all_summed<K: Pod, V: Pod + Merge>(map: &MapData) -> io::Result<Option<Vec<(K, V)>>> {
    if !size_of::<V>().is_multiple_of(8) {
        return Ok(None);
    }
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
    Ok(lookup_raw::<K, V>(map, cpus)?.map(|(keys, values)| {
        keys.into_iter()
            .zip(values.chunks_exact(cpus))
            .map(|(k, v)| (k, V::sum(v)))
            .collect()
    }))
}

/// A hash map's entries (values not per-CPU): in a few batched syscalls
/// where the kernel can, else walking it entry by entry; an entry an LRU
/// map evicted during the walk is skipped.
pub fn hash_entries<K: Pod, V: Pod>(map: &HashMap<MapData, K, V>) -> Result<Vec<(K, V)>, MapError> {
    match lookup_all(map.map()) {
        Ok(Some(entries)) => return Ok(entries),
        Ok(None) => {}
        Err(err) => debug!("batched map read failed ({err}); walking it"),
    }
    let mut entries = Vec::new();
    for entry in map.iter() {
        match entry {
            Ok(entry) => entries.push(entry),
            Err(MapError::KeyNotFound) => continue,
            Err(err) => return Err(err),
        }
    }
    Ok(entries)
}

/// A per-CPU hash map's entries, summed over the CPUs: batched where the
/// kernel can, else walked with aya's iterator.
pub fn per_cpu_hash_summed<K: Pod, V: Pod + Merge>(
    map: &PerCpuHashMap<MapData, K, V>,
) -> Result<Vec<(K, V)>, MapError> {
    match lookup_all_summed(map.map()) {
        Ok(Some(entries)) => return Ok(entries),
        Ok(None) => {}
        Err(err) => debug!("batched per-CPU map read failed ({err}); walking it"),
    }
    map.iter()
        .map(|entry| entry.map(|(k, values)| (k, V::sum(values.iter()))))
        .collect()
}

/// A per-CPU array's slots in index order, summed over the CPUs: batched
/// where the kernel can, else one lookup per slot.
pub fn per_cpu_array_summed<V: Pod + Merge>(
    map: &PerCpuArray<MapData, V>,
) -> Result<Vec<V>, MapError> {
    let len = map.len() as usize;
    match lookup_all_summed::<u32, V>(map.map()) {
        Ok(Some(entries)) if entries.len() == len => {
            let mut slots: Vec<V> = (0..len).map(|_| V::default()).collect();
            for (i, v) in entries {
                if let Some(slot) = slots.get_mut(i as usize) {
                    *slot = v;
                }
            }
            return Ok(slots);
        }
        Ok(_) => {}
        Err(err) => debug!("batched per-CPU array read failed ({err}); reading each slot"),
    }
    (0..len as u32)
        .map(|i| map.get(&i, 0).map(|values| V::sum(values.iter())))
        .collect()
}

/// Every key and its `per_key` values (one per CPU for per-CPU maps), in
/// batches whose value buffer stays near [`VALUE_BYTES`] at any CPU count.
fn lookup_raw<K: Pod, V: Pod>(
    map: &MapData,
    per_key: usize,
) -> io::Result<Option<(Vec<K>, Vec<V>)>> {
    let fd = map.fd().as_fd().as_raw_fd();
    let (mut all_keys, mut all_values) = (Vec::new(), Vec::new());
    let mut chunk = (VALUE_BYTES / (size_of::<V>() * per_key).max(1)).clamp(16, CHUNK);
    // The batch token: a bucket index for hash maps, a key for arrays
    // (u32); room for more.
    let mut token = [0u64; 2];
    let mut first = true;
    loop {
        let mut keys: Vec<K> = Vec::with_capacity(chunk);
        let mut values: Vec<V> = Vec::with_capacity(chunk * per_key);
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { token.as_ptr() as u64 },
            out_batch: token.as_mut_ptr() as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: chunk as u32,
            map_fd: fd as u32,
            ..Default::default()
        };
        let err = batch_command(BPF_MAP_LOOKUP_BATCH, &mut attr);
        let n = (attr.count as usize).min(chunk);
        match err.as_ref().and_then(io::Error::raw_os_error) {
            None | Some(libc::ENOENT) => {
                // SAFETY: the kernel initialised the first `n` keys and
                // their `n * per_key` values.
                unsafe {
                    keys.set_len(n);
                    values.set_len(n * per_key);
                }
                all_keys.extend(keys);
                all_values.extend(values);
                if err.is_some() {
                    // ENOENT: the walk is done (the last entries came with it).
                    return Ok(Some((all_keys, all_values)));
                }
                first = false;
            }
            // A bucket holds more entries than asked for: ask for more.
            Some(libc::ENOSPC) if chunk < 1 << 20 => chunk *= 4,
            Some(libc::EINVAL | ENOTSUPP | libc::EOPNOTSUPP) if first => return Ok(None),
            _ => return Err(err.unwrap_or_else(|| io::Error::other("batch lookup failed"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use agent_common::{
        block::BlockStats, drops::DropDeviceStats, net::PacketCounters, sched::RunqStats,
        syscalls::SyscallStats,
    };

    use super::*;

    /// The per-CPU values the signals read in batches: a size that is not
    /// a multiple of 8 would quietly fall back to one syscall per entry.
    #[test]
    fn per_cpu_values_read_in_batches_are_padded_to_8() {
        for (name, size) in [
            ("PacketCounters", size_of::<PacketCounters>()),
            ("DropDeviceStats", size_of::<DropDeviceStats>()),
            ("BlockStats", size_of::<BlockStats>()),
            ("RunqStats", size_of::<RunqStats>()),
            ("SyscallStats", size_of::<SyscallStats>()),
            ("u64", size_of::<u64>()),
        ] {
            assert!(size.is_multiple_of(8), "{name} is {size} bytes");
        }
    }
}
