//! The JSON report of a run: `messages` (sent/acked/delivered), `faults` (count by kind), `violations`
//! (empty when every invariant held), plus the seed and what is needed to read a failure: the fault log
//! and, per violation, the faults around it.

use std::collections::{BTreeMap, HashSet};

use serde::Serialize;

use crate::checker::Violation;
use crate::observe::Observations;
use crate::schedule::Fault;

/// One fault as it was applied.
#[derive(Debug, Clone, Serialize)]
pub struct FaultRecord {
    /// Milliseconds since the run started.
    pub at_ms: u64,
    /// How long it lasted (0 for instant faults).
    pub duration_ms: u64,
    /// The fault.
    pub fault: Fault,
    /// What applying it found, e.g. sends in flight at a client kill.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

/// Message counts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Messages {
    /// Messages queued by senders.
    pub sent: u64,
    /// Messages with a receipt.
    pub acked: u64,
    /// Deliveries to devices' applications (one message to three devices counts three).
    pub delivered: u64,
    /// Sent without a receipt (the sender was killed before it came).
    pub unacked: u64,
    /// Of those, delivered to some device (stored by a retry from the restarted outbox).
    pub unacked_delivered: u64,
}

impl Messages {
    /// Counts from the observations.
    pub fn count(obs: &Observations) -> Messages {
        let acked: HashSet<(&str, &str)> = obs
            .acked
            .iter()
            .map(|a| (a.conversation.as_str(), a.id.as_str()))
            .collect();
        let seen: HashSet<(&str, &str)> = obs
            .delivered
            .values()
            .flatten()
            .map(|d| (d.conversation.as_str(), d.id.as_str()))
            .collect();
        let unacked: Vec<(&str, &str)> = obs
            .sent
            .iter()
            .map(|s| (s.conversation.as_str(), s.id.as_str()))
            .filter(|k| !acked.contains(k))
            .collect();
        Messages {
            sent: obs.sent.len() as u64,
            acked: acked.len() as u64,
            delivered: obs.delivered.values().map(|l| l.len() as u64).sum(),
            unacked: unacked.len() as u64,
            unacked_delivered: unacked.iter().filter(|k| seen.contains(*k)).count() as u64,
        }
    }
}

/// A violation with the faults that were active or recent when it was observed.
#[derive(Debug, Clone, Serialize)]
pub struct Evidence {
    /// The violation.
    #[serde(flatten)]
    pub violation: Violation,
    /// Faults that started within [`EVIDENCE_WINDOW_MS`] before it or were still running.
    pub faults_around: Vec<FaultRecord>,
}

/// How far back faults count as "around" a violation.
pub const EVIDENCE_WINDOW_MS: u64 = 15_000;
/// Violations kept in the report (the count by kind covers the rest).
pub const MAX_VIOLATIONS_KEPT: usize = 200;

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The seed; `--seed` replays the run's schedule and proxy decisions.
    pub seed: u64,
    /// Profile name.
    pub profile: String,
    /// What was attacked (`single-node` or `cluster`).
    pub target: String,
    /// Server nodes of the target (1 for the single node).
    pub nodes: usize,
    /// How disk-full faults were made, or why not.
    pub disk_full_mode: String,
    /// Devices and conversations of the scenario.
    pub scenario: BTreeMap<String, u64>,
    /// Wall time of the run, seconds.
    pub wall_s: f64,
    /// Whether every owed delivery arrived before the settle timeout.
    pub settled: bool,
    /// Time from the end of faults until settled, milliseconds.
    pub settle_ms: u64,
    /// Message counts.
    pub messages: Messages,
    /// Faults applied, by kind.
    pub faults: BTreeMap<String, u64>,
    /// Client kills that found sends in flight (queued, not acked): the outbox had to carry them.
    pub client_kills_with_pending: u64,
    /// Every fault applied, in order.
    pub fault_log: Vec<FaultRecord>,
    /// Deliveries the checker excused because the run made the store lose its history (FLUSHALL) and
    /// the device was told (an epoch change): each is a (message, device) pair, 0 without FLUSHALL.
    pub lost_with_history: u64,
    /// Violations by kind.
    pub violations_by_kind: BTreeMap<String, u64>,
    /// The violations (at most [`MAX_VIOLATIONS_KEPT`]), empty when all held.
    pub violations: Vec<Evidence>,
    /// Processes that exited although the run did not kill them (crashes).
    pub unexpected_exits: Vec<String>,
    /// Membership changes made during the run (the checker knows their seqs).
    pub membership_changes: Vec<String>,
    /// Sends that failed for good, per device (first few; sends of a removed member are refused).
    pub send_failures: BTreeMap<String, Vec<String>>,
}

/// Pairs each violation with the faults around it.
pub fn evidence(violations: &[Violation], log: &[FaultRecord]) -> Vec<Evidence> {
    violations
        .iter()
        .take(MAX_VIOLATIONS_KEPT)
        .map(|v| Evidence {
            violation: v.clone(),
            faults_around: match v.at_ms {
                Some(at) => log
                    .iter()
                    .filter(|f| f.at_ms <= at && f.at_ms + f.duration_ms + EVIDENCE_WINDOW_MS >= at)
                    .cloned()
                    .collect(),
                None => Vec::new(),
            },
        })
        .collect()
}

/// Counts violations by kind, with the kinds' report names.
pub fn by_kind(violations: &[Violation]) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for v in violations {
        let name = serde_json::to_value(v.kind)
            .ok()
            .and_then(|n| n.as_str().map(str::to_owned))
            .unwrap_or_else(|| format!("{:?}", v.kind));
        *out.entry(name).or_default() += 1;
    }
    out
}
