//! End-to-end tests: real UDP sockets on 127.0.0.1, a UDP echo server upstream, the proxy between.
//!
//! Timing assertions are lower bounds only (a slow machine can only make things later); counts
//! under random faults use wide bounds around the expected value with a fixed seed.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_proxy::{DirectionFaults, Faults, Proxy, ProxyConfig};
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;
use tokio::time::{timeout, Instant};

/// Upper bound for any single test, so a bug hangs nothing.
const TEST_LIMIT: Duration = Duration::from_secs(20);

/// A UDP echo server that remembers every source address it saw.
struct Echo {
    addr: SocketAddr,
    sources: Arc<Mutex<Vec<SocketAddr>>>,
    task: JoinHandle<()>,
}

impl Echo {
    async fn start() -> Echo {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let sources = Arc::new(Mutex::new(Vec::new()));
        let seen = sources.clone();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 2048];
            loop {
                let Ok((len, from)) = socket.recv_from(&mut buf).await else {
                    continue;
                };
                seen.lock().unwrap().push(from);
                let _ = socket.send_to(&buf[..len], from).await;
            }
        });
        Echo {
            addr,
            sources,
            task,
        }
    }

    fn distinct_sources(&self) -> HashSet<SocketAddr> {
        self.sources.lock().unwrap().iter().copied().collect()
    }

    fn last_source(&self) -> Option<SocketAddr> {
        self.sources.lock().unwrap().last().copied()
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn start_proxy(echo: &Echo, seed: u64, faults: Faults) -> Proxy {
    let mut config = ProxyConfig::new("127.0.0.1:0".parse().unwrap(), echo.addr);
    config.seed = seed;
    config.faults = faults;
    Proxy::start(config).await.unwrap()
}

async fn client(proxy: &Proxy) -> UdpSocket {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.connect(proxy.local_addr()).await.unwrap();
    socket
}

/// Sends `0..n` as big-endian u32s, pausing briefly every 20 so the proxy keeps up (kernel drops
/// would look like injected loss).
async fn send_numbers(socket: &UdpSocket, n: u32) {
    for i in 0..n {
        socket.send(&i.to_be_bytes()).await.unwrap();
        if i % 20 == 19 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

/// Sends `0..n` and collects the echoes until none arrives for `quiet`. Receiving while sending
/// keeps the client's socket buffer (about 256 small datagrams) from overflowing.
async fn exchange(socket: &UdpSocket, n: u32, quiet: Duration) -> Vec<u32> {
    tokio::join!(send_numbers(socket, n), recv_numbers(socket, quiet)).1
}

/// Receives numbers until none arrives for `quiet`.
async fn recv_numbers(socket: &UdpSocket, quiet: Duration) -> Vec<u32> {
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    while let Ok(Ok(len)) = timeout(quiet, socket.recv(&mut buf)).await {
        assert_eq!(len, 4);
        got.push(u32::from_be_bytes(buf[..4].try_into().unwrap()));
    }
    got
}

async fn round_trip(socket: &UdpSocket, value: u32) -> Option<u32> {
    socket.send(&value.to_be_bytes()).await.unwrap();
    recv_numbers(socket, Duration::from_millis(300))
        .await
        .first()
        .copied()
}

fn to_server(faults: DirectionFaults) -> Faults {
    Faults {
        to_server: faults,
        ..Faults::none()
    }
}

#[tokio::test]
async fn no_faults_delivers_everything_in_order() {
    timeout(TEST_LIMIT, async {
        let echo = Echo::start().await;
        let proxy = start_proxy(&echo, 1, Faults::none()).await;
        let socket = client(&proxy).await;
        let got = exchange(&socket, 400, Duration::from_millis(500)).await;
        assert_eq!(got, (0..400).collect::<Vec<_>>());
        let stats = proxy.stats();
        assert_eq!(stats.to_server.forwarded, 400);
        assert_eq!(stats.to_client.forwarded, 400);
        assert_eq!(stats.to_server.dropped() + stats.to_client.dropped(), 0);
        proxy.shutdown().await;
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn loss_drops_about_the_given_share() {
    timeout(TEST_LIMIT, async {
        let echo = Echo::start().await;
        let faults = to_server(DirectionFaults {
            loss: 0.5,
            ..DirectionFaults::default()
        });
        let proxy = start_proxy(&echo, 7, faults).await;
        let socket = client(&proxy).await;
        let got = exchange(&socket, 400, Duration::from_millis(500)).await;
        assert!((120..=280).contains(&got.len()), "{} arrived", got.len());
        let stats = proxy.stats();
        assert_eq!(stats.to_server.lost + stats.to_server.forwarded, 400);
        assert_eq!(stats.to_server.forwarded as usize, got.len());
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn same_seed_loses_the_same_packets() {
    timeout(TEST_LIMIT, async {
        let echo = Echo::start().await;
        let faults = to_server(DirectionFaults {
            loss: 0.3,
            ..DirectionFaults::default()
        });
        let mut runs = Vec::new();
        for seed in [11, 11, 12] {
            let proxy = start_proxy(&echo, seed, faults.clone()).await;
            let socket = client(&proxy).await;
            runs.push(exchange(&socket, 100, Duration::from_millis(300)).await);
        }
        assert_eq!(runs[0], runs[1]);
        assert_ne!(runs[0], runs[2]);
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn duplicate_sends_extra_copies() {
    timeout(TEST_LIMIT, async {
        let echo = Echo::start().await;
        let faults = to_server(DirectionFaults {
            duplicate: 0.5,
            ..DirectionFaults::default()
        });
        let proxy = start_proxy(&echo, 3, faults).await;
        let socket = client(&proxy).await;
        let got = exchange(&socket, 100, Duration::from_millis(500)).await;
        assert!(got.len() > 100, "{} arrived", got.len());
        assert_eq!(got.iter().copied().collect::<HashSet<_>>().len(), 100);
        let stats = proxy.stats();
        assert_eq!(got.len() as u64, 100 + stats.to_server.duplicated);
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn reorder_changes_arrival_order() {
    timeout(TEST_LIMIT, async {
        let echo = Echo::start().await;
        let faults = to_server(DirectionFaults {
            reorder: 0.3,
            ..DirectionFaults::default()
        });
        let proxy = start_proxy(&echo, 5, faults).await;
        let socket = client(&proxy).await;
        let got = exchange(&socket, 100, Duration::from_millis(500)).await;
        let mut sorted = got.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>(), "nothing lost");
        assert_ne!(got, sorted, "some arrived out of order");
        assert!(proxy.stats().to_server.reordered > 0);
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn delay_applies_per_direction() {
    timeout(TEST_LIMIT, async {
        let echo = Echo::start().await;
        let delay = DirectionFaults {
            delay: Duration::from_millis(100),
            jitter: Duration::from_millis(20),
            ..DirectionFaults::default()
        };
        let proxy = start_proxy(&echo, 1, to_server(delay.clone())).await;
        let socket = client(&proxy).await;

        let started = Instant::now();
        assert_eq!(round_trip(&socket, 1).await, Some(1));
        assert!(started.elapsed() >= Duration::from_millis(100));

        // Delayed both ways: at least twice the delay.
        proxy.set_faults(Faults::symmetric(delay)).unwrap();
        let started = Instant::now();
        assert_eq!(round_trip(&socket, 2).await, Some(2));
        assert!(started.elapsed() >= Duration::from_millis(200));
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn blackhole_drops_everything_then_traffic_resumes() {
    timeout(TEST_LIMIT, async {
        let echo = Echo::start().await;
        let proxy = start_proxy(&echo, 1, Faults::none()).await;
        let socket = client(&proxy).await;
        assert_eq!(round_trip(&socket, 1).await, Some(1));

        proxy.blackhole(Duration::from_millis(400));
        send_numbers(&socket, 10).await;
        assert_eq!(recv_numbers(&socket, Duration::from_millis(200)).await, []);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(round_trip(&socket, 2).await, Some(2));
        assert_eq!(proxy.stats().to_server.blackholed, 10);

        proxy.blackhole_until_cleared();
        assert_eq!(round_trip(&socket, 3).await, None);
        proxy.clear_blackhole();
        assert_eq!(round_trip(&socket, 4).await, Some(4));
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn blackhole_drops_delayed_packets_in_flight() {
    timeout(TEST_LIMIT, async {
        let echo = Echo::start().await;
        let faults = to_server(DirectionFaults {
            delay: Duration::from_millis(200),
            ..DirectionFaults::default()
        });
        let proxy = start_proxy(&echo, 1, faults).await;
        let socket = client(&proxy).await;
        socket.send(&1u32.to_be_bytes()).await.unwrap();
        // Let the packet reach the queue before the link goes down.
        tokio::time::sleep(Duration::from_millis(50)).await;
        proxy.blackhole_until_cleared();
        assert_eq!(recv_numbers(&socket, Duration::from_millis(400)).await, []);
        assert_eq!(proxy.stats().to_server.blackholed, 1);
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn rebind_gives_the_server_a_new_source_address() {
    timeout(TEST_LIMIT, async {
        let echo = Echo::start().await;
        let proxy = start_proxy(&echo, 1, Faults::none()).await;
        let socket = client(&proxy).await;
        assert_eq!(round_trip(&socket, 1).await, Some(1));
        let before = echo.last_source().unwrap();

        proxy.rebind().unwrap();
        assert_eq!(round_trip(&socket, 2).await, Some(2));
        let after = echo.last_source().unwrap();
        assert_ne!(before, after);
        let stats = proxy.stats();
        assert_eq!((stats.rebinds, stats.flows_active), (1, 1));
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn each_client_gets_its_own_flow() {
    timeout(TEST_LIMIT, async {
        let echo = Echo::start().await;
        let proxy = start_proxy(&echo, 1, Faults::none()).await;
        let a = client(&proxy).await;
        let b = client(&proxy).await;
        assert_eq!(round_trip(&a, 10).await, Some(10));
        assert_eq!(round_trip(&b, 20).await, Some(20));
        assert_eq!(round_trip(&a, 11).await, Some(11));
        assert_eq!(echo.distinct_sources().len(), 2);
        assert_eq!(proxy.stats().flows_created, 2);
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn flows_are_capped_and_expire_when_idle() {
    timeout(TEST_LIMIT, async {
        let echo = Echo::start().await;
        let mut config = ProxyConfig::new("127.0.0.1:0".parse().unwrap(), echo.addr);
        config.max_flows = 1;
        config.idle_timeout = Duration::from_secs(1);
        let proxy = Proxy::start(config).await.unwrap();
        let a = client(&proxy).await;
        let b = client(&proxy).await;
        assert_eq!(round_trip(&a, 1).await, Some(1));
        assert_eq!(round_trip(&b, 2).await, None, "over the cap");
        assert_eq!(proxy.stats().to_server.no_flow, 1);

        tokio::time::sleep(Duration::from_millis(1600)).await;
        let stats = proxy.stats();
        assert_eq!((stats.flows_expired, stats.flows_active), (1, 0));
        assert_eq!(round_trip(&b, 3).await, Some(3), "room again");
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn invalid_faults_are_rejected() {
    timeout(TEST_LIMIT, async {
        let echo = Echo::start().await;
        let bad = to_server(DirectionFaults {
            loss: 1.5,
            ..DirectionFaults::default()
        });
        let mut config = ProxyConfig::new("127.0.0.1:0".parse().unwrap(), echo.addr);
        config.faults = bad.clone();
        assert!(matches!(
            Proxy::start(config).await,
            Err(ferry_proxy::ProxyError::InvalidFaults(_))
        ));
        let proxy = start_proxy(&echo, 1, Faults::none()).await;
        assert!(proxy.set_faults(bad).is_err());
        assert_eq!(proxy.faults(), Faults::none());
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn shutdown_and_drop_close_the_sockets() {
    timeout(TEST_LIMIT, async {
        let echo = Echo::start().await;
        let proxy = start_proxy(&echo, 1, Faults::none()).await;
        let addr = proxy.local_addr();
        let socket = client(&proxy).await;
        assert_eq!(round_trip(&socket, 1).await, Some(1));
        proxy.shutdown().await;
        // The port is free again only if every task holding the socket has stopped.
        drop(UdpSocket::bind(addr).await.unwrap());

        let proxy = start_proxy(&echo, 1, Faults::none()).await;
        let addr = proxy.local_addr();
        drop(proxy);
        // Aborted tasks are dropped by the runtime soon after, not synchronously: retry briefly.
        let mut rebound = false;
        for _ in 0..100 {
            if UdpSocket::bind(addr).await.is_ok() {
                rebound = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(rebound, "the listen socket stayed open after drop");
    })
    .await
    .unwrap();
}
