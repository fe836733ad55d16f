//! `--push` of the send/throughput scenario: Ferry with offline push on, so that one command gives the
//! A/B "throughput unchanged with pushes enabled" (issue 20). The bench starts a local HTTP receiver,
//! starts ferry-server allowed to POST to it, and registers it as the push endpoint of the receiving
//! user's device, which then stays offline: every acked send is a push candidate for the notifier,
//! which coalesces them into at most one POST per window.
//!
//! The receiver only has to answer: it reads each request's head and `Content-Length` body, answers
//! `204` and counts. It is bounded like the server's ops endpoint (head size, time per request).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use ferry_interop::driver::{hello, Session};
use ferry_protocol::frame::{Hello, PushPolicy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::peers::ferry::FerryServer;

/// Largest request head the receiver reads.
const MAX_HEAD: usize = 16 * 1024;
/// Largest body it accepts (a notification is a few hundred bytes).
const MAX_BODY: usize = 64 * 1024;
/// Time a request may take to arrive.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// A local endpoint that answers every POST with 204 and counts them; stops when dropped.
pub struct PushReceiver {
    /// Where it listens.
    pub addr: SocketAddr,
    posts: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl PushReceiver {
    /// Starts it on a free loopback port.
    pub async fn start() -> anyhow::Result<PushReceiver> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let posts = Arc::new(AtomicU64::new(0));
        let counter = posts.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let counter = counter.clone();
                tokio::spawn(async move {
                    let served = tokio::time::timeout(REQUEST_TIMEOUT, serve(stream, &counter));
                    let _ = served.await;
                });
            }
        });
        Ok(PushReceiver { addr, posts, task })
    }

    /// POSTs answered so far.
    pub fn posts(&self) -> u64 {
        self.posts.load(Relaxed)
    }
}

impl Drop for PushReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Answers the requests of one connection (keep-alive) until the client closes or sends garbage.
async fn serve(mut stream: TcpStream, posts: &AtomicU64) -> anyhow::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    loop {
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            anyhow::ensure!(buf.len() <= MAX_HEAD, "request head too large");
            if read_more(&mut stream, &mut buf).await? == 0 {
                return Ok(());
            }
        };
        let head = std::str::from_utf8(&buf[..head_end]).context("head is not UTF-8")?;
        let length: usize = head
            .lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
            .map_or(Ok(0), |(_, v)| v.trim().parse())?;
        anyhow::ensure!(length <= MAX_BODY, "body too large");
        while buf.len() < head_end + length {
            anyhow::ensure!(
                read_more(&mut stream, &mut buf).await? > 0,
                "body cut short"
            );
        }
        buf.drain(..head_end + length);
        posts.fetch_add(1, Relaxed);
        stream
            .write_all(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")
            .await?;
    }
}

async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    let mut chunk = [0u8; 4096];
    let n = stream.read(&mut chunk).await?;
    buf.extend_from_slice(&chunk[..n]);
    Ok(n)
}

/// ferry-server on `binary` with push allowed to `receiver`, and `user`'s device `bench` registered
/// there (it disconnects right after, so every message to it is a push candidate).
pub async fn start_server(
    binary: &Path,
    receiver: &PushReceiver,
    user: &str,
) -> anyhow::Result<FerryServer> {
    let allow = format!("http://{}/", receiver.addr);
    let server = FerryServer::start_with(binary, &["--push-allow", &allow]).await?;
    let connection = server.target.connect().await?;
    let asking = Hello {
        capabilities: vec![ferry_protocol::frames::CAPABILITY_PUSH.into()],
        ..hello(&server.token(user), "bench")
    };
    let mut session = Session::start(connection, asking).await?;
    let endpoint = format!("http://{}/{user}", receiver.addr);
    session
        .push_register(&endpoint, "", PushPolicy::None)
        .await?
        .map_err(|code| anyhow::anyhow!("push registration refused: {code:?}"))?;
    session.close();
    Ok(server)
}
