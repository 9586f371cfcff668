//! Execute: applies planned actions by rewriting the kernel programs'
//! runtime configuration (through the collector, which owns the maps), or,
//! in dry-run mode, only records what it would have done. Every action is
//! logged and counted.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tracing::info;

use super::plan::Action;
use crate::{collectors::CollectorHandle, config::Config};

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
}

impl Executor {
    pub fn new(mode: Mode) -> Self {
        Self {
            mode,
            ..Default::default()
        }
    }

    pub fn execute(
        &mut self,
        actions: Vec<Action>,
        now: f64,
        configured: &Config,
        collector: &CollectorHandle,
    ) {
        for action in actions {
            let mode = self.mode.label();
            info!(action = action.name(), mode, ?action, "MAPE-K action");
            if self.mode == Mode::Act {
                collector.reconfigure(action.apply_to(configured));
            }
            *self.counts.entry((action.name(), mode)).or_default() += 1;
            self.log.push((now, action, mode));
            if self.log.len() > 256 {
                self.log.remove(0);
            }
        }
    }
}
