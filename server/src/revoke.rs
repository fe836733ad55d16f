//! Token revocation (spec section 17.1, FERRY-HARDEN-5 to -7): cut one device, or every device of a
//! user, off at once.
//!
//! A revocation stores a stamp "tokens of (user, device) issued at or before second T are refused"
//! in the store (so it survives restarts and, on the Redis store, holds on every node), closes the live
//! sessions of that device here with TOKEN_REVOKED and, in a cluster, asks the other nodes over the bus
//! to close theirs. Logins check the stamp (`check`).
//!
//! Operators reach it through `POST /admin/revoke?user=U[&device=D]` on the ops endpoint
//! (`crate::http`), authenticated with `Authorization: Bearer <admin secret>`. The admin secret is a
//! file in the data dir ([`ADMIN_SECRET_FILE`], same format as the token secret) and the ops address of
//! the running server is written next to it ([`ADMIN_ADDR_FILE`]), which is how `ferry-server revoke
//! --data-dir DIR` finds a running server, as `ferry-server token` finds the token secret.
//!
//! A login racing a revocation cannot slip through: a revocation bumps `Revocations::generation`
//! before it closes sessions, and a login that saw another generation by the time its session was
//! registered — in a cluster, every login — checks the stamp again (`recheck_after_register`).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use ferry_protocol::{frames, ErrorCode};
use ferry_store::StoreError;
use futures_util::future::BoxFuture;
use subtle::ConstantTimeEq;
use tracing::{info, warn};

use crate::auth::{self, AuthError, Claims};
use crate::sessions::SessionHandle;
use crate::Shared;

/// File name of the admin secret inside the data dir (64 hex digits, mode 0600).
pub const ADMIN_SECRET_FILE: &str = "admin.secret";
/// File name, inside the data dir, of the running server's ops (HTTP) address, `ip:port`.
pub const ADMIN_ADDR_FILE: &str = "admin.addr";

/// The reason phrase of the close; clients decide on the code alone (FERRY-ERR-2).
const REVOKED_REASON: &str = "the tokens of this device were revoked";

/// Revocation state of one server.
pub(crate) struct Revocations {
    /// Bumped by every revocation that reaches this node, before it closes sessions.
    generation: AtomicU64,
    /// The admin secret.
    admin_key: [u8; 32],
}

impl Revocations {
    /// Loads (or creates) the admin secret in `data_dir`.
    pub(crate) fn open(data_dir: &Path) -> Result<Revocations, AuthError> {
        let admin_key = auth::load_or_create_key(&data_dir.join(ADMIN_SECRET_FILE))?;
        Ok(Revocations {
            generation: AtomicU64::new(0),
            admin_key,
        })
    }

    /// The current generation; see [`recheck_after_register`].
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Whether `Authorization: Bearer <presented>` names the admin secret. The comparison of the
    /// secret's bytes takes the same time wherever they differ.
    pub(crate) fn admits(&self, presented: &str) -> bool {
        match auth::decode_hex(presented.trim()) {
            Some(key) => bool::from(key.ct_eq(&self.admin_key)),
            None => false,
        }
    }
}

/// Writes the ops address where `ferry-server revoke` looks for it (atomically: write, then rename).
/// An unspecified listen address (0.0.0.0, ::) is written as loopback, which reaches it.
pub(crate) fn write_admin_addr(data_dir: &Path, http: SocketAddr) -> anyhow::Result<()> {
    let mut addr = http;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let path = data_dir.join(ADMIN_ADDR_FILE);
    let tmp = data_dir.join(format!("{ADMIN_ADDR_FILE}.tmp"));
    std::fs::write(&tmp, format!("{addr}\n"))
        .and_then(|()| std::fs::rename(&tmp, &path))
        .with_context(|| format!("writing {}", path.display()))
}

fn unix_secs(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Whether a login with `claims` may proceed: refused (UNAUTHENTICATED, as for every token problem,
/// FERRY-SEC-2) when the token was issued at or before the device's revocation stamp; INTERNAL
/// (retryable) when the stamp cannot be read — a revoked device must not get in while the store is away.
pub(crate) async fn check(shared: &Shared, claims: &Claims) -> Result<(), (ErrorCode, String)> {
    match shared
        .store
        .tokens_revoked_at(&claims.user, &claims.device)
        .await
    {
        Ok(stamp) if claims.issued_at <= stamp => {
            info!(user = %claims.user, device = %claims.device, issued_at = claims.issued_at, revoked_at = stamp, "revoked token rejected");
            Err((ErrorCode::UNAUTHENTICATED, "invalid token".to_owned()))
        }
        Ok(_) => Ok(()),
        Err(e) => {
            warn!(user = %claims.user, error = %e, "revocation stamp unavailable; login refused");
            Err((ErrorCode::INTERNAL, "try again later".to_owned()))
        }
    }
}

/// Closes `session` if the stamp now refuses its token. Called once the session is registered (and,
/// in a cluster, subscribed to its user's bus channel), so a revocation either sees the session and
/// closes it, or wrote its stamp before this reads it.
///
/// On a single node, only a revocation that bumped the generation since the login read `generation`
/// can have raced it, so the store is read again only then. In a cluster the store is always read
/// again: a revocation on another node reaches this one over the user's bus channel, to which the
/// node was not subscribed before this login if it had no other session of the user.
pub(crate) async fn recheck_after_register(
    shared: &Shared,
    generation: u64,
    claims: &Claims,
    session: &SessionHandle,
) {
    if shared.cluster.is_none() && shared.revocations.generation() == generation {
        return;
    }
    if let Err((ErrorCode::UNAUTHENTICATED, _)) = check(shared, claims).await {
        close(shared, session);
    }
}

/// Closes a session whose token was revoked: `Error{TOKEN_REVOKED}` on the control stream, then the
/// connection with TOKEN_REVOKED (FERRY-HARDEN-6).
fn close(shared: &Shared, session: &SessionHandle) {
    shared.metrics.error(ErrorCode::TOKEN_REVOKED);
    let error = frames::error(ErrorCode::TOKEN_REVOKED, REVOKED_REASON);
    session.notify_and_close(error, ErrorCode::TOKEN_REVOKED, "token revoked");
}

/// Closes this node's sessions of `user` on `device` (every device when `None`); how many.
pub(crate) fn close_local(shared: &Shared, user: &str, device: Option<&str>) -> usize {
    shared.revocations.generation.fetch_add(1, Ordering::SeqCst);
    let mut matching = Vec::new();
    shared.sessions.for_each_of(user, |session| {
        if device.is_none_or(|d| *session.device == *d) {
            matching.push(session.clone());
        }
    });
    for session in &matching {
        info!(user, device = %session.device, "session closed: tokens revoked");
        close(shared, session);
    }
    matching.len()
}

/// What a revocation did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Revoked {
    /// The user.
    pub user: String,
    /// The device; `None` for every device of the user.
    pub device: Option<String>,
    /// Tokens issued at or before this Unix second are refused.
    pub revoked_at: u64,
    /// Sessions closed on the node that took the request (other nodes close theirs over the bus).
    pub sessions_closed: usize,
}

/// Why a revocation failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RevokeError {
    /// The user or device id is not a valid name.
    #[error("{0}")]
    Invalid(String),
    /// The stamp could not be stored: nothing was revoked.
    #[error("revocation not stored: {0}")]
    Store(#[from] StoreError),
}

/// Revokes the tokens of `device` of `user` (every device when `None`) issued up to now: stores the
/// stamp, closes the sessions here, and in a cluster tells the other nodes to close theirs.
pub(crate) async fn revoke(
    shared: &Shared,
    user: &str,
    device: Option<&str>,
) -> Result<Revoked, RevokeError> {
    use ferry_protocol::ids::is_valid_name;
    if !is_valid_name(user) {
        return Err(RevokeError::Invalid(format!("invalid user id {user:?}")));
    }
    if let Some(device) = device.filter(|d| !is_valid_name(d)) {
        return Err(RevokeError::Invalid(format!(
            "invalid device id {device:?}"
        )));
    }
    let revoked_at = shared
        .store
        .revoke_tokens(user, device, unix_secs(SystemTime::now()))
        .await?;
    let sessions_closed = close_local(shared, user, device);
    let push_dropped = drop_push_registrations(shared, user, device).await;
    if let Some(cluster) = &shared.cluster {
        // A lost publication leaves a session on another node open until it reconnects (its token is
        // refused then); say so in the log rather than fail a revocation that is already stored.
        if let Err(e) = cluster.publish_revoke(user, device).await {
            warn!(user, error = %e, "revocation not published to the other nodes");
        }
    }
    info!(user, device = ?device, revoked_at, sessions_closed, push_dropped, "tokens revoked");
    Ok(Revoked {
        user: user.to_owned(),
        device: device.map(str::to_owned),
        revoked_at,
        sessions_closed,
    })
}

/// Deletes the push registrations of the revoked device(s): a device cut off gets no more pushes, and
/// its endpoint goes with it (a registration is per device, FERRY-PUSH-*). Best effort: the revocation
/// is stored already; a registration left behind is logged, and its device can no longer log in to use
/// what the push announces.
async fn drop_push_registrations(shared: &Shared, user: &str, device: Option<&str>) -> usize {
    let devices = match device {
        Some(device) => vec![device.to_owned()],
        None => match shared.store.push_registrations(user).await {
            Ok(registrations) => registrations.into_iter().map(|(d, _)| d).collect(),
            Err(e) => {
                warn!(user, error = %e, "push registrations of a revoked user not read");
                return 0;
            }
        },
    };
    let mut dropped = 0;
    for device in &devices {
        match shared.store.delete_push(user, device).await {
            Ok(true) => dropped += 1,
            Ok(false) => {}
            Err(e) => warn!(user, device, error = %e, "push registration of a revoked device kept"),
        }
    }
    dropped
}

/// The admin operations the ops endpoint serves (implemented by the running server; the HTTP layer
/// only parses, authenticates and answers).
pub(crate) trait Admin: Send + Sync {
    /// Whether the bearer token is the admin secret.
    fn authorized(&self, bearer: &str) -> bool;
    /// Revokes; `Err` carries the HTTP status and a message.
    fn revoke<'a>(
        &'a self,
        user: &'a str,
        device: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Revoked, (u16, String)>>;
}

impl Admin for std::sync::Arc<Shared> {
    fn authorized(&self, bearer: &str) -> bool {
        self.revocations.admits(bearer)
    }

    fn revoke<'a>(
        &'a self,
        user: &'a str,
        device: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Revoked, (u16, String)>> {
        Box::pin(async move {
            revoke(self, user, device).await.map_err(|e| match e {
                RevokeError::Invalid(m) => (400, m),
                RevokeError::Store(e) => (503, format!("revocation not stored: {e}")),
            })
        })
    }
}

/// How long `ferry-server revoke` waits for the running server.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Asks the server running on `data_dir` to revoke (what `ferry-server revoke` does): reads the admin
/// secret and the ops address from the data dir and POSTs `/admin/revoke`.
pub async fn request(data_dir: &Path, user: &str, device: Option<&str>) -> anyhow::Result<Revoked> {
    let secret_path = data_dir.join(ADMIN_SECRET_FILE);
    let key = auth::load_key(&secret_path).with_context(|| {
        format!(
            "no admin secret in {} (has a server run with this data dir?)",
            data_dir.display()
        )
    })?;
    let addr_path = data_dir.join(ADMIN_ADDR_FILE);
    let addr = std::fs::read_to_string(&addr_path).with_context(|| {
        format!(
            "reading {} (is a server running with this data dir?)",
            addr_path.display()
        )
    })?;
    let addr: SocketAddr = addr
        .trim()
        .parse()
        .with_context(|| format!("{} does not hold ip:port", addr_path.display()))?;
    let mut query = vec![("user", user)];
    query.extend(device.map(|d| ("device", d)));
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(REQUEST_TIMEOUT)
        .build()?;
    let response = client
        .post(format!("http://{addr}/admin/revoke"))
        .query(&query)
        .bearer_auth(auth::hex_of(&key))
        .send()
        .await
        .with_context(|| format!("no server answers at {addr} (is it running?)"))?;
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    anyhow::ensure!(
        status.is_success(),
        "the server refused ({status}): {}",
        body.trim()
    );
    serde_json::from_str(&body).with_context(|| format!("unexpected answer: {body}"))
}
