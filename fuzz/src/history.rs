//! The inputs a stateful target ran before a crash, written out when it panics, so that a crash that
//! needs the state earlier inputs left behind can be replayed.
//!
//! `server_script` keeps one server and one session across inputs: a crash may need what earlier
//! inputs did (groups they created, messages in the store, the session they closed), and libFuzzer
//! saves only the input that crashed. [`History`] keeps the last [`KEEP`] inputs; on a panic (in any
//! thread: the hook runs before libfuzzer-sys's, which aborts) it writes them to
//! `artifacts/TARGET/history-PID/NNNNNN` in the order they ran, the crashing one last. libFuzzer runs
//! file arguments one after the other in one process, so
//!
//! ```sh
//! cd fuzz && target/x86_64-unknown-linux-gnu/release/server_script artifacts/server_script/history-PID/*
//! ```
//!
//! replays the sequence (the shell sorts the zero-padded names into run order).

use std::collections::VecDeque;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Mutex, Once};

/// Inputs kept: enough to cover the state a crash has needed so far (a few hundred inputs between
/// the script's session being closed and reopened), few enough to bound memory at 4 KiB each
/// (libFuzzer's default `-max_len`): about 8 MiB.
pub const KEEP: usize = 2_000;

/// The last [`KEEP`] inputs of one target, dumped on a panic.
pub struct History {
    target: &'static str,
    inputs: Mutex<VecDeque<Vec<u8>>>,
    hook: Once,
}

impl History {
    /// An empty history for `target` (names the artifact directory).
    pub const fn new(target: &'static str) -> History {
        History {
            target,
            inputs: Mutex::new(VecDeque::new()),
            hook: Once::new(),
        }
    }

    /// Records `input` (about to run) and, the first time, installs the panic hook that dumps the
    /// history.
    pub fn record(&'static self, input: &[u8]) {
        self.hook.call_once(|| {
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                self.dump();
                previous(info);
            }));
        });
        let mut inputs = self.inputs.lock().unwrap_or_else(|e| e.into_inner());
        if inputs.len() == KEEP {
            inputs.pop_front();
        }
        inputs.push_back(input.to_vec());
    }

    /// Forgets every input: what ran before no longer matters (e.g. the server restarted on a fresh
    /// directory).
    pub fn clear(&self) {
        self.inputs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// Writes the inputs to `artifacts/TARGET/history-PID/`; best effort (a panic hook must not fail).
    fn dump(&self) {
        // `try_lock`: the panic may come from a thread that holds the lock (it never panics inside,
        // but a hook must not deadlock on that promise).
        let Ok(inputs) = self.inputs.try_lock() else {
            eprintln!("history: locked, not written");
            return;
        };
        let dir = PathBuf::from(format!(
            "artifacts/{}/history-{}",
            self.target,
            std::process::id()
        ));
        if std::fs::create_dir_all(&dir).is_err() {
            eprintln!("history: cannot create {}", dir.display());
            return;
        }
        for (i, input) in inputs.iter().enumerate() {
            let path = dir.join(format!("{i:06}"));
            if let Ok(mut f) = std::fs::File::create(&path) {
                let _ = f.write_all(input);
            }
        }
        eprintln!(
            "history: the last {} inputs (the crashing one last) are in {}; replay them in order with \
             `target/x86_64-unknown-linux-gnu/release/{} {}/*`",
            inputs.len(),
            dir.display(),
            self.target,
            dir.display()
        );
    }
}
