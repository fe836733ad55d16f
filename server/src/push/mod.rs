//! Offline push (spec section 18): wake a device that has no connection, through its UnifiedPush-style
//! endpoint or a configured push gateway.
//!
//! The send path only hands each committed message to [`Push::committed`], a `try_send` into a bounded
//! queue (a full queue drops the event and counts it in `ferry_push_dropped_total`): pushing never
//! blocks or slows a Send. Everything else happens in the notifier task.
//!
//! Layout:
//! - `settings`: the `[push]` table ([`PushSettings`]);
//! - `endpoint`: the allowlist of URL prefixes and the refusal of private addresses (no SSRF);
//! - `control`: PushRegister / PushUnregister / PushList on the control stream;
//! - `coalesce`: per-device coalescing and retry timing, pure state that takes `now`;
//! - `notifier`: the task — who is offline (on any node of a cluster), the JSON body, the POST, the
//!   outcome (retry on 5xx/429/timeouts, drop the registration on 404/410);
//! - `metrics`: the `ferry_push_*` counters.

use std::sync::Arc;

use tokio::sync::mpsc;

mod coalesce;
mod control;
mod endpoint;
mod metrics;
mod notifier;
mod payload;
mod settings;

pub(crate) use control::handle;
pub(crate) use metrics::PushMetrics;
pub(crate) use notifier::run;
pub use settings::PushSettings;

/// The `Hello.capabilities` / `Welcome.capabilities` name of the push frames (FERRY-EXT-3).
pub(crate) const CAPABILITY: &str = ferry_protocol::frames::CAPABILITY_PUSH;

/// A message became durable: the notifier's input.
#[derive(Debug)]
pub(crate) struct Committed {
    conversation: Arc<str>,
    seq: u64,
    epoch: u64,
    sender: Arc<str>,
}

/// The server's side of push: the queue to the notifier and the registration rules.
#[derive(Debug)]
pub(crate) struct Push {
    events: mpsc::Sender<Committed>,
    allow: endpoint::Allowlist,
    gateway: bool,
    client: reqwest::Client,
}

/// The notifier's end of the queue, handed to [`run`].
pub(crate) type Events = mpsc::Receiver<Committed>;

impl Push {
    /// The push service for `settings`, or `None` when push is off. Settings were validated; this
    /// fails only on an unreadable `ca_file`.
    pub(crate) fn new(settings: &PushSettings) -> anyhow::Result<Option<(Push, Events)>> {
        if !settings.enabled() {
            return Ok(None);
        }
        let allow = endpoint::Allowlist::new(&settings.allow, settings.gateway.as_deref());
        let client = notifier::http_client(settings, &allow)?;
        let (events, receiver) = mpsc::channel(settings.queue as usize);
        let push = Push {
            events,
            allow,
            gateway: settings.gateway.is_some(),
            client,
        };
        Ok(Some((push, receiver)))
    }

    /// Hands a durable message to the notifier without waiting; drops (and counts) it when the queue
    /// is full.
    pub(crate) fn committed(
        &self,
        conversation: &str,
        seq: u64,
        epoch: u64,
        sender: &str,
        metrics: &PushMetrics,
    ) {
        let event = Committed {
            conversation: conversation.into(),
            seq,
            epoch,
            sender: sender.into(),
        };
        match self.events.try_send(event) {
            Ok(()) => metrics.queued(),
            Err(_) => metrics.dropped(),
        }
    }
}

/// The capabilities to acknowledge in Welcome: `push` when it is on and the client asked for it.
pub(crate) fn welcome_capabilities(push: Option<&Push>, asked: &[String]) -> Vec<String> {
    match push {
        Some(_) if asked.iter().any(|c| c == CAPABILITY) => vec![CAPABILITY.to_owned()],
        _ => Vec::new(),
    }
}
