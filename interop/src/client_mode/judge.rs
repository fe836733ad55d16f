//! Judging a client-mode case from the server side: what the reference server stored (read back by a
//! driver session of the peer) against what the client reported on stdout.

use std::collections::{BTreeMap, BTreeSet};

use ferry_protocol::frame::MessageKind;

use super::{ClientCtx, OutputLine, Scene};
use crate::ensure_eq;
use crate::runner::{CaseResult, Verdict};
use crate::server_mode::pull_all;

pub(super) fn body(i: usize) -> String {
    format!("message {i}")
}

/// The client's messages as stored on the server: checks that each expected body is there exactly
/// once from the client, with gap-free seqs; returns client_msg_id → seq.
pub(super) async fn stored_once(
    ctx: &ClientCtx,
    scene: &Scene,
    count: usize,
) -> Result<BTreeMap<String, u64>, Verdict> {
    let reader = ctx.session(&scene.peer, "judge").await?;
    let all = pull_all(&mut reader.open(&scene.conversation).await?, 0).await?;
    let mut by_body: BTreeMap<String, usize> = BTreeMap::new();
    for (i, m) in all.iter().enumerate() {
        ensure_eq!(m.seq, i as u64 + 1, "seq of stored message {}", i + 1);
        ensure_eq!(
            m.kind(),
            MessageKind::User,
            "kind of stored message {}",
            m.seq
        );
        ensure_eq!(m.sender, scene.user, "sender of stored message {}", m.seq);
        *by_body
            .entry(String::from_utf8_lossy(&m.body).into_owned())
            .or_default() += 1;
    }
    let expected: BTreeMap<String, usize> = (1..=count).map(|i| (body(i), 1)).collect();
    ensure_eq!(
        by_body,
        expected,
        "stored bodies and how often each is stored"
    );
    let ids: BTreeSet<&str> = all.iter().map(|m| m.client_msg_id.as_str()).collect();
    ensure_eq!(ids.len(), count, "distinct client_msg_ids");
    Ok(all.into_iter().map(|m| (m.client_msg_id, m.seq)).collect())
}

/// Checks the client's send records against what the server stored.
pub(super) fn sends_match(
    lines: &[OutputLine],
    stored: &BTreeMap<String, u64>,
    conversation: &str,
) -> CaseResult {
    let mut reported = BTreeMap::new();
    for line in lines {
        if let OutputLine::Sent {
            conversation: c,
            seq,
            client_msg_id,
            ..
        } = line
        {
            ensure_eq!(c.as_str(), conversation, "conversation of a send record");
            reported.insert(client_msg_id.clone(), *seq);
        }
    }
    ensure_eq!(
        &reported,
        stored,
        "client_msg_id → seq reported by the client vs stored"
    );
    Ok(())
}

/// Checks the client's receive records: exactly `expected` seqs, once each, in order, with bodies.
pub(super) fn received_in_order(
    lines: &[OutputLine],
    scene: &Scene,
    expected: &BTreeMap<u64, String>,
) -> CaseResult {
    let got: Vec<(u64, String)> = lines
        .iter()
        .filter_map(|l| match l {
            OutputLine::Received {
                conversation,
                seq,
                from,
                body,
                ..
            } if conversation == &scene.conversation => Some((*seq, format!("{from}: {body}"))),
            _ => None,
        })
        .collect();
    let want: Vec<(u64, String)> = expected
        .iter()
        .map(|(s, b)| (*s, format!("{}: {b}", scene.peer)))
        .collect();
    ensure_eq!(got, want, "(seq, \"from: body\") handed over by the client");
    Ok(())
}

/// The peer sends bodies `range` in the conversation; returns seq → body.
pub(super) async fn peer_sends(
    ctx: &ClientCtx,
    scene: &Scene,
    range: std::ops::RangeInclusive<usize>,
) -> Result<BTreeMap<u64, String>, Verdict> {
    let peer = ctx.session(&scene.peer, "peer").await?;
    let mut stream = peer.open(&scene.conversation).await?;
    let mut sent = BTreeMap::new();
    for i in range {
        let ack = stream
            .send_and_ack(&format!("{}-{i}", scene.peer), body(i).as_bytes())
            .await?;
        sent.insert(ack.seq, body(i));
    }
    peer.close();
    Ok(sent)
}
