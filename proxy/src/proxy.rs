//! The running proxy: sockets, flow table, timer queue, and the [`Proxy`] handle.
//!
//! Tasks, all stopped by [`Proxy::shutdown`] or by dropping the handle:
//! - the *listener* reads client datagrams from the listen socket;
//! - one *flow reader* per flow reads the server's replies from that flow's upstream socket;
//! - the *scheduler* sends delayed datagrams when their time comes (a `BinaryHeap` timer queue);
//! - the *sweeper* closes idle flows.
//!
//! Shared state lives behind one `std::sync::Mutex` that is never held across an `.await`.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::net::UdpSocket;
use tokio::runtime::Handle;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use crate::config::{Direction, Faults, InvalidFaults, ProxyConfig};
use crate::decide::{decide, Decision};
use crate::stats::{Counters, Stats};

/// Largest UDP payload; reading into a smaller buffer would truncate datagrams silently.
const MAX_DATAGRAM: usize = 65_535;

/// Mixed into the seed for the server → client RNG so the two directions draw independent
/// streams: a direction's decisions then do not depend on how its traffic interleaves with the
/// other direction's.
const TO_CLIENT_SEED_MIX: u64 = 0x9E37_79B9_7F4A_7C15;

/// Why a proxy could not start or rebind.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The configured faults are invalid.
    #[error("invalid faults: {0}")]
    InvalidFaults(#[from] InvalidFaults),
    /// A socket could not be bound or configured.
    #[error("socket error: {0}")]
    Io(#[from] io::Error),
}

/// Handle to a running proxy. Dropping it (or [`Proxy::shutdown`]) stops every task and closes
/// every socket.
pub struct Proxy {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
}

impl fmt::Debug for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Proxy")
            .field("listen", &self.local_addr)
            .field("upstream", &self.shared.upstream)
            .field("seed", &self.shared.seed)
            .field("faults", &self.shared.lock().faults)
            .finish()
    }
}

impl Proxy {
    /// Binds the listen socket and starts forwarding to `config.upstream`.
    ///
    /// Must be called within a tokio runtime; the proxy's tasks run on it.
    pub async fn start(config: ProxyConfig) -> Result<Proxy, ProxyError> {
        config.faults.validate()?;
        let client_socket = Arc::new(UdpSocket::bind(config.listen).await?);
        let local_addr = client_socket.local_addr()?;
        tracing::info!(
            listen = %local_addr,
            upstream = %config.upstream,
            seed = config.seed,
            faults = ?config.faults,
            "ferry-proxy started"
        );
        let shared = Arc::new(Shared {
            client_socket,
            upstream: config.upstream,
            seed: config.seed,
            max_flows: config.max_flows,
            max_queued: config.max_queued,
            idle_timeout: config.idle_timeout,
            state: Mutex::new(State {
                faults: config.faults,
                blackhole: Blackhole::Off,
                rng_to_server: StdRng::seed_from_u64(config.seed),
                rng_to_client: StdRng::seed_from_u64(config.seed ^ TO_CLIENT_SEED_MIX),
                queue: BinaryHeap::new(),
                next_id: 0,
                flows: HashMap::new(),
            }),
            queue_changed: Notify::new(),
            counters: Counters::default(),
            runtime: Handle::current(),
        });
        let tasks = vec![
            tokio::spawn(run_listener(shared.clone())),
            tokio::spawn(run_scheduler(shared.clone())),
            tokio::spawn(run_sweeper(shared.clone())),
        ];
        Ok(Proxy {
            shared,
            local_addr,
            tasks,
        })
    }

    /// The address clients should send to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The server address flows are forwarded to.
    pub fn upstream(&self) -> SocketAddr {
        self.shared.upstream
    }

    /// The seed of the fault decisions, to replay a run.
    pub fn seed(&self) -> u64 {
        self.shared.seed
    }

    /// The faults in force now.
    pub fn faults(&self) -> Faults {
        self.shared.lock().faults.clone()
    }

    /// Replaces the faults for datagrams arriving from now on (delayed ones keep their time).
    pub fn set_faults(&self, faults: Faults) -> Result<(), InvalidFaults> {
        faults.validate()?;
        tracing::info!(?faults, "faults changed");
        self.shared.lock().faults = faults;
        Ok(())
    }

    /// Drops every datagram, both directions, for `duration` from now — including delayed ones
    /// whose time comes during the window, as on a link that went down.
    pub fn blackhole(&self, duration: Duration) {
        tracing::info!(?duration, "blackhole");
        self.shared.lock().blackhole = Blackhole::Until(Instant::now() + duration);
    }

    /// Drops every datagram, both directions, until [`Proxy::clear_blackhole`].
    pub fn blackhole_until_cleared(&self) {
        tracing::info!("blackhole until cleared");
        self.shared.lock().blackhole = Blackhole::UntilCleared;
    }

    /// Ends a blackhole now.
    pub fn clear_blackhole(&self) {
        tracing::info!("blackhole cleared");
        self.shared.lock().blackhole = Blackhole::Off;
    }

    /// Gives every flow a new upstream socket (a new source port), as after a NAT rebinding or a
    /// network switch: the server sees each client come from a new address. The old sockets are
    /// closed, so replies the server still sends to them are lost.
    ///
    /// On error, flows before the failing one have been rebound and the rest keep their socket.
    pub fn rebind(&self) -> Result<(), ProxyError> {
        let mut state = self.shared.lock();
        for (client, flow) in state.flows.iter_mut() {
            // Replacing the flow drops the old one, which stops its reader and closes its socket.
            *flow = open_flow(&self.shared, *client)?;
            self.shared.counters.rebinds.inc();
            tracing::info!(%client, upstream_local = ?flow.socket.local_addr().ok(), "rebound flow");
        }
        Ok(())
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        let flows = self.shared.lock().flows.len();
        self.shared.counters.snapshot(flows)
    }

    /// Stops every task and waits until they are gone, so every socket is closed on return.
    pub async fn shutdown(mut self) {
        let readers = self.stop();
        let tasks = std::mem::take(&mut self.tasks);
        for task in tasks.into_iter().chain(readers) {
            // A stopped task reports `Cancelled`; there is nothing else it could report.
            let _ = task.await;
        }
        tracing::info!(stats = ?self.stats(), "ferry-proxy stopped");
    }

    /// Aborts every task; returns the flow readers' handles so `shutdown` can wait for them.
    fn stop(&mut self) -> Vec<JoinHandle<()>> {
        for task in &self.tasks {
            task.abort();
        }
        let flows: Vec<Flow> = self.shared.lock().flows.drain().map(|(_, f)| f).collect();
        flows.into_iter().map(Flow::into_reader).collect()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop();
    }
}

/// State shared by the handle and the tasks.
struct Shared {
    client_socket: Arc<UdpSocket>,
    upstream: SocketAddr,
    seed: u64,
    max_flows: usize,
    max_queued: usize,
    idle_timeout: Duration,
    state: Mutex<State>,
    /// Wakes the scheduler when a datagram is queued, in case it is due before the current wait.
    queue_changed: Notify,
    counters: Counters,
    /// The runtime the proxy was started on, so that `rebind` (a plain fn) can open sockets.
    runtime: Handle,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the state inconsistent in a way that
        // matters to a test proxy, so carry on rather than poisoning every later call.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

struct State {
    faults: Faults,
    blackhole: Blackhole,
    rng_to_server: StdRng,
    rng_to_client: StdRng,
    /// Delayed datagrams, earliest first.
    queue: BinaryHeap<Reverse<Queued>>,
    /// Tie-breaker so datagrams due at the same instant leave in arrival order.
    next_id: u64,
    flows: HashMap<SocketAddr, Flow>,
}

impl State {
    fn blackholed(&mut self, now: Instant) -> bool {
        match self.blackhole {
            Blackhole::Off => false,
            Blackhole::UntilCleared => true,
            Blackhole::Until(end) if now < end => true,
            Blackhole::Until(_) => {
                self.blackhole = Blackhole::Off;
                false
            }
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Blackhole {
    Off,
    Until(Instant),
    UntilCleared,
}

/// One client address and the upstream socket that stands for it.
struct Flow {
    socket: Arc<UdpSocket>,
    reader: Option<JoinHandle<()>>,
    last_active: Instant,
}

impl Flow {
    fn into_reader(mut self) -> JoinHandle<()> {
        let reader = self
            .reader
            .take()
            .expect("a flow's reader is only taken once");
        reader.abort();
        reader
    }
}

impl Drop for Flow {
    fn drop(&mut self) {
        if let Some(reader) = &self.reader {
            reader.abort();
        }
    }
}

/// A delayed datagram. Ordered by `(at, id)` only.
struct Queued {
    at: Instant,
    id: u64,
    direction: Direction,
    client: SocketAddr,
    data: Vec<u8>,
}

impl PartialEq for Queued {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.id) == (other.at, other.id)
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Queued {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.id).cmp(&(other.at, other.id))
    }
}

/// Opens a new upstream socket for `client` and starts its reader.
fn open_flow(shared: &Arc<Shared>, client: SocketAddr) -> io::Result<Flow> {
    // Bind on loopback when the server is there, so the proxy never listens beyond it.
    let ip = match shared.upstream.ip() {
        ip if ip.is_loopback() => ip,
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    let std_socket = std::net::UdpSocket::bind((ip, 0))?;
    std_socket.set_nonblocking(true)?;
    let socket = {
        let _runtime = shared.runtime.enter();
        Arc::new(UdpSocket::from_std(std_socket)?)
    };
    let reader = shared
        .runtime
        .spawn(run_flow_reader(shared.clone(), client, socket.clone()));
    Ok(Flow {
        socket,
        reader: Some(reader),
        last_active: Instant::now(),
    })
}

/// Reads client datagrams and hands them to [`on_datagram`].
async fn run_listener(shared: Arc<Shared>) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        match shared.client_socket.recv_from(&mut buf).await {
            Ok((len, client)) => {
                on_datagram(&shared, Direction::ToServer, client, &buf[..len]).await
            }
            // Linux reports ICMP errors for earlier sends here; they concern one peer, not us.
            Err(e) => tracing::debug!(error = %e, "listen socket receive error"),
        }
    }
}

/// Reads the server's replies for one flow and hands them to [`on_datagram`].
async fn run_flow_reader(shared: Arc<Shared>, client: SocketAddr, socket: Arc<UdpSocket>) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        match socket.recv_from(&mut buf).await {
            // Like a NAT, only the server may answer through a flow.
            Ok((len, from)) if from == shared.upstream => {
                on_datagram(&shared, Direction::ToClient, client, &buf[..len]).await
            }
            Ok((_, from)) => tracing::debug!(%from, "ignored datagram from a stranger"),
            Err(e) => tracing::debug!(error = %e, "upstream socket receive error"),
        }
    }
}

/// Applies the faults to one datagram: drops it, sends it now, or queues it for later.
async fn on_datagram(shared: &Arc<Shared>, direction: Direction, client: SocketAddr, data: &[u8]) {
    let counters = shared.counters.direction(direction);
    counters.received.inc();
    let now = Instant::now();
    let decision = {
        let mut state = shared.lock();
        if !touch_flow(shared, &mut state, direction, client, now) {
            counters.no_flow.inc();
            return;
        }
        if state.blackholed(now) {
            counters.blackholed.inc();
            return;
        }
        let state = &mut *state;
        match direction {
            Direction::ToServer => decide(&state.faults.to_server, &mut state.rng_to_server),
            Direction::ToClient => decide(&state.faults.to_client, &mut state.rng_to_client),
        }
    };
    let Decision::Deliver {
        delay,
        duplicate_delay,
        reordered,
    } = decision
    else {
        counters.lost.inc();
        return;
    };
    if reordered {
        counters.reordered.inc();
    }
    if duplicate_delay.is_some() {
        counters.duplicated.inc();
    }
    for delay in std::iter::once(delay).chain(duplicate_delay) {
        if delay.is_zero() {
            send(shared, direction, client, data).await;
        } else {
            enqueue(shared, now + delay, direction, client, data);
        }
    }
}

/// Marks the flow for `client` as active, opening it for a new client if there is room.
/// Returns false if there is no flow to use.
fn touch_flow(
    shared: &Arc<Shared>,
    state: &mut State,
    direction: Direction,
    client: SocketAddr,
    now: Instant,
) -> bool {
    if let Some(flow) = state.flows.get_mut(&client) {
        flow.last_active = now;
        return true;
    }
    // Replies for a flow that has expired (or been shut down) have nowhere to go.
    if direction == Direction::ToClient || state.flows.len() >= shared.max_flows {
        return false;
    }
    match open_flow(shared, client) {
        Ok(flow) => {
            tracing::debug!(%client, upstream_local = ?flow.socket.local_addr().ok(), "new flow");
            state.flows.insert(client, flow);
            shared.counters.flows_created.inc();
            true
        }
        Err(e) => {
            tracing::warn!(%client, error = %e, "cannot open an upstream socket");
            false
        }
    }
}

fn enqueue(shared: &Shared, at: Instant, direction: Direction, client: SocketAddr, data: &[u8]) {
    let mut state = shared.lock();
    if state.queue.len() >= shared.max_queued {
        shared.counters.direction(direction).overflowed.inc();
        return;
    }
    let id = state.next_id;
    state.next_id += 1;
    state.queue.push(Reverse(Queued {
        at,
        id,
        direction,
        client,
        data: data.to_vec(),
    }));
    drop(state);
    shared.queue_changed.notify_one();
}

/// Sends one datagram on its way and counts the outcome.
async fn send(shared: &Shared, direction: Direction, client: SocketAddr, data: &[u8]) {
    let counters = shared.counters.direction(direction);
    let result = match direction {
        Direction::ToClient => shared.client_socket.send_to(data, client).await,
        Direction::ToServer => {
            // Looked up at send time so a delayed datagram uses the flow's socket of that moment
            // (it may have been rebound meanwhile).
            let socket = shared.lock().flows.get(&client).map(|f| f.socket.clone());
            let Some(socket) = socket else {
                counters.no_flow.inc();
                return;
            };
            socket.send_to(data, shared.upstream).await
        }
    };
    match result {
        Ok(_) => counters.forwarded.inc(),
        Err(e) => {
            counters.send_errors.inc();
            tracing::debug!(?direction, %client, error = %e, "send failed");
        }
    }
}

/// Sends queued datagrams when they are due.
async fn run_scheduler(shared: Arc<Shared>) {
    loop {
        let now = Instant::now();
        let (due, next, blackholed) = {
            let mut state = shared.lock();
            let mut due = Vec::new();
            // Bounded by the queue length, itself bounded by `max_queued`.
            while state.queue.peek().is_some_and(|q| q.0.at <= now) {
                due.extend(state.queue.pop().map(|q| q.0));
            }
            let next = state.queue.peek().map(|q| q.0.at);
            (due, next, state.blackholed(now))
        };
        for queued in due {
            if blackholed {
                shared.counters.direction(queued.direction).blackholed.inc();
            } else {
                send(&shared, queued.direction, queued.client, &queued.data).await;
            }
        }
        match next {
            Some(at) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(at) => {}
                    _ = shared.queue_changed.notified() => {}
                }
            }
            None => shared.queue_changed.notified().await,
        }
    }
}

/// Closes flows idle for longer than the idle timeout.
async fn run_sweeper(shared: Arc<Shared>) {
    // Checking four times per timeout keeps a flow at most 25% past its timeout.
    let period = (shared.idle_timeout / 4).max(Duration::from_millis(10));
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let now = Instant::now();
        let mut state = shared.lock();
        let before = state.flows.len();
        state
            .flows
            .retain(|_, flow| now.duration_since(flow.last_active) < shared.idle_timeout);
        let expired = before - state.flows.len();
        shared.counters.flows_expired.add(expired as u64);
    }
}
