//! `ferry push register | unregister | list`: one push request on a connected session.

use std::time::Duration;

use tokio::sync::watch;

use super::args::PushCommand;
use super::run::{print, wait_fatal};
use super::{CliError, EXIT_UNREACHABLE};
use crate::event::ConnectionState;
use crate::push::{PushPolicy, PushRegistration};
use crate::Client;

/// Runs one push subcommand. Push requests need a Welcomed session, so it waits for one first.
pub(super) async fn run(
    client: &Client,
    cmd: PushCommand,
    fatal: watch::Receiver<Option<ConnectionState>>,
) -> Result<(), CliError> {
    let timeout = match &cmd {
        PushCommand::Register { timeout, .. }
        | PushCommand::Unregister { timeout }
        | PushCommand::List { timeout } => Duration::from_secs(*timeout),
    };
    let connected = tokio::select! {
        c = client.connected(timeout) => c,
        e = wait_fatal(fatal.clone()) => return Err(e),
    };
    if !connected {
        return Err(CliError::new(
            EXIT_UNREACHABLE,
            "timed out waiting for the server",
        ));
    }
    let work = async {
        match cmd {
            PushCommand::Register {
                endpoint,
                policy,
                app_token,
                ..
            } => print(&line(
                &client.register_push(&endpoint, &app_token, policy).await?,
            )),
            PushCommand::Unregister { .. } => print(if client.unregister_push().await? {
                "unregistered"
            } else {
                "no registration"
            }),
            PushCommand::List { .. } => {
                for registration in client.list_push().await? {
                    print(&line(&registration));
                }
            }
        }
        Ok::<(), CliError>(())
    };
    tokio::select! {
        r = work => r,
        e = wait_fatal(fatal) => Err(e),
    }
}

/// `device=<id> policy=<none|preview|body> endpoint=<url> app_token=<yes|no>`.
fn line(r: &PushRegistration) -> String {
    let policy = match r.policy {
        Some(PushPolicy::None) => "none",
        Some(PushPolicy::Preview) => "preview",
        Some(PushPolicy::Body) => "body",
        None => "unknown",
    };
    let endpoint = if r.endpoint.is_empty() {
        "-"
    } else {
        &r.endpoint
    };
    let token = if r.has_app_token { "yes" } else { "no" };
    format!(
        "device={} policy={policy} endpoint={endpoint} app_token={token}",
        r.device_id
    )
}
