//! Plan: decides what to do about the anomalies. While any is active the
//! agent zooms in — slow-syscall events from a lower threshold and more
//! new-flow events — for a bounded time; when all are over (and the zoom has
//! expired) it restores the configured detail. Every decision carries its
//! reason; at most one zoom is in force, so the loop cannot run away.
//! Cost governance (see `govern`) adds its own two actions.
//!
//! In enforce mode only, a port scan gets its source's new inbound TCP
//! connections blocked for `block_ttl_seconds`, and unblocked when the
//! time is up — only a source that proved it is real and is not protected
//! (see `guard`: a refusal is logged and reported with its reason). A SYN
//! flood is never blocked (its sources are unproven by nature). Bounded:
//! at most `max_blocked` sources at once; a source already blocked is not
//! blocked twice, and its block is extended at most once per anomaly (when
//! a new anomaly names it, or when its anomaly is still active as the
//! block ends), so every block ends.

use std::{
    collections::{BTreeMap, VecDeque},
    net::IpAddr,
};

use serde::Serialize;
use tracing::warn;

use super::analyze::Anomaly;
use crate::config::{Config, MapekConfig, Mode};

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
    /// Enforce mode: drop `peer`'s ingress packets until `until` (Unix
    /// seconds), `ttl_seconds` from now; again for a source already
    /// blocked: its block is extended.
    Block {
        peer: IpAddr,
        ttl_seconds: u64,
        until: f64,
        reason: String,
    },
    /// The block is over (expired, or enforce mode left).
    Unblock {
        peer: IpAddr,
        reason: String,
    },
    /// Count syscalls per process, or drops per peer, until `until`, to
    /// name who is behind an anomaly (observation only: every mode).
    Attribute {
        what: Attribution,
        until: f64,
        reason: String,
    },
    /// That counting off again.
    EndAttribution {
        what: Attribution,
        reason: String,
    },
}

/// What an attribution counts, and which anomalies ask for it.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Attribution {
    /// Syscalls per process: a syscall anomaly that names no process.
    Processes,
    /// Drops per (reason, source, destination): packet loss, to name
    /// whose packets were dropped.
    DropPeers,
}

impl Attribution {
    const ALL: [Attribution; 2] = [Attribution::Processes, Attribution::DropPeers];

    fn wanted_by(self, a: &Anomaly) -> bool {
        match self {
            Attribution::Processes => ATTRIBUTE_KINDS.contains(&a.kind) && a.subject.is_none(),
            Attribution::DropPeers => a.kind == "packet_loss",
        }
    }

    fn counts(self) -> &'static str {
        match self {
            Attribution::Processes => "count syscalls per process",
            Attribution::DropPeers => "count drops per source and destination",
        }
    }

    fn names(self) -> &'static str {
        match self {
            Attribution::Processes => "the process behind it",
            Attribution::DropPeers => "whose packets were dropped",
        }
    }
}

impl Action {
    /// Every action's name.
    pub const NAMES: [&'static str; 8] = [
        "raise_detail",
        "restore_detail",
        "lower_cost",
        "restore_cost",
        "block",
        "unblock",
        "attribute",
        "end_attribution",
    ];

    /// Actions that only change what Sonde itself observes (its cost, its
    /// attribution): applied in every mode, and counted as `act`.
    pub const ON_SONDE_ITSELF: [&'static str; 4] =
        ["lower_cost", "restore_cost", "attribute", "end_attribution"];

    pub fn name(&self) -> &'static str {
        match self {
            Action::RaiseDetail { .. } => "raise_detail",
            Action::RestoreDetail { .. } => "restore_detail",
            Action::LowerCost { .. } => "lower_cost",
            Action::RestoreCost { .. } => "restore_cost",
            Action::Block { .. } => "block",
            Action::Unblock { .. } => "unblock",
            Action::Attribute { .. } => "attribute",
            Action::EndAttribution { .. } => "end_attribution",
        }
    }

    /// Whether it only changes Sonde's own observation (see
    /// [`Action::ON_SONDE_ITSELF`]).
    pub fn is_on_sonde_itself(&self) -> bool {
        Self::ON_SONDE_ITSELF.contains(&self.name())
    }
}

/// Anomaly kinds a process is behind: per-process syscall counting names
/// it.
pub const ATTRIBUTE_KINDS: [&str; 2] = ["syscall_storm", "syscall_error_spike"];
/// How long an attribution stays on after an anomaly that asks for it
/// opens.
const ATTRIBUTE_SECONDS: f64 = 10.0;

/// Anomaly kinds whose evidence names one attacking source: enforce mode
/// blocks it (once proven real). Not `syn_flood`: its subject is the peer
/// that opened the most flows, not a SYN source, and a flood's sources are
/// half-open, unproven and often forged.
pub const BLOCK_KINDS: [&str; 1] = ["port_scan"];

/// Refused blocks kept for /api/v1/anomalies.
const REFUSALS_KEPT: usize = 32;

/// An opened anomaly that names the source of a network attack.
#[derive(Debug, Clone)]
pub struct Offender {
    pub anomaly: u64,
    pub kind: &'static str,
    pub score: f64,
    pub peer: IpAddr,
}

impl Offender {
    pub fn of(anomaly: &Anomaly) -> Option<Offender> {
        if !BLOCK_KINDS.contains(&anomaly.kind) {
            return None;
        }
        Some(Offender {
            anomaly: anomaly.id,
            kind: anomaly.kind,
            score: anomaly.score,
            peer: subject_peer(anomaly.subject.as_deref()?)?,
        })
    }
}

/// The address in an anomaly's subject, `"peer 10.213.0.2"`. (Parsed from
/// the text the analyzer writes; a typed peer on `Anomaly` would be better.)
fn subject_peer(subject: &str) -> Option<IpAddr> {
    let ip: IpAddr = subject.strip_prefix("peer ")?.trim().parse().ok()?;
    Some(ip.to_canonical())
}

/// A block in force, as the planner tracks it.
#[derive(Debug, Clone)]
struct PlannedBlock {
    until: f64,
    /// The latest anomaly that named the source.
    anomaly: u64,
    /// Whether that anomaly's one extension at the end of a block is used.
    extended: bool,
}

/// A block not applied, and why.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Refusal {
    pub time: f64,
    pub anomaly: u64,
    pub peer: IpAddr,
    pub reason: String,
}

#[derive(Debug, Default)]
pub struct Planner {
    /// Until when the current zoom lasts (None: not zoomed).
    zoomed_until: Option<f64>,
    pub zoom_seconds: f64,
    /// Until when each attribution in force counts.
    attributing_until: BTreeMap<Attribution, f64>,
    /// Sources blocked now (enforce mode).
    blocked: BTreeMap<IpAddr, PlannedBlock>,
    /// The latest refused blocks, oldest first.
    pub refused: VecDeque<Refusal>,
}

impl Planner {
    pub fn new(zoom_seconds: f64) -> Self {
        Self {
            zoomed_until: None,
            zoom_seconds,
            ..Default::default()
        }
    }

    /// `guard`: why a source must not be blocked, if it must not
    /// (protected, or not proven real; see [`super::guard`]).
    pub fn plan(
        &mut self,
        opened: &[Anomaly],
        active: &[Anomaly],
        now: f64,
        config: &Config,
        guard: impl FnMut(IpAddr) -> Option<String>,
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
        actions.extend(self.plan_attribution(opened, now));
        let offenders: Vec<Offender> = opened.iter().filter_map(Offender::of).collect();
        let active: Vec<u64> = active.iter().map(|a| a.id).collect();
        actions.extend(self.plan_blocks(&offenders, &active, now, &config.mapek, guard));
        actions
    }

    /// Each attribution: on for [`ATTRIBUTE_SECONDS`] when an anomaly that
    /// asks for it opens (a syscall anomaly without a process named,
    /// packet loss), off when that time is up. Only a newly opened anomaly
    /// starts (or prolongs) it.
    fn plan_attribution(&mut self, opened: &[Anomaly], now: f64) -> Vec<Action> {
        let mut actions = Vec::new();
        for what in Attribution::ALL {
            if let Some(a) = opened.iter().find(|a| what.wanted_by(a)) {
                let until = now + ATTRIBUTE_SECONDS;
                if self.attributing_until.insert(what, until).is_none() {
                    actions.push(Action::Attribute {
                        what,
                        until,
                        reason: format!(
                            "anomaly #{} {}: {} for {ATTRIBUTE_SECONDS} s to name {}",
                            a.id,
                            a.kind,
                            what.counts(),
                            what.names()
                        ),
                    });
                }
            } else if self
                .attributing_until
                .get(&what)
                .is_some_and(|until| now >= *until)
            {
                self.attributing_until.remove(&what);
                actions.push(Action::EndAttribution {
                    what,
                    reason: "attribution time is up".into(),
                });
            }
        }
        actions
    }

    /// The blocklist's decisions for this cycle: blocks that end (or are
    /// extended once), and sources to block. `guard` is only asked when a
    /// source is about to be blocked; it returns why not, or, for a source
    /// it allows, None.
    pub fn plan_blocks(
        &mut self,
        offenders: &[Offender],
        active: &[u64],
        now: f64,
        m: &MapekConfig,
        mut guard: impl FnMut(IpAddr) -> Option<String>,
    ) -> Vec<Action> {
        let mut actions = Vec::new();
        if m.mode != Mode::Enforce {
            for peer in std::mem::take(&mut self.blocked).into_keys() {
                actions.push(Action::Unblock {
                    peer,
                    reason: format!("[mapek] mode is now {}: no blocking", m.mode.label()),
                });
            }
            return actions;
        }
        let ttl = m.block_ttl_seconds;
        let mut ended = Vec::new();
        for (&peer, block) in &mut self.blocked {
            if let Some(net) = m.never_block.iter().find(|net| net.contains(peer)) {
                let net = String::from(*net);
                ended.push((
                    peer,
                    format!("{peer} is now in [mapek] never_block ({net})"),
                ));
                continue;
            }
            if now < block.until {
                continue;
            }
            if !block.extended && active.contains(&block.anomaly) {
                block.extended = true;
                block.until = now + ttl as f64;
                actions.push(Action::Block {
                    peer,
                    ttl_seconds: ttl,
                    until: block.until,
                    reason: format!(
                        "anomaly #{} still active as the block of {peer} ended: extended once, \
                         by {ttl} s",
                        block.anomaly
                    ),
                });
            } else {
                let why = if block.extended {
                    "its one extension used"
                } else {
                    "the anomaly is over"
                };
                ended.push((
                    peer,
                    format!(
                        "block of {peer} expired (anomaly #{}: {why})",
                        block.anomaly
                    ),
                ));
            }
        }
        for (peer, reason) in ended {
            self.blocked.remove(&peer);
            actions.push(Action::Unblock { peer, reason });
        }

        for o in offenders {
            let peer = o.peer;
            if let Some(block) = self.blocked.get_mut(&peer) {
                // Named again by another anomaly: a fresh TTL from now (and
                // that anomaly's own extension), never a second entry.
                if block.anomaly != o.anomaly {
                    block.anomaly = o.anomaly;
                    block.extended = false;
                    let until = now + ttl as f64;
                    if until > block.until {
                        block.until = until;
                        actions.push(Action::Block {
                            peer,
                            ttl_seconds: ttl,
                            until,
                            reason: format!(
                                "anomaly #{} {} (score {:.1}) names {peer}, already blocked: \
                                 extended to {ttl} s from now",
                                o.anomaly, o.kind, o.score
                            ),
                        });
                    }
                }
                continue;
            }
            // Protection and proof first: their reason says more.
            let full = (self.blocked.len() >= m.max_blocked).then(|| {
                format!(
                    "{} sources already blocked ([mapek] max_blocked)",
                    self.blocked.len()
                )
            });
            if let Some(reason) = guard(peer).or(full) {
                warn!(
                    anomaly = o.anomaly,
                    kind = o.kind,
                    %peer,
                    "MAPE-K: not blocking {peer}: {reason}"
                );
                self.refused.push_back(Refusal {
                    time: now,
                    anomaly: o.anomaly,
                    peer,
                    reason,
                });
                if self.refused.len() > REFUSALS_KEPT {
                    self.refused.pop_front();
                }
                continue;
            }
            let until = now + ttl as f64;
            self.blocked.insert(
                peer,
                PlannedBlock {
                    until,
                    anomaly: o.anomaly,
                    extended: false,
                },
            );
            actions.push(Action::Block {
                peer,
                ttl_seconds: ttl,
                until,
                reason: format!(
                    "anomaly #{} {} (score {:.1}) from {peer}: its new inbound TCP connections \
                     dropped for {ttl} s",
                    o.anomaly, o.kind, o.score
                ),
            });
        }
        actions
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Cidr;

    const ATTACKER: &str = "10.213.0.2";

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn settings(mode: Mode) -> MapekConfig {
        MapekConfig {
            mode,
            block_ttl_seconds: 4,
            max_blocked: 2,
            ..Default::default()
        }
    }

    fn offender(anomaly: u64, peer: &str) -> Offender {
        Offender {
            anomaly,
            kind: "port_scan",
            score: 9.0,
            peer: ip(peer),
        }
    }

    /// A guard that lets every source be blocked.
    fn allow(_: IpAddr) -> Option<String> {
        None
    }

    fn names(actions: &[Action]) -> Vec<&'static str> {
        actions.iter().map(Action::name).collect()
    }

    #[test]
    fn the_peer_comes_from_the_subject() {
        assert_eq!(subject_peer("peer 10.213.0.2"), Some(ip(ATTACKER)));
        assert_eq!(subject_peer("peer fd00::2"), Some(ip("fd00::2")));
        assert_eq!(subject_peer("peer ::ffff:10.213.0.2"), Some(ip(ATTACKER)));
        assert_eq!(subject_peer("process sonde-workload"), None);
        assert_eq!(subject_peer("peer nobody"), None);
    }

    #[test]
    fn dry_run_and_act_never_block() {
        for mode in [Mode::DryRun, Mode::Act] {
            let mut planner = Planner::new(60.0);
            let actions = planner.plan_blocks(
                &[offender(1, ATTACKER)],
                &[1],
                100.0,
                &settings(mode),
                allow,
            );
            assert!(actions.is_empty(), "{mode:?}: {actions:?}");
            assert!(planner.blocked.is_empty() && planner.refused.is_empty());
        }
    }

    #[test]
    fn enforce_blocks_once_then_unblocks_when_the_time_is_up() {
        let m = settings(Mode::Enforce);
        let mut planner = Planner::new(60.0);
        // Two anomalies of one cycle name the same source: one block.
        let actions = planner.plan_blocks(
            &[offender(1, ATTACKER), offender(1, ATTACKER)],
            &[1],
            100.0,
            &m,
            allow,
        );
        assert_eq!(actions.len(), 1, "{actions:?}");
        let Action::Block {
            peer,
            ttl_seconds,
            until,
            reason,
        } = &actions[0]
        else {
            panic!("{actions:?}")
        };
        assert_eq!((*peer, *ttl_seconds, *until), (ip(ATTACKER), 4, 104.0));
        assert!(reason.contains("anomaly #1 port_scan"), "{reason}");
        // Nothing more while it lasts, the same anomaly or not.
        assert!(planner.plan_blocks(&[], &[1], 102.0, &m, allow).is_empty());
        // The anomaly is over when the time is up: unblocked.
        let actions = planner.plan_blocks(&[], &[], 104.0, &m, allow);
        assert_eq!(names(&actions), ["unblock"]);
        let Action::Unblock { reason, .. } = &actions[0] else {
            unreachable!()
        };
        assert!(reason.contains("expired"), "{reason}");
        assert!(planner.blocked.is_empty());
    }

    #[test]
    fn a_block_is_extended_at_most_once_per_anomaly() {
        let m = settings(Mode::Enforce);
        let mut planner = Planner::new(60.0);
        planner.plan_blocks(&[offender(1, ATTACKER)], &[1], 100.0, &m, allow);
        // Its anomaly still active at the deadline: extended, once.
        let actions = planner.plan_blocks(&[], &[1], 104.0, &m, allow);
        assert_eq!(names(&actions), ["block"]);
        assert!(matches!(actions[0], Action::Block { until, .. } if until == 108.0));
        let actions = planner.plan_blocks(&[], &[1], 108.0, &m, allow);
        assert_eq!(names(&actions), ["unblock"], "a second extension");
        // A new anomaly naming a blocked source: a fresh TTL, no new entry.
        planner.plan_blocks(&[offender(2, ATTACKER)], &[2], 200.0, &m, allow);
        let actions = planner.plan_blocks(&[offender(3, ATTACKER)], &[3], 202.0, &m, allow);
        assert_eq!(names(&actions), ["block"]);
        assert!(matches!(actions[0], Action::Block { until, .. } if until == 206.0));
        assert_eq!(planner.blocked.len(), 1);
        // The same anomaly again: nothing.
        let actions = planner.plan_blocks(&[offender(3, ATTACKER)], &[3], 203.0, &m, allow);
        assert!(actions.is_empty(), "{actions:?}");
    }

    #[test]
    fn a_source_the_guard_refuses_is_not_blocked_and_the_reason_is_kept() {
        let m = settings(Mode::Enforce);
        let mut planner = Planner::new(60.0);
        let mut asked = Vec::new();
        let actions = planner.plan_blocks(
            &[offender(1, "10.213.0.3"), offender(2, ATTACKER)],
            &[],
            100.0,
            &m,
            |peer| {
                asked.push(peer);
                (peer == ip("10.213.0.3")).then(|| "protected: a gateway".to_owned())
            },
        );
        assert_eq!(asked, [ip("10.213.0.3"), ip(ATTACKER)]);
        assert!(
            matches!(&actions[..], [Action::Block { peer, .. }] if *peer == ip(ATTACKER)),
            "{actions:?}"
        );
        assert_eq!(planner.refused.len(), 1);
        assert_eq!(planner.refused[0].peer, ip("10.213.0.3"));
        assert_eq!(planner.refused[0].anomaly, 1);
        assert!(planner.refused[0].reason.contains("gateway"));
        // A blocked source named again is not asked about again.
        planner.plan_blocks(&[offender(3, ATTACKER)], &[3], 101.0, &m, |_| {
            panic!("asked about a source already blocked")
        });
    }

    #[test]
    fn a_syn_flood_names_no_source_to_block() {
        let mut flood = Anomaly::of_kind("syn_flood");
        flood.subject = Some(format!("peer {ATTACKER}"));
        assert!(Offender::of(&flood).is_none());
        let mut scan = Anomaly::of_kind("port_scan");
        scan.subject = Some(format!("peer {ATTACKER}"));
        assert_eq!(Offender::of(&scan).map(|o| o.peer), Some(ip(ATTACKER)));
    }

    #[test]
    fn at_most_max_blocked_sources_are_blocked() {
        let m = settings(Mode::Enforce);
        let mut planner = Planner::new(60.0);
        let offenders = [
            offender(1, "10.213.0.2"),
            offender(2, "10.213.0.3"),
            offender(3, "10.213.0.4"),
        ];
        let actions = planner.plan_blocks(&offenders, &[], 100.0, &m, allow);
        assert_eq!(names(&actions), ["block", "block"]);
        assert_eq!(planner.refused.len(), 1);
        assert_eq!(planner.refused[0].peer, ip("10.213.0.4"));
        assert!(planner.refused[0].reason.contains("max_blocked"));
    }

    #[test]
    fn leaving_enforce_or_protecting_a_source_lifts_its_block() {
        let mut m = settings(Mode::Enforce);
        let mut planner = Planner::new(60.0);
        planner.plan_blocks(
            &[offender(1, "10.213.0.2"), offender(2, "10.213.0.3")],
            &[],
            100.0,
            &m,
            allow,
        );
        m.never_block = vec![Cidr::try_from("10.213.0.3".to_owned()).unwrap()];
        let actions = planner.plan_blocks(&[], &[], 101.0, &m, allow);
        assert!(
            matches!(&actions[..], [Action::Unblock { peer, reason }]
                if *peer == ip("10.213.0.3") && reason.contains("never_block")),
            "{actions:?}"
        );
        m.mode = Mode::Act;
        let actions = planner.plan_blocks(&[], &[], 102.0, &m, allow);
        assert!(
            matches!(&actions[..], [Action::Unblock { peer, reason }]
                if *peer == ip("10.213.0.2") && reason.contains("mode is now act")),
            "{actions:?}"
        );
        assert!(planner.plan_blocks(&[], &[], 103.0, &m, allow).is_empty());
    }

    #[test]
    fn a_syscall_anomaly_turns_per_process_counting_on_for_a_while() {
        let mut p = Planner::new(60.0);
        let mut storm = Anomaly::of_kind("syscall_storm");
        let on = p.plan_attribution(std::slice::from_ref(&storm), 100.0);
        assert!(matches!(
            on[..],
            [Action::Attribute { what: Attribution::Processes, until, .. }] if until == 110.0
        ));
        // Still on, nothing new to say.
        assert!(p.plan_attribution(&[], 105.0).is_empty());
        let off = p.plan_attribution(&[], 110.0);
        assert!(matches!(
            off[..],
            [Action::EndAttribution {
                what: Attribution::Processes,
                ..
            }]
        ));
        assert!(p.plan_attribution(&[], 111.0).is_empty());
        // A named anomaly, or another kind, needs no attribution.
        storm.subject = Some("process 1 (init)".into());
        assert!(p.plan_attribution(&[storm], 120.0).is_empty());
        let scan = Anomaly::of_kind("port_scan");
        assert!(p.plan_attribution(&[scan], 121.0).is_empty());
        // Observation only: applied (and counted as act) in dry_run too.
        assert!(on[0].is_on_sonde_itself());
        // Packet loss counts drops per peer, on its own clock.
        let loss = Anomaly::of_kind("packet_loss");
        let on = p.plan_attribution(&[loss], 130.0);
        assert!(
            matches!(&on[..], [Action::Attribute { what: Attribution::DropPeers, until, reason }]
                if *until == 140.0 && reason.contains("whose packets were dropped")),
            "{on:?}"
        );
        assert!(matches!(
            p.plan_attribution(&[], 140.0)[..],
            [Action::EndAttribution {
                what: Attribution::DropPeers,
                ..
            }]
        ));
    }
}
