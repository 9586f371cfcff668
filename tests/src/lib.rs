//! Helpers for the privileged integration tests.
//!
//! The tests are black-box: they start the real `sonde` binary
//! ([`Agent`]), generate real kernel work with `sonde-workload`
//! ([`Workload`]), and assert the numbers the agent exports over HTTP.
//! Network tests use a veth pair into a private namespace ([`NetNs`],
//! [`VethPair`]). Everything is an RAII guard, so a failing test leaves no
//! process, namespace or interface behind.
//!
//! Run as root, one test at a time:
//! `cargo test -p sonde-tests -- --test-threads=1`.
//!
//! This is Sonde's one harness: xtask's benchmark, evaluation and stack
//! use the same agent launcher ([`Agent::launch`]), HTTP client ([`http`]),
//! metrics parser ([`Scrape`]), namespaces and veth pairs, cgroups
//! ([`cgroup`]), loop devices ([`block`]), child processes ([`process`])
//! and tool checks ([`sys`]).
//! Most helpers come in two forms: one that panics with a clear message
//! (for tests) and a `try_` one that returns the error (for xtask).

pub mod agent;
pub mod block;
pub mod bpf;
pub mod cgroup;
#[cfg(feature = "cri")]
pub mod cri;
pub mod http;
pub mod net;
pub mod ops;
#[cfg(feature = "otlp")]
pub mod otlp;
#[cfg(feature = "cri")]
pub mod podman;
pub mod process;
pub mod referee;
pub mod scrape;
pub mod sys;
pub mod workload;

pub use agent::Agent;
pub use net::{NetNs, VethPair};
pub use scrape::Scrape;
pub use sys::require_root;
pub use workload::Workload;

use std::collections::BTreeMap;

/// An agent config file, built from `(section, key, value)` settings with
/// values written as TOML literals. Starts from the test defaults: a 200 ms
/// collector interval and the network side disabled (so a test that does not
/// need it does not attach to every interface of the machine).
#[derive(Debug, Clone)]
pub struct Config {
    top: BTreeMap<String, String>,
    sections: BTreeMap<String, BTreeMap<String, String>>,
}

impl Default for Config {
    fn default() -> Self {
        Config::new()
    }
}

impl Config {
    pub fn new() -> Config {
        Config {
            top: BTreeMap::new(),
            sections: BTreeMap::new(),
        }
        .set("", "log_level", "\"info\"")
        .set("collector", "interval_ms", "200")
        .set("network", "enabled", "false")
        // Tests assert exact, full-detail numbers, and the debug build they
        // run, scraped every few hundred ms, can use 10% of a core: over
        // the default budget. The governance test turns it back on.
        .set("mapek", "govern_cost", "false")
        // Learned baselines are not kept (never in the machine's
        // /var/lib/sonde); the knowledge tests pick their own directory.
        .set("mapek", "state_dir", "\"\"")
        .forced()
    }

    /// The settings of [`FORCE_ENV`] on top of the defaults: the kernel
    /// matrix (`cargo xtask vm-test`) runs these tests inside its VMs with
    /// a tier forced (`tcp.hook = "kprobe"`). A test's own `set` calls come
    /// later and win, so a test that picks a hook keeps it.
    fn forced(self) -> Config {
        match std::env::var(FORCE_ENV) {
            Ok(v) => forced_settings(&v)
                .unwrap_or_else(|e| panic!("{FORCE_ENV}={v:?}: {e}"))
                .into_iter()
                .fold(self, |c, (section, key, value)| {
                    c.set(&section, &key, &value)
                }),
            Err(_) => self,
        }
    }

    /// Sets `key = value` in `[section]` (`""`: top level). `value` is a
    /// TOML literal: `"20"`, `"true"`, `"\"auto\""`, `"[\"sondet0\"]"`.
    pub fn set(mut self, section: &str, key: &str, value: &str) -> Config {
        let table = if section.is_empty() {
            &mut self.top
        } else {
            self.sections.entry(section.to_string()).or_default()
        };
        table.insert(key.to_string(), value.to_string());
        self
    }

    /// The network side enabled on exactly these interfaces.
    pub fn network_on(self, interfaces: &[&str]) -> Config {
        let list: Vec<String> = interfaces.iter().map(|i| format!("{i:?}")).collect();
        self.set("network", "enabled", "true").set(
            "network",
            "interfaces",
            &format!("[{}]", list.join(", ")),
        )
    }

    /// The config file text.
    pub fn render(&self) -> String {
        let mut s = String::new();
        for (k, v) in &self.top {
            s.push_str(&format!("{k} = {v}\n"));
        }
        for (section, table) in &self.sections {
            s.push_str(&format!("\n[{section}]\n"));
            for (k, v) in table {
                s.push_str(&format!("{k} = {v}\n"));
            }
        }
        s
    }
}

/// Extra agent settings for every [`Config`], as
/// `section.key = TOML value` items separated by `;`, e.g.
/// `SONDE_TEST_CONFIG='tcp.hook = "kprobe"'`. Read by the tests only: the
/// agent they launch gets no `SONDE_*` variable.
pub const FORCE_ENV: &str = "SONDE_TEST_CONFIG";

/// Parses [`FORCE_ENV`]'s value into (section, key, value).
pub fn forced_settings(v: &str) -> Result<Vec<(String, String, String)>, String> {
    v.split(';')
        .filter(|item| !item.trim().is_empty())
        .map(|item| {
            let (path, value) = item
                .split_once('=')
                .ok_or_else(|| format!("{item:?} is not `section.key = value`"))?;
            let (section, key) = path
                .trim()
                .split_once('.')
                .ok_or_else(|| format!("{:?} is not `section.key`", path.trim()))?;
            Ok((section.to_owned(), key.to_owned(), value.trim().to_owned()))
        })
        .collect()
}

/// Name of the test namespace used by [`Lab`].
pub const LAB_NS: &str = "sonde-test";
/// Host end of the [`Lab`] veth pair (the interface the agent watches).
pub const LAB_IF: &str = "sondet0";
/// Namespace end of the [`Lab`] veth pair.
pub const LAB_PEER_IF: &str = "sondep0";
/// Address of [`LAB_IF`].
pub const LAB_HOST_IP: &str = "10.213.0.1";
/// Address of [`LAB_PEER_IF`].
pub const LAB_PEER_IP: &str = "10.213.0.2";

/// A namespace, a veth pair into it and an agent watching the host end.
/// Fields drop in order: the agent stops (and detaches) first, then the
/// pair and the namespace go.
pub struct Lab {
    pub agent: Agent,
    pub veth: VethPair,
    pub ns: NetNs,
}

impl Lab {
    /// Sets up `sondet0` (10.213.0.1/30) ↔ `sondep0` (10.213.0.2/30, in
    /// namespace `sonde-test`) and starts the agent on `config` with the
    /// network side enabled and `--interface sondet0`.
    pub fn start(config: Config) -> Lab {
        let (ns, veth) = Lab::network();
        let config = config.set("network", "enabled", "true").render();
        let agent = Agent::start(&config, &["--interface", LAB_IF]);
        Lab { agent, veth, ns }
    }

    /// Just the namespace and the veth pair.
    pub fn network() -> (NetNs, VethPair) {
        let ns = NetNs::new(LAB_NS);
        let veth = VethPair::new(
            LAB_IF,
            LAB_PEER_IF,
            &ns,
            &format!("{LAB_HOST_IP}/30"),
            &format!("{LAB_PEER_IP}/30"),
        );
        (ns, veth)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_renders_sections() {
        let c = Config::new()
            .set("syscalls", "slow_threshold_ms", "20")
            .network_on(&["sondet0"])
            .render();
        assert!(c.starts_with("log_level = \"info\"\n"), "{c}");
        assert!(c.contains("[collector]\ninterval_ms = 200\n"), "{c}");
        assert!(
            c.contains("[network]\nenabled = true\ninterfaces = [\"sondet0\"]\n"),
            "{c}"
        );
        assert!(c.contains("[syscalls]\nslow_threshold_ms = 20\n"), "{c}");
    }

    #[test]
    fn forced_settings_parse() {
        assert_eq!(
            forced_settings(r#"tcp.hook = "kprobe"; network.xdp_mode="off""#).unwrap(),
            [
                ("tcp".into(), "hook".into(), "\"kprobe\"".into()),
                ("network".into(), "xdp_mode".into(), "\"off\"".into())
            ]
        );
        assert!(forced_settings("").unwrap().is_empty());
        assert!(forced_settings("hook = 1").is_err());
    }
}
