//! The ops endpoint: `GET /healthz`, `GET /metrics` and the authenticated `POST /admin/revoke` over
//! plain HTTP/1.1.
//!
//! It serves load balancers, Prometheus and `ferry-server revoke`, not browsers, so it reads only the
//! request head (the request line, and the `Authorization` header of admin requests; no body), answers
//! one request per connection with `Connection: close`, and has no framework. Each connection gets a task, bounded in number, in time (5 s to send the
//! request) and in size (8 KiB of request head).

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

use crate::metrics::Metrics;
use crate::revoke::Admin;

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

/// Serves `/healthz`, `/metrics` and (with `admin`) `/admin/revoke` on `listener` until `shutdown`
/// becomes true (or its sender is dropped).
pub(crate) async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    health: HealthCheck,
    admin: Option<Arc<dyn Admin>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                // Accept errors (e.g. out of file descriptors) are transient; keep serving.
                let Ok((stream, _)) = accepted else { continue };
                let Ok(slot) = slots.clone().try_acquire_owned() else { continue };
                let (metrics, health, admin) = (metrics.clone(), health.clone(), admin.clone());
                tokio::spawn(async move {
                    // A failed write means the client went away; there is no one left to tell.
                    let _ = handle(stream, &metrics, &health, admin.as_deref()).await;
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
    admin: Option<&dyn Admin>,
) -> std::io::Result<()> {
    let response = match tokio::time::timeout(READ_TIMEOUT, read_head(&mut stream)).await {
        Err(_) => Response::text(408, "Request Timeout", "timeout\n"),
        Ok(Err(e)) => return Err(e),
        Ok(Ok(None)) => Response::text(400, "Bad Request", "request too large or incomplete\n"),
        Ok(Ok(Some(head))) => match admin_request(&head) {
            Some(request) => serve_admin(request, admin).await,
            None => route(&head, metrics, health),
        },
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

/// The path of the revocation endpoint.
const REVOKE_PATH: &str = "/admin/revoke";

/// A request for [`REVOKE_PATH`], as far as the head tells.
struct AdminRequest {
    method: String,
    query: String,
    bearer: Option<String>,
}

/// `Some` when the head asks for an admin path (whatever the method; [`serve_admin`] answers 405).
fn admin_request(head: &[u8]) -> Option<AdminRequest> {
    let text = std::str::from_utf8(head).ok()?;
    let mut lines = text.split("\r\n");
    let (method, target) = parse_request_line(lines.next()?)?;
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if path != REVOKE_PATH {
        return None;
    }
    let bearer = lines
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("authorization"))
        .and_then(|(_, value)| {
            let value = value.trim();
            let (scheme, token) = value.split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| token.trim().to_owned())
        });
    Some(AdminRequest {
        method: method.to_owned(),
        query: query.to_owned(),
        bearer,
    })
}

/// `POST /admin/revoke?user=U[&device=D]` with `Authorization: Bearer <admin secret>`: 200 and the
/// outcome as JSON; 401 without the right secret, 400 for bad parameters, 404 when this server has no
/// admin API, 503 when the revocation could not be stored.
async fn serve_admin(request: AdminRequest, admin: Option<&dyn Admin>) -> Response {
    let Some(admin) = admin else {
        return Response::text(404, "Not Found", "not found\n");
    };
    if request.method != "POST" {
        return Response::text(405, "Method Not Allowed", "use POST\n");
    }
    // Authenticate before looking at the parameters, so an unauthenticated caller learns nothing.
    if !request.bearer.is_some_and(|b| admin.authorized(&b)) {
        return Response::text(401, "Unauthorized", "missing or wrong admin secret\n");
    }
    let (mut user, mut device) = (None, None);
    for (name, value) in url::form_urlencoded::parse(request.query.as_bytes()) {
        match &*name {
            "user" if user.is_none() => user = Some(value.into_owned()),
            "device" if device.is_none() => device = Some(value.into_owned()),
            other => {
                let body = format!("unexpected or repeated parameter {other:?}\n");
                return Response::text(400, "Bad Request", &body);
            }
        }
    }
    let Some(user) = user else {
        return Response::text(400, "Bad Request", "the user parameter is required\n");
    };
    match admin.revoke(&user, device.as_deref()).await {
        Ok(revoked) => Response {
            status: 200,
            reason: "OK",
            content_type: "application/json",
            body: serde_json::to_string(&revoked).unwrap_or_default() + "\n",
        },
        Err((status, message)) => {
            let reason = if status == 400 {
                "Bad Request"
            } else {
                "Service Unavailable"
            };
            Response::text(status, reason, &format!("{message}\n"))
        }
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
        let server = tokio::spawn(serve(listener, metrics, health, None, stopped));

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

        let cases: [(&[u8], &str); 6] = [
            // Without an admin API the admin path does not exist.
            (
                b"POST /admin/revoke?user=a HTTP/1.1\r\n\r\n",
                "HTTP/1.1 404 ",
            ),
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
