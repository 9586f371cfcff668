//! The guest's root file system: an uncompressed cpio archive in the "newc"
//! format (the one the kernel unpacks into its initial tmpfs), written
//! straight from memory, so no staging directory and no `cpio` tool.

use std::{
    collections::BTreeSet,
    fs,
    io::{BufWriter, Write},
    path::Path,
};

use anyhow::{Context as _, bail};

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;

struct Entry {
    path: String,
    mode: u32,
    data: Vec<u8>,
}

/// Files, directories and symlinks, written in the order added (parents
/// first: every missing parent directory is added on the way).
#[derive(Default)]
pub struct Archive {
    entries: Vec<Entry>,
    dirs: BTreeSet<String>,
    paths: BTreeSet<String>,
}

impl Archive {
    pub fn new() -> Archive {
        Archive::default()
    }

    pub fn dir(&mut self, path: &str) -> anyhow::Result<()> {
        let path = normalize(path)?;
        self.parents(&path)?;
        if self.dirs.insert(path.clone()) {
            self.push(path, S_IFDIR | 0o755, Vec::new())?;
        }
        Ok(())
    }

    /// A regular file with these contents and permission bits (e.g. 0o755).
    pub fn file(&mut self, path: &str, perm: u32, data: Vec<u8>) -> anyhow::Result<()> {
        let path = normalize(path)?;
        self.parents(&path)?;
        self.push(path, S_IFREG | (perm & 0o7777), data)
    }

    /// A copy of a host file.
    pub fn copy(&mut self, path: &str, perm: u32, host: &Path) -> anyhow::Result<()> {
        let data = fs::read(host).with_context(|| format!("reading {}", host.display()))?;
        self.file(path, perm, data)
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> anyhow::Result<()> {
        let path = normalize(path)?;
        self.parents(&path)?;
        self.push(path, S_IFLNK | 0o777, target.as_bytes().to_vec())
    }

    /// Total size of the file contents, for the log line.
    pub fn payload_bytes(&self) -> usize {
        self.entries.iter().map(|e| e.data.len()).sum()
    }

    pub fn write_to(&self, out: &Path) -> anyhow::Result<()> {
        let file = fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
        let mut w = BufWriter::new(file);
        self.write(&mut w)
            .and_then(|()| w.flush())
            .with_context(|| format!("writing {}", out.display()))
    }

    fn write(&self, w: &mut impl Write) -> std::io::Result<()> {
        for (i, e) in self.entries.iter().enumerate() {
            // Inode numbers only need to be distinct; 0 is avoided.
            write_entry(w, i as u32 + 1, e.mode, &e.path, &e.data)?;
        }
        write_entry(w, 0, 0, "TRAILER!!!", &[])
    }

    fn parents(&mut self, path: &str) -> anyhow::Result<()> {
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent)?;
        }
        Ok(())
    }

    fn push(&mut self, path: String, mode: u32, data: Vec<u8>) -> anyhow::Result<()> {
        if !self.paths.insert(path.clone()) {
            bail!("initramfs: {path} added twice");
        }
        if u32::try_from(data.len()).is_err() {
            bail!("initramfs: {path} is larger than cpio's 4 GiB limit");
        }
        self.entries.push(Entry { path, mode, data });
        Ok(())
    }
}

/// `/a/b/` → `a/b` (archive paths are relative to the root).
fn normalize(path: &str) -> anyhow::Result<String> {
    let p = path.trim_matches('/');
    if p.is_empty() || p.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        bail!("initramfs: bad path {path:?}");
    }
    Ok(p.to_owned())
}

/// One newc record: a 110-byte ASCII header (magic and 13 eight-digit hex
/// fields), the NUL-terminated name padded to 4 bytes, the data padded to 4.
fn write_entry(
    w: &mut impl Write,
    ino: u32,
    mode: u32,
    name: &str,
    data: &[u8],
) -> std::io::Result<()> {
    let nlink = if mode & S_IFDIR == S_IFDIR { 2 } else { 1 };
    let fields = [
        ino,
        mode,
        0, // uid
        0, // gid
        nlink,
        0, // mtime: fixed, so the archive is reproducible
        data.len() as u32,
        0, // devmajor
        0, // devminor
        0, // rdevmajor
        0, // rdevminor
        name.len() as u32 + 1,
        0, // check (unused by newc)
    ];
    let mut header = String::with_capacity(110);
    header.push_str("070701");
    for f in fields {
        header.push_str(&format!("{f:08x}"));
    }
    w.write_all(header.as_bytes())?;
    w.write_all(name.as_bytes())?;
    w.write_all(&[0])?;
    pad(w, 110 + name.len() + 1)?;
    w.write_all(data)?;
    pad(w, data.len())
}

fn pad(w: &mut impl Write, written: usize) -> std::io::Result<()> {
    let n = (4 - written % 4) % 4;
    w.write_all(&[0u8; 3][..n])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(a: &Archive) -> Vec<u8> {
        let mut out = Vec::new();
        a.write(&mut out).unwrap();
        out
    }

    #[test]
    fn newc_records_are_aligned_and_end_with_a_trailer() {
        let mut a = Archive::new();
        a.file("/bin/hello", 0o755, b"hello".to_vec()).unwrap();
        let out = bytes(&a);
        // "bin" directory first (added as the parent), then the file.
        assert!(out.starts_with(b"070701"));
        let first_name = &out[110..114];
        assert_eq!(first_name, b"bin\0");
        // 110-byte header + "bin\0" = 114, padded to 116; a directory has no data.
        let second = 116;
        assert_eq!(&out[second..second + 6], b"070701");
        let mode = u32::from_str_radix(
            std::str::from_utf8(&out[second + 14..second + 22]).unwrap(),
            16,
        )
        .unwrap();
        assert_eq!(mode, S_IFREG | 0o755);
        let size = u32::from_str_radix(
            std::str::from_utf8(&out[second + 54..second + 62]).unwrap(),
            16,
        )
        .unwrap();
        assert_eq!(size, 5);
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains("bin/hello\0"));
        assert!(text.contains("TRAILER!!!\0"));
        assert_eq!(out.len() % 4, 0);
    }

    #[test]
    fn parents_are_added_once_and_duplicates_rejected() {
        let mut a = Archive::new();
        a.file("a/b/c", 0o644, Vec::new()).unwrap();
        a.file("a/b/d", 0o644, Vec::new()).unwrap();
        a.symlink("a/e", "b/c").unwrap();
        let names: Vec<&str> = a.entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(names, ["a", "a/b", "a/b/c", "a/b/d", "a/e"]);
        assert!(a.file("a/b/c", 0o644, Vec::new()).is_err());
        assert!(a.file("../x", 0o644, Vec::new()).is_err());
    }
}
