//! Cost governance: the same loop watches what Sonde itself costs — its
//! user-space CPU (the HTTP server's threads excepted: they are measured
//! apart, so a flood of requests cannot make Sonde shed its telemetry),
//! its kernel programs' CPU (from the kernel's bpf_stats,
//! when `[collector] bpf_stats` is on) and lost events — against a budget,
//! and sheds detail in a fixed order while over it, restoring it in the
//! reverse order once well under it. Steps are bounded (a ladder), move one
//! at a time with hysteresis, and each carries its reason. Held between
//! half the budget and all of it, the governor probes a step back now and
//! then: a cost no step touches must not keep detail shed for good.

use serde::Serialize;

use tracing::{info, warn};

use super::plan::Action;
use crate::{collectors::Snapshot, config::overlay::SHED_STEPS as STEPS};

/// Cycles over budget before the next step down; cycles under half the
/// budget before the first step back up, and between the next ones while
/// the calm lasts: the first wait proves the spike is over, the rest
/// restore the detail an incident's start needs (four steps in 19 cycles,
/// not 40), and a step that costs too much is shed again.
const CYCLES_OVER: u32 = 3;
const CYCLES_UNDER: u32 = 10;
const CYCLES_UNDER_NEXT: u32 = 3;
/// Below this share of the budget, detail is restored.
const RESTORE_BELOW: f64 = 0.5;
/// Cycles held between half the budget and all of it before one step is
/// restored to see whether it fits: a cost the ladder does not touch (a
/// full flow table, a busy scrape) can keep the ratio there for minutes,
/// and with it detail shed that costs nothing to have. A probed step that
/// tips the cost over is shed again after [`CYCLES_OVER`] cycles, and
/// the next probe waits twice as long (at most [`PROBE_AFTER_MAX`]).
const PROBE_AFTER: u32 = 30;
const PROBE_AFTER_MAX: u32 = 240;
/// The ratio reported while events are being lost with a zero-loss budget.
const LOSING_EVENTS_RATIO: f64 = 2.0;

/// What Sonde cost over one cycle.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Cost {
    /// Share of one CPU the agent's threads used, the HTTP server's
    /// excepted.
    pub user_cpu_share: f64,
    /// Share of one CPU the HTTP server's threads used: reported, not
    /// counted against the budget (serving requests is not telemetry, and
    /// whoever floods the port must not make Sonde shed signals).
    pub serving_cpu_share: f64,
    /// Share of one CPU its kernel programs used (None: bpf_stats off).
    pub kernel_cpu_share: Option<f64>,
    pub lost_events_per_second: f64,
}

impl Cost {
    /// The cost between two snapshots; `cpu` is (before, after) of the
    /// agent's CPU seconds (the HTTP server's excepted).
    pub fn between(prev: &Snapshot, now: &Snapshot, cpu: (f64, f64)) -> Option<Cost> {
        let dt = now.seconds_since(prev)?;
        let kernel_ns = |s: &Snapshot| s.programs.iter().map(|p| p.run_time_ns).sum::<u64>();
        let runs = |s: &Snapshot| s.programs.iter().map(|p| p.run_count).sum::<u64>();
        // Run counts stay 0 unless bpf_stats is on.
        let kernel_cpu_share = (runs(now) > 0)
            .then(|| kernel_ns(now).saturating_sub(kernel_ns(prev)) as f64 / 1e9 / dt);
        let lost = |s: &Snapshot| s.rings.values().map(|r| r.lost).sum::<u64>();
        Some(Cost {
            user_cpu_share: (cpu.1 - cpu.0).max(0.0) / dt,
            serving_cpu_share: 0.0,
            kernel_cpu_share,
            lost_events_per_second: lost(now).saturating_sub(lost(prev)) as f64 / dt,
        })
    }
}

#[derive(Debug)]
pub struct Governor {
    /// false: measure and report only, never shed.
    pub enabled: bool,
    /// Share of one CPU (user space but the HTTP server, kernel programs)
    /// Sonde may use.
    pub cpu_budget: f64,
    /// Lost events per second tolerated (0: none).
    pub lost_events_budget: f64,
    pub level: usize,
    /// Last cycle's cost against the budget (1: at the budget).
    pub ratio: f64,
    pub last: Cost,
    over: u32,
    under: u32,
    /// A step was restored and the calm has lasted since.
    restoring: bool,
    /// Cycles held between half the budget and all of it, shed.
    held: u32,
    /// Held cycles before the next probe.
    probe_after: u32,
    /// The last restore was a probe, and nothing was shed since.
    probing: bool,
}

impl Governor {
    pub fn new(cpu_budget: f64, lost_events_budget: f64) -> Self {
        Self {
            enabled: true,
            cpu_budget,
            lost_events_budget,
            level: 0,
            ratio: 0.0,
            last: Cost::default(),
            over: 0,
            under: 0,
            restoring: false,
            held: 0,
            probe_after: PROBE_AFTER,
            probing: false,
        }
    }

    /// Cost against the budget: the worse of CPU and lost events.
    fn ratio_of(&self, cost: &Cost) -> f64 {
        let cpu = cost.user_cpu_share + cost.kernel_cpu_share.unwrap_or(0.0);
        let cpu_ratio = cpu / self.cpu_budget;
        let loss_ratio = if self.lost_events_budget > 0.0 {
            cost.lost_events_per_second / self.lost_events_budget
        } else if cost.lost_events_per_second > 0.0 {
            LOSING_EVENTS_RATIO
        } else {
            0.0
        };
        cpu_ratio.max(loss_ratio)
    }

    /// One cycle's cost; the step to take, if any, as the loop's action
    /// (its `level` is the ladder steps in force after it).
    pub fn observe(&mut self, cost: Cost) -> Option<Action> {
        self.last = cost;
        self.ratio = self.ratio_of(&cost);
        if !self.enabled {
            return None;
        }
        if self.ratio >= RESTORE_BELOW {
            self.restoring = false;
        }
        if self.ratio > 1.0 {
            self.under = 0;
            self.held = 0;
            self.over += 1;
            if self.over >= CYCLES_OVER && self.level < STEPS.len() {
                self.over = 0;
                if std::mem::take(&mut self.probing) {
                    // The probed step did not fit: wait longer next time.
                    self.probe_after = (self.probe_after * 2).min(PROBE_AFTER_MAX);
                }
                self.level += 1;
                let step = STEPS[self.level - 1];
                let reason = format!(
                    "over budget for {CYCLES_OVER} cycles ({:.0}% of it: user CPU {:.2}%, \
                         kernel programs {}, {:.0} events lost/s)",
                    self.ratio * 100.0,
                    cost.user_cpu_share * 100.0,
                    cost.kernel_cpu_share
                        .map_or("unknown (bpf_stats off)".into(), |k| format!(
                            "{:.2}%",
                            k * 100.0
                        )),
                    cost.lost_events_per_second
                );
                warn!(level = self.level, step, "over its cost budget: {reason}");
                return Some(Action::LowerCost {
                    level: self.level,
                    step,
                    reason,
                });
            }
        } else if self.ratio < RESTORE_BELOW {
            self.over = 0;
            self.held = 0;
            self.under += 1;
            let wait = if self.restoring {
                CYCLES_UNDER_NEXT
            } else {
                CYCLES_UNDER
            };
            if self.under >= wait && self.level > 0 {
                self.under = 0;
                self.restoring = true;
                // Calm: whatever a probe found no longer holds.
                self.probing = false;
                self.probe_after = PROBE_AFTER;
                let reason = format!(
                    "under half the budget for {wait} cycles ({:.0}% of it)",
                    self.ratio * 100.0
                );
                return Some(self.restore(reason));
            }
        } else {
            self.over = 0;
            self.under = 0;
            if self.level > 0 {
                self.held += 1;
                if self.held > 2 * CYCLES_OVER {
                    // The probed step fitted.
                    self.probing = false;
                }
                if self.held >= self.probe_after {
                    self.held = 0;
                    self.probing = true;
                    let reason = format!(
                        "held at {:.0}% of the budget for {} cycles: restored to see whether \
                         it fits (shed again if the cost goes over)",
                        self.ratio * 100.0,
                        self.probe_after
                    );
                    return Some(self.restore(reason));
                }
            }
        }
        None
    }

    /// Restores the last step shed.
    fn restore(&mut self, reason: String) -> Action {
        let step = STEPS[self.level - 1];
        self.level -= 1;
        info!(level = self.level, step, "cost back under budget: {reason}");
        Action::RestoreCost {
            level: self.level,
            step,
            reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpu(share: f64) -> Cost {
        Cost {
            user_cpu_share: share,
            serving_cpu_share: 0.0,
            kernel_cpu_share: Some(0.0),
            lost_events_per_second: 0.0,
        }
    }

    #[test]
    fn sheds_in_order_with_hysteresis_and_restores_in_reverse() {
        let mut g = Governor::new(0.02, 0.0);
        // Two cycles over: nothing yet.
        assert!(g.observe(cpu(0.05)).is_none());
        assert!(g.observe(cpu(0.05)).is_none());
        let Some(Action::LowerCost { level, step, .. }) = g.observe(cpu(0.05)) else {
            panic!("third cycle over budget should shed a step");
        };
        assert_eq!((level, step), (1, STEPS[0]));
        for _ in 0..3 * STEPS.len() * 2 {
            g.observe(cpu(0.05));
        }
        assert_eq!(g.level, STEPS.len(), "the ladder is bounded");
        // Between half and the whole budget: hold.
        for _ in 0..PROBE_AFTER - 1 {
            assert!(g.observe(cpu(0.015)).is_none());
        }
        for _ in 0..9 {
            assert!(g.observe(cpu(0.001)).is_none());
        }
        let Some(Action::RestoreCost { level, step, .. }) = g.observe(cpu(0.001)) else {
            panic!("ten cycles well under budget should restore a step");
        };
        assert_eq!((level, step), (STEPS.len() - 1, STEPS[STEPS.len() - 1]));
        // While the calm lasts, the next steps come back every 3 cycles.
        for _ in 0..2 {
            assert!(g.observe(cpu(0.001)).is_none());
        }
        assert!(matches!(
            g.observe(cpu(0.001)),
            Some(Action::RestoreCost { .. })
        ));
        assert_eq!(g.level, STEPS.len() - 2);
        // A busier cycle ends the calm: the next restore waits 10 again.
        assert!(g.observe(cpu(0.015)).is_none());
        for _ in 0..9 {
            assert!(g.observe(cpu(0.001)).is_none());
        }
        assert!(g.observe(cpu(0.001)).is_some());
        assert_eq!(g.level, STEPS.len() - 3);
    }

    #[test]
    fn a_long_hold_probes_one_step_and_backs_off_if_it_does_not_fit() {
        let mut g = Governor::new(0.02, 0.0);
        for _ in 0..3 * 2 {
            g.observe(cpu(0.05));
        }
        assert_eq!(g.level, 2);
        // Held at 75 % of the budget by a cost no step touches.
        for _ in 0..PROBE_AFTER - 1 {
            assert!(g.observe(cpu(0.015)).is_none());
        }
        let Some(Action::RestoreCost { level, .. }) = g.observe(cpu(0.015)) else {
            panic!("a hold of {PROBE_AFTER} cycles should probe a step");
        };
        assert_eq!(level, 1);
        // The probed step tips the cost over: shed again after 3 cycles.
        for _ in 0..CYCLES_OVER - 1 {
            assert!(g.observe(cpu(0.03)).is_none());
        }
        assert!(matches!(
            g.observe(cpu(0.03)),
            Some(Action::LowerCost { level: 2, .. })
        ));
        // The next probe waits twice as long.
        for _ in 0..2 * PROBE_AFTER - 1 {
            assert!(g.observe(cpu(0.015)).is_none());
        }
        assert!(matches!(
            g.observe(cpu(0.015)),
            Some(Action::RestoreCost { level: 1, .. })
        ));
        // This one fits: the hold goes on, and the last step is probed
        // after the same wait (no back-off without a failed probe).
        for _ in 0..2 * PROBE_AFTER - 1 {
            assert!(g.observe(cpu(0.015)).is_none());
        }
        assert!(matches!(
            g.observe(cpu(0.015)),
            Some(Action::RestoreCost { level: 0, .. })
        ));
        assert!(g.observe(cpu(0.015)).is_none(), "nothing left to restore");
    }

    #[test]
    fn lost_events_count_as_over_budget() {
        let mut g = Governor::new(1.0, 0.0);
        let losing = Cost {
            user_cpu_share: 0.0,
            serving_cpu_share: 0.0,
            kernel_cpu_share: None,
            lost_events_per_second: 5.0,
        };
        g.observe(losing);
        assert!(g.ratio > 1.0);
    }
}
