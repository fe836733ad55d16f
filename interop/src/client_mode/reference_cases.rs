//! The client cases against the reference server: send, receive, reconnect, lossy, goaway, untrusted,
//! replaced. Each runs the client through a fault proxy and judges with `judge.rs`.

use std::sync::Arc;
use std::time::Duration;

use ferry_proxy::{DirectionFaults, Faults};

use super::judge::{peer_sends, received_in_order, sends_match, stored_once};
use super::{ClientCtx, UNSUPPORTED_EXIT};
use crate::runner::{CaseResult, Verdict};
use crate::{ensure, ensure_eq, fail, unsupported};

pub(super) async fn send(ctx: Arc<ClientCtx>) -> CaseResult {
    let scene = ctx.scene(Faults::none()).await?;
    let lines = ctx
        .spawn("send", &scene)
        .await?
        .finish(ctx.client_timeout)
        .await?;
    let stored = stored_once(&ctx, &scene, ctx.count).await?;
    sends_match(&lines, &stored, &scene.conversation)
}

pub(super) async fn receive(ctx: Arc<ClientCtx>) -> CaseResult {
    let scene = ctx.scene(Faults::none()).await?;
    let half = ctx.count / 2;
    let mut expected = peer_sends(&ctx, &scene, 1..=half).await?;
    let client = ctx.spawn("receive", &scene).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    expected.extend(peer_sends(&ctx, &scene, half + 1..=ctx.count).await?);
    let lines = client.finish(ctx.client_timeout).await?;
    received_in_order(&lines, &scene, &expected)
}

pub(super) async fn reconnect(ctx: Arc<ClientCtx>) -> CaseResult {
    let scene = ctx.scene(Faults::none()).await?;
    let half = ctx.count / 2;
    let mut client = ctx.spawn("reconnect", &scene).await?;
    let mut expected = peer_sends(&ctx, &scene, 1..=half).await?;
    client.wait_lines(half, Duration::from_secs(10)).await?;
    // Longer than the reference server's idle timeout (4 s): the old connection dies on both sides.
    scene.proxy.blackhole(Duration::from_secs(6));
    expected.extend(peer_sends(&ctx, &scene, half + 1..=ctx.count).await?);
    let lines = client.finish(ctx.client_timeout).await?;
    received_in_order(&lines, &scene, &expected)
}

pub(super) async fn lossy(ctx: Arc<ClientCtx>) -> CaseResult {
    let faults = Faults::symmetric(DirectionFaults {
        loss: 0.2,
        ..DirectionFaults::default()
    });
    let scene = ctx.scene(faults).await?;
    let lines = ctx
        .spawn("lossy", &scene)
        .await?
        .finish(ctx.client_timeout)
        .await?;
    let stored = stored_once(&ctx, &scene, ctx.count).await?;
    sends_match(&lines, &stored, &scene.conversation)
}

pub(super) async fn goaway(ctx: Arc<ClientCtx>) -> CaseResult {
    let scene = ctx.scene(Faults::none()).await?;
    let half = ctx.count / 2;
    let mut client = ctx.spawn("goaway", &scene).await?;
    let mut expected = peer_sends(&ctx, &scene, 1..=half).await?;
    client.wait_lines(half, Duration::from_secs(10)).await?;
    ctx.server
        .restart()
        .await
        .map_err(|e| Verdict::Fail(format!("restarting the reference server: {e}")))?;
    expected.extend(peer_sends(&ctx, &scene, half + 1..=ctx.count).await?);
    let lines = client.finish(ctx.client_timeout).await?;
    received_in_order(&lines, &scene, &expected)
}

pub(super) async fn untrusted(ctx: Arc<ClientCtx>) -> CaseResult {
    let mut scene = ctx.scene(Faults::none()).await?;
    // A CA of its own: valid PEM, but it did not sign this server's certificate.
    let other = tempfile::tempdir().map_err(|e| Verdict::Fail(format!("temp dir: {e}")))?;
    let ca = super::tls::SelfSigned::generate(other.path())
        .map_err(|e| Verdict::Fail(format!("making a CA: {e}")))?;
    scene.ca = Some(ca.cert_path);
    let mut client = ctx.spawn("untrusted", &scene).await?;
    // The client may give up or keep retrying; either way it must not get a session or send.
    tokio::time::sleep(Duration::from_secs(4)).await;
    if client.exit_code() == Some(UNSUPPORTED_EXIT) {
        unsupported!("the client does not support this case (exit 127)");
    }
    let output = client.kill().await;
    ensure!(
        output.is_empty(),
        "the client reported output although it cannot trust the server: {output:?}"
    );
    let reader = ctx.session(&scene.peer, "judge").await?;
    let page = reader.open(&scene.conversation).await?.pull(0, 0).await?;
    ensure_eq!(
        page.head_seq,
        0,
        "messages stored by a client that did not trust the server"
    );
    Ok(())
}

pub(super) async fn replaced(ctx: Arc<ClientCtx>) -> CaseResult {
    let scene = ctx.scene(Faults::none()).await?;
    let mut client = ctx.spawn("replaced", &scene).await?;
    peer_sends(&ctx, &scene, 1..=1).await?;
    client.wait_lines(1, Duration::from_secs(10)).await?;
    // Replace the client's session with one of the same device.
    let mut mine = ctx.session(&scene.user, &scene.device).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    // A client that reconnected would have replaced this session in turn.
    let alive = tokio::time::timeout(Duration::from_secs(2), mine.heartbeat(0)).await;
    let _ = client.kill().await;
    match alive {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => {
            let why = mine
                .connection
                .close_reason()
                .map_or(e.to_string(), |r| r.to_string());
            fail!("the replacing session was closed ({why}): the client reconnected automatically after SESSION_REPLACED?")
        }
        Err(_) => fail!("the replacing session stopped answering"),
    }
}
