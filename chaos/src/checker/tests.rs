//! The checker on hand-made logs: a clean history passes, and each kind of violation is detected
//! (and only it).

use super::*;
use crate::observe::{Acked, Delivered, Span};

pub(super) const CONV: &str = "d:alice:bob";
/// The server time every receipt of these tests names.
pub(super) const SERVER_TIME_MS: u64 = 1_000_000;

/// alice (phone, laptop) and bob (phone) in one direct conversation.
pub(super) fn base() -> Observations {
    let mut obs = Observations::default();
    for (user, device) in [("alice", "phone"), ("alice", "laptop"), ("bob", "phone")] {
        obs.add_device(user, device);
    }
    obs.membership.add(CONV, "alice", Span::ALWAYS);
    obs.membership.add(CONV, "bob", Span::ALWAYS);
    obs
}

pub(super) fn send(obs: &mut Observations, device: &str, id: &str, acked_seq: Option<u64>) {
    obs.sent.push(crate::observe::Sent {
        device: device.into(),
        conversation: CONV.into(),
        id: id.into(),
        token: format!("body of {id}"),
        at_ms: 0,
    });
    if let Some(seq) = acked_seq {
        obs.acked.push(Acked {
            device: device.into(),
            conversation: CONV.into(),
            id: id.into(),
            seq,
            server_time_ms: SERVER_TIME_MS,
            at_ms: 1,
        });
    }
}

pub(super) fn deliver(obs: &mut Observations, to: &str, from: &str, id: &str, seq: u64) {
    obs.delivered
        .get_mut(to)
        .expect("known device")
        .push(Delivered {
            conversation: CONV.into(),
            seq,
            epoch: 1,
            id: id.into(),
            sender: from.into(),
            system: false,
            token: format!("body of {id}"),
            at_ms: 2,
        });
}

/// alice/phone sends m1 (seq 1), bob/phone sends m2 (seq 2), alice/phone sends m3 (seq 3), all acked
/// and delivered to the two other devices each.
pub(super) fn clean() -> Observations {
    let mut obs = base();
    let (ap, al, bp) = ("alice/phone", "alice/laptop", "bob/phone");
    send(&mut obs, ap, "m1", Some(1));
    send(&mut obs, bp, "m2", Some(2));
    send(&mut obs, ap, "m3", Some(3));
    for (id, from, seq) in [("m1", ap, 1), ("m2", bp, 2), ("m3", ap, 3)] {
        for to in [ap, al, bp] {
            if to != from {
                deliver(&mut obs, to, from, id, seq);
            }
        }
    }
    obs
}

/// bob was removed from the conversation by the system message at `seq`.
fn remove_bob_at(obs: &mut Observations, seq: u64) {
    let span = Span {
        joined_after: 0,
        removed_at: Some(seq),
    };
    obs.membership.add(CONV, "bob", span);
}

pub(super) fn kinds(obs: &Observations) -> Vec<ViolationKind> {
    check(obs).into_iter().map(|v| v.kind).collect()
}

#[test]
fn a_clean_history_has_no_violation_and_nothing_pending() {
    let obs = clean();
    assert_eq!(check(&obs), vec![]);
    assert_eq!(pending(&obs), 0);
}

#[test]
fn an_unacked_message_never_delivered_is_fine() {
    let mut obs = clean();
    send(&mut obs, "bob/phone", "lost-before-store", None);
    assert_eq!(check(&obs), vec![]);
}

#[test]
fn an_unacked_message_delivered_everywhere_once_is_fine() {
    let mut obs = clean();
    send(&mut obs, "bob/phone", "m4", None);
    deliver(&mut obs, "alice/phone", "bob/phone", "m4", 4);
    deliver(&mut obs, "alice/laptop", "bob/phone", "m4", 4);
    assert_eq!(check(&obs), vec![]);
}

#[test]
fn acked_but_missing_on_one_device() {
    let mut obs = clean();
    send(&mut obs, "bob/phone", "m4", Some(4));
    deliver(&mut obs, "alice/phone", "bob/phone", "m4", 4);
    let found = check(&obs);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].kind, ViolationKind::AckedNotDelivered);
    assert_eq!(found[0].device, "alice/laptop");
    assert_eq!(found[0].seq, Some(4));
    assert_eq!(pending(&obs), 1);
}

#[test]
fn a_lost_tail_message_is_missing_even_without_a_gap() {
    let mut obs = clean();
    send(&mut obs, "alice/laptop", "m4", Some(4));
    let mut found = kinds(&obs);
    found.dedup();
    assert_eq!(found, vec![ViolationKind::AckedNotDelivered]);
    assert_eq!(pending(&obs), 2, "alice/phone and bob/phone are owed m4");
}

#[test]
fn stored_unacked_message_missing_elsewhere() {
    let mut obs = clean();
    send(&mut obs, "bob/phone", "m4", None);
    deliver(&mut obs, "alice/phone", "bob/phone", "m4", 4);
    assert_eq!(kinds(&obs), vec![ViolationKind::StoredNotDelivered]);
}

#[test]
fn a_duplicate_delivery() {
    let mut obs = clean();
    deliver(&mut obs, "bob/phone", "alice/phone", "m3", 3);
    assert_eq!(kinds(&obs), vec![ViolationKind::DeliveredTwice]);
}

#[test]
fn a_gap_inside_an_epoch() {
    let mut obs = clean();
    // bob/phone never sees m1: its log starts at seq 3 (seq 2 is its own).
    obs.delivered
        .get_mut("bob/phone")
        .expect("device")
        .remove(0);
    let found = check(&obs);
    let gap = found
        .iter()
        .find(|v| v.kind == ViolationKind::Gap)
        .expect("gap found");
    assert_eq!(gap.device, "bob/phone");
    assert_eq!(gap.seq, Some(1));
    // The same loss also shows as an acked message that never arrived.
    assert!(found
        .iter()
        .any(|v| v.kind == ViolationKind::AckedNotDelivered));
}

#[test]
fn own_messages_are_not_gaps() {
    // bob/phone's log is 1, 3: seq 2 is its own message, known from its receipt.
    let obs = clean();
    assert!(check(&obs).iter().all(|v| v.kind != ViolationKind::Gap));
}

#[test]
fn seq_going_backwards() {
    let mut obs = clean();
    let log = obs.delivered.get_mut("alice/laptop").expect("device");
    log.swap(1, 2); // m3 (seq 3) before m2 (seq 2)
    let found = kinds(&obs);
    assert!(found.contains(&ViolationKind::SeqBackwards), "{found:?}");
}

#[test]
fn something_nobody_sent() {
    let mut obs = clean();
    deliver(&mut obs, "alice/laptop", "bob/phone", "ghost", 4);
    let found = kinds(&obs);
    assert!(found.contains(&ViolationKind::NeverSent), "{found:?}");
}

#[test]
fn a_message_whose_sender_was_killed_before_printing_its_id_was_still_sent() {
    // bob/phone printed its intent, was killed after the outbox write, and its restarted outbox sent
    // the message: no Sent record, but not "never sent" either, and bob/phone is not owed it.
    let mut obs = clean();
    obs.intents.push(crate::observe::Intent {
        device: "bob/phone".into(),
        conversation: CONV.into(),
        token: "body of m4".into(),
    });
    deliver(&mut obs, "alice/phone", "bob/phone", "m4", 4);
    deliver(&mut obs, "alice/laptop", "bob/phone", "m4", 4);
    assert_eq!(check(&obs), vec![]);
    // The same body claimed by another device is not covered by bob's intent.
    deliver(&mut obs, "bob/phone", "alice/phone", "m5", 5);
    assert!(kinds(&obs).contains(&ViolationKind::NeverSent));
}

#[test]
fn delivered_to_a_non_member() {
    let mut obs = clean();
    obs.add_device("carol", "phone");
    deliver(&mut obs, "carol/phone", "alice/phone", "m1", 1);
    assert_eq!(kinds(&obs), vec![ViolationKind::NonMember]);
}

#[test]
fn delivered_after_removal() {
    let mut obs = clean();
    remove_bob_at(&mut obs, 2);
    let found = check(&obs);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].kind, ViolationKind::AfterRemoval);
    assert_eq!(found[0].seq, Some(3));
}

#[test]
fn a_removed_member_need_not_see_its_removal_or_later_messages() {
    let mut obs = clean();
    // bob was removed by seq 2; bob/phone saw seq 1 and (its own) seq 2 only.
    remove_bob_at(&mut obs, 2);
    obs.delivered.get_mut("bob/phone").expect("device").pop();
    assert_eq!(check(&obs), vec![]);
}

#[test]
fn receipt_and_delivery_disagree_on_the_seq() {
    let mut obs = clean();
    obs.acked[0].seq = 7;
    let found = kinds(&obs);
    assert!(found.contains(&ViolationKind::SeqMismatch), "{found:?}");
}

#[test]
fn two_messages_at_one_seq() {
    let mut obs = clean();
    send(&mut obs, "bob/phone", "m4", None);
    deliver(&mut obs, "alice/phone", "bob/phone", "m4", 3);
    let found = kinds(&obs);
    assert!(found.contains(&ViolationKind::SeqMismatch), "{found:?}");
}

#[test]
fn a_new_epoch_restarts_the_order() {
    let mut obs = clean();
    send(&mut obs, "bob/phone", "m4", Some(1));
    for to in ["alice/phone", "alice/laptop"] {
        let mut d = obs.delivered[to][0].clone();
        d.epoch = 2;
        d.seq = 1;
        d.id = "m4".into();
        d.sender = "bob/phone".into();
        obs.delivered.get_mut(to).expect("device").push(d);
    }
    assert_eq!(check(&obs), vec![]);
}
