//! Execute: applies planned actions by rewriting the kernel programs'
//! runtime configuration (through the collector, which owns the maps), or,
//! in dry-run mode, only records what it would have done (cost governance
//! applies in every mode: it only sheds Sonde's own detail). What the loop
//! changed is an overlay on the configured settings, so a zoom, the cost
//! ladder and a SIGHUP reload compose instead of undoing one another.
//! Every action is logged and counted.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tracing::info;

use super::{govern, plan::Action};
use crate::{collectors::CollectorHandle, config::Config};

/// What the loop has changed on top of the configured runtime settings.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overlay {
    /// Zoom in force: (slow-syscall threshold ms, new-flow events/s).
    pub zoom: Option<(f64, u64)>,
    /// Cost-ladder steps in force.
    pub shed_level: usize,
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
        govern::shed(&mut config, self.shed_level);
        config
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Decide and record, change nothing.
    #[default]
    DryRun,
    /// Apply the decisions to the kernel programs.
    Act,
}

impl Mode {
    pub fn label(self) -> &'static str {
        match self {
            Mode::DryRun => "dry_run",
            Mode::Act => "act",
        }
    }
}

#[derive(Debug, Default)]
pub struct Executor {
    pub mode: Mode,
    /// (action, mode) → count.
    pub counts: BTreeMap<(&'static str, &'static str), u64>,
    pub log: Vec<(f64, Action, &'static str)>,
    /// What is applied to the kernel programs now.
    pub overlay: Overlay,
}

impl Executor {
    pub fn new(mode: Mode) -> Self {
        Self {
            mode,
            ..Default::default()
        }
    }

    pub fn execute(&mut self, actions: Vec<Action>, now: f64, collector: &CollectorHandle) {
        for action in actions {
            let applied = self.mode == Mode::Act || action.is_cost();
            let mode = if applied { "act" } else { "dry_run" };
            info!(action = action.name(), mode, ?action, "MAPE-K action");
            if applied {
                let before = self.overlay.clone();
                match &action {
                    Action::RaiseDetail {
                        slow_threshold_ms,
                        flow_events_per_second,
                        ..
                    } => self.overlay.zoom = Some((*slow_threshold_ms, *flow_events_per_second)),
                    Action::RestoreDetail { .. } => self.overlay.zoom = None,
                    Action::LowerCost { level, .. } | Action::RestoreCost { level, .. } => {
                        self.overlay.shed_level = *level;
                    }
                }
                if self.overlay != before {
                    collector.adjust(self.overlay.clone());
                }
            }
            *self.counts.entry((action.name(), mode)).or_default() += 1;
            self.log.push((now, action, mode));
            if self.log.len() > 256 {
                self.log.remove(0);
            }
        }
    }
}
