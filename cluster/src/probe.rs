//! Probing a node directly: `GET /healthz` on its HTTP address. A node that answers at all — 200, or
//! 503 while it drains — is alive; no answer within the timeout means dead (after kill -9 nothing
//! answers, and no QUIC close ever arrives).

use std::time::Duration;

/// Probes nodes over HTTP with a short timeout.
#[derive(Debug, Clone)]
pub struct Prober {
    client: reqwest::Client,
}

impl Prober {
    /// A prober giving each node `timeout` to answer.
    pub fn new(timeout: Duration) -> Prober {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .no_proxy()
            .pool_max_idle_per_host(1)
            .build()
            .expect("an HTTP client without TLS always builds");
        Prober { client }
    }

    /// Whether the node whose HTTP address is `http_addr` (`host:port`) answers its health check.
    pub async fn alive(&self, http_addr: &str) -> bool {
        if http_addr.is_empty() {
            return false;
        }
        let url = format!("http://{http_addr}/healthz");
        match self.client.get(url).send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                status == 200 || status == 503
            }
            Err(_) => false,
        }
    }
}
