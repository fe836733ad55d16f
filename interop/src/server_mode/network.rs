//! The network under the protocol: 0-RTT replay, migration, and (through the fault proxy) loss,
//! reordering, duplication and NAT rebinding.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use ferry_proxy::{DirectionFaults, Faults, Proxy, ProxyConfig};

use super::{ensure_gap_free, pull_all, send_many, ServerCtx};
use crate::driver::{hello, DriverError, Session, Target};
use crate::runner::{Case, CaseResult, Verdict};
use crate::{case, ensure, ensure_eq, unsupported};

pub fn cases() -> Vec<Case<ServerCtx>> {
    vec![
        case!(["FERRY-ZERORTT-2", "FERRY-ZERORTT-1", "FERRY-MSG-9", "FERRY-STREAM-11"], "a Send in 0-RTT early data, repeated after the handshake, is a duplicate", zero_rtt_replay),
        case!(["FERRY-MIG-1"], "the client rebinds to a new UDP socket mid-session and keeps sending and receiving", migration),
        case!(["FERRY-MIG-1", "FERRY-MIG-3"], "a NAT rebinding (fault proxy) keeps the session", nat_rebind),
        case!(["FERRY-STREAM-9", "FERRY-MSG-1", "FERRY-SEND-7"], "200 messages through 10% loss, reordering and duplication are stored exactly once, gap-free", lossy),
    ]
}

async fn zero_rtt_replay(ctx: Arc<ServerCtx>) -> CaseResult {
    let (alice, bob) = (ctx.user("alice"), ctx.user("bob"));
    let conv = ctx.direct(&alice, &bob);
    let token = ctx.token(&alice, "phone").await?;
    // A fresh endpoint so the session ticket used below is the one this case obtained.
    let target = ctx.fresh_target()?;
    let mut first = target.session(&token, "phone").await?;
    first.heartbeat(0).await?; // the ticket arrives after the handshake; a round trip lets it land
    first.close();
    tokio::time::sleep(Duration::from_millis(100)).await;

    let connecting = target
        .endpoint
        .connect(ctx.addr, "localhost")
        .map_err(DriverError::from)?;
    let (connection, accepted) = match connecting.into_0rtt() {
        Ok(pair) => pair,
        Err(_) => {
            unsupported!("the server issued no resumption ticket usable for 0-RTT (0-RTT is a MAY)")
        }
    };
    // Hello, Open and Send all go out as early data.
    let pending = Session::begin(connection, hello(&token, "phone")).await?;
    let mut stream = pending.open(&conv).await?;
    stream.send_message("early-1", b"sent in 0-RTT").await?;
    if !tokio::time::timeout(Duration::from_secs(10), accepted)
        .await
        .unwrap_or(false)
    {
        unsupported!("the server rejected 0-RTT (allowed by FERRY-ZERORTT-2)");
    }
    let _session = pending.welcome().await?;
    let early = stream.expect_send_ack().await?;
    ensure!(
        !early.duplicate,
        "the first (early) Send was answered duplicate=true"
    );
    // The same Send again, now in 1-RTT: a replay must be a duplicate with the original seq.
    let again = stream.send_and_ack("early-1", b"sent in 0-RTT").await?;
    ensure_eq!(
        (again.seq, again.duplicate),
        (early.seq, true),
        "(seq, duplicate) of the repeated Send"
    );
    let stored = pull_all(&mut stream, 0).await?;
    ensure_eq!(stored.len(), 1, "messages stored");
    Ok(())
}

async fn migration(ctx: Arc<ServerCtx>) -> CaseResult {
    let (alice, bob) = (ctx.user("alice"), ctx.user("bob"));
    let conv = ctx.direct(&alice, &bob);
    let target = ctx.fresh_target()?;
    let mut me = target
        .session(&ctx.token(&alice, "phone").await?, "phone")
        .await?;
    let peer = ctx.session(&bob, "phone").await?;
    let mut s = me.open(&conv).await?;
    send_many(&ctx, &mut s, "before", 5).await?;
    let socket = std::net::UdpSocket::bind("127.0.0.1:0")
        .map_err(|e| Verdict::Fail(format!("bind: {e}")))?;
    target
        .endpoint
        .rebind(socket)
        .map_err(|e| Verdict::Fail(format!("rebind: {e}")))?;
    me.heartbeat(0)
        .await
        .map_err(|e| Verdict::Fail(format!("heartbeat after migrating: {e}")))?;
    send_many(&ctx, &mut s, "after", 5).await?;
    // Receiving on the new path: the peer writes, we get Deliver.
    let mut p = peer.open(&conv).await?;
    let ack = p.send_and_ack("from-peer", b"x").await?;
    let got = s.wait_delivered(1).await?;
    ensure_eq!(got[0].seq, ack.seq, "seq delivered after migrating");
    ensure_eq!(
        me.connection.close_reason(),
        None,
        "connection state after migrating"
    );
    Ok(())
}

async fn start_proxy(ctx: &ServerCtx, faults: Faults) -> Result<(Proxy, Target), Verdict> {
    if !ctx.proxy {
        unsupported!("needs the fault proxy (--proxy)");
    }
    let mut config = ProxyConfig::new("127.0.0.1:0".parse().expect("literal"), ctx.addr);
    config.seed = rand::random();
    config.faults = faults;
    let proxy = Proxy::start(config)
        .await
        .map_err(|e| Verdict::Fail(format!("starting the proxy: {e}")))?;
    let target = Target::new(proxy.local_addr(), &ctx.ca)?;
    Ok((proxy, target))
}

async fn nat_rebind(ctx: Arc<ServerCtx>) -> CaseResult {
    let (alice, bob) = (ctx.user("alice"), ctx.user("bob"));
    let conv = ctx.direct(&alice, &bob);
    let (proxy, target) = start_proxy(&ctx, Faults::none()).await?;
    let mut me = target
        .session(&ctx.token(&alice, "phone").await?, "phone")
        .await?;
    let mut s = me.open(&conv).await?;
    send_many(&ctx, &mut s, "before", 5).await?;
    proxy
        .rebind()
        .map_err(|e| Verdict::Fail(format!("proxy rebind: {e}")))?;
    me.heartbeat(0)
        .await
        .map_err(|e| Verdict::Fail(format!("heartbeat after the NAT rebinding: {e}")))?;
    send_many(&ctx, &mut s, "after", 5).await?;
    let check = ctx.session(&bob, "phone").await?;
    let all = pull_all(&mut check.open(&conv).await?, 0).await?;
    ensure_gap_free(
        &all.iter().map(|m| m.seq).collect::<Vec<_>>(),
        10,
        "seqs stored across the rebinding",
    )?;
    proxy.shutdown().await;
    Ok(())
}

async fn lossy(ctx: Arc<ServerCtx>) -> CaseResult {
    let (alice, bob) = (ctx.user("alice"), ctx.user("bob"));
    let conv = ctx.direct(&alice, &bob);
    let faults = Faults::symmetric(DirectionFaults {
        loss: 0.1,
        delay: Duration::from_millis(2),
        jitter: Duration::from_millis(3),
        reorder: 0.1,
        duplicate: 0.1,
    });
    let (proxy, target) = start_proxy(&ctx, faults).await?;
    let me = target
        .session(&ctx.token(&alice, "phone").await?, "phone")
        .await?;
    let mut s = me.open(&conv).await?;
    let mut seqs = send_many(&ctx, &mut s, "lossy", 200).await?;
    seqs.sort_unstable(); // order is FERRY-SEND-8's business; here: each seq exactly once
    ensure_gap_free(&seqs, 200, "SendAck seqs through the lossy path")?;
    let check = ctx.session(&bob, "phone").await?;
    let all = pull_all(&mut check.open(&conv).await?, 0).await?;
    ensure_gap_free(
        &all.iter().map(|m| m.seq).collect::<Vec<_>>(),
        200,
        "seqs stored",
    )?;
    let ids: BTreeSet<&str> = all.iter().map(|m| m.client_msg_id.as_str()).collect();
    ensure_eq!(ids.len(), 200, "distinct client_msg_ids stored");
    proxy.shutdown().await;
    Ok(())
}
