//! Execute: applies planned actions by rewriting the kernel programs'
//! runtime configuration (through the collector, which owns the maps), or,
//! in dry-run mode, only records what it would have done (cost governance
//! applies in every mode: it only sheds Sonde's own detail). What the loop
//! changed is an overlay on the configured settings, so a zoom, the cost
//! ladder and a SIGHUP reload compose instead of undoing one another.
//! Every action is logged and counted.
//!
//! Enforce mode adds the blocklist: sources the ingress programs drop until
//! a deadline. It is part of the overlay too; the collector keeps the
//! kernel's map equal to it and sweeps expired entries on its own, and the
//! kernel ignores an expired entry even before it is swept.

use std::{collections::BTreeMap, net::IpAddr};

use serde::Serialize;
use tracing::info;

use super::plan::{Action, Attribution};
use crate::{
    collectors::CollectorHandle,
    config::{Mode, overlay::Overlay},
};

/// A source the kernel drops, as /api/v1/anomalies shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Blocked {
    pub peer: IpAddr,
    /// Unix seconds.
    pub since: f64,
    pub expires: f64,
    /// Dropped for this block so far, as the kernel counted them.
    pub packets: u64,
    pub bytes: u64,
    pub reason: String,
}

#[derive(Debug, Default)]
pub struct Executor {
    pub mode: Mode,
    /// (action, mode) → count.
    pub counts: BTreeMap<(&'static str, &'static str), u64>,
    pub log: Vec<(f64, Action, &'static str)>,
    /// What is applied to the kernel programs now.
    pub overlay: Overlay,
    /// The blocks in force, with their reasons and what they dropped.
    pub blocked: BTreeMap<IpAddr, Blocked>,
}

impl Executor {
    pub fn new(mode: Mode) -> Self {
        Self {
            mode,
            ..Default::default()
        }
    }

    /// Follows a reloaded `[mapek] mode`. Back in dry_run, a zoom in force
    /// is undone (dry_run changes nothing); leaving enforce, the planner
    /// lifts every block (with its reason) in the same cycle.
    pub fn set_mode(&mut self, mode: Mode, collector: &CollectorHandle) {
        if mode == self.mode {
            return;
        }
        info!(
            from = self.mode.label(),
            to = mode.label(),
            "MAPE-K mode changed"
        );
        self.mode = mode;
        if mode == Mode::DryRun && self.overlay.zoom.take().is_some() {
            collector.adjust(self.overlay.clone());
        }
    }

    /// Whether `action` changes the kernel programs in this mode. Cost
    /// actions apply in every mode (they only shed Sonde's own detail), and
    /// so does lifting a block; a block itself only in enforce mode.
    fn applies(&self, action: &Action) -> bool {
        match action {
            Action::LowerCost { .. }
            | Action::RestoreCost { .. }
            | Action::Attribute { .. }
            | Action::EndAttribution { .. }
            | Action::Unblock { .. } => true,
            Action::Block { .. } => self.mode == Mode::Enforce,
            Action::RaiseDetail { .. } | Action::RestoreDetail { .. } => self.mode != Mode::DryRun,
        }
    }

    pub fn execute(&mut self, actions: Vec<Action>, now: f64, collector: &CollectorHandle) {
        for action in actions {
            let applied = self.applies(&action);
            let mode = if action.is_on_sonde_itself() {
                "act"
            } else {
                self.mode.label()
            };
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
                    Action::Block {
                        peer,
                        until,
                        reason,
                        ..
                    } => {
                        self.overlay.blocked.insert(*peer, *until);
                        let blocked = self.blocked.entry(*peer).or_insert_with(|| Blocked {
                            peer: *peer,
                            since: now,
                            expires: *until,
                            packets: 0,
                            bytes: 0,
                            reason: reason.clone(),
                        });
                        // An extension says why, and names its anomaly.
                        blocked.expires = *until;
                        blocked.reason.clone_from(reason);
                    }
                    Action::Unblock { peer, .. } => {
                        self.overlay.blocked.remove(peer);
                        self.blocked.remove(peer);
                    }
                    Action::Attribute { what, .. } | Action::EndAttribution { what, .. } => {
                        let on = matches!(action, Action::Attribute { .. });
                        match what {
                            Attribution::Processes => self.overlay.attribute = on,
                            Attribution::DropPeers => self.overlay.attribute_drops = on,
                        }
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
        if !self.blocked.is_empty() {
            let snapshot = collector.snapshot.read().unwrap_or_else(|e| e.into_inner());
            for (peer, entry) in &snapshot.blocklist {
                if let Some(blocked) = self.blocked.get_mut(peer) {
                    blocked.packets = entry.packets;
                    blocked.bytes = entry.bytes;
                }
            }
        }
    }
}
