//! `cargo xtask run [-- ARGS...]`: build the agent in release mode and run
//! `sonde run ARGS...` as root, on the first free port from 9745 unless told
//! otherwise.

use std::{
    env,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener},
    process::{Command, ExitCode, ExitStatus},
};

use anyhow::{Context as _, bail};

use crate::{bootstrap, util};

/// The agent's default port, and the last one tried when it is taken.
const DEFAULT_PORT: u16 = 9745;
const LAST_PORT: u16 = 9765;

#[derive(Debug, clap::Args)]
pub struct Options {
    /// Arguments for `sonde run`, after `--`, e.g. `-- --interface eth0 --listen 127.0.0.1:9100`.
    #[arg(last = true, value_name = "ARGS")]
    args: Vec<String>,
}

pub fn run(opts: Options) -> anyhow::Result<ExitCode> {
    util::header("toolchain");
    bootstrap::ensure_build()?;

    util::header("build");
    util::run(util::cargo().args(["build", "--release", "-p", "sonde"]))?;
    let bin = util::target_dir().join("release").join("sonde");

    util::header("run");
    let mut args = vec!["run".to_owned()];
    args.extend(opts.args.iter().cloned());
    match listen_choice(&opts.args)? {
        Listen::Known(addr) => print_urls(&addr),
        Listen::Picked(port) => {
            args.extend(["--listen".to_owned(), format!("0.0.0.0:{port}")]);
            print_urls(&format!("0.0.0.0:{port}"));
        }
        Listen::FromConfig => println!(
            "Sonde: metrics at /metrics, health at /health/ready, on the address in the configuration (default port {DEFAULT_PORT})"
        ),
    }

    let mut cmd = privileged(&bin)?;
    cmd.args(&args);
    let shown = util::display(&cmd);
    println!("$ {shown}");
    let status =
        wait_with_sigint_ignored(&mut cmd).with_context(|| format!("could not start `{shown}`"))?;
    Ok(exit_code(status))
}

/// A command that runs `bin` as root: directly when we are root, through
/// sudo (keeping the agent's own environment variables) otherwise.
pub(crate) fn privileged(bin: &std::path::Path) -> anyhow::Result<Command> {
    Ok(if util::is_root() {
        Command::new(bin)
    } else {
        let Some(sudo) = util::which("sudo") else {
            bail!(
                "sonde needs root (CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN) and sudo is not installed: run `cargo xtask run` as root"
            );
        };
        let mut sudo = Command::new(sudo);
        // sudo drops the environment; keep the agent's own variables.
        let keep: Vec<String> = env::vars_os()
            .filter_map(|(k, _)| k.into_string().ok())
            .filter(|k| k.starts_with("SONDE_") || k == "RUST_LOG" || k == "RUST_BACKTRACE")
            .collect();
        if !keep.is_empty() {
            sudo.arg(format!("--preserve-env={}", keep.join(",")));
        }
        sudo.arg("--").arg(bin);
        sudo
    })
}

/// Where the agent will listen.
enum Listen {
    /// Given on the command line or in `SONDE_LISTEN`.
    Known(String),
    /// A configuration file decides; pass nothing.
    FromConfig,
    /// Chosen here: pass `--listen 0.0.0.0:PORT`.
    Picked(u16),
}

fn listen_choice(args: &[String]) -> anyhow::Result<Listen> {
    if let Some(addr) = flag_value(args, "--listen", "-l") {
        return Ok(Listen::Known(addr));
    }
    if let Ok(addr) = env::var("SONDE_LISTEN") {
        return Ok(Listen::Known(addr));
    }
    if flag_value(args, "--config", "-c").is_some() || env::var_os("SONDE_CONFIG").is_some() {
        return Ok(Listen::FromConfig);
    }
    match (DEFAULT_PORT..=LAST_PORT)
        .find(|&port| TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)).is_ok())
    {
        Some(port) => {
            if port != DEFAULT_PORT {
                println!("port {DEFAULT_PORT} is taken: using {port}");
            }
            Ok(Listen::Picked(port))
        }
        None => bail!(
            "no free port in {DEFAULT_PORT}-{LAST_PORT} on 0.0.0.0: pass one with `cargo xtask run -- --listen ADDR:PORT`"
        ),
    }
}

/// The value of `--long V`, `--long=V`, `-s V` or `-sV` among `sonde run`'s arguments.
fn flag_value(args: &[String], long: &str, short: &str) -> Option<String> {
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        if arg == "--" {
            break;
        }
        if arg == long || arg == short {
            return Some(it.next().cloned().unwrap_or_default());
        }
        if let Some(v) = arg.strip_prefix(long).and_then(|r| r.strip_prefix('=')) {
            return Some(v.to_owned());
        }
        if !arg.starts_with("--")
            && let Some(v) = arg.strip_prefix(short)
        {
            return Some(v.trim_start_matches('=').to_owned());
        }
    }
    None
}

fn print_urls(listen: &str) {
    let base = match listen.parse::<SocketAddr>() {
        Ok(mut addr) => {
            // A wildcard address is reachable through loopback.
            if addr.ip().is_unspecified() {
                addr.set_ip(match addr.ip() {
                    IpAddr::V4(_) => Ipv4Addr::LOCALHOST.into(),
                    IpAddr::V6(_) => Ipv6Addr::LOCALHOST.into(),
                });
            }
            format!("http://{addr}")
        }
        Err(_) => format!("http://{listen}"),
    };
    println!("Sonde: metrics at {base}/metrics, health at {base}/health/ready");
}

/// Runs the child to completion. Ctrl-C goes to the whole foreground process
/// group: the agent handles SIGINT and shuts down cleanly, and xtask ignores
/// it meanwhile so it can still report the agent's exit status.
fn wait_with_sigint_ignored(cmd: &mut Command) -> std::io::Result<ExitStatus> {
    let mut child = cmd.spawn()?;
    // Ignored only after the spawn, so the child does not inherit SIG_IGN.
    // SAFETY: installing SIG_IGN (and restoring the previous disposition) is
    // async-signal-safe and touches no Rust state.
    let previous = unsafe { libc::signal(libc::SIGINT, libc::SIG_IGN) };
    let status = child.wait();
    // SAFETY: as above.
    unsafe { libc::signal(libc::SIGINT, previous) };
    status
}

/// The agent's exit code, or 128 + signal like a shell when it was killed.
fn exit_code(status: ExitStatus) -> ExitCode {
    use std::os::unix::process::ExitStatusExt as _;
    if !status.success() {
        eprintln!("sonde exited: {status}");
    }
    match (status.code(), status.signal()) {
        (Some(code), _) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        (None, Some(sig)) => ExitCode::from(u8::try_from(128 + sig).unwrap_or(1)),
        (None, None) => ExitCode::FAILURE,
    }
}

#[cfg(test)]
mod tests {
    use super::flag_value;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn finds_listen_in_every_spelling() {
        for a in [
            &["--listen", "1.2.3.4:9"][..],
            &["--listen=1.2.3.4:9"],
            &["-i", "eth0", "-l", "1.2.3.4:9"],
            &["-l1.2.3.4:9"],
        ] {
            assert_eq!(
                flag_value(&args(a), "--listen", "-l").as_deref(),
                Some("1.2.3.4:9"),
                "{a:?}"
            );
        }
        assert_eq!(
            flag_value(&args(&["--interface", "lo"]), "--listen", "-l"),
            None
        );
        assert_eq!(flag_value(&args(&["--listener-x"]), "--listen", "-l"), None);
    }
}
