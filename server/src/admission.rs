//! What the accept loop does with each QUIC `Incoming` before spending a TLS handshake on it
//! (FERRY-HARDEN-1, -2): a Retry when too many handshakes are in flight and the address is not
//! validated yet, then the per-source limits of [`crate::limits`].
//!
//! Retry comes first on purpose: a per-source refusal of an unvalidated address could be triggered by
//! anyone spoofing a victim's address, so under load only validated addresses reach the limiter.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tracing::debug;

use crate::config::HardeningSettings;
use crate::limits::{SourceLimiter, SourceLimits};
use crate::metrics::Metrics;

/// Admission state shared by the accept loop and the connection tasks.
pub(crate) struct Admission {
    limiter: Arc<Mutex<SourceLimiter>>,
    handshaking: Arc<AtomicUsize>,
    retry_threshold: usize,
}

/// What an admitted connection holds until it ends: its source's connection slot and, until the
/// session is established, a place among the handshakes in flight.
pub(crate) struct Ticket {
    limiter: Arc<Mutex<SourceLimiter>>,
    ip: IpAddr,
    handshaking: Option<Arc<AtomicUsize>>,
}

impl Ticket {
    /// The handshake ended (session established or refused): it no longer counts as in flight.
    pub(crate) fn handshake_over(&mut self) {
        if let Some(count) = self.handshaking.take() {
            count.fetch_sub(1, Relaxed);
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.handshake_over();
        // A poisoned lock means a panic while counting; the counts are then unreliable either way,
        // and refusing to release would leak the slot forever.
        let mut limiter = self.limiter.lock().unwrap_or_else(|e| e.into_inner());
        limiter.release(self.ip);
    }
}

impl Admission {
    /// Admission with the configured limits.
    pub(crate) fn new(settings: &HardeningSettings) -> Self {
        let limits = SourceLimits {
            max_connections: settings.max_connections_per_source,
            handshakes_per_sec: settings.handshakes_per_sec_per_source,
            max_sources: settings.max_tracked_sources as usize,
        };
        Admission {
            limiter: Arc::new(Mutex::new(SourceLimiter::new(limits))),
            handshaking: Arc::new(AtomicUsize::new(0)),
            retry_threshold: settings.retry_threshold as usize,
        }
    }

    /// Handshakes admitted and not yet over.
    pub(crate) fn handshakes_in_flight(&self) -> usize {
        self.handshaking.load(Relaxed)
    }

    /// Decides for one `Incoming`: `Some` to accept it (with the ticket to hold), `None` when it was
    /// answered with a Retry or refused (QUIC CONNECTION_REFUSED) here.
    pub(crate) fn admit(
        &self,
        incoming: quinn::Incoming,
        metrics: &Metrics,
    ) -> Option<(quinn::Incoming, Ticket)> {
        let remote = incoming.remote_address();
        if self.handshakes_in_flight() >= self.retry_threshold
            && !incoming.remote_address_validated()
        {
            // `may_retry` is guaranteed for an unvalidated address; the error path only guards
            // against that changing in quinn.
            match incoming.retry() {
                Ok(()) => metrics.retry_sent(),
                Err(e) => e.into_incoming().refuse(),
            }
            return None;
        }
        let ip = remote.ip();
        let verdict = {
            let mut limiter = self.limiter.lock().unwrap_or_else(|e| e.into_inner());
            limiter.admit(ip, Instant::now())
        };
        if let Err(why) = verdict {
            debug!(%remote, %why, "handshake refused");
            metrics.source_refused(why);
            incoming.refuse();
            return None;
        }
        self.handshaking.fetch_add(1, Relaxed);
        let ticket = Ticket {
            limiter: self.limiter.clone(),
            ip,
            handshaking: Some(self.handshaking.clone()),
        };
        Some((incoming, ticket))
    }
}
