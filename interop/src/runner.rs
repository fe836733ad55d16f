//! Running cases: each one in its own task, bounded by a timeout, a panic or a hang counted as a failure.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::driver::DriverError;
use crate::report::{CaseReport, Outcome};

/// Why a case did not pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The implementation broke a requirement: expected vs got.
    Fail(String),
    /// The case cannot run here; the reason says why.
    Unsupported(String),
}

impl From<DriverError> for Verdict {
    fn from(e: DriverError) -> Verdict {
        Verdict::Fail(e.to_string())
    }
}

/// What a case returns.
pub type CaseResult = Result<(), Verdict>;

/// The future of one running case.
pub type CaseFuture = Pin<Box<dyn Future<Output = CaseResult> + Send>>;

/// One conformance case, run against a context `C` (server or client mode).
pub struct Case<C> {
    /// The requirement ids it checks.
    pub ids: &'static [&'static str],
    /// Short description.
    pub title: &'static str,
    /// The check itself.
    pub run: fn(Arc<C>) -> CaseFuture,
}

impl<C> Case<C> {
    /// `FERRY-SEND-5 FERRY-MSG-9: duplicate Send answers the original seq`.
    pub fn name(&self) -> String {
        format!("{}: {}", self.ids.join(" "), self.title)
    }
}

/// Builds a [`Case`] from requirement ids, a title and an `async fn(Arc<C>) -> CaseResult`.
#[macro_export]
macro_rules! case {
    ([$($id:literal),+ $(,)?], $title:literal, $f:path) => {
        $crate::runner::Case {
            ids: &[$($id),+],
            title: $title,
            run: |ctx| Box::pin($f(ctx)),
        }
    };
}

/// Fails the case with a formatted reason.
#[macro_export]
macro_rules! fail {
    ($($arg:tt)*) => {
        return Err($crate::runner::Verdict::Fail(format!($($arg)*)))
    };
}

/// Fails the case unless the condition holds.
#[macro_export]
macro_rules! ensure {
    ($cond:expr, $($arg:tt)*) => {
        if !$cond {
            $crate::fail!($($arg)*);
        }
    };
}

/// Fails with "what: expected X, got Y" unless the two are equal.
#[macro_export]
macro_rules! ensure_eq {
    ($got:expr, $expected:expr, $($what:tt)*) => {{
        let (got, expected) = (&$got, &$expected);
        if got != expected {
            $crate::fail!("{}: expected {:?}, got {:?}", format!($($what)*), expected, got);
        }
    }};
}

/// Marks the case unsupported with a reason.
#[macro_export]
macro_rules! unsupported {
    ($($arg:tt)*) => {
        return Err($crate::runner::Verdict::Unsupported(format!($($arg)*)))
    };
}

/// Runs `cases` one after another (cases share the implementation under test, and some measure rates),
/// each with a fresh context from `context(index)` and at most `timeout`.
pub async fn run_cases<C: Send + Sync + 'static>(
    cases: &[Case<C>],
    filter: Option<&str>,
    timeout: Duration,
    mut context: impl FnMut(usize) -> Arc<C>,
    mut progress: impl FnMut(&CaseReport),
) -> Vec<CaseReport> {
    let mut reports = Vec::new();
    for (index, case) in cases.iter().enumerate() {
        let name = case.name();
        if filter.is_some_and(|f| !name.contains(f)) {
            continue;
        }
        let started = Instant::now();
        let task = tokio::spawn((case.run)(context(index)));
        let abort = task.abort_handle();
        let outcome = match tokio::time::timeout(timeout, task).await {
            Ok(Ok(Ok(()))) => Outcome::Pass,
            Ok(Ok(Err(Verdict::Fail(reason)))) => Outcome::Fail(reason),
            Ok(Ok(Err(Verdict::Unsupported(reason)))) => Outcome::Unsupported(reason),
            Ok(Err(join)) => Outcome::Fail(format!("case panicked: {}", panic_text(join))),
            Err(_) => {
                abort.abort();
                Outcome::Fail(format!("no verdict within {} s (hung)", timeout.as_secs()))
            }
        };
        let report = CaseReport {
            name,
            requirements: case.ids.iter().map(|s| s.to_string()).collect(),
            outcome,
            duration_ms: started.elapsed().as_millis() as u64,
        };
        progress(&report);
        reports.push(report);
    }
    reports
}

fn panic_text(join: tokio::task::JoinError) -> String {
    match join.try_into_panic() {
        Ok(payload) => payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "non-text panic".into()),
        Err(e) => e.to_string(),
    }
}
