//! One fault proxy in front of each node of the target, all under the same weather: a device reaches
//! every node through that node's proxy, so the network lane's faults follow it across a failover.

use std::net::SocketAddr;
use std::time::Duration;

use ferry_proxy::{Faults, Proxy, ProxyConfig};

/// The proxies of a run, in node order.
pub struct Proxies {
    proxies: Vec<Proxy>,
}

impl Proxies {
    /// Starts a proxy on a free loopback port for each upstream; proxy `k` draws its decisions from
    /// `seed + k`, so a run replays and two proxies do not drop the same packets in lockstep.
    pub async fn start(upstreams: &[SocketAddr], seed: u64) -> anyhow::Result<Proxies> {
        let mut proxies = Vec::with_capacity(upstreams.len());
        for (k, upstream) in upstreams.iter().enumerate() {
            let mut config = ProxyConfig::new("127.0.0.1:0".parse()?, *upstream);
            config.seed = seed.wrapping_add(k as u64);
            proxies.push(Proxy::start(config).await?);
        }
        Ok(Proxies { proxies })
    }

    /// The addresses devices talk to, in node order.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.proxies.iter().map(Proxy::local_addr).collect()
    }

    /// Sets the weather on every proxy.
    pub fn set_faults(&self, faults: Faults) -> anyhow::Result<()> {
        for proxy in &self.proxies {
            proxy.set_faults(faults.clone())?;
        }
        Ok(())
    }

    /// Nothing passes any proxy for `duration`.
    pub fn blackhole(&self, duration: Duration) {
        for proxy in &self.proxies {
            proxy.blackhole(duration);
        }
    }

    /// Ends a blackhole early.
    pub fn clear_blackhole(&self) {
        for proxy in &self.proxies {
            proxy.clear_blackhole();
        }
    }

    /// New upstream ports for every flow of every proxy.
    pub fn rebind(&self) -> anyhow::Result<()> {
        for proxy in &self.proxies {
            proxy.rebind()?;
        }
        Ok(())
    }

    /// Stops every proxy.
    pub async fn shutdown(self) {
        for proxy in self.proxies {
            proxy.shutdown().await;
        }
    }
}
