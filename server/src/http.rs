//! The ops endpoint: `GET /healthz` and `GET /metrics` over plain HTTP/1.1.
//!
//! It serves load balancers and Prometheus, not browsers, so it reads only the request line (after
//! the whole header block has arrived), answers one request per connection with `Connection: close`,
//! and has no framework. Each connection gets a task, bounded in number, in time (5 s to send the
//! request) and in size (8 KiB of request head).

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

use crate::metrics::Metrics;

/// Time a client has to send its request head.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait for the client to close after the response.
const LINGER: Duration = Duration::from_secs(1);
/// Largest accepted request head.
const MAX_REQUEST: usize = 8 * 1024;
/// Connections served at once; more are closed without an answer.
const MAX_CONNECTIONS: usize = 64;

/// Health check: `true` while the server accepts new connections.
pub(crate) type HealthCheck = Arc<dyn Fn() -> bool + Send + Sync>;

/// Serves `/healthz` and `/metrics` on `listener` until `shutdown` becomes true (or its sender is
/// dropped).
pub(crate) async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    health: HealthCheck,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                // Accept errors (e.g. out of file descriptors) are transient; keep serving.
                let Ok((stream, _)) = accepted else { continue };
                let Ok(slot) = slots.clone().try_acquire_owned() else { continue };
                let (metrics, health) = (metrics.clone(), health.clone());
                tokio::spawn(async move {
                    // A failed write means the client went away; there is no one left to tell.
                    let _ = handle(stream, &metrics, &health).await;
                    drop(slot);
                });
            }
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    return;
                }
            }
        }
    }
}

/// Reads one request and writes its response.
async fn handle(
    mut stream: TcpStream,
    metrics: &Metrics,
    health: &HealthCheck,
) -> std::io::Result<()> {
    let response = match tokio::time::timeout(READ_TIMEOUT, read_head(&mut stream)).await {
        Err(_) => Response::text(408, "Request Timeout", "timeout\n"),
        Ok(Err(e)) => return Err(e),
        Ok(Ok(None)) => Response::text(400, "Bad Request", "request too large or incomplete\n"),
        Ok(Ok(Some(head))) => route(&head, metrics, health),
    };
    stream.write_all(&response.into_bytes()).await?;
    stream.shutdown().await?;
    // Lingering close: read whatever the client still sends until it closes. Closing a socket with
    // unread input makes the kernel send a RST, which can destroy the response before it is read.
    let drain = async {
        let mut sink = [0u8; 1024];
        while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
    Ok(())
}

/// Reads until the blank line ending the request head; `None` if the client stops first or the
/// head exceeds [`MAX_REQUEST`].
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Option<Vec<u8>>> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() > MAX_REQUEST {
            return Ok(None);
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        head.extend_from_slice(&chunk[..n]);
    }
    Ok(Some(head))
}

fn route(head: &[u8], metrics: &Metrics, health: &HealthCheck) -> Response {
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let Some((method, target)) = std::str::from_utf8(line).ok().and_then(parse_request_line) else {
        return Response::text(400, "Bad Request", "bad request line\n");
    };
    let path = target.split('?').next().unwrap_or(target);
    match (method, path) {
        ("GET", "/healthz") if health() => Response::text(200, "OK", "ok\n"),
        ("GET", "/healthz") => Response::text(503, "Service Unavailable", "unavailable\n"),
        ("GET", "/metrics") => Response {
            status: 200,
            reason: "OK",
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            body: metrics.render(),
        },
        (_, "/healthz" | "/metrics") => Response::text(405, "Method Not Allowed", "use GET\n"),
        _ => Response::text(404, "Not Found", "not found\n"),
    }
}

/// `METHOD SP target SP HTTP/1.x` → (method, target).
fn parse_request_line(line: &str) -> Option<(&str, &str)> {
    let mut parts = line.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    let well_formed = parts.next().is_none()
        && !method.is_empty()
        && method.bytes().all(|b| b.is_ascii_uppercase())
        && target.starts_with('/')
        && matches!(version, "HTTP/1.0" | "HTTP/1.1");
    well_formed.then_some((method, target))
}

struct Response {
    status: u16,
    reason: &'static str,
    content_type: &'static str,
    body: String,
}

impl Response {
    fn text(status: u16, reason: &'static str, body: &str) -> Response {
        Response {
            status,
            reason,
            content_type: "text/plain; charset=utf-8",
            body: body.to_owned(),
        }
    }

    fn into_bytes(self) -> Vec<u8> {
        let head = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.status,
            self.reason,
            self.content_type,
            self.body.len()
        );
        [head.into_bytes(), self.body.into_bytes()].concat()
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    async fn request(addr: SocketAddr, raw: &[u8]) -> String {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(raw).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
    }

    #[tokio::test]
    async fn answers_health_metrics_and_errors_then_stops() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = Arc::new(Metrics::default());
        metrics.ack();
        let healthy = Arc::new(AtomicBool::new(true));
        let flag = healthy.clone();
        let health: HealthCheck = Arc::new(move || flag.load(Ordering::SeqCst));
        let (stop, stopped) = watch::channel(false);
        let server = tokio::spawn(serve(listener, metrics, health, stopped));

        let ok = request(addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(
            ok.contains("Connection: close\r\n") && ok.ends_with("\r\n\r\nok\n"),
            "{ok}"
        );

        healthy.store(false, Ordering::SeqCst);
        let down = request(addr, b"GET /healthz HTTP/1.1\r\n\r\n").await;
        assert!(
            down.starts_with("HTTP/1.1 503 ") && down.ends_with("unavailable\n"),
            "{down}"
        );

        let scraped = request(addr, b"GET /metrics?x=1 HTTP/1.1\r\nAccept: */*\r\n\r\n").await;
        assert!(scraped.starts_with("HTTP/1.1 200 OK\r\n"), "{scraped}");
        assert!(
            scraped.contains("Content-Type: text/plain; version=0.0.4"),
            "{scraped}"
        );
        assert!(scraped.contains("\nferry_acks_total 1\n"), "{scraped}");
        let (head, body) = scraped.split_once("\r\n\r\n").unwrap();
        assert!(
            head.contains(&format!("Content-Length: {}\r\n", body.len())),
            "{head}"
        );

        let cases: [(&[u8], &str); 5] = [
            (b"GET /nope HTTP/1.1\r\n\r\n", "HTTP/1.1 404 "),
            (b"POST /metrics HTTP/1.1\r\n\r\n", "HTTP/1.1 405 "),
            (b"hello\r\n\r\n", "HTTP/1.1 400 "),
            (b"GET /healthz HTTP/2\r\n\r\n", "HTTP/1.1 400 "),
            (&[b'x'; MAX_REQUEST + 2048], "HTTP/1.1 400 "),
        ];
        for (raw, status) in cases {
            let response = request(addr, raw).await;
            assert!(
                response.starts_with(status),
                "{:?}: {response}",
                &raw[..raw.len().min(20)]
            );
        }

        stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("serve returns on shutdown")
            .unwrap();
        assert!(TcpStream::connect(addr).await.is_err(), "listener closed");
    }
}
