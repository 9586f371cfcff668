//! Interfaces that come and go (pods' veths on a Kubernetes node): with no
//! interface list, the agent follows the default set while it runs. It
//! lives at the top because it drives the loaded programs and the shared
//! state alike.

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use crate::{netif::default_interfaces, probes::Probes, state::AppState};

/// The log target these lines have always had (`RUST_LOG=sonde::netif=…`).
const LOG_TARGET: &str = "sonde::netif";

/// Follows the default interface set: attaches to interfaces that came up,
/// forgets those that went away, every `every` until shutdown. An interface
/// that fails to attach is reported once and not retried while it exists.
pub(super) async fn watch(
    state: AppState,
    probes: Arc<Mutex<Probes>>,
    every: Duration,
    task: Arc<crate::tasks::Task>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut failed: BTreeSet<u32> = Default::default();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        task.beat_async().await;
        let state = state.clone();
        let probes = probes.clone();
        let mut still_failed = std::mem::take(&mut failed);
        let result = tokio::task::spawn_blocking(move || {
            let now = default_interfaces();
            let known = state.interfaces();
            let mut probes = probes.lock().unwrap_or_else(|e| e.into_inner());
            let mut changed = false;
            for (&ifindex, name) in &known {
                if !now.iter().any(|(n, i)| *i == ifindex && n == name) {
                    tracing::info!(target: LOG_TARGET, interface = name, "interface gone: forgetting it");
                    probes.forget_interface(ifindex);
                    state.collector.forget_interface(ifindex);
                    changed = true;
                }
            }
            still_failed.retain(|i| now.iter().any(|(_, idx)| idx == i));
            let config = state.config_snapshot();
            for (name, ifindex) in now {
                if known.contains_key(&ifindex) || still_failed.contains(&ifindex) {
                    continue;
                }
                match probes.attach_interface(&name, ifindex, &config, &state.caps) {
                    Ok(()) => {
                        state.collector.interface_added(ifindex, &name);
                        tracing::info!(target: LOG_TARGET, interface = name, "new interface: accounting its packets");
                        changed = true;
                    }
                    Err(err) => {
                        tracing::warn!(target: LOG_TARGET, "new interface {name} not accounted: {err}");
                        still_failed.insert(ifindex);
                    }
                }
            }
            if changed {
                state.publish(&probes);
            }
            still_failed
        })
        .await;
        match result {
            Ok(now_failed) => failed = now_failed,
            Err(err) => tracing::warn!(target: LOG_TARGET, "interface rescan failed: {err}"),
        }
    }
}
