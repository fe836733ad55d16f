//! Scripted case about datagrams: typing signals for unknown conversations or above `max_frame_size`.

use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use ferry_protocol::codec::{self, frame};
use ferry_protocol::frame::{frame::Kind, Typing};
use ferry_protocol::ids;

use super::*;
use crate::client_mode::{ClientCtx, OutputLine};
use crate::runner::CaseResult;
use crate::{ensure, fail};

/// A Typing datagram, optionally padded with an unknown protobuf field (which decoders skip) so that its
/// payload is `pad_to` bytes long.
fn typing_datagram(conversation: &str, user: &str, device: &str, pad_to: usize) -> bytes::Bytes {
    let plain = codec::encode_datagram(&frame(Kind::Typing(Typing {
        conversation_id: conversation.into(),
        user_id: user.into(),
        device_id: device.into(),
        active: true,
    })));
    if pad_to <= plain.len() + 4 {
        return plain;
    }
    // The pad is field 15 (length-delimited) of Frame: tag 0x7a, a 2-byte varint length, the bytes.
    let pad = pad_to - plain.len() - 3;
    let mut out = BytesMut::from(&plain[..]);
    out.put_u8(0x7a);
    out.put_u8((pad as u8 & 0x7f) | 0x80);
    out.put_u8((pad >> 7) as u8);
    out.put_bytes(b'x', pad);
    out.freeze()
}

/// `datagrams`: the server relays three typing signals: one for a conversation the client does not know,
/// one in its conversation but larger than the announced `max_frame_size`, one valid. The client reports
/// only the valid one.
pub async fn datagrams(ctx: Arc<ClientCtx>) -> CaseResult {
    let (server, mut scene, mut model) = scripted(&ctx, Duration::from_secs(30)).await?;
    scene.count = 1;
    let conv = scene.conversation.clone();
    model
        .conversations
        .insert(conv.clone(), crate::client_mode::scripted::Conv::new(7));
    let mut client = ctx.spawn("datagrams", &scene).await?;
    let mut conn = server.accept(&mut client, CONNECT).await?;
    let Some(max_datagram) = conn.connection.max_datagram_size() else {
        fail!("the client does not accept QUIC datagrams (FERRY-TRANSPORT-7)");
    };
    // The smallest consistent limits (FERRY-LIMIT-3) whose frame size a datagram can exceed.
    let frame_limit = (max_datagram - 32).min(1500);
    ensure!(
        frame_limit > 1100,
        "QUIC datagrams of {max_datagram} bytes are too small for this case"
    );
    model.limits.max_frame_size = frame_limit as u32;
    model.limits.max_body_size = (frame_limit - 1024) as u32;
    conn.greet(model.welcome(), Duration::ZERO).await?;
    serve_for(&mut conn, &mut model, Duration::from_millis(500)).await?;
    let stranger = ids::direct_conversation_id(&scene.user, &format!("{}-stranger", scene.peer))
        .expect("valid ids");
    conn.datagram(typing_datagram(&stranger, "stranger", "stranger-dev", 0))?;
    conn.datagram(typing_datagram(
        &conv,
        &scene.peer,
        "oversized",
        frame_limit + 16,
    ))?;
    for _ in 0..2 {
        conn.datagram(typing_datagram(&conv, &scene.peer, "peer-dev", 0))?;
    }
    serve_for(&mut conn, &mut model, Duration::from_millis(500)).await?;
    model.add(&conv, &scene.peer, "the end");
    conn.deliver(&model, &conv, 1).await?;
    let lines = serve_until_exit(&mut conn, &mut model, client, ctx.client_timeout).await?;
    let typing: Vec<(&str, &str, &str)> = lines
        .iter()
        .filter_map(|l| match l {
            OutputLine::Typing {
                conversation,
                from,
                device,
                ..
            } => Some((conversation.as_str(), from.as_str(), device.as_str())),
            _ => None,
        })
        .collect();
    ensure!(
        typing.iter().all(|(c, ..)| *c != stranger),
        "the client reported a typing signal for a conversation it does not know (FERRY-SEC-8): {typing:?}"
    );
    ensure!(
        typing.iter().all(|(.., d)| *d != "oversized"),
        "the client reported a datagram larger than max_frame_size (FERRY-DGRAM-2): {typing:?}"
    );
    ensure!(
        typing
            .iter()
            .any(|(c, f, d)| *c == conv && *f == scene.peer && *d == "peer-dev"),
        "no typing record for the valid signal in {conv}: {typing:?}"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_protocol::frames::kind_name;

    #[test]
    fn padded_typing_decodes_and_has_the_size() {
        let d = typing_datagram("d:a:b", "b", "big", 1400);
        assert_eq!(d.len(), 1400);
        let f = codec::decode_datagram(&d, 2000).unwrap();
        assert_eq!(kind_name(&f), "Typing");
        assert!(codec::decode_datagram(&d, 1300).is_err());
    }
}
