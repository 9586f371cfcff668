//! Syscall ids ↔ names for the architecture the agent runs on (the
//! `syscalls` crate's tables), so metrics say `getppid`, not `110`.

use std::str::FromStr;

use syscalls::Sysno;

/// Name of a syscall id; unknown ids become `sys_<id>`.
pub fn name(id: u32) -> String {
    Sysno::new(id as usize)
        .map(|s| s.name().to_owned())
        .unwrap_or_else(|| format!("sys_{id}"))
}

/// Id of a syscall name on this architecture (None: not a syscall here,
/// e.g. `epoll_wait` on aarch64).
pub fn id(name: &str) -> Option<u32> {
    Sysno::from_str(name).ok().map(|s| s.id() as u32)
}

/// Syscalls that never return to user space.
pub fn never_returning() -> (u32, u32) {
    (Sysno::exit.id() as u32, Sysno::exit_group.id() as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let getppid = id("getppid").unwrap();
        assert_eq!(name(getppid), "getppid");
        assert_eq!(name(100_000), "sys_100000");
        assert_eq!(id("not_a_syscall"), None);
    }
}
