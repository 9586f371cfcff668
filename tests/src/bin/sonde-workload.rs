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
//! sonde-workload udp-send-every ADDR:PORT N SIZE MS   one socket, MS between datagrams
//! sonde-workload udp-sink ADDR:PORT SECONDS
//! sonde-workload tcp-connect ADDR:PORT
//! sonde-workload tcp-listen ADDR:PORT SECONDS
//! sonde-workload listen-overflow ADDR:PORT N  N connects to a backlog-1 listener that never accepts
//! sonde-workload tcp-sink ADDR:PORT SECONDS   reads each connection to its end, then closes it
//! sonde-workload tcp-send ADDR:PORT N SIZE PAUSE_MS   connects (says `connected`), waits PAUSE_MS,
//!                                             sends N messages of SIZE bytes 10 ms apart (says
//!                                             `written`), then closes its side and waits for the
//!                                             peer's close
//! sonde-workload nanosleep MS N
//! ```
//!
//! Benchmark load (`cargo xtask bench`); each prints one result line
//! (`key value ...`) before it exits:
//!
//! ```text
//! sonde-workload syscall-loop K N             N syscalls cycling through K cheap ones
//! sonde-workload getppid-rate RATE SECONDS    getppid paced at RATE per second
//! sonde-workload udp-flood ADDR:PORT SECONDS SIZE   sendmmsg, 64 datagrams a call
//! sonde-workload udp-flows SRC COUNT ADDR:PORT FLOWS   one datagram per flow (raw socket)
//! ```
//!
//! Normal load and incidents for `cargo xtask eval`:
//!
//! ```text
//! sonde-workload http-serve ADDR:PORT SECONDS DELAY_US   keep-alive HTTP, DELAY_US per request
//! sonde-workload mix SECONDS                  a compiler-like mix: stat, open/read/close, exec
//! sonde-workload connect-rate ADDR:PORT RATE SECONDS   TCP connects paced at RATE per second
//! ```
//!
//! A collector for `cargo xtask soak`, which stops it and starts it again
//! on the same port (an OTLP endpoint going away and coming back):
//!
//! ```text
//! sonde-workload otlp-receive ADDR:PORT SECONDS   OTLP/gRPC receiver (tests/src/otlp); says
//!                                             `ready`, then `received N` every 10 s
//! ```

use std::io::{ErrorKind, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Upper bound on any repetition count, so a typo cannot spin forever.
const MAX_COUNT: u64 = 100_000_000;
/// Upper bound on any duration argument (a day: the soak's load runs for
/// its whole duration).
const MAX_SECONDS: u64 = 86_400;

fn usage() -> ExitCode {
    eprintln!(
        "usage: sonde-workload <getppid N | close-bad N | udp-send ADDR:PORT N SIZE | \
         udp-send-every ADDR:PORT N SIZE MS | udp-sink ADDR:PORT SECONDS | tcp-connect ADDR:PORT | tcp-listen ADDR:PORT SECONDS | \
         listen-overflow ADDR:PORT N | tcp-sink ADDR:PORT SECONDS | \
         tcp-send ADDR:PORT N SIZE PAUSE_MS | \
         nanosleep MS N | syscall-loop K N | getppid-rate RATE SECONDS | \
         udp-flood ADDR:PORT SECONDS SIZE | udp-flows SRC COUNT ADDR:PORT FLOWS | \
         http-serve ADDR:PORT SECONDS DELAY_US | mix SECONDS | connect-rate ADDR:PORT RATE SECONDS | \
         otlp-receive ADDR:PORT SECONDS>"
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

/// `n` datagrams of `size` bytes from one socket; `every` apart when given
/// (one flow that stays active), else paced only to lose nothing.
fn udp_send(to: SocketAddr, n: u64, size: usize, every: Option<Duration>) -> Result<(), String> {
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
        if let Some(every) = every {
            std::thread::sleep(every);
        } else if i == 0 {
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

/// A non-blocking listener on `at`, announced with `ready`.
fn listening(at: SocketAddr) -> Result<TcpListener, String> {
    let listener = TcpListener::bind(at).map_err(|e| format!("bind {at}: {e}"))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("set_nonblocking: {e}"))?;
    say("ready");
    Ok(listener)
}

fn tcp_listen(at: SocketAddr, seconds: u64) -> Result<(), String> {
    let listener = listening(at)?;
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut accepted = 0u64;
    accept_until(&listener, at, deadline, |stream| {
        accepted += 1;
        drop(stream);
    })?;
    say(&format!("accepted {accepted}"));
    Ok(())
}

/// How long one side of `tcp-send`/`tcp-sink` waits for the other: ample for
/// a few retransmission timeouts, bounded.
const STREAM_TIMEOUT: Duration = Duration::from_secs(60);

fn tcp_sink(at: SocketAddr, seconds: u64) -> Result<(), String> {
    let listener = listening(at)?;
    let deadline = Instant::now() + Duration::from_secs(seconds);
    accept_until(&listener, at, deadline, |mut stream| {
        std::thread::spawn(move || {
            let _ = stream.set_nonblocking(false);
            let _ = stream.set_read_timeout(Some(STREAM_TIMEOUT));
            let _ = std::io::copy(&mut stream, &mut std::io::sink());
        });
    })
}

/// One connection that stays open while the test changes the path (the
/// pause), then a paced stream of small segments: with TCP_NODELAY each
/// message is a segment of its own, so a lossy path retransmits data, not
/// the handshake.
fn tcp_send(to: SocketAddr, n: u64, size: usize, pause: Duration) -> Result<(), String> {
    use std::io::Read as _;
    let mut stream = TcpStream::connect_timeout(&to, Duration::from_secs(5))
        .map_err(|e| format!("connect {to}: {e}"))?;
    stream
        .set_nodelay(true)
        .and_then(|()| stream.set_read_timeout(Some(STREAM_TIMEOUT)))
        .and_then(|()| stream.set_write_timeout(Some(STREAM_TIMEOUT)))
        .map_err(|e| format!("socket options: {e}"))?;
    say("connected");
    std::thread::sleep(pause);
    let message = vec![b'x'; size];
    for i in 0..n {
        stream
            .write_all(&message)
            .map_err(|e| format!("write {i} to {to}: {e}"))?;
        std::thread::sleep(Duration::from_millis(10));
    }
    say("written");
    stream
        .shutdown(std::net::Shutdown::Write)
        .map_err(|e| format!("shutdown: {e}"))?;
    // The sink closes once it has read everything: every segment arrived.
    let mut rest = Vec::new();
    stream
        .read_to_end(&mut rest)
        .map_err(|e| format!("waiting for {to} to close: {e}"))?;
    say(&format!("sent {}", n * size as u64));
    Ok(())
}

/// Accepts connections on the non-blocking `listener` until `deadline`,
/// handing each to `on_accept`.
fn accept_until(
    listener: &TcpListener,
    at: SocketAddr,
    deadline: Instant,
    mut on_accept: impl FnMut(TcpStream),
) -> Result<(), String> {
    while Instant::now() < deadline {
        match listener.accept() {
            Ok((stream, _)) => on_accept(stream),
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("accept on {at}: {e}")),
        }
    }
    Ok(())
}

/// A listener with a backlog of 1 that never accepts, and `n` non-blocking
/// connects to it: all but the first couple overflow its accept queue.
/// Held 2 s so the kernel's SYN retries land inside the test's window too.
fn listen_overflow(at: SocketAddr, n: u64) -> Result<(), String> {
    let SocketAddr::V4(v4) = at else {
        return Err("listen-overflow: IPv4 only".into());
    };
    // SAFETY: plain socket calls on a fresh fd; every return is checked.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
    if fd < 0 {
        return Err(format!("socket: {}", std::io::Error::last_os_error()));
    }
    let sin = sockaddr_in(v4);
    let one: libc::c_int = 1;
    // SAFETY: valid pointers and lengths for these calls.
    let ok = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            (&one as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        ) == 0
            && libc::bind(
                fd,
                (&sin as *const libc::sockaddr_in).cast(),
                size_of::<libc::sockaddr_in>() as libc::socklen_t,
            ) == 0
            && libc::listen(fd, 1) == 0
    };
    if !ok {
        let err = std::io::Error::last_os_error();
        // SAFETY: our fd.
        unsafe { libc::close(fd) };
        return Err(format!("listen on {at} with backlog 1: {err}"));
    }
    say("ready");
    let mut clients = Vec::new();
    for _ in 0..n {
        clients.push(raw_connect(at)?);
    }
    std::thread::sleep(Duration::from_secs(2));
    drop(clients);
    // SAFETY: our fd.
    unsafe { libc::close(fd) };
    say(&format!("connects {n}"));
    Ok(())
}

/// An IPv4 socket address as the C calls take it.
fn sockaddr_in(v4: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: v4.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*v4.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

/// Starts a connect without waiting for it (the handshake may never end).
fn raw_connect(to: SocketAddr) -> Result<TcpStream, String> {
    use std::os::fd::FromRawFd;
    let SocketAddr::V4(v4) = to else {
        return Err("IPv4 only".into());
    };
    // SAFETY: fresh fd, checked; ownership passes to the TcpStream.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_NONBLOCK, 0);
        if fd < 0 {
            return Err(format!("socket: {}", std::io::Error::last_os_error()));
        }
        let sin = sockaddr_in(v4);
        let rc = libc::connect(
            fd,
            (&sin as *const libc::sockaddr_in).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        let err = std::io::Error::last_os_error();
        if rc != 0 && err.raw_os_error() != Some(libc::EINPROGRESS) {
            libc::close(fd);
            return Err(format!("connect {to}: {err}"));
        }
        Ok(TcpStream::from_raw_fd(fd))
    }
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

/// Upper bound on `getppid-rate`'s RATE.
const MAX_RATE: u64 = 100_000_000;
/// Upper bound on `udp-flows`' FLOWS.
const MAX_FLOWS: u64 = 1_000_000;
/// Datagrams per `sendmmsg` call in `udp-flood`.
const FLOOD_BATCH: usize = 64;
/// `udp-flows` source ports: `FIRST_FLOW_PORT..FIRST_FLOW_PORT + FLOW_PORTS`.
const FIRST_FLOW_PORT: u32 = 10_000;
const FLOW_PORTS: u32 = 50_000;

/// Cheap syscalls without side effects, in the order `syscall-loop K` uses
/// them: K = 1 is getppid alone. The last six fail with EBADF on purpose
/// (the error path is part of the mix).
const CHEAP_SYSCALLS: [fn(); 32] = {
    use libc::*;
    // SAFETY (every entry): each call passes valid pointers to local buffers
    // at least as large as the kernel writes, or none, and changes no state
    // of the process.
    [
        || unsafe {
            syscall(SYS_getppid);
        },
        || unsafe {
            syscall(SYS_getpid);
        },
        || unsafe {
            syscall(SYS_gettid);
        },
        || unsafe {
            syscall(SYS_getuid);
        },
        || unsafe {
            syscall(SYS_geteuid);
        },
        || unsafe {
            syscall(SYS_getgid);
        },
        || unsafe {
            syscall(SYS_getegid);
        },
        || unsafe {
            syscall(SYS_getpgrp);
        },
        || unsafe {
            syscall(SYS_getsid, 0);
        },
        || unsafe {
            syscall(SYS_getpgid, 0);
        },
        || unsafe {
            syscall(SYS_getpriority, PRIO_PROCESS, 0);
        },
        || {
            let mut r = [0u64; 2];
            unsafe { syscall(SYS_getrlimit, RLIMIT_NOFILE, r.as_mut_ptr()) };
        },
        || {
            let mut ids = [0u32; 3];
            let p = ids.as_mut_ptr();
            unsafe { syscall(SYS_getresuid, p, p.add(1), p.add(2)) };
        },
        || {
            let mut ids = [0u32; 3];
            let p = ids.as_mut_ptr();
            unsafe { syscall(SYS_getresgid, p, p.add(1), p.add(2)) };
        },
        || unsafe {
            syscall(SYS_getgroups, 0, std::ptr::null_mut::<gid_t>());
        },
        || unsafe {
            syscall(SYS_sched_getscheduler, 0);
        },
        || unsafe {
            syscall(SYS_sched_get_priority_max, SCHED_FIFO);
        },
        || unsafe {
            syscall(SYS_sched_get_priority_min, SCHED_FIFO);
        },
        || {
            let mut param = [0i32; 4];
            unsafe { syscall(SYS_sched_getparam, 0, param.as_mut_ptr()) };
        },
        || {
            let (mut cpu, mut node) = (0u32, 0u32);
            unsafe { syscall(SYS_getcpu, &mut cpu, &mut node, 0usize) };
        },
        || unsafe {
            syscall(SYS_personality, 0xffff_ffffu64);
        },
        || unsafe {
            syscall(SYS_prctl, PR_GET_DUMPABLE, 0, 0, 0, 0);
        },
        || {
            let mut it = [0i64; 4];
            unsafe { syscall(SYS_getitimer, ITIMER_REAL, it.as_mut_ptr()) };
        },
        || {
            let mut t = [0i64; 4];
            unsafe { syscall(SYS_times, t.as_mut_ptr()) };
        },
        || {
            let mut buf = [0u8; 512];
            unsafe { syscall(SYS_uname, buf.as_mut_ptr()) };
        },
        || {
            let mut buf = [0u8; 4096];
            unsafe { syscall(SYS_getcwd, buf.as_mut_ptr(), buf.len()) };
        },
        || unsafe {
            syscall(SYS_close, -1i64);
        },
        || {
            let mut st = [0u8; 256];
            unsafe { syscall(SYS_fstat, -1i64, st.as_mut_ptr()) };
        },
        || unsafe {
            syscall(SYS_lseek, -1i64, 0, SEEK_SET);
        },
        || unsafe {
            syscall(SYS_read, -1i64, std::ptr::null_mut::<u8>(), 0);
        },
        || unsafe {
            syscall(SYS_write, -1i64, std::ptr::null::<u8>(), 0);
        },
        || unsafe {
            syscall(SYS_dup, -1i64);
        },
    ]
};

/// N syscalls, cycling through the first K of [`CHEAP_SYSCALLS`]; prints
/// `elapsed_ns E calls N`.
fn syscall_loop(k: usize, n: u64) -> Result<(), String> {
    if k == 0 {
        return Err("K must be at least 1".into());
    }
    let calls = &CHEAP_SYSCALLS[..k];
    let start = Instant::now();
    let mut next = 0;
    for _ in 0..n {
        calls[next]();
        next += 1;
        if next == k {
            next = 0;
        }
    }
    let elapsed = start.elapsed();
    say(&format!("elapsed_ns {} calls {n}", elapsed.as_nanos()));
    Ok(())
}

/// getppid at RATE calls per second for SECONDS (or as fast as it can, if
/// that is slower; it stops at SECONDS either way); prints
/// `calls N elapsed_ns E`.
fn getppid_rate(rate: u64, seconds: u64) -> Result<(), String> {
    if rate == 0 {
        return Err("RATE must be at least 1".into());
    }
    let total = rate.saturating_mul(seconds);
    let window = Duration::from_secs(seconds);
    let start = Instant::now();
    let mut done = 0u64;
    while done < total {
        let elapsed = start.elapsed();
        if elapsed >= window {
            break;
        }
        // Calls due by now; catch up in bursts of at most 1024 when behind,
        // so the clock is read often enough to stop on time.
        let due = ((elapsed.as_nanos() * u128::from(rate) / 1_000_000_000) as u64)
            .min(total)
            .min(done + 1024);
        if due <= done {
            let next_ns = (u128::from(done + 1) * 1_000_000_000 / u128::from(rate)) as u64;
            let ahead = Duration::from_nanos(next_ns).saturating_sub(elapsed);
            if ahead > Duration::from_micros(200) {
                std::thread::sleep(ahead - Duration::from_micros(100));
            } else {
                std::hint::spin_loop();
            }
            continue;
        }
        while done < due {
            // SAFETY: getppid takes no arguments and cannot fail.
            unsafe { libc::syscall(libc::SYS_getppid) };
            done += 1;
        }
    }
    say(&format!(
        "calls {done} elapsed_ns {}",
        start.elapsed().as_nanos()
    ));
    Ok(())
}

/// UDP datagrams of SIZE bytes to ADDR:PORT, as fast as `sendmmsg` takes
/// them (64 a call), for SECONDS; prints `sent N`. A full queue (ENOBUFS)
/// or an ICMP error from the far side is not a failure.
fn udp_flood(to: SocketAddr, seconds: u64, size: usize) -> Result<(), String> {
    use std::os::fd::AsRawFd as _;
    let bind: SocketAddr = if to.is_ipv4() {
        "0.0.0.0:0".parse().unwrap()
    } else {
        "[::]:0".parse().unwrap()
    };
    let sock = UdpSocket::bind(bind).map_err(|e| format!("bind {bind}: {e}"))?;
    sock.connect(to).map_err(|e| format!("connect {to}: {e}"))?;
    let mut payload = vec![0x5au8; size];
    // One datagram first, so neighbour resolution is done before the flood.
    sock.send(&payload)
        .map_err(|e| format!("send to {to}: {e}"))?;
    std::thread::sleep(Duration::from_millis(20));
    let mut iov = libc::iovec {
        iov_base: payload.as_mut_ptr().cast(),
        iov_len: size,
    };
    // SAFETY: mmsghdr is plain data; all-zero is a valid (empty) value.
    let mut msgs: Vec<libc::mmsghdr> = (0..FLOOD_BATCH)
        .map(|_| unsafe { std::mem::zeroed() })
        .collect();
    for m in &mut msgs {
        m.msg_hdr.msg_iov = &mut iov;
        m.msg_hdr.msg_iovlen = 1;
    }
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut sent = 1u64;
    while Instant::now() < deadline {
        // SAFETY: `msgs` holds FLOOD_BATCH headers, each pointing at `iov`,
        // which points at `payload`; all outlive the call.
        let r = unsafe {
            libc::sendmmsg(
                sock.as_raw_fd(),
                msgs.as_mut_ptr(),
                FLOOD_BATCH as libc::c_uint,
                0,
            )
        };
        if r >= 0 {
            sent += r as u64;
            continue;
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ENOBUFS | libc::EAGAIN | libc::ECONNREFUSED | libc::EINTR) => {}
            _ => return Err(format!("sendmmsg to {to}: {e}")),
        }
    }
    say(&format!("sent {sent}"));
    Ok(())
}

/// FLOWS distinct UDP flows to ADDR:PORT, one 16-byte datagram each, from a
/// raw socket: flow i comes from address SRC + (i mod COUNT) and port
/// 10000 + (i div COUNT), so COUNT source addresses (peers) share the flows.
/// Prints `sent N`. The source addresses need not be assigned anywhere; the
/// receiving side needs a route back to them only for replies.
fn udp_flows(src: Ipv4Addr, count: u32, to: SocketAddr, flows: u64) -> Result<(), String> {
    let SocketAddr::V4(to) = to else {
        return Err(format!("udp-flows sends IPv4 only, got {to}"));
    };
    if count == 0 || flows > u64::from(count) * u64::from(FLOW_PORTS) {
        return Err(format!(
            "{flows} flows need more than {count} source addresses x {FLOW_PORTS} ports"
        ));
    }
    // SAFETY: plain socket(2); the fd is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
    if fd < 0 {
        return Err(format!(
            "raw socket (needs CAP_NET_RAW): {}",
            std::io::Error::last_os_error()
        ));
    }
    let result = send_flows(fd, src, count, to, flows);
    // SAFETY: fd is ours and not used after this.
    unsafe { libc::close(fd) };
    let sent = result?;
    say(&format!("sent {sent}"));
    Ok(())
}

fn send_flows(
    fd: libc::c_int,
    src: Ipv4Addr,
    count: u32,
    to: SocketAddrV4,
    flows: u64,
) -> Result<u64, String> {
    const PAYLOAD: usize = 16;
    const LEN: usize = 20 + 8 + PAYLOAD;
    let dst = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(*to.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    let mut pkt = [0u8; LEN];
    pkt[0] = 0x45; // IPv4, 20-byte header
    pkt[2..4].copy_from_slice(&(LEN as u16).to_be_bytes());
    pkt[8] = 64; // TTL
    pkt[9] = libc::IPPROTO_UDP as u8;
    pkt[16..20].copy_from_slice(&to.ip().octets());
    pkt[22..24].copy_from_slice(&to.port().to_be_bytes());
    pkt[24..26].copy_from_slice(&((8 + PAYLOAD) as u16).to_be_bytes());
    // UDP checksum 0: none (IPv4). The kernel fills in the IP checksum.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut sent = 0u64;
    while sent < flows {
        if Instant::now() > deadline {
            return Err(format!("gave up after 60 s with {sent} of {flows} sent"));
        }
        let addr = u32::from(src).wrapping_add((sent % u64::from(count)) as u32);
        let port = FIRST_FLOW_PORT + (sent / u64::from(count)) as u32;
        pkt[12..16].copy_from_slice(&addr.to_be_bytes());
        pkt[20..22].copy_from_slice(&(port as u16).to_be_bytes());
        // SAFETY: `pkt` and `dst` are valid for the lengths passed.
        let r = unsafe {
            libc::sendto(
                fd,
                pkt.as_ptr().cast(),
                LEN,
                0,
                (&dst as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if matches!(e.raw_os_error(), Some(libc::ENOBUFS | libc::EINTR)) {
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            return Err(format!("sendto {to}: {e}"));
        }
        sent += 1;
        // Neighbour resolution after the first datagram; then let the
        // receiving side drain every 256.
        if sent == 1 {
            std::thread::sleep(Duration::from_millis(20));
        } else if sent.is_multiple_of(256) {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    Ok(sent)
}

/// A keep-alive HTTP/1.1 server answering every request with a 2-byte
/// body after `delay` (so a load generator's rate is bounded by the server,
/// not by the CPU): one thread per connection, all gone by the deadline.
fn http_serve(at: SocketAddr, seconds: u64, delay: Duration) -> Result<(), String> {
    use std::io::Read;
    let listener = listening(at)?;
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let served = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut threads = Vec::new();
    accept_until(&listener, at, deadline, |mut stream| {
        let served = served.clone();
        threads.push(std::thread::spawn(move || {
            let _ = stream.set_nonblocking(false);
            let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
            let mut buf = [0u8; 4096];
            let mut pending = Vec::new();
            while Instant::now() < deadline {
                match stream.read(&mut buf) {
                    Ok(0) => return,
                    Ok(n) => pending.extend_from_slice(&buf[..n]),
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                        continue;
                    }
                    Err(_) => return,
                }
                while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                    pending.drain(..end + 4);
                    std::thread::sleep(delay);
                    let reply = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                    if stream.write_all(reply).is_err() {
                        return;
                    }
                    served.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }));
    })?;
    for t in threads {
        let _ = t.join();
    }
    say(&format!(
        "served {}",
        served.load(std::sync::atomic::Ordering::Relaxed)
    ));
    Ok(())
}

/// What a build looks like to the kernel, at a steady pace: every 20 ms
/// stat 20 files, read 3, and every 250 ms run `/bin/true`.
fn mix(seconds: u64) -> Result<(), String> {
    let files: Vec<std::path::PathBuf> = std::fs::read_dir("/usr/bin")
        .map_err(|e| format!("reading /usr/bin: {e}"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .take(64)
        .collect();
    if files.is_empty() {
        return Err("no files in /usr/bin to stat".into());
    }
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let (mut ticks, mut execs) = (0u64, 0u64);
    let mut buf = vec![0u8; 4096];
    while Instant::now() < deadline {
        for i in 0..20 {
            let _ = std::fs::metadata(&files[(ticks as usize * 20 + i) % files.len()]);
        }
        for i in 0..3 {
            if let Ok(mut f) = std::fs::File::open(&files[(ticks as usize * 3 + i) % files.len()]) {
                let _ = std::io::Read::read(&mut f, &mut buf);
            }
        }
        if ticks.is_multiple_of(12) {
            let status = std::process::Command::new("/bin/true")
                .status()
                .map_err(|e| format!("running /bin/true: {e}"))?;
            if status.success() {
                execs += 1;
            }
        }
        ticks += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    say(&format!("ticks {ticks} execs {execs}"));
    Ok(())
}

/// TCP connects to `to`, paced at `rate` per second for `seconds`: each one
/// completes its handshake and is closed at once.
fn connect_rate(to: SocketAddr, rate: u64, seconds: u64) -> Result<(), String> {
    let start = Instant::now();
    let deadline = start + Duration::from_secs(seconds);
    let (mut ok, mut failed) = (0u64, 0u64);
    let mut n = 0u64;
    while Instant::now() < deadline {
        let due = start + Duration::from_secs_f64(n as f64 / rate as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        match TcpStream::connect_timeout(&to, Duration::from_secs(1)) {
            Ok(_) => ok += 1,
            Err(_) => failed += 1,
        }
        n += 1;
    }
    say(&format!("connected {ok} failed {failed}"));
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
            None,
        ),
        ["udp-send-every", to, n, size, ms] => udp_send(
            addr(to)?,
            num(n, "N", MAX_COUNT)?,
            num(size, "SIZE", 65507)? as usize,
            Some(Duration::from_millis(num(ms, "MS", 10_000)?)),
        ),
        ["udp-sink", at, secs] => udp_sink(addr(at)?, num(secs, "SECONDS", MAX_SECONDS)?),
        ["tcp-connect", to] => tcp_connect(addr(to)?),
        ["tcp-listen", at, secs] => tcp_listen(addr(at)?, num(secs, "SECONDS", MAX_SECONDS)?),
        ["tcp-sink", at, secs] => tcp_sink(addr(at)?, num(secs, "SECONDS", MAX_SECONDS)?),
        ["tcp-send", to, n, size, pause] => tcp_send(
            addr(to)?,
            num(n, "N", MAX_COUNT)?,
            num(size, "SIZE", 1 << 20)? as usize,
            Duration::from_millis(num(pause, "PAUSE_MS", 60_000)?),
        ),
        ["listen-overflow", at, n] => listen_overflow(addr(at)?, num(n, "N", 1000)?),
        ["nanosleep", ms, n] => {
            nanosleep(num(ms, "MS", MAX_SECONDS * 1000)?, num(n, "N", MAX_COUNT)?)
        }
        ["syscall-loop", k, n] => syscall_loop(
            num(k, "K", CHEAP_SYSCALLS.len() as u64)? as usize,
            num(n, "N", MAX_COUNT)?,
        ),
        ["getppid-rate", rate, secs] => getppid_rate(
            num(rate, "RATE", MAX_RATE)?,
            num(secs, "SECONDS", MAX_SECONDS)?,
        ),
        ["udp-flood", to, secs, size] => udp_flood(
            addr(to)?,
            num(secs, "SECONDS", MAX_SECONDS)?,
            num(size, "SIZE", 65507)? as usize,
        ),
        ["udp-flows", src, count, to, flows] => udp_flows(
            src.parse()
                .map_err(|e| format!("SRC must be an IPv4 address, got {src:?}: {e}"))?,
            num(count, "COUNT", 65536)? as u32,
            addr(to)?,
            num(flows, "FLOWS", MAX_FLOWS)?,
        ),
        ["http-serve", at, secs, delay_us] => http_serve(
            addr(at)?,
            num(secs, "SECONDS", MAX_SECONDS)?,
            Duration::from_micros(num(delay_us, "DELAY_US", 1_000_000)?),
        ),
        ["mix", secs] => mix(num(secs, "SECONDS", MAX_SECONDS)?),
        ["connect-rate", to, rate, secs] => connect_rate(
            addr(to)?,
            num(rate, "RATE", 100_000)?.max(1),
            num(secs, "SECONDS", MAX_SECONDS)?,
        ),
        ["otlp-receive", at, secs] => otlp_receive(addr(at)?, num(secs, "SECONDS", MAX_SECONDS)?),
        _ => Err("unknown subcommand or wrong number of arguments".to_string()),
    }
}

/// The harness's OTLP/gRPC receiver on `at` for `secs`, reporting how
/// many metrics requests it took every 10 s.
#[cfg(feature = "otlp")]
fn otlp_receive(at: SocketAddr, secs: u64) -> Result<(), String> {
    use sonde_tests::otlp::{Protocol, Receiver};
    let receiver = Receiver::start_on(Protocol::Grpc, at);
    say("ready");
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        std::thread::sleep((end - Instant::now()).min(Duration::from_secs(10)));
        say(&format!("received {}", receiver.metrics_request_count()));
    }
    Ok(())
}

#[cfg(not(feature = "otlp"))]
fn otlp_receive(_: SocketAddr, _: u64) -> Result<(), String> {
    Err("otlp-receive needs sonde-tests' otlp feature (on by default)".to_string())
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
