//! Waiting for a condition instead of sleeping for luck: a test polls what it is about to assert,
//! bounded by a timeout, and asserts on the result.

use std::time::Duration;

/// Polls `done` every 10 ms until it holds or `timeout` passes; returns whether it held.
pub async fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    done()
}
