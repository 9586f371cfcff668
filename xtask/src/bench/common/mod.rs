//! What the benchmark scenarios (and the evaluation) share beyond the test
//! harness (`sonde_tests`, which launches the agent, makes the namespace
//! and veth pair, runs and stops child processes and parses metrics): the
//! release binaries, the benchmark network's addresses, the tools Sonde is
//! compared with, kernel counters and summary statistics.

pub mod bins;
pub mod kernel;
pub mod stats;
pub mod tracer;

pub use bins::Bins;
pub use sonde_tests::{Agent, Scrape, process::Proc};
pub use stats::Summary;

use std::{io, sync::RwLock, time::Duration};

use sonde_tests::{NetNs, VethPair};

/// A lab network: one namespace with a veth pair into it, both removed on
/// drop. The host end stays in the root namespace, where the agent
/// attaches; traffic flows only over this pair. Addresses come from
/// 198.18.0.0/15, the range reserved for benchmarking (RFC 2544). Each
/// command that makes one has a plan of its own (names and subnets), so
/// the soak, the benchmark and the evaluation can run side by side without
/// one deleting another's namespace.
#[derive(Debug)]
pub struct NetPlan {
    pub netns: &'static str,
    /// Host end (root namespace) and namespace end of the veth pair.
    pub host_if: &'static str,
    pub peer_if: &'static str,
    pub host_ip: &'static str,
    pub peer_ip: &'static str,
    /// Extra source addresses (peers) live behind the namespace end:
    /// `peers_first` onwards, within `peers_net`, routed from the host via
    /// `peer_ip`.
    pub peers_first: &'static str,
    pub peers_net: &'static str,
}

/// The benchmark's network.
pub const BENCH: NetPlan = NetPlan {
    netns: "sonde-bench",
    host_if: "sbench0",
    peer_if: "sbench1",
    host_ip: "198.18.0.1",
    peer_ip: "198.18.0.2",
    peers_first: "198.19.0.1",
    peers_net: "198.19.0.0/18",
};

/// The evaluation's network.
pub const EVAL: NetPlan = NetPlan {
    netns: "sonde-eval",
    host_if: "seval0",
    peer_if: "seval1",
    host_ip: "198.18.2.1",
    peer_ip: "198.18.2.2",
    peers_first: "198.19.64.1",
    peers_net: "198.19.64.0/18",
};

/// The soak's network.
pub const SOAK: NetPlan = NetPlan {
    netns: "sonde-soak",
    host_if: "ssoak0",
    peer_if: "ssoak1",
    host_ip: "198.18.1.1",
    peer_ip: "198.18.1.2",
    peers_first: "198.19.128.1",
    peers_net: "198.19.128.0/17",
};

static NET: RwLock<&'static NetPlan> = RwLock::new(&BENCH);

/// The network plan of the command running: [`BENCH`] unless it chose
/// another with [`use_net`].
pub fn net() -> &'static NetPlan {
    *NET.read().unwrap_or_else(|e| e.into_inner())
}

/// Chooses the network plan of the command about to run (the steps of
/// `cargo xtask test` run one after another in one process).
pub fn use_net(plan: &'static NetPlan) {
    *NET.write().unwrap_or_else(|e| e.into_inner()) = plan;
}

/// How long an agent may take to start before the scenario fails.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The benchmark network, torn down on drop (the pair first).
pub struct BenchNet {
    _veth: VethPair,
    _ns: NetNs,
}

impl BenchNet {
    pub fn create() -> io::Result<BenchNet> {
        let plan = net();
        let ns = NetNs::try_new(plan.netns)?;
        let veth = VethPair::try_new(
            plan.host_if,
            plan.peer_if,
            &ns,
            &format!("{}/24", plan.host_ip),
            &format!("{}/24", plan.peer_ip),
        )?;
        veth.route_via_peer(plan.peers_net)?;
        Ok(BenchNet {
            _veth: veth,
            _ns: ns,
        })
    }
}

/// Starts `sonde run` from `bins` with `config_toml`, attached to
/// `interfaces`, and waits until every program is attached (polling
/// `/health/startup` every 2 ms, so [`Agent::startup`] is a measurement).
pub fn start_agent(bins: &Bins, config_toml: &str, interfaces: &[&str]) -> io::Result<Agent> {
    let args: Vec<&str> = interfaces
        .iter()
        .flat_map(|i| ["--interface", *i])
        .collect();
    let mut agent = Agent::launch(&bins.sonde, config_toml, &args, &[])?;
    agent.try_wait_started(READY_TIMEOUT, Duration::from_millis(2))?;
    Ok(agent)
}
