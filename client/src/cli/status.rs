//! `ferry status` / `ferry whoami`: who this client is, where it connects, whether it got there, and
//! what still waits in its outbox.

use std::path::Path;
use std::time::Duration;

use tokio::sync::watch;

use super::args::StatusArgs;
use super::{CliError, EXIT_UNREACHABLE};
use crate::{Client, ClientStats, ConnectionState};

/// What `ferry status` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// The endpoints configured (`--server`).
    pub servers: Vec<String>,
    /// The user: from Welcome, the store, or the token.
    pub user: Option<String>,
    /// The device id.
    pub device: String,
    /// The client store.
    pub store: String,
    /// The connection state in words.
    pub connection: String,
    /// The endpoint of the session, if one was made.
    pub endpoint: Option<String>,
    /// Messages in the outbox (not yet acknowledged by the server).
    pub outbox: usize,
}

impl Status {
    /// The report from the client's statistics after waiting for a connection.
    pub fn new(
        servers: &[String],
        token_user: Option<&str>,
        device: &str,
        store: &Path,
        stats: &ClientStats,
    ) -> Self {
        let connection = match (stats.connected, stats.zero_rtt) {
            (true, true) => "connected (0-RTT)".to_owned(),
            (true, false) => "connected".to_owned(),
            (false, _) => "not connected".to_owned(),
        };
        Status {
            servers: servers.to_vec(),
            user: stats.user_id.clone().or(token_user.map(str::to_owned)),
            device: device.to_owned(),
            store: store.display().to_string(),
            connection,
            endpoint: stats.endpoint.map(|e| e.to_string()),
            outbox: stats.outbox,
        }
    }

    /// The report: aligned `key: value` lines, or one JSON object.
    pub fn render(&self, json: bool) -> String {
        if json {
            return serde_json::json!({
                "servers": self.servers,
                "user": self.user,
                "device": self.device,
                "store": self.store,
                "connection": self.connection,
                "endpoint": self.endpoint,
                "outbox": self.outbox,
            })
            .to_string();
        }
        let connection = match &self.endpoint {
            Some(e) if self.connection.starts_with("connected") => {
                format!("{} to {e}", self.connection)
            }
            _ => self.connection.clone(),
        };
        [
            format!("server:     {}", self.servers.join(", ")),
            format!(
                "user:       {}",
                self.user.as_deref().unwrap_or("(unknown)")
            ),
            format!("device:     {}", self.device),
            format!("store:      {}", self.store),
            format!("connection: {connection}"),
            format!("outbox:     {} message(s) waiting", self.outbox),
        ]
        .join("\n")
    }
}

/// Waits up to `--timeout` for the session, prints the report and fails with exit 4 if there was no
/// connection (after printing: the local part of the report is still true).
pub async fn status(
    client: &Client,
    args: StatusArgs,
    describe: impl FnOnce(&ClientStats) -> Status,
    json: bool,
    fatal: watch::Receiver<Option<ConnectionState>>,
) -> Result<(), CliError> {
    let connected = tokio::select! {
        c = client.connected(Duration::from_secs(args.timeout)) => c,
        e = super::run::wait_fatal(fatal) => return Err(e),
    };
    super::run::print(&describe(&client.stats()).render(json));
    if connected {
        Ok(())
    } else {
        Err(CliError::new(
            EXIT_UNREACHABLE,
            format!("no connection within {} s", args.timeout),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_names_server_user_device_connection_and_outbox() {
        let stats = ClientStats {
            connected: true,
            endpoint: Some("127.0.0.1:7700".parse().unwrap()),
            outbox: 3,
            user_id: Some("alice".into()),
            ..ClientStats::default()
        };
        let servers = ["127.0.0.1:7700".to_owned()];
        let status = Status::new(&servers, None, "phone", Path::new("/s.db"), &stats);
        assert_eq!(
            status.render(false),
            "server:     127.0.0.1:7700\n\
             user:       alice\n\
             device:     phone\n\
             store:      /s.db\n\
             connection: connected to 127.0.0.1:7700\n\
             outbox:     3 message(s) waiting"
        );
        let v: serde_json::Value = serde_json::from_str(&status.render(true)).unwrap();
        assert_eq!(
            (v["user"].as_str(), v["outbox"].as_u64()),
            (Some("alice"), Some(3))
        );
        // Offline, the user comes from the token.
        let offline = Status::new(
            &servers,
            Some("bob"),
            "phone",
            Path::new("/s.db"),
            &ClientStats::default(),
        );
        assert_eq!(offline.user.as_deref(), Some("bob"));
        assert!(offline
            .render(false)
            .contains("connection: not connected\n"));
    }
}
