//! The notifier task: from committed messages to HTTP POSTs.
//!
//! One loop owns the [`Coalescer`]. It takes committed messages from the queue in batches (collapsed
//! per conversation, so a burst costs one lookup per conversation), finds the members' registered
//! devices that have no session on any node, and records an update for each. When a device's window
//! ends it checks again that the device is still offline, reads the unread count, and POSTs from a
//! task of its own — at most `max_inflight` at once, so a slow endpoint never holds up the loop. Each
//! POST reports its outcome back over a channel of the same bound.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::CONTENT_TYPE;
use reqwest::StatusCode;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tracing::{debug, warn};

use super::coalesce::{backoff, Coalescer, DeviceKey, Update};
use super::payload::{self, Counts};
use super::{Committed, Events};
use crate::Shared;

/// Committed messages taken from the queue per batch.
const BATCH: usize = 512;
/// Most of a gateway's answer read (it only lists rejected pushkeys).
const MAX_ANSWER: usize = 64 * 1024;

/// How a POST ended.
#[derive(Debug)]
enum Outcome {
    /// 2xx.
    Sent,
    /// 404/410, or the gateway rejected the pushkey: the registration is gone.
    Gone,
    /// 5xx, 408, 429, a timeout or a connection failure: worth another try.
    Retry(String),
    /// Any other answer: give this notification up.
    Failed(String),
}

struct Done {
    key: DeviceKey,
    update: Update,
    outcome: Outcome,
}

/// Runs until `shutdown` (or until the server drops the queue's sender).
pub(crate) async fn run(
    shared: Arc<Shared>,
    mut events: Events,
    mut shutdown: watch::Receiver<bool>,
) {
    if shared.push.is_none() {
        return;
    }
    let settings = &shared.settings.push;
    let mut coalescer = Coalescer::new(settings.window(), settings.max_pending_devices as usize);
    let max_inflight = settings.max_inflight as usize;
    let permits = Arc::new(Semaphore::new(max_inflight));
    let (done_tx, mut done_rx) = mpsc::channel::<Done>(max_inflight);
    loop {
        let next = coalescer.next_due().map(Instant::from_std);
        let timer = async {
            match next {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = shutdown.changed() => return,
            event = events.recv() => {
                let Some(first) = event else { return };
                let batch = drain(first, &mut events);
                absorb(&shared, &mut coalescer, batch).await;
            }
            Some(done) = done_rx.recv() => settle(&shared, &mut coalescer, done).await,
            () = timer => {}
        }
        dispatch(&shared, &mut coalescer, &permits, &done_tx).await;
    }
}

/// `first` and whatever else is queued (up to [`BATCH`]), collapsed per conversation into the newest
/// message and the number of messages.
fn drain(first: Committed, events: &mut Events) -> Vec<(Committed, u64)> {
    let mut by_conversation: HashMap<Arc<str>, (Committed, u64)> = HashMap::new();
    let mut next = Some(first);
    let mut taken = 0;
    while let Some(event) = next.take() {
        taken += 1;
        match by_conversation.get_mut(&event.conversation) {
            Some((newest, count)) => {
                *count += 1;
                if event.seq > newest.seq {
                    *newest = event;
                }
            }
            None => {
                by_conversation.insert(event.conversation.clone(), (event, 1));
            }
        }
        if taken < BATCH {
            next = events.try_recv().ok();
        }
    }
    by_conversation.into_values().collect()
}

/// Records an update for every registered, offline device of the members (the sender's own devices
/// excepted: they sent it).
async fn absorb(shared: &Shared, coalescer: &mut Coalescer, batch: Vec<(Committed, u64)>) {
    let metrics = &shared.metrics.push;
    for (event, messages) in batch {
        let members = match shared.store.members(&event.conversation).await {
            Ok(members) => members,
            Err(e) => {
                warn!(conversation = %event.conversation, error = %e, "push skipped: members unavailable");
                continue;
            }
        };
        for user in members.iter().filter(|m| **m != *event.sender) {
            let registrations = match shared.store.push_registrations(user).await {
                Ok(r) if r.is_empty() => continue,
                Ok(r) => r,
                Err(e) => {
                    warn!(user, error = %e, "push skipped: registrations unavailable");
                    continue;
                }
            };
            let online = online_devices(shared, user).await;
            let user: Arc<str> = user.as_str().into();
            for (device, registration) in registrations {
                if online.contains(&device) {
                    continue;
                }
                let update = Update {
                    conversation: event.conversation.clone(),
                    seq: event.seq,
                    epoch: event.epoch,
                    sender: event.sender.clone(),
                    messages,
                    registration,
                };
                let key = (user.clone(), device.into());
                if !coalescer.record(key, update, std::time::Instant::now()) {
                    metrics.dropped();
                }
            }
        }
    }
}

/// Devices of `user` with a session here or, in a cluster, on any node. When the directory cannot be
/// read the other nodes' sessions are unknown; the device then counts as offline (a needless wake-up
/// is harmless, a missing one is not).
async fn online_devices(shared: &Shared, user: &str) -> HashSet<String> {
    let mut online = HashSet::new();
    shared.sessions.for_each_of(user, |s| {
        online.insert(s.device.to_string());
    });
    if let Some(cluster) = &shared.cluster {
        match cluster.online_devices(user).await {
            Ok(devices) => online.extend(devices),
            Err(e) => debug!(user, error = %e, "session directory unavailable for push"),
        }
    }
    online
}

/// Starts the POST of every due notification there is a permit for.
async fn dispatch(
    shared: &Shared,
    coalescer: &mut Coalescer,
    permits: &Arc<Semaphore>,
    done_tx: &mpsc::Sender<Done>,
) {
    let Some(push) = shared.push.as_ref() else {
        return;
    };
    let now = std::time::Instant::now();
    for (key, update) in coalescer.take_due(now, permits.available_permits()) {
        let (user, device) = (&*key.0, &*key.1);
        if online_devices(shared, user).await.contains(device) {
            // It connected during the window: Sync + Pull bring it up to date.
            shared.metrics.push.skipped_online();
            coalescer.sent(&key, now);
            continue;
        }
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            coalescer.sent(&key, now); // unreachable: take_due took no more than the free permits
            continue;
        };
        let counts = counts(shared, user, &update).await;
        let gateway = shared.settings.push.gateway.clone();
        let (url, body) = match &gateway {
            Some(gateway) => (
                gateway.clone(),
                payload::gateway_body(device, &update, counts.as_counts()),
            ),
            None => (
                update.registration.endpoint.clone(),
                payload::device_body(device, &update, counts.as_counts()),
            ),
        };
        let client = push.client.clone();
        let done_tx = done_tx.clone();
        tokio::spawn(async move {
            let pushkey = gateway
                .is_some()
                .then(|| update.registration.app_token.clone());
            let outcome = post(&client, &url, body, pushkey.as_deref()).await;
            drop::<OwnedSemaphorePermit>(permit);
            let _ = done_tx
                .send(Done {
                    key,
                    update,
                    outcome,
                })
                .await;
        });
    }
}

struct OwnedCounts {
    unread: u64,
    name: String,
    /// Body policy only: the newest message's body, `None` inside when over `body_max_bytes`.
    body: Option<Option<bytes::Bytes>>,
}

impl OwnedCounts {
    fn as_counts(&self) -> Counts<'_> {
        Counts {
            unread: self.unread,
            conversation_name: &self.name,
            body: self.body.as_ref().map(|b| b.as_deref()),
        }
    }
}

/// The recipient's unread count (up to the notified seq), for previews the group name and, under the
/// body policy, the notified message's body (read here, not carried through the queue, so the send
/// path pays nothing for it).
async fn counts(shared: &Shared, user: &str, update: &Update) -> OwnedCounts {
    let read = match shared.store.membership(&update.conversation, user).await {
        Ok(Some(m)) => m.read_seq,
        _ => 0,
    };
    let name = if payload::preview(update) {
        match shared.store.conversation(&update.conversation).await {
            Ok(Some(info)) => info.name,
            _ => String::new(),
        }
    } else {
        String::new()
    };
    // The setting is checked again here: bodies stop at once when an operator turns them off.
    let body = if payload::wants_body(update) && shared.settings.push.allow_body {
        let max = shared.settings.push.body_max_bytes as usize;
        let stored = shared
            .store
            .read(
                &update.conversation,
                update.seq.saturating_sub(1),
                update.seq,
                1,
            )
            .await;
        // A message that cannot be read is treated like an over-long one: the app Pulls it.
        let body = match stored {
            Ok(messages) => messages
                .into_iter()
                .next()
                .map(|m| m.body)
                .filter(|b| b.len() <= max),
            Err(_) => None,
        };
        Some(body)
    } else {
        None
    };
    OwnedCounts {
        unread: update.seq.saturating_sub(read),
        name,
        body,
    }
}

/// One POST; never follows redirects (the client is built that way).
async fn post(
    client: &reqwest::Client,
    url: &str,
    body: Vec<u8>,
    pushkey: Option<&str>,
) -> Outcome {
    let response = client
        .post(url)
        .header(CONTENT_TYPE, "application/json")
        // Web Push / UnifiedPush headers: keep it a day, deliver promptly.
        .header("TTL", "86400")
        .header("Urgency", "high")
        .body(body)
        .send()
        .await;
    let mut response = match response {
        Ok(response) => response,
        Err(e) => return Outcome::Retry(e.to_string()),
    };
    let status = response.status();
    match status {
        s if s.is_success() => {
            let Some(pushkey) = pushkey else {
                return Outcome::Sent;
            };
            let mut answer = Vec::new();
            while let Ok(Some(chunk)) = response.chunk().await {
                answer.extend_from_slice(&chunk);
                if answer.len() > MAX_ANSWER {
                    break;
                }
            }
            if payload::gateway_rejects(&answer, pushkey) {
                Outcome::Gone
            } else {
                Outcome::Sent
            }
        }
        StatusCode::NOT_FOUND | StatusCode::GONE => Outcome::Gone,
        StatusCode::REQUEST_TIMEOUT | StatusCode::TOO_MANY_REQUESTS => {
            Outcome::Retry(status.to_string())
        }
        s if s.is_server_error() => Outcome::Retry(status.to_string()),
        _ => Outcome::Failed(status.to_string()),
    }
}

/// Applies a POST's outcome.
async fn settle(shared: &Shared, coalescer: &mut Coalescer, done: Done) {
    let settings = &shared.settings.push;
    let metrics = &shared.metrics.push;
    let now = std::time::Instant::now();
    let Done {
        key,
        update,
        outcome,
    } = done;
    match outcome {
        Outcome::Sent => {
            metrics.sent();
            coalescer.sent(&key, now);
        }
        Outcome::Gone => {
            metrics.gone();
            coalescer.forget(&key);
            drop_registration(shared, &key, &update).await;
        }
        Outcome::Retry(why) => {
            let (initial, max) = (
                Duration::from_millis(u64::from(settings.retry_initial_ms)),
                Duration::from_millis(u64::from(settings.retry_max_ms)),
            );
            // Up to a tenth more, so that devices behind one failing endpoint do not retry in step.
            let delay = |attempt| {
                let base = backoff(attempt, initial, max);
                base + base.mul_f64(rand::random::<f64>() / 10.0)
            };
            match coalescer.retry(&key, update, now, settings.max_attempts, delay) {
                Some(attempt) => {
                    metrics.retried();
                    debug!(user = %key.0, device = %key.1, attempt, %why, "push will be retried");
                }
                None => {
                    metrics.failed();
                    warn!(user = %key.0, device = %key.1, %why, "push given up after its last attempt");
                }
            }
        }
        Outcome::Failed(why) => {
            metrics.failed();
            warn!(user = %key.0, device = %key.1, %why, "push refused by the endpoint");
            coalescer.sent(&key, now);
        }
    }
}

/// Deletes the registration whose endpoint is gone — unless the device registered anew meanwhile.
async fn drop_registration(shared: &Shared, key: &DeviceKey, update: &Update) {
    let (user, device) = (&*key.0, &*key.1);
    let current = match shared.store.push_registrations(user).await {
        Ok(all) => all.into_iter().find(|(d, _)| d == device).map(|(_, r)| r),
        Err(e) => {
            warn!(user, device, error = %e, "gone push registration not dropped");
            return;
        }
    };
    let same = current.is_some_and(|r| {
        r.endpoint == update.registration.endpoint && r.app_token == update.registration.app_token
    });
    if same {
        if let Err(e) = shared.store.delete_push(user, device).await {
            warn!(user, device, error = %e, "gone push registration not dropped");
        }
    }
}

/// The HTTP client for `settings`: rustls with the web PKI roots plus `ca_file`, the guarded resolver,
/// no redirects, no proxy from the environment, a time limit per request.
pub(super) fn http_client(
    settings: &super::PushSettings,
    allow: &super::endpoint::Allowlist,
) -> anyhow::Result<reqwest::Client> {
    use anyhow::Context as _;
    let timeout = Duration::from_millis(u64::from(settings.request_timeout_ms));
    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(timeout)
        .connect_timeout(timeout)
        .dns_resolver(Arc::new(allow.resolver()))
        .user_agent(concat!("ferry-server/", env!("CARGO_PKG_VERSION")));
    if let Some(path) = &settings.ca_file {
        let pem = std::fs::read(path)
            .with_context(|| format!("reading push.ca_file {}", path.display()))?;
        for cert in reqwest::Certificate::from_pem_bundle(&pem).context("parsing push.ca_file")? {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder.build().context("building the push HTTP client")
}
