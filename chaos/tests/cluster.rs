//! The cluster target in CI: the `ci` profile (20 s of faults, under a minute in all) against two
//! `ferry-server` nodes on one `redis-server`, through one fault proxy per node, with node kills and
//! pauses and Redis kills (a node killed while Redis is down among them); the independent checker must
//! find nothing.
//!
//! With a FLUSHALL in the last third: after it, late frames of the old epoch must not flip a client's
//! window back (FERRY-RECV-12; `ferry-chaos run --target cluster --profile short --seed 33` found that
//! as DeliveredTwice before the client dropped them).
//!
//! Needs the `ferry-server` binary next to `ferry-chaos` (scripts/test.sh builds every binary first)
//! and `redis-server` on the PATH (scripts/test.sh installs it).

use std::path::PathBuf;
use std::time::Duration;

use ferry_chaos::profile::Profile;
use ferry_chaos::run::{self, RunConfig, TargetKind};

/// A seed whose `ci` schedule on two nodes holds node kills and pauses, Redis kills and a FLUSHALL.
const SEED: u64 = 9;
/// Far above the run's own bounds (20 s of faults, 20 s of settling, start-up): only a hang hits it.
const RUN_TIMEOUT: Duration = Duration::from_secs(240);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_under_node_and_redis_kills_keeps_every_promise() {
    let self_binary = PathBuf::from(env!("CARGO_BIN_EXE_ferry-chaos"));
    let server_binary = self_binary
        .parent()
        .expect("binary dir")
        .join("ferry-server");
    assert!(
        server_binary.exists(),
        "{} is missing: cargo build -p ferry-server",
        server_binary.display()
    );
    let config = RunConfig {
        profile: Profile::ci(),
        seed: SEED,
        server_binary,
        self_binary,
        work_dir: None,
        target: TargetKind::Cluster { nodes: 2 },
    };
    let report = tokio::time::timeout(RUN_TIMEOUT, run::run(config))
        .await
        .expect("the run ends")
        .expect("the run starts and completes");
    let summary = format!(
        "seed {SEED}: messages {:?}, faults {:?}, violations {:?}, unexpected exits {:?}, lost with \
         history {}",
        report.messages,
        report.faults,
        report.violations_by_kind,
        report.unexpected_exits,
        report.lost_with_history
    );
    eprintln!("{summary}");
    assert_eq!(report.target, "cluster");
    for kind in ["node_kill", "node_pause", "redis_kill", "flushall"] {
        assert!(report.faults.contains_key(kind), "no {kind}: {summary}");
    }
    assert!(
        report.violations.is_empty(),
        "{summary}\n{:#?}",
        report.violations
    );
    assert!(report.settled, "did not settle: {summary}");
    assert!(report.unexpected_exits.is_empty(), "{summary}");
    assert!(
        report.messages.acked > 0 && report.messages.delivered > 0,
        "{summary}"
    );
}
