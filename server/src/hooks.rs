//! Fault hooks for the test suites, compiled only with the `test-hooks` feature. QUIC retransmits lost
//! packets, so losing a Deliver for real needs the server's help: a test can make the server skip the
//! fan-out of chosen messages and then check that clients recover them from heartbeat heads.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use ferry_protocol::frame::Message;

/// A predicate over (conversation, message): true drops the message's fan-out.
pub type DropDelivery = Box<dyn Fn(&str, &Message) -> bool + Send + Sync>;

/// Test-only behaviour switches.
#[derive(Default)]
pub struct Hooks {
    drop_delivery: Mutex<Option<DropDelivery>>,
    fail_appends: AtomicBool,
}

impl Hooks {
    /// Installs (or with `None` removes) the fan-out drop predicate.
    pub fn set_drop_delivery(&self, predicate: Option<DropDelivery>) {
        *self.drop_delivery.lock().expect("hooks lock") = predicate;
    }

    /// Makes every append fail as a storage failure would (to test INTERNAL handling).
    pub fn set_fail_appends(&self, fail: bool) {
        self.fail_appends.store(fail, Ordering::SeqCst);
    }

    /// Whether appends must fail.
    pub(crate) fn fails_appends(&self) -> bool {
        self.fail_appends.load(Ordering::SeqCst)
    }

    /// Whether fan-out of `message` must be skipped.
    pub(crate) fn drops_delivery(&self, conversation: &str, message: &Message) -> bool {
        let guard = self.drop_delivery.lock().expect("hooks lock");
        guard.as_ref().is_some_and(|p| p(conversation, message))
    }
}
