//! Kernel workloads for the integration tests.
//!
//! Every subcommand prints the workload's own pid on the first line of
//! stdout, then does a bounded amount of work (bounded in count and time) and
//! exits. Subcommands that listen print `ready` once their socket is bound, so
//! the test can start the other side without guessing.
//!
//! ```text
//! sonde-workload getppid N
//! sonde-workload close-bad N
//! sonde-workload udp-send ADDR:PORT N SIZE
//! sonde-workload udp-sink ADDR:PORT SECONDS
//! sonde-workload tcp-connect ADDR:PORT
//! sonde-workload tcp-listen ADDR:PORT SECONDS
//! sonde-workload nanosleep MS N
//! ```

use std::io::{ErrorKind, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Upper bound on any repetition count, so a typo cannot spin forever.
const MAX_COUNT: u64 = 100_000_000;
/// Upper bound on any duration argument.
const MAX_SECONDS: u64 = 600;

fn usage() -> ExitCode {
    eprintln!(
        "usage: sonde-workload <getppid N | close-bad N | udp-send ADDR:PORT N SIZE | \
         udp-sink ADDR:PORT SECONDS | tcp-connect ADDR:PORT | tcp-listen ADDR:PORT SECONDS | \
         nanosleep MS N>"
    );
    ExitCode::from(2)
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    // A closed stdout is not a reason to stop the workload.
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn num(s: &str, what: &str, max: u64) -> Result<u64, String> {
    let v: u64 = s
        .parse()
        .map_err(|e| format!("{what} must be a number, got {s:?}: {e}"))?;
    if v > max {
        return Err(format!("{what} = {v} is above the limit {max}"));
    }
    Ok(v)
}

fn addr(s: &str) -> Result<SocketAddr, String> {
    s.parse()
        .map_err(|e| format!("address must be IP:PORT, got {s:?}: {e}"))
}

fn getppid(n: u64) -> Result<(), String> {
    for _ in 0..n {
        // The raw syscall: glibc does not cache getppid, but be explicit.
        // SAFETY: getppid takes no arguments and cannot fail.
        unsafe { libc::syscall(libc::SYS_getppid) };
    }
    Ok(())
}

fn close_bad(n: u64) -> Result<(), String> {
    for _ in 0..n {
        // SAFETY: closing fd -1 touches no memory and fails with EBADF.
        let r = unsafe { libc::syscall(libc::SYS_close, -1i64) };
        if r != -1 {
            return Err(format!("close(-1) returned {r}, expected -1 (EBADF)"));
        }
    }
    Ok(())
}

fn udp_send(to: SocketAddr, n: u64, size: usize) -> Result<(), String> {
    let bind: SocketAddr = if to.is_ipv4() {
        "0.0.0.0:0".parse().unwrap()
    } else {
        "[::]:0".parse().unwrap()
    };
    let sock = UdpSocket::bind(bind).map_err(|e| format!("bind {bind}: {e}"))?;
    let payload = vec![0x5au8; size];
    let deadline = Instant::now() + Duration::from_secs(60);
    for i in 0..n {
        if Instant::now() > deadline {
            return Err(format!("udp-send: gave up after 60 s with {i} of {n} sent"));
        }
        let sent = sock
            .send_to(&payload, to)
            .map_err(|e| format!("send_to {to} (datagram {i}): {e}"))?;
        if sent != size {
            return Err(format!("send_to {to}: short send {sent} of {size} bytes"));
        }
        // Pace: let neighbour resolution finish after the first datagram, and
        // let the receiver drain every 100 datagrams, so nothing is dropped.
        if i == 0 {
            std::thread::sleep(Duration::from_millis(20));
        } else if i % 100 == 99 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    say(&format!("sent {n} datagrams of {size} bytes to {to}"));
    Ok(())
}

fn udp_sink(at: SocketAddr, seconds: u64) -> Result<(), String> {
    let sock = UdpSocket::bind(at).map_err(|e| format!("bind {at}: {e}"))?;
    say("ready");
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut buf = vec![0u8; 65536];
    let (mut datagrams, mut bytes) = (0u64, 0u64);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        sock.set_read_timeout(Some(left.min(Duration::from_millis(200))))
            .map_err(|e| format!("set_read_timeout: {e}"))?;
        match sock.recv_from(&mut buf) {
            Ok((len, _)) => {
                datagrams += 1;
                bytes += len as u64;
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("recv_from on {at}: {e}")),
        }
    }
    say(&format!("received {datagrams} datagrams {bytes} bytes"));
    Ok(())
}

fn tcp_connect(to: SocketAddr) -> Result<(), String> {
    let stream = TcpStream::connect_timeout(&to, Duration::from_secs(5))
        .map_err(|e| format!("connect {to}: {e}"))?;
    say("connected");
    drop(stream);
    Ok(())
}

fn tcp_listen(at: SocketAddr, seconds: u64) -> Result<(), String> {
    let listener = TcpListener::bind(at).map_err(|e| format!("bind {at}: {e}"))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("set_nonblocking: {e}"))?;
    say("ready");
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut accepted = 0u64;
    while Instant::now() < deadline {
        match listener.accept() {
            Ok((stream, _)) => {
                accepted += 1;
                drop(stream);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("accept on {at}: {e}")),
        }
    }
    say(&format!("accepted {accepted}"));
    Ok(())
}

fn nanosleep(ms: u64, n: u64) -> Result<(), String> {
    let ts = libc::timespec {
        tv_sec: (ms / 1000) as libc::time_t,
        tv_nsec: ((ms % 1000) * 1_000_000) as libc::c_long,
    };
    for i in 0..n {
        // The nanosleep syscall itself (glibc's nanosleep() would issue
        // clock_nanosleep); an interrupted sleep just ends early.
        // SAFETY: `ts` is a valid timespec; the remainder pointer may be null.
        let r = unsafe {
            libc::syscall(
                libc::SYS_nanosleep,
                &ts as *const libc::timespec,
                std::ptr::null_mut::<libc::timespec>(),
            )
        };
        if r != 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != ErrorKind::Interrupted {
                return Err(format!("nanosleep #{i}: {e}"));
            }
        }
    }
    Ok(())
}

fn run(args: &[String]) -> Result<(), String> {
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    match a.as_slice() {
        ["getppid", n] => getppid(num(n, "N", MAX_COUNT)?),
        ["close-bad", n] => close_bad(num(n, "N", MAX_COUNT)?),
        ["udp-send", to, n, size] => udp_send(
            addr(to)?,
            num(n, "N", MAX_COUNT)?,
            num(size, "SIZE", 65507)? as usize,
        ),
        ["udp-sink", at, secs] => udp_sink(addr(at)?, num(secs, "SECONDS", MAX_SECONDS)?),
        ["tcp-connect", to] => tcp_connect(addr(to)?),
        ["tcp-listen", at, secs] => tcp_listen(addr(at)?, num(secs, "SECONDS", MAX_SECONDS)?),
        ["nanosleep", ms, n] => {
            nanosleep(num(ms, "MS", MAX_SECONDS * 1000)?, num(n, "N", MAX_COUNT)?)
        }
        _ => Err("unknown subcommand or wrong number of arguments".to_string()),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() {
        return usage();
    }
    say(&std::process::id().to_string());
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sonde-workload: {e}");
            if e.starts_with("unknown subcommand") {
                usage()
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
