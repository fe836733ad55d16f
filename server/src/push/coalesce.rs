//! Per-device coalescing of push notifications, as pure state that takes `now` (no I/O, no clock).
//!
//! A device gets at most one notification per window: the first committed message for an offline
//! device opens a window, later ones only update what the notification will carry (the newest
//! conversation, seq and epoch, and how many messages it stands for), and when the window ends the
//! notifier takes it ([`Coalescer::take_due`]). While a POST is in flight, new messages wait for the
//! next window. A failed POST that may be retried comes back with [`Coalescer::retry`] and is taken
//! again after its backoff, merged with anything newer. The number of devices tracked is bounded.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_store::PushRecord;

/// A device: (user, device id).
pub(crate) type DeviceKey = (Arc<str>, Arc<str>);

/// What the next notification of a device carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Update {
    /// The conversation of the newest message.
    pub(crate) conversation: Arc<str>,
    /// Its seq.
    pub(crate) seq: u64,
    /// Its conversation epoch.
    pub(crate) epoch: u64,
    /// Its sender (shown only under the preview policy).
    pub(crate) sender: Arc<str>,
    /// Messages this notification stands for.
    pub(crate) messages: u64,
    /// The device's registration when the newest message was seen.
    pub(crate) registration: PushRecord,
}

impl Update {
    /// `newer` with the message count of both.
    fn merged(self, newer: Update) -> Update {
        Update {
            messages: self.messages.saturating_add(newer.messages),
            ..newer
        }
    }
}

#[derive(Debug)]
struct Slot {
    pending: Option<Update>,
    due: Option<Instant>,
    in_flight: bool,
    /// Failed attempts of the notification now pending or in flight.
    attempts: u32,
}

/// The coalescing state of every device with something pending or in flight.
#[derive(Debug)]
pub(crate) struct Coalescer {
    window: Duration,
    max_devices: usize,
    slots: HashMap<DeviceKey, Slot>,
    /// (due time, device) of every slot with a due time: the timer queue.
    due: BTreeSet<(Instant, DeviceKey)>,
}

impl Coalescer {
    pub(crate) fn new(window: Duration, max_devices: usize) -> Coalescer {
        Coalescer {
            window,
            max_devices,
            slots: HashMap::new(),
            due: BTreeSet::new(),
        }
    }

    /// Devices tracked now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.slots.len()
    }

    /// A message for an offline device. `false` if it was dropped because too many devices are
    /// tracked already.
    pub(crate) fn record(&mut self, key: DeviceKey, update: Update, now: Instant) -> bool {
        if !self.slots.contains_key(&key) && self.slots.len() >= self.max_devices {
            return false;
        }
        let slot = self.slots.entry(key.clone()).or_insert(Slot {
            pending: None,
            due: None,
            in_flight: false,
            attempts: 0,
        });
        slot.pending = Some(match slot.pending.take() {
            Some(old) => old.merged(update),
            None => update,
        });
        if !slot.in_flight && slot.due.is_none() {
            let due = now + self.window;
            slot.due = Some(due);
            self.due.insert((due, key));
        }
        true
    }

    /// When the next notification falls due, if any.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.due.first().map(|(at, _)| *at)
    }

    /// Takes at most `max` notifications that are due at `now`; each is in flight until
    /// [`Coalescer::sent`], [`Coalescer::retry`] or [`Coalescer::forget`].
    pub(crate) fn take_due(&mut self, now: Instant, max: usize) -> Vec<(DeviceKey, Update)> {
        let mut out = Vec::new();
        while out.len() < max {
            let Some((at, _)) = self.due.first() else {
                break;
            };
            if *at > now {
                break;
            }
            let Some((_, key)) = self.due.pop_first() else {
                break;
            };
            let Some(slot) = self.slots.get_mut(&key) else {
                continue;
            };
            slot.due = None;
            if let Some(update) = slot.pending.take() {
                slot.in_flight = true;
                out.push((key, update));
            }
        }
        out
    }

    /// The notification of `key` is done (delivered, skipped, or failed for good). Messages that came
    /// in meanwhile get a window of their own.
    pub(crate) fn sent(&mut self, key: &DeviceKey, now: Instant) {
        let Some(slot) = self.slots.get_mut(key) else {
            return;
        };
        slot.in_flight = false;
        slot.attempts = 0;
        if slot.pending.is_some() {
            let due = now + self.window;
            slot.due = Some(due);
            self.due.insert((due, key.clone()));
        } else {
            self.slots.remove(key);
        }
    }

    /// The POST of `update` failed in a way worth retrying. Returns the number of failed attempts so
    /// far, or `None` once `max_attempts` is reached (the notification is then dropped, but messages that
    /// came in meanwhile still get their window).
    /// The retry is due `delay(attempts)` after `now`.
    pub(crate) fn retry(
        &mut self,
        key: &DeviceKey,
        update: Update,
        now: Instant,
        max_attempts: u32,
        delay: impl FnOnce(u32) -> Duration,
    ) -> Option<u32> {
        let slot = self.slots.get_mut(key)?;
        slot.attempts += 1;
        if slot.attempts >= max_attempts {
            self.sent(key, now);
            return None;
        }
        let retry_at = now + delay(slot.attempts);
        slot.in_flight = false;
        slot.pending = Some(match slot.pending.take() {
            Some(newer) => update.merged(newer),
            None => update,
        });
        slot.due = Some(retry_at);
        self.due.insert((retry_at, key.clone()));
        Some(slot.attempts)
    }

    /// Drops everything about `key` (its registration is gone).
    pub(crate) fn forget(&mut self, key: &DeviceKey) {
        if let Some(slot) = self.slots.remove(key) {
            if let Some(due) = slot.due {
                self.due.remove(&(due, key.clone()));
            }
        }
    }
}

/// Delay before retry number `attempt` (1-based): `initial` doubling per attempt, at most `max`.
pub(crate) fn backoff(attempt: u32, initial: Duration, max: Duration) -> Duration {
    let factor = 1u32 << attempt.saturating_sub(1).min(16);
    initial.saturating_mul(factor).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: Duration = Duration::from_millis(500);

    fn key(device: &str) -> DeviceKey {
        ("bob".into(), device.into())
    }

    fn update(seq: u64) -> Update {
        Update {
            conversation: "d:alice:bob".into(),
            seq,
            epoch: 7,
            sender: "alice".into(),
            messages: 1,
            registration: PushRecord::default(),
        }
    }

    #[test]
    fn messages_within_a_window_become_one_notification_with_the_newest_seq() {
        let t0 = Instant::now();
        let mut c = Coalescer::new(W, 10);
        for seq in 1..=5 {
            assert!(c.record(
                key("phone"),
                update(seq),
                t0 + Duration::from_millis(seq * 10)
            ));
        }
        assert_eq!(c.next_due(), Some(t0 + Duration::from_millis(10) + W));
        assert!(
            c.take_due(t0 + W, 10).is_empty(),
            "not due before the window ends"
        );
        let taken = c.take_due(t0 + 2 * W, 10);
        assert_eq!(taken.len(), 1);
        assert_eq!((taken[0].1.seq, taken[0].1.messages), (5, 5));
        c.sent(&key("phone"), t0 + 2 * W);
        assert_eq!(c.len(), 0, "nothing pending: the slot is gone");
        assert_eq!(c.next_due(), None);
    }

    #[test]
    fn messages_during_a_post_wait_for_the_next_window() {
        let t0 = Instant::now();
        let mut c = Coalescer::new(W, 10);
        c.record(key("phone"), update(1), t0);
        assert_eq!(c.take_due(t0 + W, 10).len(), 1);
        c.record(key("phone"), update(2), t0 + W);
        assert_eq!(c.next_due(), None, "in flight: no second POST at once");
        let done = t0 + W + Duration::from_millis(100);
        c.sent(&key("phone"), done);
        assert_eq!(c.next_due(), Some(done + W));
        let taken = c.take_due(done + W, 10);
        assert_eq!(taken[0].1.seq, 2);
    }

    #[test]
    fn retries_back_off_merge_newer_messages_and_stop_after_max_attempts() {
        let t0 = Instant::now();
        let mut c = Coalescer::new(W, 10);
        c.record(key("phone"), update(1), t0);
        let (k, u) = c.take_due(t0 + W, 10).remove(0);
        c.record(key("phone"), update(2), t0 + W);
        let delay = |attempt| backoff(attempt, W, 10 * W);
        let at = t0 + W + W;
        assert_eq!(c.retry(&k, u, t0 + W, 3, delay), Some(1));
        assert!(c.take_due(at - Duration::from_millis(1), 10).is_empty());
        let (k, u) = c.take_due(at, 10).remove(0);
        assert_eq!((u.seq, u.messages), (2, 2));
        assert_eq!(c.retry(&k, u.clone(), at, 3, delay), Some(2));
        assert!(
            c.take_due(at + W, 10).is_empty(),
            "the second retry waits twice as long"
        );
        let (k, u) = c.take_due(at + 2 * W, 10).remove(0);
        assert_eq!(
            c.retry(&k, u, at + 2 * W, 3, delay),
            None,
            "third failure: dropped"
        );
        assert_eq!(c.len(), 0);
    }

    #[test]
    fn forget_drops_the_device_and_the_device_count_is_bounded() {
        let t0 = Instant::now();
        let mut c = Coalescer::new(W, 2);
        assert!(c.record(key("a"), update(1), t0));
        assert!(c.record(key("b"), update(1), t0));
        assert!(
            !c.record(key("c"), update(1), t0),
            "third device over the bound"
        );
        assert!(
            c.record(key("a"), update(2), t0),
            "a known device still updates"
        );
        c.forget(&key("a"));
        assert_eq!(c.len(), 1);
        assert_eq!(c.take_due(t0 + W, 10).len(), 1);
    }

    #[test]
    fn backoff_doubles_up_to_the_maximum() {
        let (i, m) = (Duration::from_millis(100), Duration::from_millis(500));
        let delays: Vec<u128> = (1..=5).map(|a| backoff(a, i, m).as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 500, 500]);
    }
}
