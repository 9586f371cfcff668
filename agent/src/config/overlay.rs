//! What the MAPE-K loop changes on top of the configured runtime settings
//! (a zoom, the cost ladder, the blocklist, attribution), and the cost
//! ladder itself. It lives with the configuration because it is one: the
//! collector applies `Overlay::apply(config)` to the kernel programs, the
//! loop decides the overlay; neither needs the other.

use std::{collections::BTreeMap, net::IpAddr};

use crate::config::Config;

/// What the loop has changed on top of the configured runtime settings.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overlay {
    /// Zoom in force: (slow-syscall threshold ms, new-flow events/s).
    pub zoom: Option<(f64, u64)>,
    /// Cost-ladder steps in force.
    pub shed_level: usize,
    /// Blocked sources and until when (Unix seconds).
    pub blocked: BTreeMap<IpAddr, f64>,
    /// Syscalls counted per process (attribution in progress).
    pub attribute: bool,
    /// Drops counted per peer (attribution in progress).
    pub attribute_drops: bool,
}

impl Overlay {
    /// The runtime settings with the overlay applied: the zoom first, then
    /// the cost ladder (cost wins where they disagree).
    pub fn apply(&self, configured: &Config) -> Config {
        let mut config = configured.clone();
        if let Some((slow_threshold_ms, flow_events_per_second)) = self.zoom {
            if config.syscalls.slow_threshold_ms == 0.0
                || config.syscalls.slow_threshold_ms > slow_threshold_ms
            {
                config.syscalls.slow_threshold_ms = slow_threshold_ms;
            }
            config.network.flow_events_per_second = flow_events_per_second;
        }
        if self.attribute {
            config.syscalls.per_process = true;
        }
        if self.attribute_drops {
            config.drops.per_peer = true;
        }
        shed(&mut config, self.shed_level);
        config
    }
}

/// The ladder, cheapest loss of detail first. Each step keeps the ones
/// before it.
pub const SHED_STEPS: &[&str] = &[
    "time 1 in 8 syscalls",
    "new-flow events / 10",
    "time 1 in 64 syscalls",
    "TCP RTT samples off",
    "slow-syscall events off",
];

/// The configuration with the first `level` steps of the ladder applied.
pub fn shed(config: &mut Config, level: usize) {
    if level >= 1 {
        let s = &mut config.syscalls.latency_sample_every;
        *s = (*s).max(8);
    }
    if level >= 2 {
        let f = &mut config.network.flow_events_per_second;
        *f = (*f / 10).max(1);
    }
    if level >= 3 {
        let s = &mut config.syscalls.latency_sample_every;
        *s = (*s).max(64);
    }
    if level >= 4 {
        config.tcp.rtt = false;
    }
    if level >= 5 {
        config.syscalls.slow_threshold_ms = 0.0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shedding_never_adds_detail() {
        let mut c = Config::default();
        c.syscalls.latency_sample_every = 100;
        shed(&mut c, 1);
        assert_eq!(c.syscalls.latency_sample_every, 100);
        shed(&mut c, SHED_STEPS.len());
        assert!(!c.tcp.rtt);
        assert_eq!(c.syscalls.slow_threshold_ms, 0.0);
        assert!(c.network.flow_events_per_second >= 1);
    }
}
