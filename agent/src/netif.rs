//! Network interfaces: resolving configured names and choosing the default
//! set (every non-loopback interface that is up).

use std::{ffi::CString, fs};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum InterfaceError {
    #[error("unknown network interface {0:?} (see `ip link` for the interfaces of this host)")]
    Unknown(String),
}

const IFF_UP: u32 = 0x1;
const IFF_LOOPBACK: u32 = 0x8;

pub fn ifindex(name: &str) -> Option<u32> {
    let c = CString::new(name).ok()?;
    // SAFETY: valid C string.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (index != 0).then_some(index)
}

/// Resolves `names`, or discovers the defaults when `names` is empty.
pub fn resolve(names: &[String]) -> Result<Vec<(String, u32)>, InterfaceError> {
    if names.is_empty() {
        return Ok(default_interfaces());
    }
    names
        .iter()
        .map(|name| {
            ifindex(name)
                .map(|i| (name.clone(), i))
                .ok_or_else(|| InterfaceError::Unknown(name.clone()))
        })
        .collect()
}

fn default_interfaces() -> Vec<(String, u32)> {
    let Ok(dir) = fs::read_dir("/sys/class/net") else {
        return Vec::new();
    };
    let mut found: Vec<(String, u32)> = dir
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let flags = fs::read_to_string(entry.path().join("flags")).ok()?;
            let flags = u32::from_str_radix(flags.trim().trim_start_matches("0x"), 16).ok()?;
            (flags & IFF_UP != 0 && flags & IFF_LOOPBACK == 0)
                .then(|| ifindex(&name).map(|i| (name, i)))
                .flatten()
        })
        .collect();
    found.sort_by_key(|(_, i)| *i);
    found
}
