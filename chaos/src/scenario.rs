//! The scenario: users `u0..`, devices `d0..` per user, a direct conversation for every pair of users
//! and three groups: everyone; everyone but the last user (so that a non-member exists); and a
//! shrinking one that starts with everyone and loses its last user in the middle of the run. The
//! groups are created (and shrunk) through the real client library by an admin device of `u0` that
//! talks to the server directly.
//!
//! The scenario's membership is written into the checker's [`Observations`] here, as ground truth.

use std::path::Path;
use std::time::Duration;

use ferry_client::{Client, ClientBuilder};
use ferry_protocol::ids::direct_conversation_id;

use crate::fleet::DeviceSpec;
use crate::observe::{Observations, Span};
use crate::target::Target;

/// The device that creates the groups; not part of the checked scenario.
const SETUP_DEVICE: &str = "setup";
/// Longest wait for the setup device's group operations.
const SETUP_TIMEOUT: Duration = Duration::from_secs(60);

/// A member to remove from a group while the run goes on.
#[derive(Debug, Clone)]
pub struct Removal {
    /// The group.
    pub conversation: String,
    /// The user to remove.
    pub user: String,
}

/// The scenario's devices and the observations with its membership filled in.
pub struct Scenario {
    /// The admin client (`u0`'s setup device) that created the groups; it performs the removal.
    pub admin: Client,
    /// The removal to perform mid-run (the user's span is updated once its seq is known).
    pub removal: Removal,
    /// Every device with its conversations and token.
    pub devices: Vec<DeviceSpec>,
    /// Membership and device list, ready for recording.
    pub obs: Observations,
    /// Direct conversations.
    pub directs: usize,
    /// Group conversations.
    pub groups: usize,
}

/// User id of user `i`.
fn user(i: usize) -> String {
    format!("u{i}")
}

/// Builds the scenario on `target`: mints tokens, creates the groups, assigns conversations.
pub async fn build(
    target: &dyn Target,
    users: usize,
    devices_per_user: usize,
    stores: &Path,
) -> anyhow::Result<Scenario> {
    anyhow::ensure!(
        users >= 3,
        "the scenario needs at least 3 users (a non-member), got {users}"
    );
    anyhow::ensure!(devices_per_user >= 1, "every user needs a device");
    let mut obs = Observations::default();
    let mut user_convs: Vec<Vec<String>> = vec![Vec::new(); users];
    let mut directs = 0;
    for a in 0..users {
        for b in a + 1..users {
            let conv = direct_conversation_id(&user(a), &user(b))
                .ok_or_else(|| anyhow::anyhow!("no direct conversation {a}/{b}"))?;
            obs.membership.add(&conv, &user(a), Span::ALWAYS);
            obs.membership.add(&conv, &user(b), Span::ALWAYS);
            user_convs[a].push(conv.clone());
            user_convs[b].push(conv);
            directs += 1;
        }
    }

    let groups: [(&str, Vec<usize>); 3] = [
        ("everyone", (0..users).collect()),
        ("all-but-last", (0..users - 1).collect()),
        ("shrinking", (0..users).collect()),
    ];
    let mut created = Vec::new();
    let token = target.token(&user(0), SETUP_DEVICE)?;
    let setup = ClientBuilder::new()
        .endpoints(target.endpoints().iter().map(ToString::to_string))
        .ca_file(target.ca())
        .token(token)
        .device_id(SETUP_DEVICE)
        .store_path(stores.join("u0-setup.sqlite3"));
    let (setup, _events) = crate::device::tuned_for_faults(setup).build().await?;
    for (name, members) in &groups {
        let others: Vec<String> = members.iter().skip(1).map(|&i| user(i)).collect();
        let conv = tokio::time::timeout(SETUP_TIMEOUT, setup.create_group(name, &others))
            .await
            .map_err(|_| anyhow::anyhow!("creating group {name} timed out"))??;
        for &i in members {
            obs.membership.add(&conv, &user(i), Span::ALWAYS);
            user_convs[i].push(conv.clone());
        }
        created.push(conv);
    }
    let removal = Removal {
        conversation: created.pop().expect("three groups"),
        user: user(users - 1),
    };

    let mut devices = Vec::new();
    for (u, convs) in user_convs.into_iter().enumerate() {
        for d in 0..devices_per_user {
            let (user, device) = (user(u), format!("d{d}"));
            let key = obs.add_device(&user, &device);
            devices.push(DeviceSpec {
                token: target.token(&user, &device)?,
                store: stores.join(format!("{user}-{device}.sqlite3")),
                user,
                device,
                key,
                conversations: convs.clone(),
            });
        }
    }
    Ok(Scenario {
        admin: setup,
        removal,
        devices,
        obs,
        directs,
        groups: groups.len(),
    })
}
