//! Fan-out: after a message is durable, queue a Deliver for every online device of every member — on
//! this node directly, on other nodes of a cluster through the bus (see [`crate::cluster`]).
//!
//! Queues are bounded and never awaited here: a full queue drops the Deliver (counted), because the
//! message is durable and the device recovers it from heartbeat heads and Pull. A slow device therefore
//! never slows down the sender or other recipients.

use std::sync::Arc;

use ferry_protocol::frame::Message;
use tracing::warn;

use crate::sessions::Outbound;
use crate::Shared;

/// Delivers `message` of `conversation` to the online devices of its current members and of `also`
/// (e.g. a user just removed, who still gets their removal), except the session `exclude` (the sender's
/// own device, which learns the seq from its SendAck).
pub async fn deliver(
    shared: &Shared,
    conversation: &str,
    message: Message,
    epoch: u64,
    exclude: Option<u64>,
    also: Option<&str>,
) {
    #[cfg(feature = "test-hooks")]
    if shared.hooks.drops_delivery(conversation, &message) {
        return;
    }
    let members = match shared.store.members(conversation).await {
        Ok(members) => members,
        Err(e) => {
            // The message is durable; recipients catch up through heartbeat heads and Pull.
            warn!(conversation, error = %e, "fan-out skipped: members unavailable");
            return;
        }
    };
    let conversation: Arc<str> = conversation.into();
    let message = Arc::new(message);
    let recipients: Vec<&str> = members.iter().map(String::as_str).chain(also).collect();
    for user in &recipients {
        deliver_local(shared, user, &conversation, &message, epoch, exclude);
    }
    if let Some(cluster) = &shared.cluster {
        cluster.publish_deliver(&recipients, &conversation, &message, epoch);
    }
}

/// Queues a Deliver for every session of `user` on this node, except the session `exclude`.
pub fn deliver_local(
    shared: &Shared,
    user: &str,
    conversation: &Arc<str>,
    message: &Arc<Message>,
    epoch: u64,
    exclude: Option<u64>,
) {
    shared.sessions.for_each_of(user, |session| {
        if Some(session.id) == exclude {
            return;
        }
        let item = Outbound::Deliver {
            conversation: conversation.clone(),
            message: message.clone(),
            epoch,
        };
        if session.outbound.try_send(item).is_ok() {
            shared.metrics.delivery_queued();
        } else {
            shared.metrics.delivery_dropped();
        }
    });
}
