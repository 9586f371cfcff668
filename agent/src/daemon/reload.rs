//! SIGHUP: re-read the configuration and apply what can change while the
//! programs stay loaded; name what needs a restart.

use tracing::{error, info, warn};

use super::setup::{LOG_TARGET, Sources};
use crate::state::AppState;

/// SIGHUP: re-read the config file (under the same flags) and apply what
/// can change at run time.
pub(super) fn reload(state: &AppState, sources: &Sources) {
    let new = match sources.load() {
        Ok(new) => new,
        Err(err) => {
            error!(target: LOG_TARGET, "SIGHUP: keeping the current configuration: {err}");
            return;
        }
    };
    let mut current = state.config.write().unwrap_or_else(|e| e.into_inner());
    let mut restart_needed = Vec::new();
    if new.listen != current.listen {
        restart_needed.push("listen");
    }
    // The web configuration file's contents are re-read on SIGHUP; which
    // file, the socket and the limits need a restart.
    let mut new_http = new.http.clone();
    new_http.web_config_file = current.http.web_config_file.clone();
    if new_http != current.http {
        restart_needed.push("http");
    }
    if new.log_format != current.log_format {
        restart_needed.push("log_format");
    }
    if new.network.interfaces != current.network.interfaces
        || new.network.enabled != current.network.enabled
        || new.network.max_flows != current.network.max_flows
        || new.network.xdp_mode != current.network.xdp_mode
        || new.network.tc_attach != current.network.tc_attach
        || new.network.lock_dir != current.network.lock_dir
    {
        restart_needed.push("network");
    }
    if new.events != current.events {
        restart_needed.push("events");
    }
    if new.otlp != current.otlp {
        restart_needed.push("otlp");
    }
    if new.kubernetes != current.kubernetes {
        restart_needed.push("kubernetes");
    }
    if new.tcp.enabled != current.tcp.enabled {
        restart_needed.push("tcp.enabled");
    }
    if new.syscalls.enabled != current.syscalls.enabled
        || new.syscalls.hook != current.syscalls.hook
    {
        restart_needed.push("syscalls.enabled/hook");
    }
    if !restart_needed.is_empty() {
        warn!(
        target: LOG_TARGET,
            "SIGHUP: {} changed but only take effect after a restart",
            restart_needed.join(", ")
        );
    }
    // Apply the runtime-tunable part on top of what is running.
    current.syscalls.slow_threshold_ms = new.syscalls.slow_threshold_ms;
    current.syscalls.slow_ignore = new.syscalls.slow_ignore.clone();
    current.syscalls.latency_sample_every = new.syscalls.latency_sample_every;
    current.syscalls.per_process = new.syscalls.per_process;
    current.syscalls.latency_histograms = new.syscalls.latency_histograms;
    current.drops.per_peer = new.drops.per_peer;
    current.drops.exact_device_drops_per_second = new.drops.exact_device_drops_per_second;
    current.network.flow_events_per_second = new.network.flow_events_per_second;
    current.network.flow_events_burst = new.network.flow_events_burst;
    current.network.top_peers = new.network.top_peers;
    current.tcp.rtt = new.tcp.rtt;
    current.tcp.top_peers = new.tcp.top_peers;
    current.health = new.health.clone();
    // The MAPE-K loop reads these every cycle; leaving enforce mode lifts
    // every block at its next cycle.
    current.mapek.mode = new.mapek.mode;
    current.mapek.block_ttl_seconds = new.mapek.block_ttl_seconds;
    current.mapek.max_blocked = new.mapek.max_blocked;
    current.mapek.never_block = new.mapek.never_block.clone();
    state.collector.reconfigure(current.clone());
    info!(
        target: LOG_TARGET,
        slow_threshold_ms = current.syscalls.slow_threshold_ms,
        per_process = current.syscalls.per_process,
        mapek_mode = current.mapek.mode.label(),
        "SIGHUP: runtime settings reloaded"
    );
}
