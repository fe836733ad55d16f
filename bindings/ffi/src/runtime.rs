//! The tokio runtime the facade owns, and the one way work gets onto it.
//!
//! Foreign callers (Kotlin coroutines, Swift tasks, Python threads) poll UniFFI futures on their own
//! executors, where no tokio runtime exists. The client's driver, its timers and its sockets need one, so
//! every operation that touches them is spawned here and its `JoinHandle` (which any executor may poll)
//! is awaited. A panic inside ends as a `JoinError`, mapped to a typed `Internal` error: nothing unwinds
//! into foreign frames.

use std::future::Future;
use std::sync::OnceLock;

use tokio::runtime::Runtime;

use crate::error::{panic_text, FerryError};

/// Two workers: a phone has few cores, and the client's heavy lifting (SQLite) runs on the blocking pool.
const WORKER_THREADS: usize = 2;

static RUNTIME: OnceLock<Result<Runtime, String>> = OnceLock::new();

/// The process-wide runtime, started on first use. It lives as long as the process (the library is
/// loaded once and never unloaded by JNA, ctypes or the Swift runtime).
pub(crate) fn runtime() -> Result<&'static Runtime, String> {
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(WORKER_THREADS)
                .thread_name("ferry-ffi")
                .enable_all()
                .build()
                .map_err(|e| format!("starting the tokio runtime: {e}"))
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// Runs `fut` to completion on the runtime. `Err` carries the text of a panic (or of a runtime that
/// could not start). If the caller drops the returned future (a cancelled coroutine), `fut` still runs
/// to its end: operations are not torn halfway (a send stays queued, a group change completes).
pub(crate) async fn spawn_caught<T, F>(fut: F) -> Result<T, String>
where
    F: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let handle = runtime()?.spawn(fut);
    match handle.await {
        Ok(value) => Ok(value),
        Err(e) if e.is_panic() => Err(format!("panic: {}", panic_text(&*e.into_panic()))),
        Err(e) => Err(e.to_string()),
    }
}

/// [`spawn_caught`] for operations failing with [`FerryError`]: a panic becomes `FerryError::Internal`.
pub(crate) async fn run<T, F>(fut: F) -> Result<T, FerryError>
where
    F: Future<Output = Result<T, FerryError>> + Send + 'static,
    T: Send + 'static,
{
    spawn_caught(fut)
        .await
        .map_err(|reason| FerryError::Internal { reason })?
}
