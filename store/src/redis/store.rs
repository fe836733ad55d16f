//! The [`Store`] impl of [`RedisStore`]: builds each script call and reads its reply.

use std::collections::HashMap;

use async_trait::async_trait;
use bytes::Bytes;
use ferry_protocol::frame::{
    ConversationKind, MembershipAction, MembershipChange, Message, MessageKind,
};
use futures_util::future::join_all;
use prost::Message as _;
use redis::{AsyncCommands, FromRedisValue, Script, Value};

use super::keys::{self, ConvKeys};
use super::{backend, random_epoch, redis_failure, scripts, RedisStore};
use crate::{
    Appended, ConversationInfo, Membership, MembershipOp, NewMessage, PendingAppend, PushRecord,
    Store, StoreError, SyncPage, WriteStats,
};

/// A member record as `lua/common.lua` writes it: `first|left|read|chg`.
#[derive(Debug, Clone, Copy)]
pub(super) struct MemberRecord {
    first: u64,
    pub(super) left: u64,
    read: u64,
    pub(super) chg: u64,
}

impl MemberRecord {
    fn parse(raw: &str) -> Result<Self, StoreError> {
        let bad = || StoreError::Backend(format!("bad member record {raw:?} in redis"));
        let mut parts = raw.split('|').map(|p| p.parse::<u64>().map_err(|_| bad()));
        let mut next = || parts.next().unwrap_or_else(|| Err(bad()));
        Ok(MemberRecord {
            first: next()?,
            left: next()?,
            read: next()?,
            chg: next()?,
        })
    }

    /// The membership as clients see it; history trimmed by retention raises `first_seq`.
    pub(super) fn membership(&self, trim: u64) -> Membership {
        Membership {
            first_seq: self.first.max(trim + 1),
            left_seq: (self.left != 0).then_some(self.left),
            read_seq: self.read,
        }
    }
}

/// One conversation as `lua/state.lua` returns it.
pub(super) struct ConvState {
    pub(super) now: u64,
    pub(super) kind: i32,
    pub(super) name: String,
    pub(super) head: u64,
    pub(super) epoch: u64,
    pub(super) chg: u64,
    pub(super) trim: u64,
    pub(super) member: Option<MemberRecord>,
    pub(super) delivered: u64,
}

fn parse<T: FromRedisValue>(what: &str, value: Value) -> Result<T, StoreError> {
    redis::from_redis_value(value).map_err(|e| backend(what, e))
}

fn parse_epoch(raw: &str) -> Result<u64, StoreError> {
    raw.parse()
        .map_err(|_| StoreError::Backend(format!("bad epoch {raw:?} in redis")))
}

/// Maps a script's refusal (`{-1}`, `{-2, reason}`, `{-3, reason}`) onto the store's errors.
fn refusal(code: i64, reason: Option<Value>) -> StoreError {
    let reason = reason
        .and_then(|r| redis::from_redis_value::<String>(r).ok())
        .unwrap_or_default();
    match code {
        -1 => StoreError::NotFound,
        -2 => StoreError::Forbidden(reason),
        -3 => StoreError::Invalid(reason),
        other => StoreError::Backend(format!("unexpected script status {other}")),
    }
}

/// Reads the `{0, seq, time, epoch, member...}` / `{1, seq, time, epoch}` reply of the append script.
fn appended(value: Value, mut message: Message) -> Result<Appended, StoreError> {
    let mut fields = parse::<Vec<Value>>("append reply", value)?.into_iter();
    let code: i64 = parse("append status", fields.next().unwrap_or_default())?;
    if code < 0 {
        return Err(refusal(code, fields.next()));
    }
    let seq: u64 = parse("append seq", fields.next().unwrap_or_default())?;
    let time: u64 = parse("append time", fields.next().unwrap_or_default())?;
    let epoch = parse_epoch(&parse::<String>(
        "append epoch",
        fields.next().unwrap_or_default(),
    )?)?;
    let duplicate = code == 1;
    message.seq = seq;
    let members = if duplicate {
        None
    } else {
        let mut members = fields
            .map(|member| parse::<String>("append member", member))
            .collect::<Result<Vec<_>, _>>()?;
        members.sort_unstable();
        Some(members)
    };
    Ok(Appended {
        seq,
        server_time_ms: time,
        duplicate,
        epoch,
        message: (!duplicate).then_some(message),
        members,
    })
}

/// The system message recording a membership change; its sender is the acting user.
fn system_message(
    action: MembershipAction,
    actor: &str,
    users: Vec<String>,
    name: String,
    server_time_ms: u64,
) -> Message {
    Message {
        seq: 0,
        sender: actor.to_owned(),
        sender_device: String::new(),
        client_msg_id: String::new(),
        body: Bytes::new(),
        server_time_ms,
        kind: MessageKind::System as i32,
        membership: Some(MembershipChange {
            action: action as i32,
            actor: actor.to_owned(),
            users,
            name,
        }),
    }
}

impl RedisStore {
    /// Runs a (non-append) script with its NOSCRIPT fallback.
    async fn run(
        &self,
        what: &str,
        script: &Script,
        keys: &[String],
        args: &[&[u8]],
    ) -> Result<Value, StoreError> {
        let mut invocation = script.prepare_invoke();
        for key in keys {
            invocation.key(key);
        }
        for arg in args {
            invocation.arg(*arg);
        }
        invocation
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(|e| redis_failure(what, e))
    }

    /// The `EVALSHA` of the append script for `new` exactly as [`Store::queue_append`] sends it, and
    /// the message it stores (seq still 0). Public for benchmarks that drive the script straight at
    /// Redis (`ferry-bench`'s raw Redis peer): the floor this store is measured against. The script
    /// must be loaded first (`SCRIPT LOAD` of [`RedisStore::append_script`]).
    pub fn append_command(&self, new: NewMessage) -> (redis::Cmd, Message) {
        let conv = ConvKeys::new(&self.prefix, &new.conversation);
        let keys = [
            conv.meta(),
            conv.messages(),
            conv.members(),
            conv.dedupe(&new.sender, &new.client_msg_id),
        ];
        let message = Message {
            seq: 0,
            sender: new.sender,
            sender_device: new.sender_device,
            client_msg_id: new.client_msg_id,
            body: new.body,
            server_time_ms: new.server_time_ms,
            kind: MessageKind::User as i32,
            membership: None,
        };
        let encoded = message.encode_to_vec();
        let cmd = scripts::evalsha(
            &self.scripts.append,
            &keys,
            &[
                message.sender.as_bytes(),
                &encoded,
                new.server_time_ms.to_string().as_bytes(),
                self.dedupe_window_ms.to_string().as_bytes(),
                self.retention_arg(new.server_time_ms).as_bytes(),
            ],
        );
        (cmd, message)
    }

    /// The source of the append script ([`RedisStore::append_command`] calls it by its hash).
    pub fn append_script() -> &'static str {
        scripts::APPEND_SOURCE
    }

    /// Adds `conversation` to each user's set of conversations. Done *before* the script that makes
    /// them members, so a crash in between leaves at most an extra entry (Sync skips it), never a
    /// membership that Sync cannot find.
    async fn index_users(&self, conversation: &str, users: &[&str]) -> Result<(), StoreError> {
        let results = join_all(users.iter().map(|user| {
            let mut conn = self.conn.clone();
            let key = keys::user_conversations(&self.prefix, user);
            async move { conn.sadd::<_, _, i64>(key, conversation).await }
        }))
        .await;
        for result in results {
            result.map_err(|e| redis_failure("indexing a user's conversations", e))?;
        }
        Ok(())
    }

    pub(super) async fn state(
        &self,
        conversation: &str,
        user: &str,
        device: &str,
    ) -> Result<ConvState, StoreError> {
        let conv = ConvKeys::new(&self.prefix, conversation);
        let field = keys::cursor_field(user, device);
        let value = self
            .run(
                "conversation state",
                &self.scripts.state,
                &[conv.meta(), conv.members(), conv.cursors()],
                &[user.as_bytes(), field.as_bytes()],
            )
            .await?;
        #[allow(clippy::type_complexity)]
        let (now, kind, name, _owner, head, epoch, chg, trim, member, delivered): (
            u64,
            i32,
            String,
            String,
            u64,
            String,
            u64,
            u64,
            String,
            u64,
        ) = parse("conversation state", value)?;
        Ok(ConvState {
            now,
            kind,
            name,
            head,
            epoch: parse_epoch(&epoch)?,
            chg,
            trim,
            member: if member.is_empty() {
                None
            } else {
                Some(MemberRecord::parse(&member)?)
            },
            delivered,
        })
    }
}

#[async_trait]
impl Store for RedisStore {
    fn store_epoch(&self) -> u64 {
        self.store_epoch.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn write_stats(&self) -> WriteStats {
        self.pipeline.stats.snapshot()
    }

    async fn append(&self, message: NewMessage) -> Result<Appended, StoreError> {
        self.queue_append(message).await?.await
    }

    async fn queue_append(&self, new: NewMessage) -> Result<PendingAppend, StoreError> {
        let slot = ConvKeys::new(&self.prefix, &new.conversation).slot();
        let conversation = new.conversation.clone();
        let (cmd, message) = self.append_command(new);
        let reply = self.pipeline.queue(&conversation, slot, cmd).await?;
        Ok(Box::pin(async move {
            let value = reply
                .await
                .map_err(|_| StoreError::Unavailable("redis append pipeline stopped".into()))??;
            appended(value, message)
        }))
    }

    async fn change_membership(
        &self,
        conversation: &str,
        op: MembershipOp,
        server_time_ms: u64,
    ) -> Result<Appended, StoreError> {
        let (op_name, actor, message, args) = match op {
            MembershipOp::Create {
                name,
                owner,
                members,
            } => {
                let mut users = vec![owner.clone()];
                for member in members {
                    if !users.contains(&member) {
                        users.push(member);
                    }
                }
                let refs: Vec<&str> = users.iter().map(String::as_str).collect();
                self.index_users(conversation, &refs).await?;
                let message = system_message(
                    MembershipAction::Created,
                    &owner,
                    users.clone(),
                    name.clone(),
                    server_time_ms,
                );
                let mut args = vec![name];
                args.extend(users);
                ("create", owner, message, args)
            }
            MembershipOp::Add { actor, user } => {
                self.index_users(conversation, &[&user]).await?;
                let message = system_message(
                    MembershipAction::Added,
                    &actor,
                    vec![user.clone()],
                    String::new(),
                    server_time_ms,
                );
                ("add", actor, message, vec![user])
            }
            MembershipOp::Remove { actor, user } => {
                let message = system_message(
                    MembershipAction::Removed,
                    &actor,
                    vec![user.clone()],
                    String::new(),
                    server_time_ms,
                );
                ("remove", actor, message, vec![user])
            }
        };
        let conv = ConvKeys::new(&self.prefix, conversation);
        let encoded = message.encode_to_vec();
        let retention = self.retention_arg(server_time_ms);
        let epoch = random_epoch().to_string();
        let mut argv: Vec<&[u8]> = vec![
            op_name.as_bytes(),
            actor.as_bytes(),
            &encoded,
            retention.as_bytes(),
            epoch.as_bytes(),
        ];
        argv.extend(args.iter().map(String::as_bytes));
        let value = self
            .run(
                "membership change",
                &self.scripts.membership,
                &[conv.meta(), conv.messages(), conv.members()],
                &argv,
            )
            .await?;
        let mut fields = parse::<Vec<Value>>("membership reply", value)?.into_iter();
        let code: i64 = parse("membership status", fields.next().unwrap_or_default())?;
        if code != 0 {
            return Err(refusal(code, fields.next()));
        }
        let seq: u64 = parse("membership seq", fields.next().unwrap_or_default())?;
        let epoch = parse_epoch(&parse::<String>(
            "membership epoch",
            fields.next().unwrap_or_default(),
        )?)?;
        let mut message = message;
        message.seq = seq;
        Ok(Appended {
            seq,
            server_time_ms,
            duplicate: false,
            epoch,
            message: Some(message),
            members: None,
        })
    }

    async fn ensure_direct(&self, conversation: &str, a: &str, b: &str) -> Result<(), StoreError> {
        self.index_users(conversation, &[a, b]).await?;
        let conv = ConvKeys::new(&self.prefix, conversation);
        let epoch = random_epoch().to_string();
        self.run(
            "ensure direct",
            &self.scripts.ensure_direct,
            &[conv.meta(), conv.messages(), conv.members()],
            &[a.as_bytes(), b.as_bytes(), epoch.as_bytes()],
        )
        .await?;
        Ok(())
    }

    async fn conversation(
        &self,
        conversation: &str,
    ) -> Result<Option<ConversationInfo>, StoreError> {
        let conv = ConvKeys::new(&self.prefix, conversation);
        let fields: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(conv.meta())
            .arg(&["kind", "name", "owner", "head", "epoch"])
            .query_async(&mut self.conn.clone())
            .await
            .map_err(|e| redis_failure("conversation", e))?;
        let [Some(kind), Some(name), Some(owner), Some(head), Some(epoch)] =
            <[Option<String>; 5]>::try_from(fields).unwrap_or_default()
        else {
            return Ok(None);
        };
        let number = |raw: &str| {
            raw.parse::<u64>()
                .map_err(|_| StoreError::Backend(format!("bad number {raw:?} in redis")))
        };
        Ok(Some(ConversationInfo {
            kind: ConversationKind::try_from(number(&kind)? as i32)
                .unwrap_or(ConversationKind::Unspecified),
            name,
            owner,
            head_seq: number(&head)?,
            epoch: parse_epoch(&epoch)?,
        }))
    }

    async fn membership(
        &self,
        conversation: &str,
        user: &str,
    ) -> Result<Option<Membership>, StoreError> {
        let state = self.state(conversation, user, "").await?;
        Ok(state.member.map(|m| m.membership(state.trim)))
    }

    async fn members(&self, conversation: &str) -> Result<Vec<String>, StoreError> {
        let conv = ConvKeys::new(&self.prefix, conversation);
        let all: HashMap<String, String> = self
            .conn
            .clone()
            .hgetall(conv.members())
            .await
            .map_err(|e| redis_failure("members", e))?;
        let mut members = Vec::with_capacity(all.len());
        for (user, raw) in all {
            if MemberRecord::parse(&raw)?.left == 0 {
                members.push(user);
            }
        }
        members.sort_unstable();
        Ok(members)
    }

    async fn read(
        &self,
        conversation: &str,
        after_seq: u64,
        up_to_seq: u64,
        limit: u32,
    ) -> Result<Vec<Message>, StoreError> {
        if after_seq >= up_to_seq || limit == 0 {
            return Ok(Vec::new());
        }
        // Scripts append under the head atomically, so the stream never holds a seq above a missing
        // one; with `appendfsync always` Redis sends no reply (to anyone) before the write is fsynced.
        let conv = ConvKeys::new(&self.prefix, conversation);
        let entries: Vec<Value> = redis::cmd("XRANGE")
            .arg(conv.messages())
            .arg(format!("{}-0", after_seq + 1))
            .arg(format!("{up_to_seq}-0"))
            .arg("COUNT")
            .arg(limit)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(|e| redis_failure("reading messages", e))?;
        let mut messages = Vec::with_capacity(entries.len());
        for entry in entries {
            let (id, fields): (String, Vec<Vec<u8>>) = parse("stream entry", entry)?;
            let seq = id
                .split_once('-')
                .and_then(|(seq, _)| seq.parse::<u64>().ok())
                .ok_or_else(|| StoreError::Backend(format!("bad stream id {id:?}")))?;
            let body = fields
                .get(1)
                .ok_or_else(|| StoreError::Backend(format!("stream entry {id} has no message")))?;
            let mut message =
                Message::decode(body.as_slice()).map_err(|e| backend("message", e))?;
            message.seq = seq;
            messages.push(message);
        }
        Ok(messages)
    }

    async fn set_delivered(
        &self,
        conversation: &str,
        user: &str,
        device: &str,
        seq: u64,
    ) -> Result<(), StoreError> {
        let conv = ConvKeys::new(&self.prefix, conversation);
        let field = keys::cursor_field(user, device);
        self.run(
            "delivery cursor",
            &self.scripts.set_delivered,
            &[conv.meta(), conv.cursors()],
            &[field.as_bytes(), seq.to_string().as_bytes()],
        )
        .await?;
        Ok(())
    }

    async fn set_read(&self, conversation: &str, user: &str, seq: u64) -> Result<u64, StoreError> {
        let conv = ConvKeys::new(&self.prefix, conversation);
        let value = self
            .run(
                "read cursor",
                &self.scripts.set_read,
                &[conv.meta(), conv.members()],
                &[user.as_bytes(), seq.to_string().as_bytes()],
            )
            .await?;
        let mut fields = parse::<Vec<Value>>("read cursor reply", value)?.into_iter();
        let code: i64 = parse("read cursor status", fields.next().unwrap_or_default())?;
        if code != 0 {
            return Err(refusal(code, fields.next()));
        }
        parse("read cursor", fields.next().unwrap_or_default())
    }

    async fn changed_since(
        &self,
        user: &str,
        device: &str,
        since_token: u64,
        limit: u32,
    ) -> Result<SyncPage, StoreError> {
        self.sync_page(user, device, since_token, limit).await
    }

    async fn put_push(
        &self,
        user: &str,
        device: &str,
        record: PushRecord,
    ) -> Result<(), StoreError> {
        self.put_push_record(user, device, &record).await
    }

    async fn delete_push(&self, user: &str, device: &str) -> Result<bool, StoreError> {
        self.delete_push_record(user, device).await
    }

    async fn push_registrations(
        &self,
        user: &str,
    ) -> Result<Vec<(String, PushRecord)>, StoreError> {
        self.push_records(user).await
    }

    async fn revoke_tokens(
        &self,
        user: &str,
        device: Option<&str>,
        at_s: u64,
    ) -> Result<u64, StoreError> {
        self.raise_revocation(user, device, at_s).await
    }

    async fn tokens_revoked_at(&self, user: &str, device: &str) -> Result<u64, StoreError> {
        self.revocation_stamp(user, device).await
    }
}
