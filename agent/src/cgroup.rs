//! cgroup v2 paths from cgroup ids. A cgroup's id (its `kernfs_node.id`,
//! what bpf_get_current_cgroup_id returns to the kernel programs) is the inode of its directory in the cgroup2 mount
//! (/sys/fs/cgroup, or /sys/fs/cgroup/unified on hybrid hosts), so names
//! are found by walking that tree: once per batch of unknown ids, bounded.
//! Never a v1 hierarchy: its inode numbers are another space.
//!
//! Found paths are remembered: a cgroup id is never reused while the
//! kernel runs, and an incident's cgroup is often gone (its workload
//! killed, the pod deleted) by the time its anomaly is last updated; it
//! keeps the name it had rather than becoming `id N`.

use std::{
    collections::{HashMap, HashSet},
    os::unix::fs::MetadataExt as _,
    path::PathBuf,
    sync::{Mutex, PoisonError},
};

/// Directories visited per walk at most (a node has a few thousand).
const MAX_DIRS: usize = 20_000;
/// Paths remembered at most (emptied when full: a node has a few thousand
/// cgroups, and a forgotten one costs only a walk).
const MAX_KNOWN: usize = 16_384;

/// id → path of every cgroup found so far.
static KNOWN: Mutex<Option<HashMap<u64, String>>> = Mutex::new(None);

/// Where cgroup2 is mounted, from /proc/self/mounts; None: not mounted.
pub fn v2_root() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    v2_root_in(&mounts)
}

/// Where cgroup2 is mounted, from the text of a /proc/PID/mounts.
pub fn v2_root_in(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_, dir, fstype) = (fields.next()?, fields.next()?, fields.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(dir))
    })
}

/// The paths (relative to the cgroup2 root, starting with `/`) of the
/// ids in `wanted` that exist or were seen before; one walk for all the
/// ids not known yet.
pub fn paths(wanted: &HashSet<u64>) -> HashMap<u64, String> {
    let mut known = KNOWN.lock().unwrap_or_else(PoisonError::into_inner);
    let known = known.get_or_insert_with(HashMap::new);
    let mut found: HashMap<u64, String> = wanted
        .iter()
        .filter_map(|id| Some((*id, known.get(id)?.clone())))
        .collect();
    let unknown: HashSet<u64> = wanted
        .iter()
        .copied()
        .filter(|id| !found.contains_key(id))
        .collect();
    let walked = walk(&unknown);
    if known.len() + walked.len() > MAX_KNOWN {
        known.clear();
    }
    known.extend(walked.iter().map(|(id, path)| (*id, path.clone())));
    found.extend(walked);
    found
}

/// One walk of the cgroup2 tree for the ids in `wanted`.
fn walk(wanted: &HashSet<u64>) -> HashMap<u64, String> {
    let mut found = HashMap::new();
    let Some(root) = v2_root().filter(|_| !wanted.is_empty()) else {
        return found;
    };
    let mut stack = vec![root.clone()];
    let mut seen = 0;
    while let Some(dir) = stack.pop() {
        seen += 1;
        if seen > MAX_DIRS {
            break;
        }
        if let Ok(meta) = std::fs::metadata(&dir)
            && wanted.contains(&meta.ino())
            && let Ok(rel) = dir.strip_prefix(&root)
        {
            found.insert(meta.ino(), format!("/{}", rel.to_string_lossy()));
            if found.len() == wanted.len() {
                break;
            }
        }
        if let Ok(entries) = std::fs::read_dir(&dir) {
            stack.extend(
                entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
    }
    found
}

/// How one cgroup id is named now: its path, or `id N` (one walk).
/// The cgroup v2 root's id (its kernfs node is always the first): where the
/// kernel's own threads, softirq work among them, and a host's processes
/// without a cgroup of their own run.
pub const ROOT_ID: u64 = 1;

pub fn name(id: u64) -> String {
    describe(id, paths(&HashSet::from([id])).get(&id))
}

/// How a cgroup is named in labels and subjects: its path, or `id N`
/// when it was never seen (gone before it was looked up, or outside this
/// mount's view).
pub fn describe(id: u64, path: Option<&String>) -> String {
    path.cloned().unwrap_or_else(|| format!("id {id}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cgroup_seen_once_keeps_its_name_after_it_is_gone() {
        // An id no cgroup has (ids count up from 1); as if a walk had
        // found it before its directory was removed.
        let id = u64::MAX - 7;
        assert_eq!(name(id), format!("id {id}"), "never seen: no name");
        KNOWN
            .lock()
            .unwrap()
            .get_or_insert_with(HashMap::new)
            .insert(id, "/gone.slice/job".into());
        assert_eq!(name(id), "/gone.slice/job");
    }
}
