//! A fault-injecting UDP proxy for testing Ferry over flaky networks.
//!
//! The kernel Ferry is developed on has no netem, so flaky networks are simulated in user space:
//! the proxy sits between a QUIC client and server on loopback and loses, delays, reorders,
//! duplicates or blackholes datagrams, and can rebind its upstream ports to simulate a NAT
//! rebinding or a Wi-Fi → cellular switch.
//!
//! ```text
//!   client A ──┐                 ┌── upstream socket A ──┐
//!              ├─► listen socket ┤                       ├─► server
//!   client B ──┘                 └── upstream socket B ──┘
//! ```
//!
//! Each distinct client address gets its own upstream socket (a *flow*), like a NAT, so the server
//! sees one peer per client. Flows are capped ([`ProxyConfig::max_flows`]) and expire when idle
//! ([`ProxyConfig::idle_timeout`]).
//!
//! Faults are set per direction at start-up and can be changed while running through the
//! [`Proxy`] handle. Fault *decisions* come from a seeded RNG (one stream per direction), so a
//! failing run can be replayed by reusing its seed; the seed is logged at start and shown by
//! `Debug`. Timing still varies from run to run.
//!
//! # Example
//!
//! ```no_run
//! # async fn example() -> Result<(), ferry_proxy::ProxyError> {
//! use std::time::Duration;
//! use ferry_proxy::{DirectionFaults, Faults, Proxy, ProxyConfig};
//!
//! let upstream = "127.0.0.1:4433".parse().unwrap();
//! let mut config = ProxyConfig::new("127.0.0.1:0".parse().unwrap(), upstream);
//! config.seed = 7;
//! config.faults = Faults::symmetric(DirectionFaults {
//!     loss: 0.1,
//!     delay: Duration::from_millis(20),
//!     ..DirectionFaults::default()
//! });
//! let proxy = Proxy::start(config).await?;
//! // Point the client at `proxy.local_addr()` instead of the server.
//! proxy.blackhole(Duration::from_secs(2)); // link down for two seconds
//! proxy.rebind()?; // the server now sees new source ports
//! println!("{:?}", proxy.stats());
//! proxy.shutdown().await;
//! # Ok(())
//! # }
//! ```
//!
//! # Layout
//!
//! - [`config`]: what to inject ([`Faults`], [`DirectionFaults`]) and how to run ([`ProxyConfig`]).
//! - `decide`: the pure per-packet fault decision (no I/O, no clock), unit tested.
//! - [`stats`]: counters per direction and for flows.
//! - [`proxy`]: the sockets, flow table, timer queue and the [`Proxy`] handle.
#![warn(missing_docs)]

pub mod config;
mod decide;
pub mod proxy;
pub mod stats;

pub use config::{Direction, DirectionFaults, Faults, InvalidFaults, ProxyConfig};
pub use proxy::{Proxy, ProxyError};
pub use stats::{DirectionStats, Stats};
