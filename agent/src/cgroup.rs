//! cgroup v2 paths from cgroup ids. A cgroup's id (its `kernfs_node.id`,
//! what bpf_get_current_cgroup_id returns to the kernel programs) is the inode of its directory in the cgroup2 mount
//! (/sys/fs/cgroup, or /sys/fs/cgroup/unified on hybrid hosts), so names
//! are found by walking that tree: once per batch of unknown ids, bounded.
//! Never a v1 hierarchy: its inode numbers are another space.

use std::{
    collections::{HashMap, HashSet},
    os::unix::fs::MetadataExt as _,
    path::PathBuf,
};

/// Directories visited per walk at most (a node has a few thousand).
const MAX_DIRS: usize = 20_000;

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
/// ids in `wanted` that exist; one walk for all of them.
pub fn paths(wanted: &HashSet<u64>) -> HashMap<u64, String> {
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
pub fn name(id: u64) -> String {
    describe(id, paths(&HashSet::from([id])).get(&id))
}

/// How a cgroup is named in labels and subjects: its path, or `id N`
/// when it no longer exists (or lies outside this mount's view).
pub fn describe(id: u64, path: Option<&String>) -> String {
    path.cloned().unwrap_or_else(|| format!("id {id}"))
}
