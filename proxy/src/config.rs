//! Proxy configuration: which faults to inject, per direction, and the proxy's limits.

use std::net::SocketAddr;
use std::time::Duration;

/// Which way a datagram travels through the proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From a client to the upstream server.
    ToServer,
    /// From the upstream server back to a client.
    ToClient,
}

/// Faults applied to the datagrams travelling in one direction.
///
/// The default injects nothing. Probabilities are in `0.0..=1.0`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DirectionFaults {
    /// Probability that a datagram is dropped.
    pub loss: f64,
    /// Fixed delay added to every datagram.
    pub delay: Duration,
    /// Extra random delay, uniform in `0..jitter`, added per datagram (so jitter alone reorders).
    pub jitter: Duration,
    /// Probability that a datagram is held back (by `jitter` + 10 ms) so that later ones overtake it.
    pub reorder: f64,
    /// Probability that a datagram is sent twice (the copy gets its own jitter).
    pub duplicate: f64,
}

impl DirectionFaults {
    /// Checks that every probability is a number in `0.0..=1.0`.
    pub fn validate(&self) -> Result<(), InvalidFaults> {
        for (name, value) in [
            ("loss", self.loss),
            ("reorder", self.reorder),
            ("duplicate", self.duplicate),
        ] {
            // `contains` is false for NaN, so NaN is rejected too.
            if !(0.0..=1.0).contains(&value) {
                return Err(InvalidFaults::Probability { name, value });
            }
        }
        Ok(())
    }
}

/// Faults for both directions.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Faults {
    /// Applied to client → server datagrams.
    pub to_server: DirectionFaults,
    /// Applied to server → client datagrams.
    pub to_client: DirectionFaults,
}

impl Faults {
    /// No faults: the proxy forwards everything at once.
    pub fn none() -> Self {
        Self::default()
    }

    /// The same faults in both directions.
    pub fn symmetric(faults: DirectionFaults) -> Self {
        Self {
            to_server: faults.clone(),
            to_client: faults,
        }
    }

    /// The faults for one direction.
    pub fn direction(&self, direction: Direction) -> &DirectionFaults {
        match direction {
            Direction::ToServer => &self.to_server,
            Direction::ToClient => &self.to_client,
        }
    }

    /// Checks both directions; see [`DirectionFaults::validate`].
    pub fn validate(&self) -> Result<(), InvalidFaults> {
        self.to_server.validate()?;
        self.to_client.validate()
    }
}

/// A fault setting that cannot be applied.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum InvalidFaults {
    /// A probability outside `0.0..=1.0` (or NaN).
    #[error("{name} probability must be within 0.0..=1.0, got {value}")]
    Probability {
        /// Which field (`loss`, `reorder`, `duplicate`).
        name: &'static str,
        /// The rejected value.
        value: f64,
    },
}

/// How to run a [`Proxy`](crate::Proxy). Start from [`ProxyConfig::new`] and adjust the fields.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    /// Where clients send to, e.g. `127.0.0.1:0` for any free port.
    pub listen: SocketAddr,
    /// The server every flow is forwarded to.
    pub upstream: SocketAddr,
    /// Seed for the fault decisions; reuse it to replay a failing run's decisions.
    pub seed: u64,
    /// Faults at start-up; change them later with [`Proxy::set_faults`](crate::Proxy::set_faults).
    pub faults: Faults,
    /// Most flows (client addresses) at once; datagrams from further clients are dropped.
    pub max_flows: usize,
    /// A flow with no datagram in either direction for this long is forgotten and its upstream
    /// socket closed.
    pub idle_timeout: Duration,
    /// Most delayed datagrams waiting in the timer queue; further ones are dropped and counted.
    pub max_queued: usize,
}

impl ProxyConfig {
    /// A proxy from `listen` to `upstream` with seed 0, no faults, 1024 flows, a 60 s idle
    /// timeout (longer than QUIC's usual 30 s) and at most 10,000 delayed datagrams.
    pub fn new(listen: SocketAddr, upstream: SocketAddr) -> Self {
        Self {
            listen,
            upstream,
            seed: 0,
            faults: Faults::none(),
            max_flows: 1024,
            idle_timeout: Duration::from_secs(60),
            max_queued: 10_000,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_rejects_out_of_range_and_nan() {
        assert!(Faults::none().validate().is_ok());
        let ok = DirectionFaults {
            loss: 1.0,
            reorder: 0.0,
            duplicate: 0.5,
            ..DirectionFaults::default()
        };
        assert!(ok.validate().is_ok());
        for bad in [-0.1, 1.1, f64::NAN] {
            let faults = Faults {
                to_client: DirectionFaults {
                    duplicate: bad,
                    ..DirectionFaults::default()
                },
                ..Faults::default()
            };
            assert!(matches!(
                faults.validate(),
                Err(InvalidFaults::Probability {
                    name: "duplicate",
                    ..
                })
            ));
        }
    }
}
