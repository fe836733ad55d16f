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
    login_hold: Mutex<Option<LoginHold>>,
}

/// The server's side of [`Hooks::hold_next_login`].
struct LoginHold {
    reached: tokio::sync::oneshot::Sender<()>,
    release: tokio::sync::oneshot::Receiver<()>,
}

/// The test's side of [`Hooks::hold_next_login`].
pub struct HeldLogin {
    /// Fires once the held login has read its Hello and stopped.
    pub reached: tokio::sync::oneshot::Receiver<()>,
    /// Send (or drop) to let the held login go on.
    pub release: tokio::sync::oneshot::Sender<()>,
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

    /// Holds the next login right after its Hello was read — where a slow store or Redis would stall
    /// it — until the test releases it (to order two logins of one device deterministically).
    pub fn hold_next_login(&self) -> HeldLogin {
        let (reached_tx, reached) = tokio::sync::oneshot::channel();
        let (release, release_rx) = tokio::sync::oneshot::channel();
        *self.login_hold.lock().expect("hooks lock") = Some(LoginHold {
            reached: reached_tx,
            release: release_rx,
        });
        HeldLogin { reached, release }
    }

    /// Waits here if a test holds this login (see [`Hooks::hold_next_login`]).
    pub(crate) async fn login_held(&self) {
        let hold = self.login_hold.lock().expect("hooks lock").take();
        if let Some(hold) = hold {
            let _ = hold.reached.send(());
            let _ = hold.release.await;
        }
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
