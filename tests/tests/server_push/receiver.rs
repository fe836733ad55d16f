//! The local HTTP receiver of the push tests: a real hyper server on loopback that records every POST
//! and answers what each test scripts for its path. Shared by `server_push.rs` and `cluster_push.rs`.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use serde_json::Value;

/// One POST the receiver got.
#[derive(Debug, Clone)]
pub struct Post {
    /// When it arrived.
    #[allow(dead_code)] // not every test file times the POSTs
    pub at: Instant,
    /// Its path.
    pub path: String,
    /// Its JSON body (null when it was not JSON).
    pub body: Value,
}

/// The answers (status, body) still to give on one path, in order.
type Script = VecDeque<(u16, &'static str)>;

/// A local HTTP server: records POSTs; answers each path from its script (201 once it runs out).
#[derive(Clone)]
pub struct Receiver {
    /// Where it listens.
    pub addr: SocketAddr,
    posts: Arc<Mutex<Vec<Post>>>,
    scripts: Arc<Mutex<HashMap<String, Script>>>,
}

impl Receiver {
    /// Starts it on a free loopback port.
    pub async fn start() -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let receiver = Receiver {
            addr: listener.local_addr().unwrap(),
            posts: Arc::default(),
            scripts: Arc::default(),
        };
        let shared = receiver.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let receiver = shared.clone();
                let service = service_fn(move |req| receiver.clone().answer(req));
                tokio::spawn(async move {
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await;
                });
            }
        });
        receiver
    }

    async fn answer(
        self,
        req: Request<hyper::body::Incoming>,
    ) -> Result<Response<Full<Bytes>>, Infallible> {
        let path = req.uri().path().to_owned();
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
        self.posts.lock().unwrap().push(Post {
            at: Instant::now(),
            path: path.clone(),
            body,
        });
        let (status, answer) = self
            .scripts
            .lock()
            .unwrap()
            .get_mut(&path)
            .and_then(VecDeque::pop_front)
            .unwrap_or((201, ""));
        let mut response = Response::new(Full::new(Bytes::from_static(answer.as_bytes())));
        *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
        Ok(response)
    }

    /// Scripts the answers (status, body) of the next POSTs to `path`.
    #[allow(dead_code)] // not every test file scripts answers
    pub fn script(&self, path: &str, answers: &[(u16, &'static str)]) {
        let answers = answers.iter().copied().collect();
        self.scripts
            .lock()
            .unwrap()
            .insert(path.to_owned(), answers);
    }

    /// The URL of `path` on this receiver.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The POSTs to `path` so far.
    pub fn posts_to(&self, path: &str) -> Vec<Post> {
        let posts = self.posts.lock().unwrap();
        posts.iter().filter(|p| p.path == path).cloned().collect()
    }
}
