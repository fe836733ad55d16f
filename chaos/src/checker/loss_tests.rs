//! The checker's history-loss rule (FLUSHALL on the cluster's Redis): a message stored before the loss
//! may be missing on a device only if the loss was announced to it, or the conversation never came
//! back; anything stored after the loss is owed as always.

use super::tests::{base, clean, deliver, kinds, send, CONV, SERVER_TIME_MS};
use super::*;
use crate::observe::{Acked, EpochReset, HistoryLoss};

/// The run flushed Redis at run time 10 s, a second of server time after every receipt of `clean`.
fn loss() -> HistoryLoss {
    HistoryLoss {
        at_ms: 10_000,
        unix_ms: SERVER_TIME_MS + 1_000,
    }
}

fn reset(obs: &mut Observations, device: &str, at_ms: u64) {
    obs.epoch_resets.push(EpochReset {
        device: device.into(),
        conversation: CONV.into(),
        epoch: 2,
        at_ms,
    });
}

/// bob/phone sends m4, acked at seq 4 before the loss; only alice/phone got it.
fn m4_before_the_loss() -> Observations {
    let mut obs = clean();
    send(&mut obs, "bob/phone", "m4", Some(4));
    deliver(&mut obs, "alice/phone", "bob/phone", "m4", 4);
    obs.history_losses.push(loss());
    obs
}

#[test]
fn a_loss_announced_to_the_device_forgives_what_it_missed() {
    let mut obs = m4_before_the_loss();
    reset(&mut obs, "alice/laptop", 11_000);
    assert_eq!(check(&obs), vec![]);
    assert_eq!(pending(&obs), 0);
    assert_eq!(lost_with_history(&obs), 1);
}

#[test]
fn a_conversation_that_never_came_back_forgives_too() {
    let obs = m4_before_the_loss();
    assert_eq!(check(&obs), vec![]);
    assert_eq!(lost_with_history(&obs), 1);
}

#[test]
fn a_conversation_that_came_back_without_telling_the_device_is_a_loss() {
    let mut obs = m4_before_the_loss();
    // The conversation came back in a new epoch: bob/phone was told, alice/laptop was not.
    reset(&mut obs, "bob/phone", 11_000);
    assert_eq!(kinds(&obs), vec![ViolationKind::AckedNotDelivered]);
    assert_eq!(lost_with_history(&obs), 0);
}

#[test]
fn an_announcement_before_the_loss_does_not_count() {
    let mut obs = m4_before_the_loss();
    reset(&mut obs, "bob/phone", 11_000);
    reset(&mut obs, "alice/laptop", 9_000);
    assert_eq!(kinds(&obs), vec![ViolationKind::AckedNotDelivered]);
}

#[test]
fn a_message_stored_after_the_loss_is_owed_as_always() {
    let mut obs = base();
    obs.history_losses.push(loss());
    send(&mut obs, "bob/phone", "late", None);
    obs.acked.push(Acked {
        device: "bob/phone".into(),
        conversation: CONV.into(),
        id: "late".into(),
        seq: 1,
        server_time_ms: loss().unix_ms + 1,
        at_ms: 12_000,
    });
    reset(&mut obs, "alice/laptop", 11_000);
    reset(&mut obs, "alice/phone", 11_000);
    assert_eq!(
        kinds(&obs),
        vec![
            ViolationKind::AckedNotDelivered,
            ViolationKind::AckedNotDelivered
        ]
    );
}

#[test]
fn without_a_loss_nothing_is_forgiven() {
    let mut obs = clean();
    send(&mut obs, "bob/phone", "m4", Some(4));
    deliver(&mut obs, "alice/phone", "bob/phone", "m4", 4);
    reset(&mut obs, "alice/laptop", 11_000);
    assert_eq!(kinds(&obs), vec![ViolationKind::AckedNotDelivered]);
    assert_eq!(lost_with_history(&obs), 0);
}

/// Delivers `id` from bob/phone to both alice devices at `seq` of `epoch`, at run time `at_ms`.
fn deliver_in(obs: &mut Observations, id: &str, seq: u64, epoch: u64, at_ms: u64) {
    for to in ["alice/phone", "alice/laptop"] {
        obs.delivered
            .get_mut(to)
            .expect("known device")
            .push(crate::observe::Delivered {
                conversation: CONV.into(),
                seq,
                epoch,
                id: id.into(),
                sender: "bob/phone".into(),
                system: false,
                token: format!("body of {id}"),
                at_ms,
            });
    }
}

/// bob/phone's m4 was stored at seq 4 of epoch 1 and seen by both alice devices; its receipt was lost,
/// Redis was flushed (dedupe records too), and the retry stored it again at seq 1 of epoch 2, which
/// is what the receipt names.
fn m4_stored_again() -> Observations {
    let mut obs = clean();
    send(&mut obs, "bob/phone", "m4", None);
    deliver_in(&mut obs, "m4", 4, 1, 5_000);
    obs.history_losses.push(loss());
    obs.acked.push(Acked {
        device: "bob/phone".into(),
        conversation: CONV.into(),
        id: "m4".into(),
        seq: 1,
        server_time_ms: loss().unix_ms + 100,
        at_ms: 12_000,
    });
    obs
}

#[test]
fn a_message_stored_again_after_a_loss_may_be_seen_once_per_epoch() {
    let mut obs = m4_stored_again();
    deliver_in(&mut obs, "m4", 1, 2, 12_100);
    assert_eq!(check(&obs), vec![]);
    assert_eq!(pending(&obs), 0);
}

#[test]
fn twice_in_one_epoch_is_still_a_duplicate_after_a_loss() {
    let mut obs = m4_stored_again();
    deliver_in(&mut obs, "m4", 4, 1, 12_100);
    // And nobody saw the seq the receipt names.
    assert_eq!(
        kinds(&obs),
        vec![
            ViolationKind::DeliveredTwice,
            ViolationKind::DeliveredTwice,
            ViolationKind::SeqMismatch
        ]
    );
}

#[test]
fn another_epoch_without_a_loss_is_a_duplicate() {
    let mut obs = m4_stored_again();
    obs.history_losses.clear();
    deliver_in(&mut obs, "m4", 1, 2, 12_100);
    assert_eq!(
        kinds(&obs),
        vec![ViolationKind::DeliveredTwice, ViolationKind::DeliveredTwice]
    );
}

#[test]
fn a_receipt_naming_neither_copy_is_a_mismatch() {
    let mut obs = m4_stored_again();
    deliver_in(&mut obs, "m4", 1, 2, 12_100);
    obs.acked.last_mut().expect("receipt").seq = 7;
    assert_eq!(kinds(&obs), vec![ViolationKind::SeqMismatch]);
}
