//! The conformance runner's full server suite against a node in cluster mode: on one redis-server and
//! on a 3-master Redis Cluster. A cluster node must behave for a client exactly like a single node.

use std::time::Duration;

use ferry_interop::report::Outcome;
use ferry_interop::server_mode::{self, ServerConfig};
use ferry_tests::cluster::{Backend, TestCluster};
use ferry_tests::{conformance_revoke, conformance_tokens};

/// Cases that may legitimately be Unsupported (as for the embedded store: see conformance_server.rs).
const ALLOWED_UNSUPPORTED: &[&str] = &[
    "TOO_MANY_INFLIGHT",
    "send_burst",
    "--drain-cmd",
    "SYNC-7 cannot be exceeded",
];

async fn suite_passes_on(backend: Backend) {
    let cluster = TestCluster::start(backend, 1, |s| {
        s.heartbeat_interval_ms = 2000;
        s.idle_timeout_ms = 8000;
        s.stream_idle_timeout_ms = 1000;
    })
    .await;
    let node = &cluster.nodes[0].handle;
    let tokens = conformance_tokens(&cluster.settings[0].data_dir);
    let mut config = ServerConfig::for_test_server(
        node.local_addr(),
        node.ca_path().to_path_buf(),
        tokens,
        Duration::from_millis(1000),
    );
    config.revoke = Some(conformance_revoke(&cluster.settings[0].data_dir));
    let report = server_mode::run(config, |case| {
        eprintln!("{:<11} {}", case.outcome.label(), case.name)
    })
    .await
    .unwrap();
    eprintln!("{}", report.table());
    // Every failing case in one message: CI shows only the tail of a failed test's output.
    let mut problems = Vec::new();
    for case in &report.cases {
        match &case.outcome {
            Outcome::Fail(reason) => problems.push(format!("FAIL {}: {reason}", case.name)),
            Outcome::Unsupported(reason)
                if !ALLOWED_UNSUPPORTED
                    .iter()
                    .any(|part| case.name.contains(part) || reason.contains(part)) =>
            {
                problems.push(format!(
                    "unexpectedly unsupported: {} ({reason})",
                    case.name
                ))
            }
            _ => {}
        }
    }
    assert!(
        problems.is_empty(),
        "conformance failures on Redis:\n{}",
        problems.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_on_one_redis_passes_the_server_suite() {
    suite_passes_on(Backend::single()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_on_a_redis_cluster_passes_the_server_suite() {
    suite_passes_on(Backend::cluster()).await;
}
