//! Command line: `sonde run`, `sonde check`, `sonde config`, `sonde
//! --version`. Parsing only; what each command does lives in `daemon`.

use std::{net::SocketAddr, path::PathBuf};

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "sonde",
    version = crate::version::LONG,
    about = "eBPF kernel telemetry agent: syscalls and packets, exported to Prometheus"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load the kernel programs, attach them and serve /metrics and health.
    Run(RunArgs),
    /// Print what this kernel and this process can do, then exit
    /// (non-zero when the agent cannot run here).
    Check(CommonArgs),
    /// Validate a configuration file or print the defaults. Needs no root
    /// and no kernel access.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Reference points for benchmarks (empty programs on the same hooks,
    /// a minimal ring reader). Not for production use.
    #[command(hide = true, subcommand)]
    Baseline(BaselineCommand),
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Parse and validate FILE, with the SONDE_* environment applied as
    /// `sonde run` would apply it. Exit 0 when valid; 2, naming the key,
    /// when not.
    Check {
        file: PathBuf,
        /// Judge the file alone, without the SONDE_* environment.
        #[arg(long)]
        no_env: bool,
    },
    /// Print the default configuration, every key with its comment
    /// (deploy/sonde.toml).
    Defaults,
}

#[derive(Debug, Subcommand)]
pub enum BaselineCommand {
    /// Empty programs on raw_syscalls sys_enter/sys_exit, or the timing
    /// floor (`--timed`).
    Syscalls {
        /// raw_tracepoint or tracepoint.
        #[arg(long, default_value = "raw_tracepoint")]
        hook: String,
        /// The timing floor instead of empty programs: sys_enter stores the
        /// clock, sys_exit reads it again and adds up the difference (raw
        /// tracepoints only).
        #[arg(long)]
        timed: bool,
    },
    /// Empty programs on ingress (TC or XDP) and egress (TC).
    Packets {
        #[arg(long = "interface", short = 'i', required = true)]
        interfaces: Vec<String>,
        /// The ingress hook: TC (what Sonde takes on virtual interfaces) or
        /// XDP (native where the driver has it, else generic).
        #[arg(long, value_enum, default_value = "xdp")]
        ingress: BaselineIngress,
    },
    /// Empty programs on any tracepoints: the floor of a hook family
    /// (block, run queue, process, TCP, drops), on the hooks and of the
    /// kind (classic or raw) Sonde takes there.
    Hooks {
        /// A classic tracepoint, CATEGORY:NAME (repeatable).
        #[arg(long = "tracepoint", value_name = "CATEGORY:NAME")]
        tracepoints: Vec<String>,
        /// A raw tracepoint, NAME (repeatable).
        #[arg(long = "raw-tracepoint", value_name = "NAME")]
        raw_tracepoints: Vec<String>,
    },
    /// Sonde's syscall programs, every syscall reported, minimal reader.
    RingReader {
        #[arg(long, default_value_t = 262144)]
        ring_bytes: u32,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BaselineIngress {
    Tc,
    Xdp,
}

#[derive(Debug, Args)]
pub struct CommonArgs {
    /// TOML configuration file.
    #[arg(long, short = 'c', env = "SONDE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Interface to account packets on (repeatable). Default: every
    /// non-loopback interface that is up.
    #[arg(long = "interface", short = 'i', value_name = "IFACE")]
    pub interfaces: Vec<String>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Address for the HTTP server (metrics, health, status).
    #[arg(long, short = 'l', value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// TLS and basic auth for the HTTP server, in the web configuration
    /// format of Prometheus exporters (exporter-toolkit); overrides
    /// `[http] web_config_file`.
    #[arg(long = "web.config.file", value_name = "PATH")]
    pub web_config_file: Option<PathBuf>,
}
