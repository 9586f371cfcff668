//! Agent configuration: TOML file, then `SONDE_*` environment overrides,
//! then command-line flags; for `[otlp]`, the standard `OTEL_*` variables
//! fill in what neither the file nor `SONDE_OTLP__*` set ([`otlp`]).
//! Unknown keys and wrong types are errors that name the offending key.
//! Settings marked "runtime" are re-applied on SIGHUP without reloading any
//! kernel program.

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use thiserror::Error;

pub mod otlp;
pub mod overlay;

/// The default configuration with every key commented: deploy/sonde.toml,
/// which a unit test keeps equal to [`Config::default`].
pub const DEFAULTS_TOML: &str = include_str!("../../deploy/sonde.toml");

pub use otlp::{
    OtlpCompression, OtlpConfig, OtlpHeaders, OtlpProtocol, OtlpSources, REDACTED, Source,
    read_pem_certs, read_pem_key,
};

/// Default port, in the range Prometheus exporters use.
pub const DEFAULT_PORT: u16 = 9745;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid config{}: {message}", location(.path))]
    Parse {
        path: Option<PathBuf>,
        message: String,
    },
    #[error("invalid environment override {var}: {message}")]
    Env { var: String, message: String },
    #[error("invalid config value {key}: {message}")]
    Invalid { key: &'static str, message: String },
}

fn location(path: &Option<PathBuf>) -> String {
    path.as_ref()
        .map(|p| format!(" in {}", p.display()))
        .unwrap_or_default()
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// HTTP listen address for /metrics, health and status.
    pub listen: SocketAddr,
    /// Log filter (tracing-subscriber EnvFilter syntax); RUST_LOG wins.
    pub log_level: String,
    /// Log lines as text, or one JSON object per line.
    pub log_format: LogFormat,
    pub http: HttpConfig,
    pub syscalls: SyscallsConfig,
    pub network: NetworkConfig,
    pub tcp: TcpConfig,
    pub drops: DropsConfig,
    pub runqueue: RunqueueConfig,
    pub process: ProcessConfig,
    pub block: BlockConfig,
    pub mapek: MapekConfig,
    pub events: EventsConfig,
    pub collector: CollectorConfig,
    pub health: HealthConfig,
    pub otlp: OtlpConfig,
    pub kubernetes: KubernetesConfig,
    pub debug: DebugConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], DEFAULT_PORT)),
            log_level: "info".into(),
            log_format: LogFormat::Text,
            http: HttpConfig::default(),
            syscalls: SyscallsConfig::default(),
            network: NetworkConfig::default(),
            tcp: TcpConfig::default(),
            drops: DropsConfig::default(),
            runqueue: RunqueueConfig::default(),
            process: ProcessConfig::default(),
            block: BlockConfig::default(),
            mapek: MapekConfig::default(),
            events: EventsConfig::default(),
            collector: CollectorConfig::default(),
            health: HealthConfig::default(),
            otlp: OtlpConfig::default(),
            kubernetes: KubernetesConfig::default(),
            debug: DebugConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// tracing's human-readable lines.
    Text,
    /// One JSON object per line: timestamp, level, target and the event's
    /// fields (message included) at the top level.
    Json,
}

/// The HTTP server's access and limits (`[http]`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// TLS and basic auth in exporter-toolkit's web configuration format
    /// (the file node_exporter takes with --web.config.file); re-read on
    /// SIGHUP. Unset: plain HTTP, no authentication.
    pub web_config_file: Option<PathBuf>,
    /// A unix socket (mode 0600) that serves the same endpoints, the
    /// state-changing ones included, to local root without credentials.
    pub admin_socket: Option<PathBuf>,
    /// A client must send a request's headers (and finish the TLS
    /// handshake) within this time, or the connection is closed; also
    /// how long an idle keep-alive connection is kept.
    pub header_read_timeout_ms: u64,
    /// Whole request, body and answer included; 408 after it.
    pub request_timeout_ms: u64,
    /// Open TCP connections at most. Beyond it a few more are taken for
    /// /health/* only (everything else answers 503), then refused.
    pub max_connections: usize,
    /// Largest request body; 413 above it.
    pub max_body_bytes: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            web_config_file: None,
            admin_socket: None,
            header_read_timeout_ms: 10_000,
            request_timeout_ms: 30_000,
            max_connections: 128,
            max_body_bytes: 64 * 1024,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SyscallHook {
    /// Raw tracepoint where the kernel allows it, classic tracepoint otherwise.
    Auto,
    RawTracepoint,
    Tracepoint,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SyscallsConfig {
    pub enabled: bool,
    pub hook: SyscallHook,
    /// Runtime. Syscalls slower than this emit an event; 0 disables.
    pub slow_threshold_ms: f64,
    /// Runtime. Syscalls whose job is to wait, never reported as slow.
    pub slow_ignore: Vec<String>,
    /// Runtime. Time one syscall in N per CPU (1: every one); all are
    /// counted. For nodes where the two clock reads per syscall cost too
    /// much; slow-syscall events then come from the timed ones only.
    pub latency_sample_every: u64,
    /// Runtime. Count syscalls per process as well (a hash update per
    /// syscall). Off, the MAPE-K loop still turns it on for a few seconds
    /// when a syscall anomaly opens, to name the process behind it.
    pub per_process: bool,
    /// Runtime. At most this many syscalls get a latency histogram (29
    /// series each): the busiest when first seen, kept once chosen. Every
    /// syscall still has its call and error counters. 0: no histograms.
    pub latency_histograms: usize,
}

/// Bound on `syscalls.latency_histograms`: every syscall slot.
pub const MAX_LATENCY_HISTOGRAMS: usize = agent_common::syscalls::MAX_SYSCALLS as usize;

impl Default for SyscallsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            hook: SyscallHook::Auto,
            slow_threshold_ms: 100.0,
            latency_sample_every: 1,
            per_process: false,
            latency_histograms: 128,
            slow_ignore: [
                "epoll_wait",
                "epoll_pwait",
                "epoll_pwait2",
                "poll",
                "ppoll",
                "select",
                "pselect6",
                "futex",
                "futex_waitv",
                "wait4",
                "waitid",
                "pause",
                "rt_sigsuspend",
                "rt_sigtimedwait",
                "io_getevents",
                "io_pgetevents",
                "io_uring_enter",
            ]
            .into_iter()
            .map(String::from)
            .collect(),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum XdpModeConfig {
    /// Native (driver) XDP on NICs that have it; TC ingress elsewhere
    /// (virtual interfaces, drivers without XDP), where it is cheaper.
    Auto,
    Native,
    Generic,
    /// No XDP: ingress is accounted with TC.
    Off,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TcAttachConfig {
    /// tcx links where the kernel has them (6.6+), netlink cls_bpf before.
    Auto,
    /// clsact + cls_bpf filters through netlink, on any kernel (these
    /// outlive a killed agent; the next start removes them).
    Netlink,
    Tcx,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct NetworkConfig {
    pub enabled: bool,
    /// Interfaces to attach to; empty means every non-loopback interface
    /// that is up when the agent starts.
    pub interfaces: Vec<String>,
    pub xdp_mode: XdpModeConfig,
    /// How TC programs are attached: auto, netlink or tcx.
    pub tc_attach: TcAttachConfig,
    /// Holds the lock (one file per network namespace) by which a starting
    /// agent knows that no other live Sonde owns this namespace's TC
    /// filters before it removes a crashed one's (probes::leftovers).
    pub lock_dir: PathBuf,
    /// Size of the kernel flow table (LRU: the oldest flows are evicted).
    pub max_flows: u32,
    /// Runtime. New-flow events per second per CPU (0: none).
    pub flow_events_per_second: u64,
    /// Runtime. Burst allowed above that rate.
    pub flow_events_burst: u64,
    /// Flows idle this long are removed from the table by user space
    /// (0: never; the LRU still bounds the table). Flows of one or two
    /// packets go after 10 s idle, or this if shorter. Idle is judged from
    /// the collections that saw a flow's counts move, so to one
    /// `[collector] interval_ms`.
    pub flow_idle_timeout_s: u64,
    /// With no `interfaces` list: how often to look for interfaces that
    /// appeared or went away (0: only at start).
    pub rescan_interval_s: u64,
    /// Runtime. (remote peer, local address) pairs exported individually;
    /// the rest are "other".
    pub top_peers: usize,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            interfaces: Vec::new(),
            xdp_mode: XdpModeConfig::Auto,
            tc_attach: TcAttachConfig::Auto,
            lock_dir: PathBuf::from("/run/sonde"),
            max_flows: agent_common::net::DEFAULT_MAX_FLOWS,
            flow_events_per_second: 100,
            flow_events_burst: 200,
            flow_idle_timeout_s: 300,
            rescan_interval_s: 5,
            top_peers: 20,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TcpHook {
    /// fentry where the kernel allows it, then raw tracepoints, then
    /// kprobes, then classic tracepoints.
    Auto,
    Fentry,
    RawTracepoint,
    Kprobe,
    Tracepoint,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TcpConfig {
    /// Handshake latency, failures, retransmits, resets, state transitions.
    pub enabled: bool,
    /// Which hooks: the cheapest this kernel offers, or a forced tier.
    pub hook: TcpHook,
    /// Runtime. Smoothed-RTT samples from every ACK processed (tcp_probe).
    pub rtt: bool,
    /// Runtime. Remote peers exported with their own TCP series (the most
    /// active); the kernel tracks up to 4096.
    pub top_peers: usize,
    /// Listen-queue overflows by listening port (skb:kfree_skb, reason
    /// TCP_LISTEN_OVERFLOW); independent of `enabled`.
    pub listen_overflows: bool,
}

impl Default for TcpConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            hook: TcpHook::Auto,
            rtt: true,
            top_peers: 20,
            listen_overflows: true,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DropsConfig {
    /// Packets the kernel dropped, by its drop reason (skb:kfree_skb).
    pub enabled: bool,
    /// Runtime. Count drops of IP packets by (reason, source, destination)
    /// too (the packet's header read, a hash update per drop). Off, the
    /// MAPE-K loop still turns it on for a few seconds when packet loss
    /// opens, to name whose packets were dropped.
    pub per_peer: bool,
    /// Runtime. Drops per second up to which every drop is counted by
    /// interface, exactly. Above, one in N (a power of two) is, N times:
    /// the count by interface costs about half a drop's kernel time, and a
    /// flood of drops is where that counts. 0: always exact.
    pub exact_device_drops_per_second: u64,
}

impl Default for DropsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            per_peer: false,
            exact_device_drops_per_second: 10_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RunqueueConfig {
    /// How long runnable tasks wait for a CPU (sched_wakeup/sched_switch).
    pub enabled: bool,
    /// auto, or force a tier: raw_tracepoint, tracepoint.
    pub hook: String,
    /// Export the wait histogram of the cgroups that waited longest in
    /// all (cumulative), at most this many; 0: no per-cgroup waits. Needs
    /// the raw_tracepoint tier (the classic records name no cgroup).
    pub top_cgroups: usize,
}

/// Bound on `runqueue.top_cgroups`: each exported cgroup is a histogram.
pub const MAX_TOP_CGROUPS: usize = 100;

impl Default for RunqueueConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            hook: "auto".into(),
            top_cgroups: 10,
        }
    }
}

/// Pod identity from the node's container runtime over CRI (see
/// `crate::pods`): names cgroups, processes and anomalies by pod,
/// namespace and container, and exports `sonde_pod_info`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct KubernetesConfig {
    /// Ask the runtime; off: cgroup paths only, no `sonde_pod_info`.
    pub enabled: bool,
    /// The CRI socket; empty: the first of the usual paths that exists
    /// (containerd, CRI-O, cri-dockerd), looked for again at each refresh.
    pub socket: String,
    /// Seconds between two listings of pods and containers.
    pub refresh_interval_s: u64,
    /// A listing that takes longer fails (the runtime counts as down).
    pub timeout_ms: u64,
    /// The `node` label of `sonde_pod_info`; empty: $NODE_NAME (the
    /// DaemonSet sets it from spec.nodeName), else the host name.
    pub node_name: String,
    /// At most this many pods (and 8 containers each) are kept, and this
    /// many podman containers.
    pub max_pods: usize,
    /// Podman's storage root (graphroot): containers outside any pod are
    /// named from its `*-containers/containers.json`; empty: not read.
    pub podman_storage: PathBuf,
}

impl Default for KubernetesConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            socket: String::new(),
            refresh_interval_s: 10,
            timeout_ms: 2_000,
            node_name: String::new(),
            max_pods: 1_000,
            podman_storage: PathBuf::from("/var/lib/containers/storage"),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ProcessConfig {
    /// Exec and exit events (sched_process_exec/exit).
    pub enabled: bool,
}

impl Default for ProcessConfig {
    fn default() -> Self {
        Self { enabled: true }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct BlockConfig {
    /// Block I/O latency per device and operation (block_rq_issue/complete).
    pub enabled: bool,
    /// auto, or force a tier: raw_tracepoint, tracepoint.
    pub hook: String,
}

impl Default for BlockConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            hook: "auto".into(),
        }
    }
}

/// What the MAPE-K loop may do (`[mapek] mode`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Decide and record, change nothing.
    #[default]
    DryRun,
    /// Apply the decisions to the kernel programs.
    Act,
    /// Act, and drop the new inbound TCP connections of a port scan's
    /// source for a while (the blocklist), if it proved its address real
    /// and is not protected (mapek::guard).
    Enforce,
}

impl Mode {
    pub fn label(self) -> &'static str {
        match self {
            Mode::DryRun => "dry_run",
            Mode::Act => "act",
            Mode::Enforce => "enforce",
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MapekConfig {
    /// On-node anomaly detection and response.
    pub enabled: bool,
    /// dry_run: decide and record only; act: apply to the kernel programs.
    pub mode: Mode,
    /// Cycles a feature is observed before it can be anomalous.
    pub warmup_cycles: u64,
    /// Deviations above the learned baseline that make an anomaly.
    pub sensitivity: f64,
    /// Normal cycles after which an anomaly is over.
    pub quiet_cycles: u32,
    /// How long a zoom (more detail after an anomaly) lasts.
    pub zoom_seconds: f64,
    /// Where learned baselines survive restarts ("": not kept).
    pub state_dir: Option<PathBuf>,
    /// Shed detail when over the cost budget below (off: measure and
    /// report the cost only).
    pub govern_cost: bool,
    /// Share of one CPU Sonde may use: its threads (the HTTP server's
    /// excepted) plus, when `[collector] bpf_stats` is on, its kernel
    /// programs. Above it, detail is shed.
    pub cpu_budget: f64,
    /// Lost events per second tolerated before detail is shed (0: none).
    pub lost_events_budget: f64,
    /// Runtime. Enforce mode: how long a port scan's (proven) source
    /// stays blocked.
    pub block_ttl_seconds: u64,
    /// Runtime. Enforce mode: sources blocked at once, at most.
    pub max_blocked: usize,
    /// Runtime. Enforce mode: addresses and networks never blocked (on top
    /// of the automatic protected set: mapek::guard).
    pub never_block: Vec<Cidr>,
}

impl Default for MapekConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            mode: Mode::DryRun,
            warmup_cycles: 60,
            sensitivity: 6.0,
            quiet_cycles: 3,
            zoom_seconds: 60.0,
            state_dir: Some(PathBuf::from("/var/lib/sonde")),
            govern_cost: true,
            cpu_budget: 0.05,
            lost_events_budget: 0.0,
            block_ttl_seconds: 300,
            max_blocked: 16,
            never_block: Vec::new(),
        }
    }
}

/// Longest block enforce mode applies: a day.
pub const MAX_BLOCK_TTL_SECONDS: u64 = 86_400;

/// An IP address or network (`192.0.2.7`, `10.0.0.0/8`, `fd00::/8`), as
/// `[mapek] never_block` lists them. Host bits after the prefix are ignored
/// (`10.1.2.3/8` is `10.0.0.0/8`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Whether `ip` is in this network (an IPv4-mapped IPv6 address counts
    /// as its IPv4 address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl TryFrom<String> for Cidr {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        let bad = || {
            format!("{text:?} is not an IP address or network (192.0.2.7, 10.0.0.0/8, fd00::/8)")
        };
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text.as_str(), None),
        };
        let addr: IpAddr = addr.trim().parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.trim().parse::<u8>() {
                Ok(p) if p <= max => p,
                _ => return Err(format!("{text:?}: the prefix length must be 0 to {max}")),
            },
        };
        Ok(Cidr { addr, prefix })
    }
}

impl From<Cidr> for String {
    fn from(cidr: Cidr) -> String {
        format!("{}/{}", cidr.addr, cidr.prefix)
    }
}

/// How events reach user space.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum EventTransport {
    /// The BPF ring buffer where the kernel has it (5.8+), else perf event
    /// arrays.
    Auto,
    RingBuffer,
    PerfEventArray,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct EventsConfig {
    pub transport: EventTransport,
    /// Ring buffer sizes in bytes: a power of two, at least one page. With
    /// perf event arrays, each CPU's buffer gets this size divided among
    /// the CPUs (a power of two of pages, at least one page).
    pub syscall_ring_bytes: u32,
    pub flow_ring_bytes: u32,
    pub process_ring_bytes: u32,
    /// Recent events kept in memory for /api/v1/events.
    pub keep_recent: usize,
}

impl EventsConfig {
    /// The configured size of ring `ring_id` (`agent_common::events`).
    pub fn ring_bytes(&self, ring_id: u32) -> u32 {
        match ring_id {
            agent_common::events::RING_SYSCALL => self.syscall_ring_bytes,
            agent_common::events::RING_FLOW => self.flow_ring_bytes,
            _ => self.process_ring_bytes,
        }
    }
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            transport: EventTransport::Auto,
            syscall_ring_bytes: 256 * 1024,
            flow_ring_bytes: 256 * 1024,
            process_ring_bytes: 256 * 1024,
            keep_recent: 1024,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CollectorConfig {
    /// How often kernel maps are read into metrics.
    pub interval_ms: u64,
    /// Turn on the kernel's per-program run-time statistics while the agent
    /// runs (sonde_bpf_program_*). Costs a few ns per program run.
    pub bpf_stats: bool,
}

impl Default for CollectorConfig {
    fn default() -> Self {
        Self {
            interval_ms: 1000,
            bpf_stats: false,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HealthConfig {
    /// Timeout of each health check.
    pub check_timeout_ms: u64,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            check_timeout_ms: 2000,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DebugConfig {
    /// Enables POST /debug/* endpoints that fail components or stall ring
    /// readers, for tests and alert drills. Never on in production.
    pub fault_injection: bool,
}

impl Config {
    /// Reads `path` (if any), applies `SONDE_*` overrides from `env`, then
    /// the standard `OTEL_*` variables to the `[otlp]` settings neither set
    /// ([`otlp::resolve`]), and validates the result.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let text = match path {
            Some(path) => std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_owned(),
                source,
            })?,
            None => String::new(),
        };
        Self::parse(&text, path, env)
    }

    /// [`Config::load`] of a file's text (`path` only names it in errors).
    pub fn parse(
        text: &str,
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut table: toml::Table =
            text.parse()
                .map_err(|e: toml::de::Error| ConfigError::Parse {
                    path: path.map(Path::to_owned),
                    message: e.to_string().trim().replace('\n', " "),
                })?;
        let env: Vec<(String, String)> = env.into_iter().collect();
        let otlp_keys = |table: &toml::Table| -> BTreeSet<String> {
            table
                .get("otlp")
                .and_then(toml::Value::as_table)
                .map(|t| t.keys().cloned().collect())
                .unwrap_or_default()
        };
        let in_file = otlp_keys(&table);
        apply_env(&mut table, env.iter().cloned())?;
        let in_sonde_env = otlp_keys(&table);
        // serde_path_to_error names the key whose value has the wrong type.
        let config: Config = serde_path_to_error::deserialize(table).map_err(
            |e: serde_path_to_error::Error<toml::de::Error>| {
                let key = e.path().to_string();
                let message = e.into_inner().message().to_owned();
                ConfigError::Parse {
                    path: path.map(Path::to_owned),
                    message: if key == "." || key.is_empty() {
                        message
                    } else {
                        format!("{key}: {message}")
                    },
                }
            },
        )?;
        let mut config = config;
        otlp::resolve(&mut config.otlp, &in_file, &in_sonde_env, &env)
            .map_err(|otlp::EnvError { var, message }| ConfigError::Env { var, message })?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        for (key, ms) in [
            (
                "http.header_read_timeout_ms",
                self.http.header_read_timeout_ms,
            ),
            ("http.request_timeout_ms", self.http.request_timeout_ms),
        ] {
            if !(100..=3_600_000).contains(&ms) {
                return Err(ConfigError::Invalid {
                    key,
                    message: format!("{ms} must be between 100 and 3600000 (an hour)"),
                });
            }
        }
        if !(1..=65_536).contains(&self.http.max_connections) {
            return Err(ConfigError::Invalid {
                key: "http.max_connections",
                message: format!("{} must be between 1 and 65536", self.http.max_connections),
            });
        }
        if !(1024..=64 * 1024 * 1024).contains(&self.http.max_body_bytes) {
            return Err(ConfigError::Invalid {
                key: "http.max_body_bytes",
                message: format!(
                    "{} must be between 1024 and 67108864 (64 MiB)",
                    self.http.max_body_bytes
                ),
            });
        }
        for (key, path) in [
            ("http.web_config_file", &self.http.web_config_file),
            ("http.admin_socket", &self.http.admin_socket),
        ] {
            if path.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
                return Err(ConfigError::Invalid {
                    key,
                    message: "must be a path (leave the key out for none)".into(),
                });
            }
        }
        for (key, bytes) in [
            ("events.syscall_ring_bytes", self.events.syscall_ring_bytes),
            ("events.flow_ring_bytes", self.events.flow_ring_bytes),
            ("events.process_ring_bytes", self.events.process_ring_bytes),
        ] {
            if bytes < 4096 || !bytes.is_power_of_two() {
                return Err(ConfigError::Invalid {
                    key,
                    message: format!("{bytes} must be a power of two of at least 4096"),
                });
            }
        }
        if !(self.syscalls.slow_threshold_ms.is_finite() && self.syscalls.slow_threshold_ms >= 0.0)
        {
            return Err(ConfigError::Invalid {
                key: "syscalls.slow_threshold_ms",
                message: "must be a number ≥ 0".into(),
            });
        }
        if !(self.mapek.cpu_budget.is_finite()
            && self.mapek.cpu_budget > 0.0
            && self.mapek.cpu_budget <= 1024.0)
        {
            return Err(ConfigError::Invalid {
                key: "mapek.cpu_budget",
                message: format!(
                    "{} must be a share of one CPU above 0 (0.05: 5% of one core)",
                    self.mapek.cpu_budget
                ),
            });
        }
        if !(self.mapek.lost_events_budget.is_finite() && self.mapek.lost_events_budget >= 0.0) {
            return Err(ConfigError::Invalid {
                key: "mapek.lost_events_budget",
                message: "must be a number ≥ 0".into(),
            });
        }
        if !(1..=1_000_000).contains(&self.syscalls.latency_sample_every) {
            return Err(ConfigError::Invalid {
                key: "syscalls.latency_sample_every",
                message: format!(
                    "{} must be between 1 (time every syscall) and 1000000",
                    self.syscalls.latency_sample_every
                ),
            });
        }
        if self.syscalls.latency_histograms > MAX_LATENCY_HISTOGRAMS {
            return Err(ConfigError::Invalid {
                key: "syscalls.latency_histograms",
                message: format!(
                    "{} must be at most {MAX_LATENCY_HISTOGRAMS} (every syscall)",
                    self.syscalls.latency_histograms
                ),
            });
        }
        if !(1..=MAX_BLOCK_TTL_SECONDS).contains(&self.mapek.block_ttl_seconds) {
            return Err(ConfigError::Invalid {
                key: "mapek.block_ttl_seconds",
                message: format!(
                    "{} must be between 1 and {MAX_BLOCK_TTL_SECONDS} (a day)",
                    self.mapek.block_ttl_seconds
                ),
            });
        }
        let max_blocked = agent_common::net::MAX_BLOCKLIST as usize;
        if !(1..=max_blocked).contains(&self.mapek.max_blocked) {
            return Err(ConfigError::Invalid {
                key: "mapek.max_blocked",
                message: format!(
                    "{} must be between 1 and {max_blocked} (the kernel blocklist's size)",
                    self.mapek.max_blocked
                ),
            });
        }
        if self.network.max_flows == 0 {
            return Err(ConfigError::Invalid {
                key: "network.max_flows",
                message: "must be at least 1".into(),
            });
        }
        if self.collector.interval_ms < 50 {
            return Err(ConfigError::Invalid {
                key: "collector.interval_ms",
                message: "must be at least 50".into(),
            });
        }
        if self.health.check_timeout_ms == 0 {
            return Err(ConfigError::Invalid {
                key: "health.check_timeout_ms",
                message: "must be at least 1".into(),
            });
        }
        for (key, hook) in [
            ("runqueue.hook", &self.runqueue.hook),
            ("block.hook", &self.block.hook),
        ] {
            if !["auto", "raw_tracepoint", "tracepoint"].contains(&hook.as_str()) {
                return Err(ConfigError::Invalid {
                    key,
                    message: format!("{hook:?}: expected auto, raw_tracepoint or tracepoint"),
                });
            }
        }
        if self.runqueue.top_cgroups > MAX_TOP_CGROUPS {
            return Err(ConfigError::Invalid {
                key: "runqueue.top_cgroups",
                message: format!(
                    "{}: at most {MAX_TOP_CGROUPS} (each is a histogram of 30 series)",
                    self.runqueue.top_cgroups
                ),
            });
        }
        if !(1..=3_600).contains(&self.kubernetes.refresh_interval_s) {
            return Err(ConfigError::Invalid {
                key: "kubernetes.refresh_interval_s",
                message: format!(
                    "{} must be between 1 and 3600",
                    self.kubernetes.refresh_interval_s
                ),
            });
        }
        if !(100..=60_000).contains(&self.kubernetes.timeout_ms) {
            return Err(ConfigError::Invalid {
                key: "kubernetes.timeout_ms",
                message: format!(
                    "{} must be between 100 and 60000",
                    self.kubernetes.timeout_ms
                ),
            });
        }
        if !(1..=100_000).contains(&self.kubernetes.max_pods) {
            return Err(ConfigError::Invalid {
                key: "kubernetes.max_pods",
                message: format!("{} must be between 1 and 100000", self.kubernetes.max_pods),
            });
        }
        if !(self.mapek.sensitivity.is_finite() && self.mapek.sensitivity > 0.0) {
            return Err(ConfigError::Invalid {
                key: "mapek.sensitivity",
                message: "must be a number > 0".into(),
            });
        }
        self.otlp
            .validate()
            .map_err(|otlp::Invalid { key, message }| ConfigError::Invalid { key, message })?;
        let mut seen = BTreeSet::new();
        for name in &self.network.interfaces {
            if name.is_empty() || name.len() >= libc::IF_NAMESIZE {
                return Err(ConfigError::Invalid {
                    key: "network.interfaces",
                    message: format!("{name:?} is not a valid interface name"),
                });
            }
            if !seen.insert(name) {
                return Err(ConfigError::Invalid {
                    key: "network.interfaces",
                    message: format!("{name} is listed twice"),
                });
            }
        }
        Ok(())
    }

    /// Threshold for slow-syscall events in ns (0: off).
    pub fn slow_threshold_ns(&self) -> u64 {
        (self.syscalls.slow_threshold_ms * 1e6).round() as u64
    }
}

/// Top-level keys of [`Config`], the only ones environment overrides reach.
const TOP_LEVEL_KEYS: &[&str] = &[
    "listen",
    "log_level",
    "log_format",
    "http",
    "syscalls",
    "network",
    "tcp",
    "drops",
    "runqueue",
    "process",
    "block",
    "mapek",
    "events",
    "collector",
    "health",
    "otlp",
    "kubernetes",
    "debug",
];

impl Config {
    /// True for the environment variables that [`Config::load`] applies as
    /// overrides (`SONDE_<TOP-LEVEL KEY>…`).
    pub fn is_override(var: &str) -> bool {
        var.strip_prefix("SONDE_").is_some_and(|path| {
            let top = path.split("__").next().unwrap_or_default();
            TOP_LEVEL_KEYS.contains(&top.to_ascii_lowercase().as_str())
        })
    }
}

/// `SONDE_LISTEN=…` sets `listen`; `SONDE_SYSCALLS__SLOW_THRESHOLD_MS=5`
/// sets `syscalls.slow_threshold_ms`. Values are parsed as TOML (numbers,
/// booleans, arrays); anything that is not valid TOML is taken as a string.
/// A comma-separated value is accepted for array keys.
fn apply_env(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    for (var, raw) in env {
        let Some(path) = var.strip_prefix("SONDE_") else {
            continue;
        };
        let keys: Vec<String> = path.split("__").map(str::to_ascii_lowercase).collect();
        // Only variables naming a config key are overrides; others (SONDE_CONFIG
        // read by clap, tooling's own SONDE_* variables) are not ours to judge.
        // Below a known top-level key, unknown keys are errors as in the file.
        if !TOP_LEVEL_KEYS.contains(&keys[0].as_str()) {
            continue;
        }
        let value = parse_env_value(&raw);
        let mut cursor = &mut *table;
        for key in &keys[..keys.len() - 1] {
            let entry = cursor
                .entry(key.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            cursor = entry.as_table_mut().ok_or_else(|| ConfigError::Env {
                var: var.clone(),
                message: format!("{key} is not a section"),
            })?;
        }
        cursor.insert(keys[keys.len() - 1].clone(), value);
    }
    Ok(())
}

fn parse_env_value(raw: &str) -> toml::Value {
    let doc = format!("v = {raw}");
    if let Ok(mut table) = doc.parse::<toml::Table>()
        && let Some(value) = table.remove("v")
    {
        return value;
    }
    if raw.contains(',') {
        return toml::Value::Array(
            raw.split(',')
                .map(|s| toml::Value::String(s.trim().to_owned()))
                .collect(),
        );
    }
    toml::Value::String(raw.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let dir = std::env::temp_dir().join(format!("sonde-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // Tests run in parallel: one file per call.
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = dir.join(format!("{n}.toml"));
        std::fs::write(&path, text).unwrap();
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        Config::load(Some(&path), env)
    }

    #[test]
    fn shipped_example_is_the_defaults() {
        let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/sonde.toml");
        let config = Config::load(Some(Path::new(example)), std::iter::empty()).unwrap();
        assert_eq!(config, Config::default());
        assert_eq!(load(DEFAULTS_TOML, &[]).unwrap(), Config::default());
    }

    #[test]
    fn log_format_is_text_or_json() {
        assert_eq!(
            load("log_format = \"json\"", &[]).unwrap().log_format,
            LogFormat::Json
        );
        assert_eq!(
            load("", &[("SONDE_LOG_FORMAT", "json")])
                .unwrap()
                .log_format,
            LogFormat::Json
        );
        let err = load("log_format = \"xml\"", &[]).unwrap_err().to_string();
        assert!(err.contains("log_format"), "{err}");
    }

    #[test]
    fn overrides_are_the_variables_naming_a_key() {
        assert!(Config::is_override("SONDE_LISTEN"));
        assert!(Config::is_override("SONDE_SYSCALLS__SLOW_THRESHOLD_MS"));
        assert!(!Config::is_override("SONDE_CONFIG"));
        assert!(!Config::is_override("SONDE_BIN"));
        assert!(!Config::is_override("LISTEN"));
    }

    #[test]
    fn shipped_example_leaves_otlp_to_the_otel_variables() {
        let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/sonde.toml");
        let env = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://c:4318"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "900"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
        let config = Config::load(Some(Path::new(example)), env).unwrap();
        assert_eq!(config.otlp.protocol, OtlpProtocol::HttpProtobuf);
        assert_eq!(config.otlp.timeout_ms, 900);
        for key in otlp::KEYS {
            assert_ne!(config.otlp.sources.get(key), &Source::Config, "{key}");
        }
    }

    #[test]
    fn empty_file_gives_defaults() {
        assert_eq!(load("", &[]).unwrap(), Config::default());
    }

    #[test]
    fn unknown_key_is_named() {
        let err = load("bogus = 1", &[]).unwrap_err().to_string();
        assert!(err.contains("bogus"), "{err}");
        let err = load("[network]\ninterface = []", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("interface"), "{err}");
    }

    #[test]
    fn wrong_type_is_an_error() {
        let err = load("listen = 5", &[]).unwrap_err().to_string();
        assert!(err.contains("invalid"), "{err}");
        assert!(load("listen = \"not an address\"", &[]).is_err());
    }

    #[test]
    fn env_overrides_file() {
        let config = load(
            "listen = \"127.0.0.1:1\"",
            &[
                ("SONDE_LISTEN", "127.0.0.1:2"),
                ("SONDE_SYSCALLS__SLOW_THRESHOLD_MS", "5"),
                ("SONDE_NETWORK__INTERFACES", "eth0,eth1"),
                ("SONDE_NETWORK__ENABLED", "false"),
                ("OTHER", "x"),
            ],
        )
        .unwrap();
        assert_eq!(config.listen, "127.0.0.1:2".parse().unwrap());
        assert_eq!(config.syscalls.slow_threshold_ms, 5.0);
        assert_eq!(config.slow_threshold_ns(), 5_000_000);
        assert_eq!(config.network.interfaces, ["eth0", "eth1"]);
        assert!(!config.network.enabled);
    }

    #[test]
    fn bad_env_key_is_named() {
        let err = load("", &[("SONDE_NETWORK__BOGUS", "1")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("bogus"), "{err}");
        // Not a config key at all: someone else's variable, left alone.
        assert!(load("", &[("SONDE_BIN", "/x"), ("SONDE_CONFIG", "/y")]).is_ok());
    }

    #[test]
    fn wrong_type_names_the_key() {
        let err = load("[network]\nmax_flows = \"many\"", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("network.max_flows"), "{err}");
        let err = load("listen = 5", &[]).unwrap_err().to_string();
        assert!(err.contains("listen"), "{err}");
    }

    #[test]
    fn otlp_endpoint_and_protocol() {
        let config = load(
            "[otlp]\nendpoint = \"http://127.0.0.1:4318\"\nprotocol = \"http/protobuf\"",
            &[("SONDE_OTLP__INTERVAL_MS", "500")],
        )
        .unwrap();
        assert_eq!(
            config.otlp.endpoint.as_deref(),
            Some("http://127.0.0.1:4318")
        );
        assert_eq!(config.otlp.protocol, OtlpProtocol::HttpProtobuf);
        assert_eq!(config.otlp.interval_ms, 500);
        let config = load("", &[("SONDE_OTLP__ENDPOINT", "http://collector:4317")]).unwrap();
        assert_eq!(
            config.otlp.endpoint.as_deref(),
            Some("http://collector:4317")
        );
        assert_eq!(config.otlp.protocol, OtlpProtocol::Grpc);
        let config = load("[otlp]\nendpoint = \"https://x:4317\"", &[]).unwrap();
        assert_eq!(config.otlp.endpoint.as_deref(), Some("https://x:4317"));
        let err = load("[otlp]\nendpoint = \"ftp://x:4317\"", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("otlp.endpoint"), "{err}");
        let err = load("[otlp]\nprotocol = \"http/json\"", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("otlp.protocol"), "{err}");
    }

    #[test]
    fn otlp_file_wins_over_otel_variables_and_sources_say_so() {
        let env = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://env:4317"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "x-api-key=from-env"),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
        ];
        let config = load(
            "[otlp]\nendpoint = \"http://file:4317\"\nheaders = { authorization = \"Bearer f\" }",
            &env,
        )
        .unwrap();
        let otlp = &config.otlp;
        assert_eq!(otlp.endpoint.as_deref(), Some("http://file:4317"));
        assert_eq!(otlp.headers.0.len(), 1);
        assert_eq!(otlp.headers.0["authorization"], "Bearer f");
        assert_eq!(otlp.compression, OtlpCompression::Gzip);
        assert_eq!(otlp.sources.get("endpoint"), &Source::Config);
        assert_eq!(otlp.sources.get("headers"), &Source::Config);
        assert_eq!(
            otlp.sources.get("compression"),
            &Source::Env("OTEL_EXPORTER_OTLP_COMPRESSION".into())
        );
        assert_eq!(otlp.sources.get("protocol"), &Source::Default);
        // The status endpoint serializes the config: names, never values.
        let json = serde_json::to_value(&config).unwrap();
        assert_eq!(json["otlp"]["headers"]["authorization"], REDACTED);
        assert_eq!(json["otlp"]["sources"]["endpoint"], "config");
        assert_eq!(json["otlp"]["sources"]["compression"], "env");
        let text = format!("{json} {config:?}");
        assert!(!text.contains("Bearer f"), "{text}");
        // Only variables: the environment is every source.
        let config = load("", &env).unwrap();
        assert_eq!(config.otlp.endpoint.as_deref(), Some("https://env:4317"));
        assert_eq!(config.otlp.headers.0["x-api-key"], "from-env");
        assert_eq!(config.otlp.sources.get("endpoint").label(), "env");
        // Nothing set: the defaults, and the shipped config's equal.
        assert_eq!(
            load("", &[]).unwrap().otlp.sources.get("endpoint"),
            &Source::Default
        );
    }

    #[test]
    fn bad_otlp_values_name_the_key_or_variable() {
        let dir = std::env::temp_dir().join(format!("sonde-otlp-pem-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let not_pem = dir.join("not.pem");
        std::fs::write(&not_pem, "hello").unwrap();
        let not_pem = not_pem.display().to_string();
        for (text, env, want) in [
            ("ca_file = \"/nonexistent/ca.pem\"", None, "otlp.ca_file"),
            (
                &format!("ca_file = {not_pem:?}") as &str,
                None,
                "no PEM certificate",
            ),
            ("headers = { \"bad name\" = \"x\" }", None, "otlp.headers"),
            ("headers = { a = \"line\\nbreak\" }", None, "otlp.headers"),
            (
                "client_cert_file = \"/x.pem\"",
                None,
                "otlp.client_key_file",
            ),
            ("compression = \"zstd\"", None, "otlp.compression"),
            (
                "",
                Some(("OTEL_EXPORTER_OTLP_CERTIFICATE", "/nonexistent/ca.pem")),
                "OTEL_EXPORTER_OTLP_CERTIFICATE",
            ),
            (
                "",
                Some(("OTEL_EXPORTER_OTLP_HEADERS", "a=1,b")),
                "OTEL_EXPORTER_OTLP_HEADERS",
            ),
            (
                "",
                Some(("OTEL_EXPORTER_OTLP_PROTOCOL", "udp")),
                "OTEL_EXPORTER_OTLP_PROTOCOL",
            ),
            (
                "",
                Some(("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4317")),
                "OTEL_EXPORTER_OTLP_ENDPOINT",
            ),
        ] {
            let env: Vec<(&str, &str)> = env.into_iter().collect();
            let err = load(&format!("[otlp]\n{text}"), &env)
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{text} {env:?}: {err}");
        }
        let err = load("[otlp]\nheaders = { a = \"sec\\nret\" }", &[])
            .unwrap_err()
            .to_string();
        assert!(!err.contains("sec"), "{err}");
    }

    #[test]
    fn enforce_mode_settings() {
        let config = load(
            "[mapek]\nmode = \"enforce\"\nblock_ttl_seconds = 4\nmax_blocked = 2\n\
             never_block = [\"10.0.0.0/8\", \"192.0.2.7\", \"fd00::/8\"]",
            &[],
        )
        .unwrap();
        assert_eq!(config.mapek.mode, Mode::Enforce);
        assert_eq!(config.mapek.block_ttl_seconds, 4);
        assert_eq!(config.mapek.max_blocked, 2);
        let never = &config.mapek.never_block;
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(never[0].contains(ip("10.213.0.2")));
        assert!(!never[0].contains(ip("11.0.0.1")));
        assert!(never[1].contains(ip("192.0.2.7")));
        assert!(!never[1].contains(ip("192.0.2.8")));
        assert!(never[2].contains(ip("fd00::2")));
        assert!(!never[2].contains(ip("10.213.0.2")));
        // An IPv4-mapped IPv6 address is its IPv4 address.
        assert!(never[0].contains(ip("::ffff:10.1.2.3")));
        assert!(
            Cidr::try_from("0.0.0.0/0".to_owned())
                .unwrap()
                .contains(ip("8.8.8.8"))
        );
        assert_eq!(String::from(never[0]), "10.0.0.0/8");
        // From the environment, as a comma-separated list.
        let config = load("", &[("SONDE_MAPEK__NEVER_BLOCK", "10.0.0.0/8,192.0.2.7")]).unwrap();
        assert_eq!(config.mapek.never_block.len(), 2);
    }

    #[test]
    fn latency_histograms_are_bounded_by_the_syscall_slots() {
        let config = load("[syscalls]\nlatency_histograms = 512", &[]).unwrap();
        assert_eq!(config.syscalls.latency_histograms, 512);
        let err = load("[syscalls]\nlatency_histograms = 513", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("syscalls.latency_histograms"), "{err}");
        assert_eq!(Config::default().syscalls.latency_histograms, 128);
    }

    #[test]
    fn bad_enforce_settings_are_named() {
        for (text, key) in [
            ("never_block = [\"10.0.0.0/33\"]", "mapek.never_block"),
            ("never_block = [\"10.0.0.x\"]", "mapek.never_block"),
            ("never_block = [\"fd00::/129\"]", "mapek.never_block"),
            ("block_ttl_seconds = 0", "mapek.block_ttl_seconds"),
            ("block_ttl_seconds = 86401", "mapek.block_ttl_seconds"),
            ("max_blocked = 0", "mapek.max_blocked"),
            ("max_blocked = 1025", "mapek.max_blocked"),
            ("mode = \"block\"", "mapek.mode"),
        ] {
            let err = load(&format!("[mapek]\n{text}"), &[])
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
        let err = load("[mapek]\nnever_block = [\"10.0.0.0/33\"]", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("prefix length must be 0 to 32"), "{err}");
        let err = load("[mapek]\nnever_block = [\"10.0.0.x\"]", &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("\"10.0.0.x\" is not an IP address or network"),
            "{err}"
        );
    }

    #[test]
    fn http_settings_are_checked() {
        let config = load(
            "[http]\nweb_config_file = \"/etc/sonde/web.yml\"\nadmin_socket = \"/run/sonde/admin.sock\"\nmax_connections = 4",
            &[("SONDE_HTTP__MAX_BODY_BYTES", "2048")],
        )
        .unwrap();
        assert_eq!(
            config.http.web_config_file.as_deref(),
            Some(Path::new("/etc/sonde/web.yml"))
        );
        assert_eq!(config.http.max_connections, 4);
        assert_eq!(config.http.max_body_bytes, 2048);
        for (text, key) in [
            ("max_connections = 0", "http.max_connections"),
            ("max_body_bytes = 1", "http.max_body_bytes"),
            ("header_read_timeout_ms = 0", "http.header_read_timeout_ms"),
            ("request_timeout_ms = 99", "http.request_timeout_ms"),
            ("admin_socket = \"\"", "http.admin_socket"),
            ("tls = true", "tls"),
        ] {
            let err = load(&format!("[http]\n{text}"), &[])
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
    }

    #[test]
    fn forced_hooks_are_checked() {
        for table in ["runqueue", "block"] {
            for hook in ["auto", "raw_tracepoint", "tracepoint"] {
                let config = load(&format!("[{table}]\nhook = \"{hook}\""), &[]).unwrap();
                let got = if table == "block" {
                    config.block.hook
                } else {
                    config.runqueue.hook
                };
                assert_eq!(got, hook);
            }
            let err = load(&format!("[{table}]\nhook = \"kprobe\""), &[])
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(&format!("{table}.hook")) && err.contains("\"kprobe\""),
                "{err}"
            );
        }
    }

    #[test]
    fn ring_size_must_be_power_of_two() {
        let err = load("[events]\nsyscall_ring_bytes = 5000", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("syscall_ring_bytes"), "{err}");
    }
}
