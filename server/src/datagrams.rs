//! Datagrams: typing and presence signals (FERRY-DGRAM-*). Unreliable by nature, never stored, relayed to
//! the online devices of the conversation's other members, rate-limited per connection. Anything invalid
//! is dropped and counted: a datagram cannot be answered.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use ferry_protocol::codec::{self, frame};
use ferry_protocol::frame::frame::Kind;

use crate::connection::Conn;
use crate::rate::TokenBucket;
use crate::sessions::Outbound;
use crate::Shared;

/// Relays the client's datagrams until the connection ends.
pub(crate) async fn receive_loop(conn: Arc<Conn>) {
    let limits = &conn.shared.settings.limits;
    let rate = limits.typing_rate_per_sec;
    let mut bucket = TokenBucket::new(rate, rate, Instant::now());
    let max_frame = limits.max_frame_size as usize;
    // Datagrams are not allowed in early data (FERRY-ZERORTT-1): none is relayed before the handshake
    // is complete.
    if !conn.handshake_complete().await {
        return;
    }
    while let Ok(payload) = conn.connection.read_datagram().await {
        if bucket.try_take(Instant::now()).is_err() {
            conn.shared.metrics.datagram_dropped();
            continue;
        }
        let relayed = match codec::decode_datagram(&payload, max_frame).map(|f| f.kind) {
            Ok(Some(Kind::Typing(mut typing))) => {
                typing.user_id = conn.session.user.to_string();
                typing.device_id = conn.session.device.to_string();
                let conversation = typing.conversation_id.clone();
                Some((conversation, Kind::Typing(typing)))
            }
            Ok(Some(Kind::Presence(mut presence))) => {
                presence.user_id = conn.session.user.to_string();
                let conversation = presence.conversation_id.clone();
                Some((conversation, Kind::Presence(presence)))
            }
            _ => None,
        };
        match relayed {
            // Boxed so that the waiting loop stays small (issue 17: an idle connection's memory).
            Some((conversation, kind)) => Box::pin(relay(&conn, &conversation, kind)).await,
            None => conn.shared.metrics.datagram_dropped(),
        }
    }
}

/// Sends the signal to the other members' online devices if the sender is a current member.
async fn relay(conn: &Conn, conversation: &str, kind: Kind) {
    let store = &conn.shared.store;
    let is_member = matches!(
        store.membership(conversation, &conn.session.user).await,
        Ok(Some(m)) if m.is_member()
    );
    let Ok(members) = store.members(conversation).await else {
        conn.shared.metrics.datagram_dropped();
        return;
    };
    if !is_member {
        conn.shared.metrics.datagram_dropped();
        return;
    }
    let bytes = codec::encode_datagram(&frame(kind));
    for user in &members {
        relay_local(&conn.shared, user, &bytes, Some(conn.session.id));
    }
    if let Some(cluster) = &conn.shared.cluster {
        let users: Vec<&str> = members.iter().map(String::as_str).collect();
        cluster.publish_datagram(&users, bytes);
    }
}

/// Queues an encoded datagram for every session of `user` on this node, except the session `exclude`.
pub(crate) fn relay_local(shared: &Shared, user: &str, bytes: &Bytes, exclude: Option<u64>) {
    shared.sessions.for_each_of(user, |session| {
        if Some(session.id) == exclude {
            return;
        }
        if session
            .outbound
            .try_send(Outbound::Datagram(bytes.clone()))
            .is_ok()
        {
            shared.metrics.datagram_relayed();
        } else {
            shared.metrics.datagram_dropped();
        }
    });
}
