//! What the running kernel and this process can do: privileges, BTF,
//! program types, tracefs/bpffs, kprobes, bpf_stats. Used by `sonde check`,
//! the loader's fallbacks and /api/v1/status. Also mounts tracefs when a
//! hook needs it and it is missing.

use std::{ffi::CString, fs, io, path::Path};

use aya::{programs::ProgramType, sys::is_program_supported, util::KernelVersion};
use serde::Serialize;

pub const TRACEFS: &str = "/sys/kernel/tracing";
const DEBUGFS_TRACING: &str = "/sys/kernel/debug/tracing";
const BPFFS: &str = "/sys/fs/bpf";
const BPF_FS_MAGIC: i64 = 0xcafe4a11;
const TRACEFS_MAGIC: i64 = 0x74726163;

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_SYS_RESOURCE: u32 = 24;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Capabilities the agent needs on kernels ≥ 5.8 (CAP_SYS_ADMIN covers all).
pub const REQUIRED_CAPS: &[(u32, &str)] = &[
    (CAP_BPF, "CAP_BPF"),
    (CAP_PERFMON, "CAP_PERFMON"),
    (CAP_NET_ADMIN, "CAP_NET_ADMIN"),
];

#[derive(Debug, Clone, Serialize)]
pub struct Capabilities {
    pub kernel_release: String,
    pub kernel_version: Option<(u8, u8, u16)>,
    pub btf: bool,
    pub raw_tracepoint: bool,
    pub tracepoint: bool,
    pub xdp: bool,
    pub tc: bool,
    pub kprobes: bool,
    pub fentry: bool,
    pub ringbuf_map: bool,
    pub tracefs_mounted: bool,
    pub bpffs_mounted: bool,
    pub bpf_stats_enabled: bool,
    pub missing_caps: Vec<&'static str>,
}

impl Capabilities {
    /// Probes the kernel. Cheap enough to run at start-up (a few small
    /// BPF_PROG_LOAD calls); needs privileges to give meaningful answers for
    /// the program types.
    pub fn detect() -> Self {
        let kernel_version = KernelVersion::current().ok().map(|v| {
            let code = v.code();
            ((code >> 16) as u8, (code >> 8) as u8, (code & 0xff) as u16)
        });
        let supported = |t| is_program_supported(t).unwrap_or(false);
        Self {
            kernel_release: kernel_release(),
            kernel_version,
            btf: Path::new(super::btf::VMLINUX_BTF).exists(),
            raw_tracepoint: supported(ProgramType::RawTracePoint),
            tracepoint: supported(ProgramType::TracePoint),
            xdp: supported(ProgramType::Xdp),
            tc: supported(ProgramType::SchedClassifier),
            kprobes: Path::new("/sys/bus/event_source/devices/kprobe/type").exists(),
            fentry: supported(ProgramType::Tracing),
            ringbuf_map: aya::sys::is_map_supported(aya::maps::MapType::RingBuf).unwrap_or(false),
            tracefs_mounted: tracefs_dir().is_some(),
            bpffs_mounted: fs_magic(BPFFS) == Some(BPF_FS_MAGIC),
            bpf_stats_enabled: fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled")
                .map(|s| s.trim() == "1")
                .unwrap_or(false),
            missing_caps: missing_caps(),
        }
    }

    pub fn at_least(&self, major: u8, minor: u8) -> bool {
        self.kernel_version
            .is_some_and(|(ma, mi, _)| (ma, mi) >= (major, minor))
    }
}

pub fn kernel_release() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

/// Effective capabilities of this process, from /proc/self/status.
fn effective_caps() -> u64 {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| status_cap_eff(&status))
        .unwrap_or(0)
}

/// The `CapEff:` mask of a /proc/PID/status text.
pub fn status_cap_eff(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
}

/// The required capabilities this process lacks (none when it has
/// CAP_SYS_ADMIN, which implies them on every kernel).
pub fn missing_caps() -> Vec<&'static str> {
    let caps = effective_caps();
    if caps & (1 << CAP_SYS_ADMIN) != 0 {
        return Vec::new();
    }
    REQUIRED_CAPS
        .iter()
        .filter(|(bit, _)| caps & (1 << bit) == 0)
        .map(|(_, name)| *name)
        .collect()
}

/// Whether CAP_SYS_RESOURCE is held (needed to lift RLIMIT_MEMLOCK on
/// kernels before 5.11, which charge BPF memory to it).
pub fn has_sys_resource() -> bool {
    effective_caps() & (1 << CAP_SYS_RESOURCE) != 0
}

fn fs_magic(path: &str) -> Option<i64> {
    let c = CString::new(path).ok()?;
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid C string and a zeroed statfs to fill.
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    (rc == 0).then_some(st.f_type as i64)
}

/// The mounted tracefs directory (with an `events` directory), if any.
pub fn tracefs_dir() -> Option<&'static str> {
    [TRACEFS, DEBUGFS_TRACING]
        .into_iter()
        .find(|dir| Path::new(dir).join("events").is_dir())
}

/// Mounts tracefs at /sys/kernel/tracing when no tracefs is mounted.
pub fn ensure_tracefs() -> io::Result<&'static str> {
    if let Some(dir) = tracefs_dir() {
        return Ok(dir);
    }
    if fs_magic(TRACEFS) != Some(TRACEFS_MAGIC) {
        let source = CString::new("tracefs").expect("static");
        let target = CString::new(TRACEFS).expect("static");
        // SAFETY: valid C strings; no mount data.
        let rc = unsafe {
            libc::mount(
                source.as_ptr(),
                target.as_ptr(),
                source.as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            return Err(io::Error::other(format!(
                "tracefs is not mounted and mounting it at {TRACEFS} failed: {} \
                 (mount it with `mount -t tracefs tracefs {TRACEFS}`)",
                io::Error::last_os_error()
            )));
        }
    }
    tracefs_dir().ok_or_else(|| io::Error::other(format!("{TRACEFS} has no events directory")))
}

/// Offset of `field` in a tracepoint's record, from its format file.
pub fn tracepoint_field_offset(
    tracefs: &str,
    category: &str,
    name: &str,
    field: &str,
) -> Option<u32> {
    let format = fs::read_to_string(format!("{tracefs}/events/{category}/{name}/format")).ok()?;
    format_field_offset(&format, field)
}

/// Offset of `field` in a tracepoint's record, from the text of its
/// format file.
pub fn format_field_offset(format: &str, field: &str) -> Option<u32> {
    format.lines().find_map(|line| {
        let line = line.trim();
        let decl = line.strip_prefix("field:")?;
        let (decl, rest) = decl.split_once(';')?;
        let ident = decl
            .split_whitespace()
            .last()?
            .split('[')
            .next()?
            .trim_start_matches('*');
        if ident != field {
            return None;
        }
        rest.trim()
            .strip_prefix("offset:")?
            .split(';')
            .next()?
            .trim()
            .parse()
            .ok()
    })
}

/// `value → NAME` pairs of a `__print_symbolic(REC->field, { v, "NAME" }, …)`
/// in a tracepoint's print format: the running kernel's own names for an
/// enum (e.g. the skb drop reasons).
pub fn tracepoint_symbols(
    tracefs: &str,
    category: &str,
    name: &str,
    field: &str,
) -> Vec<(u32, String)> {
    let Ok(format) = fs::read_to_string(format!("{tracefs}/events/{category}/{name}/format"))
    else {
        return Vec::new();
    };
    format_symbols(&format, field)
}

/// `value → NAME` pairs of `field`'s `__print_symbolic` in the text of a
/// tracepoint's format file.
pub fn format_symbols(format: &str, field: &str) -> Vec<(u32, String)> {
    let marker = format!("__print_symbolic(REC->{field},");
    let Some(start) = format.find(&marker) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut rest = &format[start + marker.len()..];
    while let Some(open) = rest.find('{') {
        // Stop at the end of this __print_symbolic call.
        if rest[..open].contains(')') {
            break;
        }
        let Some(close) = rest[open..].find('}') else {
            break;
        };
        let entry = &rest[open + 1..open + close];
        if let Some((value, name)) = entry.split_once(',')
            && let Ok(value) = value.trim().parse::<u32>()
        {
            out.push((value, name.trim().trim_matches('"').to_owned()));
        }
        rest = &rest[open + close + 1..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tracepoint_format() {
        let dir = std::env::temp_dir().join(format!("sonde-tp-{}", std::process::id()));
        let tp = dir.join("events/raw_syscalls/sys_exit");
        fs::create_dir_all(&tp).unwrap();
        fs::write(
            tp.join("format"),
            "name: sys_exit\nID: 1\nformat:\n\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
             \tfield:long id;\toffset:8;\tsize:8;\tsigned:1;\n\tfield:long ret;\toffset:16;\tsize:8;\tsigned:1;\n",
        )
        .unwrap();
        let root = dir.to_str().unwrap();
        assert_eq!(
            tracepoint_field_offset(root, "raw_syscalls", "sys_exit", "ret"),
            Some(16)
        );
        assert_eq!(
            tracepoint_field_offset(root, "raw_syscalls", "sys_exit", "id"),
            Some(8)
        );
        assert_eq!(
            tracepoint_field_offset(root, "raw_syscalls", "sys_exit", "nope"),
            None
        );
    }

    #[test]
    fn parses_print_symbolic() {
        let dir = std::env::temp_dir().join(format!("sonde-sym-{}", std::process::id()));
        let tp = dir.join("events/skb/kfree_skb");
        fs::create_dir_all(&tp).unwrap();
        fs::write(
            tp.join("format"),
            "print fmt: \"reason: %s\", __print_symbolic(REC->reason, { 2, \"NOT_SPECIFIED\" }, \
             { 3, \"NO_SOCKET\" }), __print_symbolic(REC->other, { 9, \"X\" })\n",
        )
        .unwrap();
        let symbols = tracepoint_symbols(dir.to_str().unwrap(), "skb", "kfree_skb", "reason");
        assert_eq!(
            symbols,
            [(2, "NOT_SPECIFIED".to_owned()), (3, "NO_SOCKET".to_owned())]
        );
    }
}
