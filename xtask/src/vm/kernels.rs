//! Stock Debian kernels for the guests: which ones (the newest of each
//! default series in the package archive, or names given on the command
//! line), fetched with `apt-get download` and unpacked with `dpkg-deb -x`
//! (no install, no hooks). Only the kernel image and the few modules the
//! guest loads are kept, decompressed, under `target/vm/kernels/RELEASE/`;
//! the `.deb` stays in `target/vm/debs/` for the next run.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::util;

/// Series booted when no kernel is named: Debian 12's two cloud kernels.
pub const DEFAULT_SERIES: &[&str] = &["6.1", "6.12"];
/// The flavour: the cloud kernels are small and boot fastest.
const FLAVOUR: &str = "-cloud-amd64";

/// Modules the guest loads (with their dependencies) before the checks: veth
/// pairs, the clsact qdisc (TC programs without tcx links), cls_bpf and
/// netem. Built into some kernels, modules in Debian's.
pub const MODULES: &[&str] = &["veth", "sch_ingress", "cls_bpf", "sch_netem"];

/// Marker written last: its presence means the cache directory is complete.
const COMPLETE: &str = ".complete";

/// A kernel ready to boot.
#[derive(Debug)]
pub struct Kernel {
    pub release: String,
    pub vmlinuz: PathBuf,
    /// Decompressed modules, in load order (dependencies first).
    pub modules: Vec<PathBuf>,
}

/// The newest `linux-image-*-cloud-amd64` of each default series that
/// `apt-cache` knows.
pub fn default_releases() -> anyhow::Result<Vec<String>> {
    let mut cmd = util::command("apt-cache");
    cmd.args(["search", "--names-only", r"^linux-image-6\."]);
    let shown = util::display(&cmd);
    let out = util::stdout_of(&mut cmd)
        .with_context(|| format!("`{shown}` failed: is this a Debian-based system with apt?"))?;
    let names = out.lines().filter_map(|l| l.split_whitespace().next());
    newest_per_series(names, DEFAULT_SERIES)
}

/// From package names, the newest kernel release of each series.
fn newest_per_series<'a>(
    names: impl Iterator<Item = &'a str>,
    series: &[&str],
) -> anyhow::Result<Vec<String>> {
    let mut best: BTreeMap<&str, (Vec<u64>, String)> = BTreeMap::new();
    for name in names {
        let Some(release) = name.strip_prefix("linux-image-") else {
            continue;
        };
        // Signed images only: not the -dbg or -unsigned twins, nor the
        // unversioned meta-package (linux-image-6.12-cloud-amd64).
        let Some(base) = release.strip_suffix(FLAVOUR) else {
            continue;
        };
        let key = version_key(base);
        if key.len() < 3 {
            continue;
        }
        let Some(s) = series.iter().find(|s| base.starts_with(&format!("{s}."))) else {
            continue;
        };
        if best.get(s).is_none_or(|(k, _)| key > *k) {
            best.insert(s, (key, release.to_owned()));
        }
    }
    series
        .iter()
        .map(|s| {
            best.remove(s).map(|(_, r)| r).with_context(|| {
                format!(
                    "no linux-image-{s}.*{FLAVOUR} package known to apt: run `apt-get update`, \
                     or name kernels explicitly (list: `apt-cache search linux-image-6 | grep cloud`)"
                )
            })
        })
        .collect()
}

/// The numbers in a release, in order: `6.1.0-56` → [6, 1, 0, 56],
/// `6.12.117+deb12` → [6, 12, 117, 12]. Compared as a list, like `sort -V`
/// for these names.
fn version_key(release: &str) -> Vec<u64> {
    release
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .filter_map(|s| s.parse().ok())
        .collect()
}

/// Downloads and unpacks `release` into the cache unless it is there.
pub fn prepare(release: &str, cache: &Path) -> anyhow::Result<Kernel> {
    if release.contains('/') || !release.starts_with(|c: char| c.is_ascii_digit()) {
        bail!("{release:?} is not a kernel release like 6.1.0-56-cloud-amd64");
    }
    let dir = cache.join("kernels").join(release);
    if !dir.join(COMPLETE).exists() {
        let deb = download(release, &cache.join("debs"))?;
        unpack(release, &deb, &dir)?;
    }
    load(release, &dir)
}

fn load(release: &str, dir: &Path) -> anyhow::Result<Kernel> {
    let mut modules: Vec<PathBuf> = fs::read_dir(dir.join("modules"))
        .with_context(|| format!("reading {}", dir.join("modules").display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    modules.sort(); // file names start with their load position
    Ok(Kernel {
        release: release.to_owned(),
        vmlinuz: dir.join("vmlinuz"),
        modules,
    })
}

fn download(release: &str, debs: &Path) -> anyhow::Result<PathBuf> {
    let package = format!("linux-image-{release}");
    if let Some(deb) = find_deb(debs, &package)? {
        return Ok(deb);
    }
    fs::create_dir_all(debs).with_context(|| format!("creating {}", debs.display()))?;
    let mut cmd = Command::new("apt-get");
    cmd.current_dir(debs).args(["download", "-q", &package]);
    util::run(&mut cmd).with_context(|| {
        format!(
            "could not download {package}: check the name (`apt-cache search linux-image-6 | grep cloud`) \
             and refresh the package lists (`apt-get update`)"
        )
    })?;
    find_deb(debs, &package)?.with_context(|| {
        format!(
            "apt-get download {package} left no {package}_*.deb in {}",
            debs.display()
        )
    })
}

fn find_deb(debs: &Path, package: &str) -> anyhow::Result<Option<PathBuf>> {
    let Ok(entries) = fs::read_dir(debs) else {
        return Ok(None);
    };
    let prefix = format!("{package}_");
    for e in entries {
        let path = e?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if name.starts_with(&prefix) && name.ends_with(".deb") {
            return Ok(Some(path));
        }
    }
    Ok(None)
}

/// Unpacks the package into a scratch directory and keeps the image and the
/// modules the guest needs.
fn unpack(release: &str, deb: &Path, dir: &Path) -> anyhow::Result<()> {
    let parent = dir
        .parent()
        .context("kernel cache directory has no parent")?;
    fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let scratch = TempDir::new(parent.join(format!(".unpack-{release}-{}", std::process::id())))?;
    println!("unpacking {}", deb.display());
    util::run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&scratch.0))?;

    let staging = TempDir::new(parent.join(format!(".staging-{release}-{}", std::process::id())))?;
    let vmlinuz = scratch.0.join("boot").join(format!("vmlinuz-{release}"));
    if !vmlinuz.is_file() {
        bail!("{} has no boot/vmlinuz-{release}", deb.display());
    }
    fs::copy(&vmlinuz, staging.0.join("vmlinuz"))
        .with_context(|| format!("copying {}", vmlinuz.display()))?;

    let tree = ["lib", "usr/lib"]
        .iter()
        .map(|l| scratch.0.join(l).join("modules").join(release))
        .find(|p| p.is_dir())
        .with_context(|| format!("{} has no lib/modules/{release}", deb.display()))?;
    let available = index_modules(&tree)?;
    let order = load_order(MODULES, &available)?;
    let modules = staging.0.join("modules");
    fs::create_dir_all(&modules)?;
    for (i, name) in order.iter().enumerate() {
        let bytes = &available[name].1;
        fs::write(modules.join(format!("{i:02}-{name}.ko")), bytes)?;
    }
    fs::write(staging.0.join(COMPLETE), format!("{}\n", deb.display()))?;
    if dir.exists() {
        fs::remove_dir_all(dir).with_context(|| format!("removing stale {}", dir.display()))?;
    }
    fs::rename(&staging.0, dir)
        .with_context(|| format!("moving the kernel into {}", dir.display()))?;
    Ok(())
}

/// The wanted modules and their dependencies, decompressed, by module name
/// (dashes as underscores, like modprobe), found by file name anywhere under
/// the modules tree (the package has no modules.dep: depmod makes it).
fn index_modules(tree: &Path) -> anyhow::Result<BTreeMap<String, (PathBuf, Vec<u8>)>> {
    let mut paths = BTreeMap::new();
    let mut stack = vec![tree.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
            let path = e?.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            let stem = ["ko", "ko.xz", "ko.zst", "ko.gz"]
                .iter()
                .find_map(|ext| name.strip_suffix(&format!(".{ext}")));
            if let Some(stem) = stem {
                paths.insert(stem.replace('-', "_"), path.clone());
            }
        }
    }
    // Decompress the wanted modules and their dependencies only.
    let mut out = BTreeMap::new();
    let mut todo: Vec<String> = MODULES.iter().map(|m| m.to_string()).collect();
    while let Some(name) = todo.pop() {
        if out.contains_key(&name) {
            continue;
        }
        let Some(path) = paths.get(&name) else {
            continue; // built in, or missing: load_order decides
        };
        let bytes = decompress(path)?;
        todo.extend(depends(&bytes));
        out.insert(name, (path.clone(), bytes));
    }
    Ok(out)
}

/// The wanted modules with their dependencies first. A module that is not in
/// the package is assumed built in (the guest reports it if it is not).
fn load_order(
    wanted: &[&str],
    available: &BTreeMap<String, (PathBuf, Vec<u8>)>,
) -> anyhow::Result<Vec<String>> {
    fn visit(
        name: &str,
        available: &BTreeMap<String, (PathBuf, Vec<u8>)>,
        order: &mut Vec<String>,
        path: &mut Vec<String>,
    ) -> anyhow::Result<()> {
        if order.iter().any(|n| n == name) || !available.contains_key(name) {
            return Ok(());
        }
        if path.iter().any(|n| n == name) {
            bail!("module dependency cycle: {} → {name}", path.join(" → "));
        }
        path.push(name.to_owned());
        for dep in depends(&available[name].1) {
            visit(&dep, available, order, path)?;
        }
        path.pop();
        order.push(name.to_owned());
        Ok(())
    }
    let mut order = Vec::new();
    for name in wanted {
        visit(name, available, &mut order, &mut Vec::new())?;
    }
    Ok(order)
}

fn decompress(path: &Path) -> anyhow::Result<Vec<u8>> {
    let name = path.to_string_lossy();
    let tool = if name.ends_with(".xz") {
        "xz"
    } else if name.ends_with(".zst") {
        "zstd"
    } else if name.ends_with(".gz") {
        "gzip"
    } else {
        return fs::read(path).with_context(|| format!("reading {}", path.display()));
    };
    let out = Command::new(tool)
        .arg("-dc")
        .arg(path)
        .output()
        .with_context(|| {
            format!(
                "could not run `{tool}` to decompress {}: is it installed?",
                path.display()
            )
        })?;
    if !out.status.success() {
        bail!(
            "`{tool} -dc {}` failed: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out.stdout)
}

/// The `depends=a,b` entry of a module's `.modinfo` section (NUL-separated
/// `key=value` strings; found by scanning, which is all modinfo does too).
fn depends(ko: &[u8]) -> Vec<String> {
    let needle = b"\0depends=";
    let Some(start) = ko.windows(needle.len()).position(|w| w == needle) else {
        return Vec::new();
    };
    let value = &ko[start + needle.len()..];
    let end = value.iter().position(|&b| b == 0).unwrap_or(value.len());
    String::from_utf8_lossy(&value[..end])
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.replace('-', "_"))
        .collect()
}

/// A directory removed (with its contents) when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(path: PathBuf) -> anyhow::Result<TempDir> {
        if path.exists() {
            fs::remove_dir_all(&path).with_context(|| format!("removing {}", path.display()))?;
        }
        fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(TempDir(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        // After a successful rename the path is gone; that is fine.
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_newest_signed_image_of_each_series() {
        let names = [
            "linux-image-6.1.0-9-cloud-amd64",
            "linux-image-6.1.0-56-cloud-amd64",
            "linux-image-6.1.0-57-cloud-amd64-dbg",
            "linux-image-6.1.0-58-cloud-amd64-unsigned",
            "linux-image-6.1.0-56-amd64",
            "linux-image-6.12-cloud-amd64",
            "linux-image-6.12.99+deb12-cloud-amd64",
            "linux-image-6.12.117+deb12-cloud-amd64",
            "linux-image-6.12.100+deb12-cloud-amd64",
        ];
        let got = newest_per_series(names.into_iter(), &["6.1", "6.12"]).unwrap();
        assert_eq!(got, ["6.1.0-56-cloud-amd64", "6.12.117+deb12-cloud-amd64"]);
        let missing = newest_per_series(names.into_iter(), &["5.10"]).unwrap_err();
        assert!(missing.to_string().contains("apt-get update"), "{missing}");
    }

    #[test]
    fn version_keys_order_like_sort_v() {
        assert!(version_key("6.12.117+deb12") > version_key("6.12.99+deb12"));
        assert!(version_key("6.1.0-56") > version_key("6.1.0-9"));
    }

    #[test]
    fn reads_modinfo_depends() {
        let ko = b"\x7fELF...\0license=GPL\0depends=nf-defrag,libcrc32c\0name=x\0";
        assert_eq!(depends(ko), ["nf_defrag", "libcrc32c"]);
        assert!(depends(b"\0depends=\0name=veth\0").is_empty());
        assert!(depends(b"no modinfo").is_empty());
    }

    #[test]
    fn dependencies_load_first() {
        let m = |deps: &str| (PathBuf::new(), format!("\0depends={deps}\0").into_bytes());
        let available: BTreeMap<String, (PathBuf, Vec<u8>)> = [
            ("a".to_owned(), m("b,c")),
            ("b".to_owned(), m("c")),
            ("c".to_owned(), m("")),
        ]
        .into_iter()
        .collect();
        assert_eq!(load_order(&["a"], &available).unwrap(), ["c", "b", "a"]);
        // Not in the package: assumed built in.
        assert!(load_order(&["zz"], &available).unwrap().is_empty());
    }
}
