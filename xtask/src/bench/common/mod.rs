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

use std::{io, time::Duration};

use sonde_tests::{NetNs, VethPair};

/// The benchmark's network: one namespace with a veth pair into it, both
/// removed on drop. The host end stays in the root namespace, where the
/// agent attaches; traffic flows only over this pair. Addresses come from
/// 198.18.0.0/15, the range reserved for benchmarking (RFC 2544).
pub const NETNS: &str = "sonde-bench";
/// Host end (root namespace) and namespace end of the veth pair.
pub const HOST_IF: &str = "sbench0";
pub const PEER_IF: &str = "sbench1";
pub const HOST_IP: &str = "198.18.0.1";
pub const PEER_IP: &str = "198.18.0.2";
/// Extra source addresses (peers) live behind the namespace end:
/// `PEERS_FIRST` onwards, routed from the host via `PEER_IP`.
pub const PEERS_FIRST: &str = "198.19.0.1";
const PEERS_NET: &str = "198.19.0.0/16";

/// How long an agent may take to start before the scenario fails.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The benchmark network, torn down on drop (the pair first).
pub struct BenchNet {
    _veth: VethPair,
    _ns: NetNs,
}

impl BenchNet {
    pub fn create() -> io::Result<BenchNet> {
        let ns = NetNs::try_new(NETNS)?;
        let veth = VethPair::try_new(
            HOST_IF,
            PEER_IF,
            &ns,
            &format!("{HOST_IP}/24"),
            &format!("{PEER_IP}/24"),
        )?;
        veth.route_via_peer(PEERS_NET)?;
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
