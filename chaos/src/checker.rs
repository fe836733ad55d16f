//! The independent invariant checker: Ferry's promise, judged only from what senders were told
//! (receipts) and what every device's application saw (delivered logs).
//!
//! It shares no code or state with the client: it never looks at an outbox, a receive window or a
//! store, so a bug in the client's bookkeeping cannot hide itself. The rules (DESIGN.md, "The promise"):
//!
//! 1. every acked message reaches every member device (except the one that sent it) exactly once;
//! 2. per conversation and device, deliveries come in seq order with no gap within an epoch (a device
//!    does not see its own messages, so their seqs, known from receipts or from other devices'
//!    deliveries, are not gaps);
//! 3. nothing is delivered that no scenario device sent (system messages aside);
//! 4. nothing reaches a device of a non-member, or of a member past its removal;
//! 5. an unacked message reaches a device exactly once or not at all; once any device saw it, it is
//!    stored, so every member device must get it;
//! 6. seqs never go backwards within an epoch, and a receipt's seq is the seq devices see.
//!
//! History loss (cluster target, FLUSHALL): rules 1 and 5 then forgive a device that misses a
//! message stored *before* the loss, but only if the loss was announced to it — its client reported an
//! epoch change of the conversation after the loss — or the conversation never came back (nothing was
//! stored in it after the loss and no device was told of a new epoch: a group the loss took, whose
//! members learn of the loss from the store epoch, which clients do not surface as an event). Gaps and
//! order are still judged within each epoch. The loss times are the run's ground truth (it sent the
//! FLUSHALL), and "stored before" is read from the receipt's server time or from a delivery seen
//! before the loss. Every forgiven (message, device) pair is counted ([`lost_with_history`]).
//! The loss takes the dedupe records too: a sender that never got its receipt stores the message
//! again in the new epoch, so a device may see it once per epoch (never twice in one), and its receipt
//! may name the new copy's seq. Known blind spot: a device that got only the old copy of such a
//! message counts as having it (receipts carry no epoch to tell which copy was acked).
//!
//! [`check`] is pure and cheap enough to run repeatedly: the run polls [`pending`] while waiting for
//! the system to settle.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::observe::{DeviceKey, Observations};

/// Which rule a violation breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ViolationKind {
    /// Rule 1: an acked message never reached a member device.
    AckedNotDelivered,
    /// Rule 5: a message some device saw (so it is stored) never reached another member device.
    StoredNotDelivered,
    /// Rules 1 and 5: a device saw the same message (or the same seq) twice.
    DeliveredTwice,
    /// Rule 2: a device skipped seqs within an epoch.
    Gap,
    /// Rule 6: a device saw a seq at or below one it already saw in the same epoch.
    SeqBackwards,
    /// Rule 6: a receipt and a delivery (or two receipts) disagree on a message's seq, or two
    /// messages share a seq.
    SeqMismatch,
    /// Rule 3: a delivered message that no scenario device sent.
    NeverSent,
    /// Rule 4: delivered to a device whose user is not a member.
    NonMember,
    /// Rule 4: delivered to a device of a user past its removal.
    AfterRemoval,
}

/// One broken rule with the minimal evidence to look it up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    /// Which rule.
    pub kind: ViolationKind,
    /// Conversation id.
    pub conversation: String,
    /// The device concerned (the receiver; for seq mismatches the sender).
    pub device: DeviceKey,
    /// The seq concerned (the first one of a gap).
    pub seq: Option<u64>,
    /// The epoch, when a delivery is concerned.
    pub epoch: Option<u64>,
    /// The client_msg_id, when one message is concerned.
    pub id: Option<String>,
    /// What happened, in words.
    pub detail: String,
    /// When it was observed (milliseconds since the run started), to find the faults around it.
    pub at_ms: Option<u64>,
}

/// The key of a message: (conversation, client_msg_id).
type MsgKey = (String, String);

/// Checks every rule and returns the violations, ordered by kind, conversation, device and seq.
pub fn check(obs: &Observations) -> Vec<Violation> {
    let mut out = Vec::new();
    let index = Index::build(obs, &mut out);
    for (device, log) in &obs.delivered {
        check_device_log(obs, &index, device, log, &mut out);
    }
    check_reach(obs, &index, &mut out, &mut 0);
    out.sort_by(|a, b| {
        (a.kind, &a.conversation, &a.device, a.seq).cmp(&(
            b.kind,
            &b.conversation,
            &b.device,
            b.seq,
        ))
    });
    out
}

/// Messages that some member device is still owed (acked or seen elsewhere but not delivered to it):
/// zero means the system has settled. Pure, like [`check`].
pub fn pending(obs: &Observations) -> usize {
    let mut scratch = Vec::new();
    let index = Index::build(obs, &mut scratch);
    let mut owed = Vec::new();
    check_reach(obs, &index, &mut owed, &mut 0);
    owed.len()
}

/// How many (message, device) deliveries were forgiven as lost with the store's history (see the
/// module docs); 0 when the run made no history loss.
pub fn lost_with_history(obs: &Observations) -> u64 {
    let mut scratch = Vec::new();
    let index = Index::build(obs, &mut scratch);
    let mut excused = 0;
    check_reach(obs, &index, &mut scratch, &mut excused);
    excused
}

/// What is known about every message, from receipts and all delivered logs together.
struct Index {
    /// Sender of every queued message.
    sender: HashMap<MsgKey, DeviceKey>,
    /// Seq from the receipt, when acked.
    acked_seq: HashMap<MsgKey, (u64, u64)>,
    /// Seq devices saw it at (the first delivery), its epoch, and the sender it claims.
    seen: HashMap<MsgKey, (u64, u64, DeviceKey)>,
    /// When any device first saw it (run time, ms).
    first_seen_at: HashMap<MsgKey, u64>,
    /// The server time its receipt names (ms since 1970), when acked.
    stored_at: HashMap<MsgKey, u64>,
    /// (conversation, body, device) of every send a device was about to queue.
    intents: HashSet<(String, String, DeviceKey)>,
    /// Per device: how often each message reached it.
    counts: HashMap<DeviceKey, HashMap<MsgKey, u32>>,
    /// Per device: seqs of messages it sent itself (known from receipts or other devices' logs).
    own_seqs: HashMap<DeviceKey, HashSet<(String, u64)>>,
}

impl Index {
    fn build(obs: &Observations, out: &mut Vec<Violation>) -> Index {
        let sender: HashMap<MsgKey, DeviceKey> = obs
            .sent
            .iter()
            .map(|s| ((s.conversation.clone(), s.id.clone()), s.device.clone()))
            .collect();
        let mut acked_seq: HashMap<MsgKey, (u64, u64)> = HashMap::new();
        let mut stored_at: HashMap<MsgKey, u64> = HashMap::new();
        let mut own_seqs: HashMap<DeviceKey, HashSet<(String, u64)>> = HashMap::new();
        for a in &obs.acked {
            let key = (a.conversation.clone(), a.id.clone());
            if a.server_time_ms > 0 {
                stored_at.entry(key.clone()).or_insert(a.server_time_ms);
            }
            match acked_seq.get(&key) {
                Some(&(seq, _)) if seq != a.seq => out.push(Violation {
                    kind: ViolationKind::SeqMismatch,
                    conversation: a.conversation.clone(),
                    device: a.device.clone(),
                    seq: Some(a.seq),
                    epoch: None,
                    id: Some(a.id.clone()),
                    detail: format!("two receipts for one message: seq {seq} and seq {}", a.seq),
                    at_ms: Some(a.at_ms),
                }),
                Some(_) => {}
                None => {
                    acked_seq.insert(key, (a.seq, a.at_ms));
                }
            }
            own_seqs
                .entry(a.device.clone())
                .or_default()
                .insert((a.conversation.clone(), a.seq));
        }
        let intents = obs
            .intents
            .iter()
            .map(|i| (i.conversation.clone(), i.token.clone(), i.device.clone()))
            .collect();
        let mut seen: HashMap<MsgKey, (u64, u64, DeviceKey)> = HashMap::new();
        let mut first_seen_at: HashMap<MsgKey, u64> = HashMap::new();
        // Every seq a message was seen at: one, unless a history loss made its sender store it again.
        let mut seen_seqs: HashMap<MsgKey, BTreeSet<u64>> = HashMap::new();
        let mut by_seq: HashMap<(String, u64, u64), String> = HashMap::new();
        let mut counts: HashMap<DeviceKey, HashMap<MsgKey, u32>> = HashMap::new();
        for (device, log) in &obs.delivered {
            let per_device = counts.entry(device.clone()).or_default();
            for d in log {
                let key = (d.conversation.clone(), d.id.clone());
                *per_device.entry(key.clone()).or_default() += 1;
                own_seqs
                    .entry(d.sender.clone())
                    .or_default()
                    .insert((d.conversation.clone(), d.seq));
                let slot = (d.conversation.clone(), d.epoch, d.seq);
                match by_seq.get(&slot) {
                    Some(other) if *other != d.id => out.push(Violation {
                        kind: ViolationKind::SeqMismatch,
                        conversation: d.conversation.clone(),
                        device: device.clone(),
                        seq: Some(d.seq),
                        epoch: Some(d.epoch),
                        id: Some(d.id.clone()),
                        detail: format!("seq {} carries two messages: {other} and {}", d.seq, d.id),
                        at_ms: Some(d.at_ms),
                    }),
                    Some(_) => {}
                    None => {
                        by_seq.insert(slot, d.id.clone());
                    }
                }
                let at = first_seen_at.entry(key.clone()).or_insert(d.at_ms);
                *at = (*at).min(d.at_ms);
                seen_seqs.entry(key.clone()).or_default().insert(d.seq);
                seen.entry(key)
                    .or_insert_with(|| (d.seq, d.epoch, d.sender.clone()));
            }
        }
        for (key, &(seq, at_ms)) in &acked_seq {
            if let Some(&(seen_seq, epoch, _)) = seen.get(key) {
                // After a history loss the receipt may name the copy stored again in the new epoch.
                if !seen_seqs.get(key).is_some_and(|seqs| seqs.contains(&seq)) {
                    out.push(Violation {
                        kind: ViolationKind::SeqMismatch,
                        conversation: key.0.clone(),
                        device: sender.get(key).cloned().unwrap_or_default(),
                        seq: Some(seq),
                        epoch: Some(epoch),
                        id: Some(key.1.clone()),
                        detail: format!("receipt says seq {seq}, devices saw seq {seen_seq}"),
                        at_ms: Some(at_ms),
                    });
                }
            }
        }
        Index {
            sender,
            acked_seq,
            seen,
            first_seen_at,
            stored_at,
            intents,
            counts,
            own_seqs,
        }
    }
}

/// Rules 2, 3, 4, 6 and the duplicate half of 1 and 5, on one device's log.
fn check_device_log(
    obs: &Observations,
    index: &Index,
    device: &DeviceKey,
    log: &[crate::observe::Delivered],
    out: &mut Vec<Violation>,
) {
    let user = obs.devices.get(device).map(String::as_str).unwrap_or("");
    let own = index.own_seqs.get(device);
    // conversation → (epoch, highest seq seen in it)
    let mut last: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    // (conversation, id) → epoch of its first delivery to this device.
    let mut seen_ids: HashMap<(&str, &str), u64> = HashMap::new();
    for d in log {
        let v = |kind, detail: String| Violation {
            kind,
            conversation: d.conversation.clone(),
            device: device.clone(),
            seq: Some(d.seq),
            epoch: Some(d.epoch),
            id: Some(d.id.clone()),
            detail,
            at_ms: Some(d.at_ms),
        };
        let span = obs.membership.span(&d.conversation, user);
        match span {
            None => out.push(v(
                ViolationKind::NonMember,
                format!("{user} is not a member of {}", d.conversation),
            )),
            Some(span) if !span.allows(d.seq) => out.push(v(
                ViolationKind::AfterRemoval,
                format!(
                    "{user}'s membership covers seqs {span:?}, got seq {}",
                    d.seq
                ),
            )),
            Some(_) => {}
        }
        let key = (d.conversation.clone(), d.id.clone());
        // Sent, or at least about to be (a sender killed right after its outbox write never printed
        // the client_msg_id, but its restarted outbox still sends the message).
        let intended = || {
            index
                .intents
                .contains(&(d.conversation.clone(), d.token.clone(), d.sender.clone()))
        };
        if !d.system && !index.sender.contains_key(&key) && !intended() {
            out.push(v(
                ViolationKind::NeverSent,
                format!(
                    "no scenario device sent {} (body {:?}, claims sender {})",
                    d.id, d.token, d.sender
                ),
            ));
        }
        match seen_ids.get(&(d.conversation.as_str(), d.id.as_str())) {
            // A history loss took the dedupe record with the message: a sender that never got its
            // receipt stores it again, in the new epoch, and devices rightly see that copy too.
            Some(&epoch) if epoch != d.epoch && lost_before(obs, d.at_ms) => {}
            Some(_) => {
                out.push(v(
                    ViolationKind::DeliveredTwice,
                    format!("message {} delivered again", d.id),
                ));
                continue;
            }
            None => {
                seen_ids.insert((&d.conversation, &d.id), d.epoch);
            }
        }
        let start = span.map_or(0, |s| s.joined_after);
        match last.get(d.conversation.as_str()).copied() {
            Some((epoch, prev)) if epoch == d.epoch => {
                if d.seq <= prev {
                    out.push(v(
                        ViolationKind::SeqBackwards,
                        format!("seq {} after seq {prev} in epoch {epoch}", d.seq),
                    ));
                    continue;
                }
                check_gap(&d.conversation, prev, d.seq, own, &v, out);
            }
            // A new epoch restarts the window wherever the server's recent history starts.
            Some(_) => {}
            None => check_gap(&d.conversation, start, d.seq, own, &v, out),
        }
        last.insert(&d.conversation, (d.epoch, d.seq));
    }
}

/// Whether the run made the store lose its history at or before `at_ms`.
fn lost_before(obs: &Observations, at_ms: u64) -> bool {
    obs.history_losses.iter().any(|loss| loss.at_ms <= at_ms)
}

/// A gap between `prev` and `seq` unless every seq in between is the device's own message.
fn check_gap(
    conversation: &str,
    prev: u64,
    seq: u64,
    own: Option<&HashSet<(String, u64)>>,
    v: &dyn Fn(ViolationKind, String) -> Violation,
    out: &mut Vec<Violation>,
) {
    let missing: Vec<u64> = (prev + 1..seq)
        .filter(|s| !own.is_some_and(|o| o.contains(&(conversation.to_owned(), *s))))
        .collect();
    if let (Some(first), Some(last)) = (missing.first(), missing.last()) {
        let mut violation = v(
            ViolationKind::Gap,
            format!(
                "seq {seq} after seq {prev}: {} seq(s) never seen ({first}..={last})",
                missing.len()
            ),
        );
        violation.seq = Some(*first);
        out.push(violation);
    }
}

/// Whether `device` missing message `key` is forgiven as a history loss: the message was stored
/// before a loss the run caused, and the loss was announced to the device (module docs).
fn lost_with_loss(obs: &Observations, index: &Index, key: &MsgKey, device: &DeviceKey) -> bool {
    let conversation = key.0.as_str();
    let seen_at = index.first_seen_at.get(key).copied();
    let stored_at = index.stored_at.get(key).copied();
    obs.history_losses.iter().any(|loss| {
        let stored_before =
            seen_at.is_some_and(|t| t < loss.at_ms) || stored_at.is_some_and(|t| t < loss.unix_ms);
        if !stored_before {
            return false;
        }
        let reset_after = |r: &&crate::observe::EpochReset| {
            r.conversation == conversation && r.at_ms >= loss.at_ms
        };
        let told = obs
            .epoch_resets
            .iter()
            .filter(reset_after)
            .any(|r| r.device == *device);
        let came_back = obs.epoch_resets.iter().any(|r| reset_after(&r))
            || obs
                .acked
                .iter()
                .any(|a| a.conversation == conversation && a.server_time_ms >= loss.unix_ms);
        told || !came_back
    })
}

/// Rules 1 and 5, the reach half: every acked or stored message reached every member device. Misses
/// forgiven as history losses are counted in `excused` instead.
fn check_reach(obs: &Observations, index: &Index, out: &mut Vec<Violation>, excused: &mut u64) {
    let messages: BTreeSet<&MsgKey> = index.acked_seq.keys().chain(index.seen.keys()).collect();
    for key in messages {
        let acked = index.acked_seq.get(key).map(|&(seq, _)| seq);
        let seen = index.seen.get(key);
        let Some(seq) = acked.or(seen.map(|(seq, _, _)| *seq)) else {
            continue;
        };
        // Devices do not see their own messages: the sender per its receipts, or per the message.
        let sender = index.sender.get(key);
        let claimed = seen.map(|(_, _, sender)| sender);
        for (device, user) in &obs.devices {
            if Some(device) == sender || Some(device) == claimed {
                continue;
            }
            if !obs
                .membership
                .span(&key.0, user)
                .is_some_and(|s| s.requires(seq))
            {
                continue;
            }
            let count = index
                .counts
                .get(device)
                .and_then(|c| c.get(key))
                .copied()
                .unwrap_or(0);
            if count == 0 && lost_with_loss(obs, index, key, device) {
                *excused += 1;
            } else if count == 0 {
                let (kind, why) = match acked {
                    Some(_) => (ViolationKind::AckedNotDelivered, "acked"),
                    None => (ViolationKind::StoredNotDelivered, "seen by another device"),
                };
                out.push(Violation {
                    kind,
                    conversation: key.0.clone(),
                    device: device.clone(),
                    seq: Some(seq),
                    epoch: seen.map(|(_, epoch, _)| *epoch),
                    id: Some(key.1.clone()),
                    detail: format!("{why} at seq {seq}, never delivered to {device}"),
                    at_ms: index.acked_seq.get(key).map(|&(_, at)| at),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod loss_tests;
