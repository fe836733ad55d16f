//! The scripted server's in-memory state: the user's conversations, the sync token, the announced
//! limits and the client's stored Sends — what the default answers of [`super::Conn::serve`] come from.

use std::collections::{BTreeMap, HashMap};

use ferry_protocol::frame::{
    ConversationKind, ConversationState, Limits, Message, PullResult, SendAck, Welcome,
};

/// Largest page the model answers a Pull with (the default `max_pull_page`).
const PAGE: usize = 100;

/// One conversation as the scripted server knows it.
#[derive(Debug, Clone)]
pub struct Conv {
    /// Its epoch (never 0 on the wire).
    pub epoch: u64,
    /// Lowest seq the user may read.
    pub first_seq: u64,
    /// Its messages by seq.
    pub messages: BTreeMap<u64, Message>,
}

impl Conv {
    /// An empty conversation in `epoch`.
    pub fn new(epoch: u64) -> Conv {
        Conv {
            epoch,
            first_seq: 1,
            messages: BTreeMap::new(),
        }
    }

    /// Highest seq.
    pub fn head(&self) -> u64 {
        self.messages.keys().next_back().copied().unwrap_or(0)
    }
}

/// The server-side state the default answers come from.
#[derive(Debug, Clone)]
pub struct Model {
    /// The client's user and device.
    pub user: String,
    /// The client's device.
    pub device: String,
    /// Conversations by id.
    pub conversations: BTreeMap<String, Conv>,
    /// The current sync token: Sync and Heartbeat with any other token get every conversation.
    pub token: u64,
    /// Announced in Welcome.
    pub limits: Limits,
    /// Announced in Welcome.
    pub heartbeat_interval_ms: u32,
    /// Announced in Welcome.
    pub store_epoch: u64,
    /// Highest Ack per conversation.
    pub acked: BTreeMap<String, u64>,
    /// client_msg_id → (conversation, seq) of the client's stored sends (dedupe).
    pub sends: HashMap<String, (String, u64)>,
}

impl Model {
    /// A model for `user`/`device` with default limits and no conversations.
    pub fn new(user: &str, device: &str) -> Model {
        Model {
            user: user.into(),
            device: device.into(),
            conversations: BTreeMap::new(),
            token: random_nonzero(),
            limits: Limits::default(),
            heartbeat_interval_ms: 1000,
            store_epoch: random_nonzero(),
            acked: BTreeMap::new(),
            sends: HashMap::new(),
        }
    }

    /// Adds a user message from `sender` (a fresh client_msg_id) at the next seq of `conversation`;
    /// returns it.
    pub fn add(&mut self, conversation: &str, sender: &str, body: &str) -> Message {
        self.append(
            conversation,
            Message {
                sender: sender.into(),
                sender_device: format!("{sender}-dev"),
                client_msg_id: format!("{sender}-{:016x}", rand::random::<u64>()),
                body: body.as_bytes().to_vec().into(),
                ..Default::default()
            },
        )
    }

    /// Stores `message` at the next seq of `conversation` (created in a random epoch if new), stamped
    /// with the server time, and moves the sync token on; returns it as stored.
    pub fn append(&mut self, conversation: &str, mut message: Message) -> Message {
        let conv = self
            .conversations
            .entry(conversation.to_owned())
            .or_insert_with(|| Conv::new(random_nonzero()));
        message.seq = conv.head() + 1;
        message.server_time_ms = ferry_protocol::unix_millis(std::time::SystemTime::now());
        conv.messages.insert(message.seq, message.clone());
        // A change: a new token, so that Sync and Heartbeat from the old one report it.
        self.token = random_nonzero();
        message
    }

    /// client_msg_id → seq of everything the client sent that was stored.
    pub fn stored_sends(&self) -> BTreeMap<String, u64> {
        self.sends
            .iter()
            .map(|(id, (_, seq))| (id.clone(), *seq))
            .collect()
    }

    /// The Welcome for a new session.
    pub fn welcome(&self) -> Welcome {
        Welcome {
            user_id: self.user.clone(),
            session_id: format!("scripted-{:016x}", rand::random::<u64>()),
            node_id: "scripted".into(),
            heartbeat_interval_ms: self.heartbeat_interval_ms,
            limits: Some(self.limits),
            server_time_ms: ferry_protocol::unix_millis(std::time::SystemTime::now()),
            store_epoch: self.store_epoch,
            endpoints: Vec::new(),
            capabilities: Vec::new(),
        }
    }

    /// The state of one conversation as the device sees it.
    pub fn state(&self, id: &str) -> Option<ConversationState> {
        let conv = self.conversations.get(id)?;
        Some(ConversationState {
            conversation_id: id.into(),
            kind: ConversationKind::Direct as i32,
            head_seq: conv.head(),
            epoch: conv.epoch,
            acked_seq: self.acked.get(id).copied().unwrap_or(0),
            member: true,
            first_seq: conv.first_seq,
            ..Default::default()
        })
    }

    /// Every conversation's state (what a Sync from an unknown token gets).
    pub fn states(&self) -> Vec<ConversationState> {
        self.conversations
            .keys()
            .filter_map(|id| self.state(id))
            .collect()
    }

    /// The answer to `Pull{after_seq, limit}` in `conversation`.
    pub fn page(&self, conversation: &str, after_seq: u64, limit: u32) -> PullResult {
        let Some(conv) = self.conversations.get(conversation) else {
            return PullResult::default();
        };
        let limit = match limit as usize {
            0 => PAGE,
            n => n.min(PAGE),
        };
        let from = after_seq.max(conv.first_seq.saturating_sub(1));
        let messages: Vec<Message> = conv
            .messages
            .range(from + 1..)
            .take(limit)
            .map(|(_, m)| m.clone())
            .collect();
        let last = messages.last().map_or(from, |m| m.seq);
        PullResult {
            has_more: last < conv.head(),
            head_seq: conv.head(),
            epoch: conv.epoch,
            messages,
        }
    }
}

/// Stores a Send in the model (once per client_msg_id) and returns its SendAck.
pub fn store_send(
    model: &mut Model,
    conversation: &str,
    send: &ferry_protocol::frame::Send,
) -> SendAck {
    if let Some((_, seq)) = model.sends.get(&send.client_msg_id) {
        return SendAck {
            client_msg_id: send.client_msg_id.clone(),
            seq: *seq,
            server_time_ms: ferry_protocol::unix_millis(std::time::SystemTime::now()),
            duplicate: true,
        };
    }
    let stored = model.append(
        conversation,
        Message {
            sender: model.user.clone(),
            sender_device: model.device.clone(),
            client_msg_id: send.client_msg_id.clone(),
            body: send.body.clone(),
            ..Default::default()
        },
    );
    model.sends.insert(
        send.client_msg_id.clone(),
        (conversation.to_owned(), stored.seq),
    );
    SendAck {
        client_msg_id: stored.client_msg_id,
        seq: stored.seq,
        server_time_ms: stored.server_time_ms,
        duplicate: false,
    }
}

/// A random non-zero value for epochs and tokens (never 0 on the wire, FERRY-MSG-7).
pub fn random_nonzero() -> u64 {
    1 + rand::random::<u32>() as u64
}
