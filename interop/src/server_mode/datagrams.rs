//! Datagrams: typing relay with server-set sender fields, membership and garbage handling.

use std::sync::Arc;
use std::time::Duration;

use ferry_protocol::codec::{self, frame};
use ferry_protocol::frame::{frame::Kind, Presence, Typing};
use ferry_protocol::Frame;

use super::ServerCtx;
use crate::driver::Session;
use crate::runner::{Case, CaseResult};
use crate::{case, ensure, ensure_eq, fail};

pub fn cases() -> Vec<Case<ServerCtx>> {
    vec![
        case!(
            ["FERRY-TRANSPORT-5"],
            "the server supports QUIC datagrams",
            datagram_support
        ),
        case!(
            [
                "FERRY-DGRAM-6",
                "FERRY-MSGFMT-3",
                "FERRY-DGRAM-1",
                "FERRY-DGRAM-4"
            ],
            "Typing is relayed to the other member with server-set user and device, never stored",
            typing_relay
        ),
        case!(
            ["FERRY-DGRAM-6"],
            "Typing reaches the sender's own other device, never the sending session",
            own_devices
        ),
        case!(
            ["FERRY-DGRAM-6", "FERRY-AUTH-5"],
            "datagrams from a non-member are not relayed",
            non_member_dropped
        ),
        case!(
            ["FERRY-MSGFMT-2"],
            "a Presence with an unknown status value is accepted and relayed",
            unknown_presence_status
        ),
        case!(
            ["FERRY-DGRAM-3"],
            "undecodable and misplaced datagrams are discarded without closing anything",
            garbage
        ),
    ]
}

fn typing(conversation: &str, spoofed_user: &str) -> Frame {
    frame(Kind::Typing(Typing {
        conversation_id: conversation.into(),
        user_id: spoofed_user.into(),
        device_id: "spoofed-device".into(),
        active: true,
    }))
}

/// Sends `frame` from `from` up to 20 times (datagrams are unreliable and rate-limited) until `to` gets
/// one; returns what arrived.
async fn relay(
    from: &Session,
    to: &Session,
    frame: &Frame,
) -> Result<Option<Frame>, crate::runner::Verdict> {
    for _ in 0..20 {
        from.connection
            .send_datagram(codec::encode_datagram(frame))
            .map_err(|e| crate::runner::Verdict::Fail(format!("send_datagram: {e}")))?;
        if let Ok(Ok(bytes)) =
            tokio::time::timeout(Duration::from_millis(250), to.connection.read_datagram()).await
        {
            let decoded =
                codec::decode_datagram(&bytes, codec::DEFAULT_MAX_FRAME_SIZE).map_err(|e| {
                    crate::runner::Verdict::Fail(format!("relayed datagram does not decode: {e}"))
                })?;
            return Ok(Some(decoded));
        }
    }
    Ok(None)
}

async fn datagram_support(ctx: Arc<ServerCtx>) -> CaseResult {
    let session = ctx.session(&ctx.user("alice"), "phone").await?;
    match session.connection.max_datagram_size() {
        Some(size) => {
            ensure!(
                size >= 1000,
                "max datagram size {size} is smaller than a path MTU allows"
            );
            Ok(())
        }
        None => fail!("the server did not advertise max_datagram_frame_size"),
    }
}

async fn typing_relay(ctx: Arc<ServerCtx>) -> CaseResult {
    let (alice, bob) = (ctx.user("alice"), ctx.user("bob"));
    let conv = ctx.direct(&alice, &bob);
    let a = ctx.session(&alice, "phone").await?;
    let b = ctx.session(&bob, "phone").await?;
    // The conversation exists once it was opened.
    a.open(&conv).await?.pull(0, 0).await?;
    let Some(got) = relay(&a, &b, &typing(&conv, &bob)).await? else {
        fail!("no Typing relayed in 20 attempts over 5 s");
    };
    match got.kind {
        Some(Kind::Typing(t)) => {
            ensure_eq!(t.conversation_id, conv, "Typing.conversation_id");
            ensure_eq!(t.user_id, alice, "Typing.user_id (server-set)");
            ensure_eq!(t.device_id, "phone", "Typing.device_id (server-set)");
            ensure!(t.active, "Typing.active changed in relay");
        }
        other => fail!("expected Typing, got {other:?}"),
    }
    let mut s = b.open(&conv).await?;
    ensure_eq!(
        s.pull(0, 0).await?.head_seq,
        0,
        "head after typing (datagrams are never stored)"
    );
    Ok(())
}

async fn non_member_dropped(ctx: Arc<ServerCtx>) -> CaseResult {
    let (alice, bob, eve) = (ctx.user("alice"), ctx.user("bob"), ctx.user("eve"));
    let conv = ctx.direct(&alice, &bob);
    let a = ctx.session(&alice, "phone").await?;
    let b = ctx.session(&bob, "phone").await?;
    let e = ctx.session(&eve, "phone").await?;
    a.open(&conv).await?.pull(0, 0).await?;
    if let Some(got) = relay(&e, &b, &typing(&conv, &alice)).await? {
        fail!("a non-member's datagram was relayed: {got:?}");
    }
    Ok(())
}

async fn unknown_presence_status(ctx: Arc<ServerCtx>) -> CaseResult {
    let (alice, bob) = (ctx.user("alice"), ctx.user("bob"));
    let conv = ctx.direct(&alice, &bob);
    let a = ctx.session(&alice, "phone").await?;
    let b = ctx.session(&bob, "phone").await?;
    a.open(&conv).await?.pull(0, 0).await?;
    // 77 is no PresenceStatus of ferry/1: proto3 enums are open, so the datagram is still valid.
    let presence = frame(Kind::Presence(Presence {
        conversation_id: conv.clone(),
        user_id: String::new(),
        status: 77,
    }));
    let Some(got) = relay(&a, &b, &presence).await? else {
        fail!("a Presence with status 77 was not relayed in 20 attempts over 5 s");
    };
    match got.kind {
        Some(Kind::Presence(p)) => {
            ensure_eq!(p.conversation_id, conv, "Presence.conversation_id");
            ensure_eq!(p.user_id, alice, "Presence.user_id (server-set)");
            // Relayed as received (77) or as UNSPECIFIED (0); never as a status the sender did not send.
            ensure!(
                p.status == 77 || p.status == 0,
                "Presence.status relayed as {}, expected 77 or 0",
                p.status
            );
        }
        other => fail!("expected Presence, got {other:?}"),
    }
    Ok(())
}

async fn garbage(ctx: Arc<ServerCtx>) -> CaseResult {
    let (alice, bob) = (ctx.user("alice"), ctx.user("bob"));
    let mut a = ctx.session(&alice, "phone").await?;
    let hb = frame(Kind::Heartbeat(Default::default()));
    let send_ack_like = codec::encode_datagram(&frame(Kind::Pull(Default::default())));
    let mut length_prefixed = codec::encode(&typing(&ctx.direct(&alice, &bob), "")).to_vec();
    length_prefixed.push(0xff);
    for payload in [
        vec![0xff, 0xff, 0xff],
        codec::encode_datagram(&hb).to_vec(),
        send_ack_like.to_vec(),
        length_prefixed,
    ] {
        a.connection
            .send_datagram(payload.into())
            .map_err(|e| crate::runner::Verdict::Fail(format!("send_datagram: {e}")))?;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    a.heartbeat(0).await.map_err(|e| {
        crate::runner::Verdict::Fail(format!("connection unusable after bad datagrams: {e}"))
    })?;
    Ok(())
}

async fn own_devices(ctx: Arc<ServerCtx>) -> CaseResult {
    let (alice, bob) = (ctx.user("alice"), ctx.user("bob"));
    let conv = ctx.direct(&alice, &bob);
    let phone = ctx.session(&alice, "phone").await?;
    let laptop = ctx.session(&alice, "laptop").await?;
    phone.open(&conv).await?.pull(0, 0).await?;
    let Some(got) = relay(&phone, &laptop, &typing(&conv, &bob)).await? else {
        fail!("no Typing relayed to the sender's other device in 20 attempts over 5 s");
    };
    match got.kind {
        Some(Kind::Typing(t)) => {
            ensure_eq!(t.user_id, alice, "Typing.user_id (server-set)");
            ensure_eq!(t.device_id, "phone", "Typing.device_id (server-set)");
        }
        other => fail!("expected Typing, got {other:?}"),
    }
    // The sending session itself gets nothing back.
    if let Ok(Ok(bytes)) =
        tokio::time::timeout(Duration::from_millis(500), phone.connection.read_datagram()).await
    {
        fail!("the sending session got its own datagram back: {bytes:?}");
    }
    Ok(())
}
