//! Batched reads and deletes of a hash map with `BPF_MAP_LOOKUP_BATCH` and
//! `BPF_MAP_DELETE_BATCH` (Linux 5.6): one syscall per few thousand
//! entries, where walking the map with aya's iterator (0.14 has no batch
//! API) costs two per entry and removing one — 40,000 syscalls a cycle
//! after a SYN flood leaves 20,000 flows behind, which the syscall
//! programs count as a storm of Sonde's own making. Kernels or map types
//! without batch ops answer EINVAL/ENOTSUPP: the caller falls back to one
//! entry at a time.

use std::{
    io,
    mem::size_of,
    os::fd::{AsFd as _, AsRawFd as _},
};

use aya::{Pod, maps::MapData};

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
    let fd = map.fd().as_fd().as_raw_fd();
    let mut out = Vec::new();
    let mut chunk = CHUNK;
    // The batch token: a bucket index for hash maps (u32); room for more.
    let mut token = [0u64; 2];
    let mut first = true;
    loop {
        let mut keys: Vec<K> = Vec::with_capacity(chunk);
        let mut values: Vec<V> = Vec::with_capacity(chunk);
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
                // SAFETY: the kernel initialised the first `n` of each.
                unsafe {
                    keys.set_len(n);
                    values.set_len(n);
                }
                out.extend(keys.into_iter().zip(values));
                if err.is_some() {
                    // ENOENT: the walk is done (the last entries came with it).
                    return Ok(Some(out));
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
