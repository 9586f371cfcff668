//! A "foreign" eBPF program — another owner's, not Sonde's — for the tests
//! that check Sonde leaves other programs alone: two instructions (return a
//! constant) loaded with the bpf(2) syscall and pinned in a private bpffs
//! mount, so that `ip link ... xdp pinned` and `tc ... bpf pinned` attach
//! it the way another tool would. Hand-written: the test crate has no BPF
//! toolchain, and no object file is needed for two instructions.

use std::{
    ffi::CString,
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
};

use bpffs::TempMount;

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_OBJ_PIN: libc::c_long = 6;
pub const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
pub const BPF_PROG_TYPE_XDP: u32 = 6;

/// `bpf_attr` for BPF_PROG_LOAD, up to `prog_name`; the kernel reads the
/// rest as zeros (the union is padded to 128 bytes here).
#[repr(C)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    rest: [u8; 72],
}

#[repr(C)]
struct ObjPin {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    rest: [u8; 112],
}

/// Loads a program of `prog_type` named `name` that returns `ret`.
pub fn load_constant(prog_type: u32, name: &str, ret: i32) -> io::Result<OwnedFd> {
    // r0 = ret (BPF_ALU64 | BPF_MOV | BPF_K); exit.
    let mov: u64 = 0xb7 | (u64::from(ret as u32) << 32);
    let insns: [u64; 2] = [mov, 0x95];
    let license = c"GPL";
    let mut prog_name = [0u8; 16];
    let n = name.len().min(15);
    prog_name[..n].copy_from_slice(&name.as_bytes()[..n]);
    let attr = ProgLoad {
        prog_type,
        insn_cnt: 2,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 0,
        log_size: 0,
        log_buf: 0,
        kern_version: 0,
        prog_flags: 0,
        prog_name,
        rest: [0; 72],
    };
    // SAFETY: attr and what it points to live across the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            &attr as *const ProgLoad,
            size_of::<ProgLoad>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn pin(fd: &OwnedFd, path: &Path) -> io::Result<()> {
    let path = CString::new(path.as_os_str().as_encoded_bytes()).map_err(io::Error::other)?;
    let attr = ObjPin {
        pathname: path.as_ptr() as u64,
        bpf_fd: fd.as_raw_fd() as u32,
        file_flags: 0,
        rest: [0; 112],
    };
    // SAFETY: attr and the path live across the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_PIN,
            &attr as *const ObjPin,
            size_of::<ObjPin>(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Foreign programs pinned in a private bpffs mount (unmounted on drop;
/// what is attached stays attached until its interface goes).
pub struct Pinned {
    mount: TempMount,
}

impl Pinned {
    pub fn new() -> io::Result<Pinned> {
        Ok(Pinned {
            mount: TempMount::bpffs()?,
        })
    }

    /// Loads a constant-returning program and pins it as `file`; returns
    /// the pin's path.
    pub fn load(&self, prog_type: u32, name: &str, ret: i32, file: &str) -> io::Result<PathBuf> {
        let fd = load_constant(prog_type, name, ret)?;
        let path = self.mount.dir().join(file);
        pin(&fd, &path)?;
        Ok(path)
    }
}

mod bpffs {
    //! A bpffs mounted on a fresh directory under /tmp, unmounted and
    //! removed on drop.
    use std::{ffi::CString, io, path::PathBuf};

    pub struct TempMount(PathBuf);

    impl TempMount {
        pub fn bpffs() -> io::Result<TempMount> {
            let dir = std::env::temp_dir().join(format!(
                "sonde-test-bpffs-{}-{}",
                std::process::id(),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos())
            ));
            std::fs::create_dir_all(&dir)?;
            let target =
                CString::new(dir.as_os_str().as_encoded_bytes()).map_err(io::Error::other)?;
            // SAFETY: NUL-terminated strings that live across the call.
            let rc = unsafe {
                libc::mount(
                    c"bpf".as_ptr(),
                    target.as_ptr(),
                    c"bpf".as_ptr(),
                    0,
                    std::ptr::null(),
                )
            };
            if rc != 0 {
                let err = io::Error::last_os_error();
                let _ = std::fs::remove_dir(&dir);
                return Err(io::Error::other(format!(
                    "mounting a bpffs on {}: {err}",
                    dir.display()
                )));
            }
            Ok(TempMount(dir))
        }

        pub fn dir(&self) -> &std::path::Path {
            &self.0
        }
    }

    impl Drop for TempMount {
        fn drop(&mut self) {
            if let Ok(target) = CString::new(self.0.as_os_str().as_encoded_bytes()) {
                // SAFETY: a NUL-terminated path that lives across the call.
                unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
            }
            let _ = std::fs::remove_dir(&self.0);
        }
    }
}

/// The name the kernel gives map `id` (`bpftool map show`), if it exists.
pub fn map_name(id: u64) -> Option<String> {
    use std::process::Command;
    let out = crate::sys::output(Command::new("bpftool").args([
        "-j",
        "map",
        "show",
        "id",
        &id.to_string(),
    ]))
    .ok()?;
    let v: serde_json::Value = serde_json::from_str(&out).ok()?;
    v["name"].as_str().map(String::from)
}

/// The entries (key and value bytes) of the map named `name` that process
/// `pid` holds, as the kernel lists them (`bpftool map dump`): the referee
/// for what the agent says its tables hold.
pub fn map_entries(pid: u32, name: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    use std::process::Command;
    crate::sys::need_tool("bpftool", "bpftool");
    // The maps the process holds, from its fds (bpftool's own pid column
    // needs a bpftool built with it).
    let mut ids: Vec<u64> = std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/fdinfo: {e}"))
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
        .filter_map(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("map_id:")?.trim().parse().ok())
        })
        .collect();
    ids.sort_unstable();
    ids.dedup();
    let id = ids
        .into_iter()
        .find(|&id| map_name(id).as_deref() == Some(name))
        .unwrap_or_else(|| panic!("process {pid} holds no map named {name}"));
    let dump = crate::sys::output(Command::new("bpftool").args([
        "-j",
        "map",
        "dump",
        "id",
        &id.to_string(),
    ]))
    .unwrap_or_else(|e| panic!("bpftool map dump id {id}: {e}"));
    let entries: Vec<serde_json::Value> =
        serde_json::from_str(&dump).unwrap_or_else(|e| panic!("bpftool map dump id {id}: {e}"));
    // Without BTF for the map, bpftool gives each byte as "0x..".
    let bytes = |v: &serde_json::Value| -> Vec<u8> {
        v.as_array()
            .unwrap_or_else(|| panic!("bpftool map dump id {id}: no byte array in {v}"))
            .iter()
            .filter_map(|b| u8::from_str_radix(b.as_str()?.trim_start_matches("0x"), 16).ok())
            .collect()
    };
    entries
        .iter()
        .map(|e| (bytes(&e["key"]), bytes(&e["value"])))
        .collect()
}
