//! Counters: kept as atomics while running, read as a plain [`Stats`] snapshot.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::config::Direction;

/// What happened to the datagrams travelling in one direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DirectionStats {
    /// Datagrams that reached the proxy.
    pub received: u64,
    /// Datagrams sent on (duplicates count twice).
    pub forwarded: u64,
    /// Dropped by the `loss` fault.
    pub lost: u64,
    /// Dropped because a blackhole was active (on arrival or when their delay ended).
    pub blackholed: u64,
    /// Dropped because the timer queue was full.
    pub overflowed: u64,
    /// Dropped because of the flow table: full (to server) or the flow is gone.
    pub no_flow: u64,
    /// Dropped because the socket failed to send.
    pub send_errors: u64,
    /// Datagrams the `duplicate` fault sent twice.
    pub duplicated: u64,
    /// Datagrams the `reorder` fault held back.
    pub reordered: u64,
}

impl DirectionStats {
    /// Every datagram dropped, whatever the reason.
    pub fn dropped(&self) -> u64 {
        self.lost + self.blackholed + self.overflowed + self.no_flow + self.send_errors
    }
}

/// A snapshot of a proxy's counters, from [`Proxy::stats`](crate::Proxy::stats).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Client → server.
    pub to_server: DirectionStats,
    /// Server → client.
    pub to_client: DirectionStats,
    /// Flows open now.
    pub flows_active: u64,
    /// Flows opened since start.
    pub flows_created: u64,
    /// Flows closed after being idle.
    pub flows_expired: u64,
    /// Upstream sockets replaced by [`Proxy::rebind`](crate::Proxy::rebind).
    pub rebinds: u64,
}

#[derive(Default)]
pub(crate) struct DirectionCounters {
    pub received: Counter,
    pub forwarded: Counter,
    pub lost: Counter,
    pub blackholed: Counter,
    pub overflowed: Counter,
    pub no_flow: Counter,
    pub send_errors: Counter,
    pub duplicated: Counter,
    pub reordered: Counter,
}

impl DirectionCounters {
    fn snapshot(&self) -> DirectionStats {
        DirectionStats {
            received: self.received.get(),
            forwarded: self.forwarded.get(),
            lost: self.lost.get(),
            blackholed: self.blackholed.get(),
            overflowed: self.overflowed.get(),
            no_flow: self.no_flow.get(),
            send_errors: self.send_errors.get(),
            duplicated: self.duplicated.get(),
            reordered: self.reordered.get(),
        }
    }
}

#[derive(Default)]
pub(crate) struct Counters {
    pub to_server: DirectionCounters,
    pub to_client: DirectionCounters,
    pub flows_created: Counter,
    pub flows_expired: Counter,
    pub rebinds: Counter,
}

impl Counters {
    pub fn direction(&self, direction: Direction) -> &DirectionCounters {
        match direction {
            Direction::ToServer => &self.to_server,
            Direction::ToClient => &self.to_client,
        }
    }

    pub fn snapshot(&self, flows_active: usize) -> Stats {
        Stats {
            to_server: self.to_server.snapshot(),
            to_client: self.to_client.snapshot(),
            flows_active: flows_active as u64,
            flows_created: self.flows_created.get(),
            flows_expired: self.flows_expired.get(),
            rebinds: self.rebinds.get(),
        }
    }
}

/// A monotonically increasing count; relaxed ordering is enough as counters are only reported.
#[derive(Default)]
pub(crate) struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.add(1);
    }

    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}
