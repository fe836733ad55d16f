//! The network under the protocol: 0-RTT replay, migration, and (through the fault proxy) loss,
//! reordering, duplication and NAT rebinding.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use ferry_proxy::{DirectionFaults, Faults, Proxy, ProxyConfig};

use super::{ensure_gap_free, pull_all, send_many, ServerCtx};
use crate::driver::{hello, DriverError, Session, Target};
use crate::runner::{Case, CaseResult, Verdict};
use crate::{case, ensure, ensure_eq, fail, unsupported};

pub fn cases() -> Vec<Case<ServerCtx>> {
    vec![
        case!(["FERRY-ZERORTT-2", "FERRY-ZERORTT-1", "FERRY-MSG-9", "FERRY-STREAM-11"], "a Send in 0-RTT early data, repeated after the handshake, is a duplicate", zero_rtt_replay),
        case!(["FERRY-ZERORTT-3", "FERRY-SEC-3", "FERRY-AUTH-8"], "a replayed 0-RTT Hello whose handshake never completes does not replace the device's session", zero_rtt_replayed_hello),
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

/// A UDP relay between one client and `server` that records every datagram the client sends until
/// `stop` is called. Returns the relay address and the recorder; the relay ends with the recorder.
async fn recording_relay(
    server: std::net::SocketAddr,
) -> Result<(std::net::SocketAddr, Recorder), Verdict> {
    use tokio::net::UdpSocket;
    let io = |e: std::io::Error| Verdict::Fail(format!("relay socket: {e}"));
    let front = UdpSocket::bind("127.0.0.1:0").await.map_err(io)?;
    let back = UdpSocket::bind("127.0.0.1:0").await.map_err(io)?;
    let addr = front.local_addr().map_err(io)?;
    let datagrams = Arc::new(std::sync::Mutex::new(Some(Vec::new())));
    let rec = datagrams.clone();
    let task = tokio::spawn(async move {
        let (mut a, mut b) = ([0u8; 65536], [0u8; 65536]);
        let mut client = None;
        loop {
            tokio::select! {
                Ok((n, from)) = front.recv_from(&mut a) => {
                    client = Some(from);
                    if let Some(recorded) = rec.lock().expect("lock").as_mut() {
                        recorded.push(a[..n].to_vec());
                    }
                    let _ = back.send_to(&a[..n], server).await;
                }
                Ok(n) = back.recv(&mut b) => {
                    if let Some(to) = client {
                        let _ = front.send_to(&b[..n], to).await;
                    }
                }
            }
        }
    });
    Ok((addr, Recorder { datagrams, task }))
}

struct Recorder {
    datagrams: Arc<std::sync::Mutex<Option<Vec<Vec<u8>>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Recorder {
    /// Waits until the client's first flight has passed the relay — at least one datagram, then
    /// `settle` more for the rest of the flight — and stops recording. On a loaded machine the relay
    /// task may not have run at all within a fixed delay. Bounded: after 5 s it stops with what it has.
    async fn stop_after_flight(&self, settle: Duration) -> Vec<Vec<u8>> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while self.recorded() == 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(settle).await;
        self.stop()
    }

    fn recorded(&self) -> usize {
        self.datagrams
            .lock()
            .expect("lock")
            .as_ref()
            .map_or(0, Vec::len)
    }

    /// Stops recording (the relay keeps relaying) and returns what was recorded.
    fn stop(&self) -> Vec<Vec<u8>> {
        self.datagrams
            .lock()
            .expect("lock")
            .take()
            .unwrap_or_default()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn zero_rtt_replayed_hello(ctx: Arc<ServerCtx>) -> CaseResult {
    let alice = ctx.user("alice");
    let token = ctx.token(&alice, "phone").await?;
    let target = ctx.fresh_target()?;
    let mut first = target.session(&token, "phone").await?;
    first.heartbeat(0).await?; // lets the resumption ticket land
    first.close();
    tokio::time::sleep(Duration::from_millis(100)).await;

    // A genuine 0-RTT connection through a relay that records the client's first flight (Initial with
    // the ClientHello, and the Hello in 0-RTT packets).
    let (relay, recorder) = recording_relay(ctx.addr).await?;
    let connecting = target
        .endpoint
        .connect(relay, "localhost")
        .map_err(DriverError::from)?;
    let Ok((connection, accepted)) = connecting.into_0rtt() else {
        unsupported!("the server issued no resumption ticket usable for 0-RTT (0-RTT is a MAY)");
    };
    let pending = Session::begin(connection, hello(&token, "phone")).await?;
    let flight = recorder.stop_after_flight(Duration::from_millis(50)).await;
    if !tokio::time::timeout(Duration::from_secs(10), accepted)
        .await
        .unwrap_or(false)
    {
        unsupported!("the server rejected 0-RTT (allowed by FERRY-ZERORTT-2)");
    }
    let genuine = pending.welcome().await?;
    genuine.close();
    // Let the server forget the genuine connection, then open the session the replay must not replace.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut session = ctx.session(&alice, "phone").await?;
    session.heartbeat(0).await?;

    // An attacker replays the recorded flight from another address. It cannot complete the handshake, so
    // the early Hello must not apply the login policy (or the server refuses the replayed 0-RTT).
    let attacker = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .map_err(|e| Verdict::Fail(format!("bind: {e}")))?;
    ensure!(!flight.is_empty(), "the relay recorded no datagram");
    for datagram in &flight {
        attacker
            .send_to(datagram, ctx.addr)
            .await
            .map_err(|e| Verdict::Fail(format!("replay: {e}")))?;
    }
    let mut buf = [0u8; 2048];
    let answered = tokio::time::timeout(Duration::from_secs(2), attacker.recv(&mut buf)).await;
    ensure!(
        answered.is_ok(),
        "the server sent nothing to the replayed first flight in 2 s (not a replay the server saw)"
    );
    match tokio::time::timeout(Duration::from_secs(3), session.next_control("nothing")).await {
        Err(_) => {}
        Ok(Ok(frame)) => fail!("the session got {frame:?} after a replayed 0-RTT Hello"),
        Ok(Err(e)) => fail!("the session ended after a replayed 0-RTT Hello: {e}"),
    }
    session
        .heartbeat(0)
        .await
        .map_err(|e| Verdict::Fail(format!("heartbeat after the replay: {e}")))?;
    session.close();
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
