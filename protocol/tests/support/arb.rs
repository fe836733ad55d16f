//! proptest strategies for every frame kind with arbitrary field values (including enum values this
//! version does not name: proto3 enums are open, and the codec must carry them through).

use bytes::Bytes;
use ferry_protocol::frame::{
    frame::Kind, Ack, AddMember, ConversationState, CreateGroup, Deliver, Error, GoAway,
    GroupResult, Heartbeat, HeartbeatAck, Hello, Limits, MarkRead, MembershipChange, Message, Open,
    Presence, Pull, PullResult, PushList, PushRegister, PushRegistration, PushResult,
    PushUnregister, RemoveMember, Send, SendAck, Sync, SyncResult, Typing, Welcome,
};
use ferry_protocol::Frame;
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;

fn text() -> impl Strategy<Value = String> {
    "\\PC{0,12}"
}

fn texts() -> impl Strategy<Value = Vec<String>> {
    vec(text(), 0..4)
}

fn body() -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..48).prop_map(Bytes::from)
}

/// Mostly small values (the common case on the wire), sometimes any u64.
fn num() -> impl Strategy<Value = u64> {
    prop_oneof![0..300u64, any::<u64>()]
}

fn limits() -> impl Strategy<Value = Limits> {
    (any::<[u32; 12]>()).prop_map(|l| Limits {
        max_frame_size: l[0],
        max_inflight_sends: l[1],
        max_open_streams: l[2],
        max_pull_page: l[3],
        send_rate_per_sec: l[4],
        send_burst: l[5],
        max_body_size: l[6],
        idle_timeout_ms: l[7],
        recent_window: l[8],
        typing_rate_per_sec: l[9],
        max_sync_page: l[10],
        stream_idle_timeout_ms: l[11],
    })
}

fn state() -> impl Strategy<Value = ConversationState> {
    (
        text(),
        any::<i32>(),
        [num(), num(), num(), num(), num(), num()],
        any::<bool>(),
        text(),
    )
        .prop_map(
            |(conversation_id, kind, n, member, name)| ConversationState {
                conversation_id,
                kind,
                head_seq: n[0],
                epoch: n[1],
                acked_seq: n[2],
                read_seq: n[3],
                unread_count: n[4],
                member,
                first_seq: n[5],
                name,
            },
        )
}

fn membership() -> impl Strategy<Value = MembershipChange> {
    (any::<i32>(), text(), texts(), text()).prop_map(|(action, actor, users, name)| {
        MembershipChange {
            action,
            actor,
            users,
            name,
        }
    })
}

fn message() -> impl Strategy<Value = Message> {
    (
        num(),
        [text(), text(), text()],
        body(),
        num(),
        any::<i32>(),
        option::of(membership()),
    )
        .prop_map(
            |(
                seq,
                [sender, sender_device, client_msg_id],
                body,
                server_time_ms,
                kind,
                membership,
            )| {
                Message {
                    seq,
                    sender,
                    sender_device,
                    client_msg_id,
                    body,
                    server_time_ms,
                    kind,
                    membership,
                }
            },
        )
}

/// Any frame kind (the oneof always set: a frame without a kind is an error on the wire).
pub fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        (any::<u32>(), [text(), text(), text()], texts(), text()).prop_map(
            |(version, [token, device_id, client_name], capabilities, device_class)| {
                Kind::Hello(Hello {
                    version,
                    token,
                    device_id,
                    client_name,
                    capabilities,
                    device_class,
                })
            }
        ),
        (
            [text(), text(), text()],
            any::<u32>(),
            option::of(limits()),
            num(),
            num(),
            texts(),
            texts()
        )
            .prop_map(
                |(
                    [user_id, session_id, node_id],
                    hb,
                    limits,
                    server_time_ms,
                    store_epoch,
                    endpoints,
                    capabilities,
                )| {
                    Kind::Welcome(Welcome {
                        user_id,
                        session_id,
                        node_id,
                        heartbeat_interval_ms: hb,
                        limits,
                        server_time_ms,
                        store_epoch,
                        endpoints,
                        capabilities,
                    })
                }
            ),
        num().prop_map(|sync_token| Kind::Heartbeat(Heartbeat { sync_token })),
        (vec(state(), 0..3), num(), any::<bool>(), num()).prop_map(
            |(changed, sync_token, has_more, server_time_ms)| {
                Kind::HeartbeatAck(HeartbeatAck {
                    changed,
                    sync_token,
                    has_more,
                    server_time_ms,
                })
            }
        ),
        (num(), num(), any::<u32>()).prop_map(|(request_id, since_token, limit)| {
            Kind::Sync(Sync {
                request_id,
                since_token,
                limit,
            })
        }),
        (num(), vec(state(), 0..3), num(), any::<bool>()).prop_map(
            |(request_id, conversations, next_token, has_more)| {
                Kind::SyncResult(SyncResult {
                    request_id,
                    conversations,
                    next_token,
                    has_more,
                })
            }
        ),
        (text(), num(), num()).prop_map(|(conversation_id, seq, request_id)| {
            Kind::MarkRead(MarkRead {
                conversation_id,
                seq,
                request_id,
            })
        }),
        (num(), text(), texts()).prop_map(|(request_id, name, members)| {
            Kind::CreateGroup(CreateGroup {
                request_id,
                name,
                members,
            })
        }),
        (num(), text(), text()).prop_map(|(request_id, conversation_id, user_id)| {
            Kind::AddMember(AddMember {
                request_id,
                conversation_id,
                user_id,
            })
        }),
        (num(), text(), text()).prop_map(|(request_id, conversation_id, user_id)| {
            Kind::RemoveMember(RemoveMember {
                request_id,
                conversation_id,
                user_id,
            })
        }),
        (num(), text(), num()).prop_map(|(request_id, conversation_id, seq)| {
            Kind::GroupResult(GroupResult {
                request_id,
                conversation_id,
                seq,
            })
        }),
        (any::<u32>(), text(), texts()).prop_map(|(code, reason, endpoints)| {
            Kind::GoAway(GoAway {
                code,
                reason,
                endpoints,
            })
        }),
        text().prop_map(|conversation_id| Kind::Open(Open { conversation_id })),
        (text(), body()).prop_map(|(client_msg_id, body)| Kind::Send(Send {
            client_msg_id,
            body
        })),
        (text(), num(), num(), any::<bool>()).prop_map(
            |(client_msg_id, seq, server_time_ms, duplicate)| {
                Kind::SendAck(SendAck {
                    client_msg_id,
                    seq,
                    server_time_ms,
                    duplicate,
                })
            }
        ),
        (option::of(message()), num())
            .prop_map(|(message, epoch)| Kind::Deliver(Deliver { message, epoch })),
        num().prop_map(|seq| Kind::Ack(Ack { seq })),
        (num(), any::<u32>()).prop_map(|(after_seq, limit)| Kind::Pull(Pull { after_seq, limit })),
        (vec(message(), 0..3), num(), any::<bool>(), num()).prop_map(
            |(messages, head_seq, has_more, epoch)| {
                Kind::PullResult(PullResult {
                    messages,
                    head_seq,
                    has_more,
                    epoch,
                })
            }
        ),
        ([text(), text(), text()], any::<bool>()).prop_map(
            |([conversation_id, user_id, device_id], active)| {
                Kind::Typing(Typing {
                    conversation_id,
                    user_id,
                    device_id,
                    active,
                })
            }
        ),
        (text(), text(), any::<i32>()).prop_map(|(conversation_id, user_id, status)| {
            Kind::Presence(Presence {
                conversation_id,
                user_id,
                status,
            })
        }),
        (any::<u32>(), text(), num(), text(), num()).prop_map(
            |(code, message, request_id, client_msg_id, retry_after_ms)| {
                Kind::Error(Error {
                    code,
                    message,
                    request_id,
                    client_msg_id,
                    retry_after_ms,
                })
            }
        ),
        push_kind(),
    ]
}

/// The offline-push frames (spec section 18), including policy values this version does not name.
fn push_kind() -> impl Strategy<Value = Kind> {
    let policy = || prop_oneof![0..2i32, any::<i32>()];
    let registration = (text(), text(), policy(), num(), any::<bool>()).prop_map(
        |(device_id, endpoint, policy, registered_ms, has_app_token)| PushRegistration {
            device_id,
            endpoint,
            policy,
            registered_ms,
            has_app_token,
        },
    );
    prop_oneof![
        (num(), text(), text(), policy()).prop_map(|(request_id, endpoint, app_token, policy)| {
            Kind::PushRegister(PushRegister {
                request_id,
                endpoint,
                app_token,
                policy,
            })
        }),
        num().prop_map(|request_id| Kind::PushUnregister(PushUnregister { request_id })),
        num().prop_map(|request_id| Kind::PushList(PushList { request_id })),
        (num(), vec(registration, 0..3), any::<bool>()).prop_map(
            |(request_id, registrations, removed)| Kind::PushResult(PushResult {
                request_id,
                registrations,
                removed,
            })
        ),
    ]
}

/// Any frame.
pub fn frame() -> impl Strategy<Value = Frame> {
    kind().prop_map(|kind| Frame { kind: Some(kind) })
}
