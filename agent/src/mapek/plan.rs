//! Plan: decides what to do about the anomalies. While any is active the
//! agent zooms in — slow-syscall events from a lower threshold and more
//! new-flow events — for a bounded time; when all are over (and the zoom has
//! expired) it restores the configured detail. Every decision carries its
//! reason; at most one zoom is in force, so the loop cannot run away.
//! Cost governance (see `govern`) adds its own two actions.

use serde::Serialize;

use super::analyze::Anomaly;
use crate::config::Config;

/// Slow-syscall threshold while zoomed in.
const ZOOM_SLOW_THRESHOLD_MS: f64 = 10.0;
/// New-flow event rate multiplier while zoomed in.
const ZOOM_FLOW_EVENTS_FACTOR: u64 = 10;

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    RaiseDetail {
        slow_threshold_ms: f64,
        flow_events_per_second: u64,
        until: f64,
        reason: String,
    },
    RestoreDetail {
        reason: String,
    },
    /// Sonde is over its cost budget: one more step of the ladder.
    LowerCost {
        level: usize,
        step: &'static str,
        reason: String,
    },
    /// Well under budget again: the last step is undone.
    RestoreCost {
        level: usize,
        step: &'static str,
        reason: String,
    },
}

impl Action {
    /// Every action's name.
    pub const NAMES: [&'static str; 4] = [
        "raise_detail",
        "restore_detail",
        "lower_cost",
        "restore_cost",
    ];

    pub fn name(&self) -> &'static str {
        match self {
            Action::RaiseDetail { .. } => "raise_detail",
            Action::RestoreDetail { .. } => "restore_detail",
            Action::LowerCost { .. } => "lower_cost",
            Action::RestoreCost { .. } => "restore_cost",
        }
    }

    /// Whether it is about Sonde's own cost (applied in every mode: it only
    /// ever takes Sonde's own detail away, never touches the workload).
    pub fn is_cost(&self) -> bool {
        matches!(self, Action::LowerCost { .. } | Action::RestoreCost { .. })
    }
}

#[derive(Debug, Default)]
pub struct Planner {
    /// Until when the current zoom lasts (None: not zoomed).
    zoomed_until: Option<f64>,
    pub zoom_seconds: f64,
}

impl Planner {
    pub fn new(zoom_seconds: f64) -> Self {
        Self {
            zoomed_until: None,
            zoom_seconds,
        }
    }

    pub fn plan(
        &mut self,
        opened: &[Anomaly],
        active: &[Anomaly],
        now: f64,
        config: &Config,
    ) -> Vec<Action> {
        let mut actions = Vec::new();
        if let Some(first) = opened.first() {
            let until = now + self.zoom_seconds;
            if self.zoomed_until.is_none() {
                actions.push(Action::RaiseDetail {
                    slow_threshold_ms: ZOOM_SLOW_THRESHOLD_MS,
                    flow_events_per_second: config
                        .network
                        .flow_events_per_second
                        .saturating_mul(ZOOM_FLOW_EVENTS_FACTOR),
                    until,
                    reason: format!(
                        "anomaly #{} {} (score {:.1}): look closer",
                        first.id, first.kind, first.score
                    ),
                });
            }
            self.zoomed_until = Some(until);
        }
        if let Some(until) = self.zoomed_until
            && now >= until
            && active.is_empty()
        {
            self.zoomed_until = None;
            actions.push(Action::RestoreDetail {
                reason: "no anomaly active and the zoom expired".into(),
            });
        }
        actions
    }
}
