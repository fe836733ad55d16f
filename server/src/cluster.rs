//! Cluster mode: this node's part in a cluster of ferry-server nodes sharing Redis (`--redis`).
//!
//! What it adds to a single node (the store itself is the Redis store, chosen at start-up):
//! - **sessions across nodes**: every login is recorded in the session directory, where the login policy
//!   is applied cluster-wide; sessions it replaces on other nodes are told to close over the bus
//!   ([`ClusterNode::on_login`], [`ClusterNode::on_logout`]), and this node's entries are kept alive by
//!   one batched sweep per heartbeat interval ([`run_refresh`]);
//! - **messages across nodes**: after a message is durable, the storing node delivers to its own sessions
//!   and publishes it on each member's user channel; the nodes with sessions of that user deliver it
//!   ([`ClusterNode::publish_deliver`], [`run_bus`]). Typing/presence datagrams travel the same way. A lost
//!   publication is healed by heartbeat heads + Pull;
//! - **node liveness**: a lease renewed every third of its TTL, and direct `/healthz` probes of every
//!   peer several times a second; a peer found dead has its sessions released at once so its devices can
//!   log in elsewhere ([`run_liveness`]). A lease found missing (Redis lost its data) makes this node
//!   register its lease and every live session again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_cluster::bus::{BusEvent, Datagram, Deliver, Kick, Revoke};
use ferry_cluster::{
    Bus, ClusterError, Envelope, HealthConfig, Keys, NodeInfo, NodeRegistry, PeerHealth, Prober,
    Redis, RedisTarget, Refresh, Renewal, SessionDirectory, SessionRef, SharedTickets, TicketKey,
    Verdict,
};
use ferry_protocol::frame::Message;
use prost::Message as _;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use crate::sessions::SessionHandle;
use crate::Shared;

/// Envelopes from other nodes waiting to be handed to local sessions.
const BUS_QUEUE: usize = 16 * 1024;
/// How long a probe of a peer's `/healthz` may take.
const PROBE_TIMEOUT: Duration = Duration::from_millis(250);

/// Cluster settings resolved at start-up.
#[derive(Debug, Clone)]
pub(crate) struct ClusterOptions {
    /// Where Redis is.
    pub(crate) target: RedisTarget,
    /// Prefix of every key and channel.
    pub(crate) key_prefix: String,
    /// Lease TTL of this node; renewed every third of it.
    pub(crate) lease_ttl: Duration,
    /// Interval between probes of every peer.
    pub(crate) probe_interval: Duration,
    /// Expiry of a session entry without heartbeats.
    pub(crate) session_ttl: Duration,
}

/// The key that seals the TLS session tickets nodes share, derived from the token secret file: the
/// one secret every node of a cluster must already hold (tokens minted by one node verify on all), so
/// sharing tickets asks nothing more of an operator. Read as text, trimmed like the token secret.
pub(crate) fn ticket_key(secret_file: &std::path::Path) -> anyhow::Result<TicketKey> {
    use anyhow::Context;
    let text = std::fs::read_to_string(secret_file)
        .with_context(|| format!("reading {}", secret_file.display()))?;
    Ok(TicketKey::derive(text.trim_end().as_bytes()))
}

/// Locks that order the logins of one user on this node (striped: bounded, no map to clean up). Each
/// is held across a Redis round trip, so two users sharing a stripe log in one after the other: with
/// a reconnect storm of a hundred users, 64 stripes put several pairs in a row; 1024 hardly any.
const LOGIN_STRIPES: usize = 1024;

/// This node's connection to the rest of the cluster.
pub(crate) struct ClusterNode {
    directory: SessionDirectory,
    registry: NodeRegistry,
    bus: Bus,
    prober: Prober,
    options: ClusterOptions,
    logins: [tokio::sync::Mutex<()>; LOGIN_STRIPES],
    /// QUIC addresses of the peers that answered their last probe, for `Welcome.endpoints`
    /// (FERRY-HELLO-6). Kept by the liveness loop so a login never waits on Redis for it.
    live_peers: std::sync::Mutex<Vec<String>>,
}

impl ClusterNode {
    /// Joins the cluster as `me` (probing every registered node; a live node with the same id is an
    /// error). Returns the node and the receiver of bus envelopes for [`run_bus`].
    /// `tickets` is the node's TLS session store, shared with the other nodes once the id is claimed.
    pub(crate) async fn join(
        options: ClusterOptions,
        me: NodeInfo,
        policy: ferry_cluster::LoginPolicy,
        (tickets, ticket_key): (&Arc<SharedTickets>, TicketKey),
    ) -> Result<(ClusterNode, mpsc::Receiver<Envelope>), ferry_cluster::ClusterError> {
        let keys = Keys::new(&options.key_prefix);
        let redis = Redis::connect(&options.target).await?;
        let directory = SessionDirectory::new(
            redis.clone(),
            keys.clone(),
            &me.id,
            options.session_ttl,
            policy,
        );
        let prober = Prober::new(PROBE_TIMEOUT);
        let (registry, claimed) = NodeRegistry::claim(
            redis,
            keys.clone(),
            me.clone(),
            options.lease_ttl,
            &prober,
            &directory,
        )
        .await?;
        for (node, sessions) in &claimed.cleaned {
            info!(node, sessions, "cleaned a dead node at start-up");
        }
        ferry_cluster::tickets::replicate(tickets, &options.target, &keys, &me.id, ticket_key)
            .await?;
        let (bus, envelopes) = Bus::connect(&options.target, keys, &me.id, BUS_QUEUE).await?;
        info!(node = %me.id, peers = claimed.peers.len(), "joined the cluster");
        let live_peers = claimed.peers.iter().map(|p| p.quic.clone()).collect();
        Ok((
            ClusterNode {
                directory,
                registry,
                bus,
                prober,
                options,
                logins: std::array::from_fn(|_| tokio::sync::Mutex::new(())),
                live_peers: std::sync::Mutex::new(live_peers),
            },
            envelopes,
        ))
    }

    /// Held while a login of `user` is registered locally and in the directory, so both see this
    /// node's logins of the user in one order.
    pub(crate) async fn login_lock(&self, user: &str) -> tokio::sync::MutexGuard<'_, ()> {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        user.hash(&mut hasher);
        self.logins[hasher.finish() as usize % LOGIN_STRIPES]
            .lock()
            .await
    }

    /// This node's id.
    pub(crate) fn node_id(&self) -> &str {
        &self.registry.me().id
    }

    /// The session id this node records for a local session.
    fn session_key(&self, session: &SessionHandle) -> String {
        format!("{}-{}", self.registry.me().instance, session.id)
    }

    fn session_ref<'a>(&self, session: &'a SessionHandle, key: &'a str) -> SessionRef<'a> {
        SessionRef {
            user: &session.user,
            device: &session.device,
            class: &session.device_class,
            session: key,
            login_ms: session.login_ms,
        }
    }

    /// A session started here: records it cluster-wide, tells the nodes of the sessions it replaces to
    /// close them, and listens for the user's bus messages. Local replacements were already handled by
    /// the local registry. If the device logged in again elsewhere after this node accepted the login
    /// (`SessionHandle::login_ms`; this node was too slow and the device moved on), this session is the
    /// stale one and is closed instead of the newer one.
    ///
    /// The subscription and the directory write are independent (different connections, different
    /// keys) and both must be done before the session is served, so they run together: a login in a
    /// reconnect storm waits for one Redis round trip, not two or three in a row.
    pub(crate) async fn on_login(&self, session: &SessionHandle) {
        let key = self.session_key(session);
        let (subscribed, registered) = tokio::join!(
            self.bus.subscribe(&session.user),
            self.directory.register(self.session_ref(session, &key))
        );
        if let Err(e) = subscribed {
            warn!(user = %session.user, error = %e, "bus subscribe failed; the user relies on heads + Pull");
        }
        let replaced = match registered {
            Ok(replaced) => replaced,
            Err(ClusterError::Superseded) => {
                info!(user = %session.user, device = %session.device, "a later login of this device holds the directory; closing this one");
                session.close_replaced();
                return;
            }
            Err(e) => {
                warn!(user = %session.user, error = %e, "session not recorded in the directory");
                return;
            }
        };
        // Queued, not awaited: after a node died every device moving off it replaces its entry there,
        // and a login must not wait for a kick that nobody may be left to hear. Pub/sub is
        // at-most-once either way; a lost kick is made good by the next directory sweep
        // ([`run_refresh`]), which finds the old session replaced.
        for old in replaced.into_iter().filter(|e| e.node != self.node_id()) {
            info!(user = %session.user, device = %old.device, node = %old.node, "replacing a session on another node");
            let kick = BusEvent::Kick(Kick {
                device: old.device,
                session: old.session,
            });
            self.bus.enqueue(&[&session.user], kick);
        }
    }

    /// Devices of `user` with a live session on any node, from the session directory (offline push).
    pub(crate) async fn online_devices(
        &self,
        user: &str,
    ) -> Result<Vec<String>, ferry_cluster::ClusterError> {
        let sessions = self.directory.sessions(user).await?;
        Ok(sessions.into_iter().map(|entry| entry.device).collect())
    }

    /// A session here ended.
    pub(crate) async fn on_logout(&self, session: &SessionHandle) {
        let key = self.session_key(session);
        if let Err(e) = self
            .directory
            .unregister(&session.user, &session.device, &key)
            .await
        {
            warn!(user = %session.user, error = %e, "session not removed from the directory; it expires");
        }
        if let Err(e) = self.bus.unsubscribe(&session.user).await {
            warn!(user = %session.user, error = %e, "bus unsubscribe failed");
        }
    }

    /// Keeps the directory entries of `sessions` alive, all in one batch (see [`run_refresh`]); writes
    /// back the entries Redis lost. A session another login replaced meanwhile (its kick may have been
    /// lost) is closed with SESSION_REPLACED.
    pub(crate) async fn refresh_sessions(&self, sessions: &[SessionHandle]) {
        let keys: Vec<String> = sessions.iter().map(|s| self.session_key(s)).collect();
        let refs: Vec<SessionRef<'_>> = sessions
            .iter()
            .zip(&keys)
            .map(|(session, key)| self.session_ref(session, key))
            .collect();
        let results = self.directory.refresh_many(&refs).await;
        let mut failed = 0usize;
        for (session, result) in sessions.iter().zip(results) {
            match result {
                Ok(Refresh::Replaced) => {
                    info!(user = %session.user, device = %session.device, "session replaced in the directory");
                    session.close_replaced()
                }
                Ok(Refresh::Refreshed | Refresh::Restored) => {}
                Err(_) => failed += 1,
            }
        }
        if failed > 0 {
            warn!(
                failed,
                sessions = sessions.len(),
                "session refreshes failed; retried at the next sweep"
            );
        }
    }

    /// Queues a durable message for the other nodes holding sessions of `users` (never waits on Redis:
    /// the sender's SendAck must not wait for its fan-out).
    pub(crate) fn publish_deliver(
        &self,
        users: &[&str],
        conversation: &str,
        message: &Message,
        epoch: u64,
    ) {
        let event = BusEvent::Deliver(Deliver {
            conversation: conversation.to_owned(),
            epoch,
            message: Bytes::from(message.encode_to_vec()),
        });
        self.bus.enqueue(users, event);
    }

    /// Queues an encoded datagram frame for the other nodes holding sessions of `users`.
    pub(crate) fn publish_datagram(&self, users: &[&str], frame: Bytes) {
        self.bus
            .enqueue(users, BusEvent::Datagram(Datagram { frame }));
    }

    /// Tells the nodes holding sessions of `user` to close those of `device` (every device when
    /// `None`) whose tokens were revoked (FERRY-HARDEN-6).
    pub(crate) async fn publish_revoke(
        &self,
        user: &str,
        device: Option<&str>,
    ) -> Result<(), ClusterError> {
        let event = BusEvent::Revoke(Revoke {
            device: device.unwrap_or_default().to_owned(),
        });
        self.bus.publish(&[user], event).await
    }

    /// QUIC addresses of the other live nodes (for GoAway when draining).
    pub(crate) async fn other_endpoints(&self) -> Vec<String> {
        match self.registry.registered().await {
            Ok(nodes) => nodes
                .into_iter()
                .filter_map(|(id, lease)| lease.filter(|_| id != self.node_id()))
                .map(|info| info.quic)
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    /// QUIC addresses of the peers alive at their last probe (for `Welcome.endpoints`, FERRY-HELLO-6):
    /// a client configured with this node only can then reach the others after a `kill -9` of it.
    pub(crate) fn live_peer_endpoints(&self) -> Vec<String> {
        self.live_peers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Leaves the cluster (on shutdown): releases this node's sessions and lease.
    pub(crate) async fn leave(&self) {
        if let Err(e) = self.registry.leave(&self.directory).await {
            warn!(error = %e, "leaving the cluster failed; peers will find this node gone");
        }
    }
}

/// Hands envelopes from other nodes to the local sessions of their user until `shutdown` (or until
/// `envelopes` closes).
pub(crate) async fn run_bus(
    shared: Arc<Shared>,
    mut envelopes: mpsc::Receiver<Envelope>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let envelope = tokio::select! {
            envelope = envelopes.recv() => match envelope {
                Some(envelope) => envelope,
                None => return,
            },
            _ = shutdown.changed() => return,
        };
        let Some(event) = envelope.event else {
            continue;
        };
        match event {
            BusEvent::Deliver(d) => match Message::decode(d.message) {
                Ok(message) => crate::conversation::deliver_local(
                    &shared,
                    &envelope.user,
                    &d.conversation.as_str().into(),
                    &Arc::new(message),
                    d.epoch,
                    None,
                ),
                Err(_) => shared.metrics.delivery_dropped(),
            },
            BusEvent::Datagram(d) => {
                crate::datagrams::relay_local(&shared, &envelope.user, &d.frame, None)
            }
            BusEvent::Revoke(r) => {
                let device = Some(r.device.as_str()).filter(|d| !d.is_empty());
                crate::revoke::close_local(&shared, &envelope.user, device);
            }
            BusEvent::Kick(kick) => {
                let Some(cluster) = &shared.cluster else {
                    continue;
                };
                shared.sessions.for_each_of(&envelope.user, |session| {
                    if *session.device == *kick.device && cluster.session_key(session) == kick.session {
                        info!(user = %session.user, device = %session.device, "session replaced by a login on another node");
                        session.close_replaced();
                    }
                });
            }
        }
    }
}

/// Renews this node's lease and watches the peers until `shutdown`; the directory sweep
/// ([`run_refresh`]) runs beside it.
pub(crate) async fn run_liveness(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let Some(cluster) = shared.cluster.clone() else {
        return;
    };
    // A task of its own: a sweep of many sessions must not delay the verdict on a peer.
    tokio::spawn(run_refresh(shared.clone(), shutdown.clone()));
    let mut health = PeerHealth::new(HealthConfig::default());
    let renew_every = cluster.options.lease_ttl / 3;
    let mut next_renewal = Instant::now() + renew_every;
    let mut tick = tokio::time::interval(cluster.options.probe_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        if Instant::now() >= next_renewal {
            next_renewal = Instant::now() + renew_every;
            renew(&shared, &cluster).await;
        }
        watch_peers(&cluster, &mut health).await;
    }
}

/// Keeps the directory entries of this node's sessions alive until `shutdown`: every session in one
/// batched sweep per interval — the heartbeat interval this node announces, and at most a third of the
/// entries' TTL so that two sweeps may fail before an entry expires.
///
/// One sweep per node, not one refresh per Heartbeat: a client of a cluster heartbeats every few
/// hundred ms to detect a dead node fast, and refreshing on each of them cost the survivors of a
/// failover thousands of Redis scripts a second while they logged in the moved clients. A sweep per
/// announced interval keeps what the per-heartbeat refresh promised to clients that heartbeat at that
/// interval: a replaced session whose kick was lost closes within an interval, and entries Redis lost
/// come back within one (the lease renewal restores them sooner, see [`renew`]).
pub(crate) async fn run_refresh(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let Some(cluster) = shared.cluster.clone() else {
        return;
    };
    let announced = Duration::from_millis(u64::from(shared.settings.heartbeat_interval_ms));
    let every = announced.min(cluster.options.session_ttl / 3);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        cluster.refresh_sessions(&shared.sessions.all()).await;
    }
}

async fn renew(shared: &Shared, cluster: &ClusterNode) {
    match cluster.registry.renew().await {
        Ok(Renewal::Renewed) => {}
        Ok(Renewal::Restored) => {
            // Redis lost our lease, so it may have lost the session directory too: register every live
            // session again (refresh restores missing entries).
            let sessions = shared.sessions.all();
            warn!(
                sessions = sessions.len(),
                "lease was gone from Redis; registering again"
            );
            cluster.refresh_sessions(&sessions).await;
        }
        Err(e) => warn!(error = %e, "lease renewal failed"),
    }
}

async fn watch_peers(cluster: &ClusterNode, health: &mut PeerHealth) {
    let Ok(registered) = cluster.registry.registered().await else {
        return; // Redis away: nothing to decide on now
    };
    let ids: Vec<String> = registered.iter().map(|(id, _)| id.clone()).collect();
    health.retain(&ids);
    // Probe every peer at once, so one dead peer's timeout does not delay the verdict on another.
    let mut probes = tokio::task::JoinSet::new();
    for (id, lease) in registered {
        if id == cluster.node_id() {
            continue;
        }
        let prober = cluster.prober.clone();
        probes.spawn(async move {
            let alive = match &lease {
                Some(info) => Some(prober.alive(&info.http).await),
                None => None,
            };
            (id, alive, lease.map(|info| info.quic))
        });
    }
    let mut live = Vec::new();
    while let Some(Ok((id, alive, quic))) = probes.join_next().await {
        if alive == Some(true) {
            live.extend(quic);
        }
        let verdict = match alive {
            None => health.lease_gone(&id),
            Some(alive) => health.probed(&id, alive, Instant::now()),
        };
        if let Verdict::Dead { silent_for } = verdict {
            match cluster.registry.release(&id, &cluster.directory).await {
                Ok(sessions) => {
                    info!(node = %id, sessions, ?silent_for, "peer declared dead; its sessions were released")
                }
                Err(e) => {
                    warn!(node = %id, error = %e, "releasing a dead peer failed; retrying on the next probe")
                }
            }
        }
    }
    // Sorted: the order probes finish in says nothing, and a stable list reads better in logs.
    live.sort();
    *cluster.live_peers.lock().unwrap_or_else(|e| e.into_inner()) = live;
}
