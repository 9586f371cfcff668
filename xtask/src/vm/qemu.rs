//! Boots a kernel and initramfs under qemu's software emulator (TCG) with
//! the serial console on stdout, keeps the console in a log file, and kills
//! the machine at a deadline. KVM is deliberately not used: on these hosts
//! /dev/kvm is a paravirtual hypervisor that cannot run stock kernels.
//!
//! TCG runs single-threaded (`thread=single`: the guest's CPUs take turns on
//! one host thread). With `thread=multi`, 6.12 once died with "Oops: int3"
//! in syscall_exit_to_user_mode_prepare as the agent detached its sys_exit
//! raw tracepoint: a CPU hit the temporary int3 of a static-key text poke
//! after the poke had finished, a cross-modifying-code race of the emulator
//! that real CPUs do not have. Single-threaded TCG has no such race, is no
//! slower for this workload, and leaves the other host core for a second VM.

use std::{
    fs,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    path::Path,
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::util;

pub const QEMU: &str = "qemu-system-x86_64";

pub struct Machine<'a> {
    pub vmlinuz: &'a Path,
    pub initramfs: &'a Path,
    pub memory_mib: u32,
    pub cpus: u32,
    pub timeout: Duration,
    /// The whole console, `\r` removed.
    pub log: &'a Path,
}

pub struct Boot {
    pub console: String,
    /// Boot to power-off (or to the kill).
    pub elapsed: Duration,
    pub timed_out: bool,
}

pub fn check_installed() -> anyhow::Result<()> {
    if util::which(QEMU).is_none() {
        bail!("{QEMU} not found: apt-get install qemu-system-x86");
    }
    Ok(())
}

/// Runs the machine to power-off; `on_line` sees each console line as it
/// arrives, with the time since qemu started (for progress).
pub fn boot(m: &Machine, mut on_line: impl FnMut(Duration, &str)) -> anyhow::Result<Boot> {
    let mut cmd = Command::new(QEMU);
    cmd.args(["-accel", "tcg,thread=single", "-cpu", "max"])
        .args(["-m", &m.memory_mib.to_string()])
        .args(["-smp", &m.cpus.to_string()])
        .args(["-nodefaults", "-display", "none", "-serial", "stdio"])
        .arg("-no-reboot")
        .arg("-kernel")
        .arg(m.vmlinuz)
        .arg("-initrd")
        .arg(m.initramfs)
        // panic=-1: reboot at once on a panic, which -no-reboot turns into
        // an exit; quiet keeps the console for the guest's own report.
        .args([
            "-append",
            "console=ttyS0 panic=-1 quiet loglevel=3 oops=panic",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let shown = util::display(&cmd);
    println!("$ {shown}");
    let mut log =
        fs::File::create(m.log).with_context(|| format!("creating {}", m.log.display()))?;
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("could not start `{shown}`"))?;

    let stdout = child.stdout.take().context("qemu stdout")?;
    let (tx, rx) = mpsc::channel::<String>();
    let reader = thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf)
                        .trim_end_matches(['\n', '\r'])
                        .replace('\r', "");
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            }
        }
    });
    let mut stderr = child.stderr.take().context("qemu stderr")?;
    let errors = thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });

    let deadline = start + m.timeout;
    let mut console = String::new();
    let mut timed_out = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left.min(Duration::from_secs(1))) {
            Ok(line) => {
                writeln!(log, "{line}").context("writing the console log")?;
                on_line(start.elapsed(), &line);
                console.push_str(&line);
                console.push('\n');
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if Instant::now() >= deadline {
                    timed_out = true;
                    let _ = child.kill();
                    break;
                }
            }
        }
    }
    let status = child.wait().context("waiting for qemu")?;
    let elapsed = start.elapsed();
    let _ = reader.join();
    let stderr = errors.join().unwrap_or_default();
    if !stderr.trim().is_empty() {
        writeln!(log, "--- qemu stderr ---\n{stderr}")?;
    }
    if !timed_out && !status.success() {
        bail!(
            "`{shown}` failed ({status}): {}",
            stderr.trim().lines().last().unwrap_or("no message")
        );
    }
    Ok(Boot {
        console,
        elapsed,
        timed_out,
    })
}
