//! The client under test as a process: its output contract ([`OutputLine`]) and [`ClientRun`], its
//! stdout streamed line by line, its exit status judged (127 = Unsupported).

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::mpsc;

use super::UNSUPPORTED_EXIT;
use crate::runner::Verdict;
use crate::{ensure, fail, unsupported};

/// One line of the client's output.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum OutputLine {
    /// A message handed to the application.
    Received {
        /// Conversation id.
        conversation: String,
        /// Its seq.
        seq: u64,
        /// Sending user.
        from: String,
        /// Sending device.
        device: String,
        /// Body as UTF-8 text.
        body: String,
        /// `Message.server_time_ms`.
        server_time: u64,
    },
    /// A typing signal the client reported (cases `datagrams`).
    Typing {
        /// Conversation id.
        conversation: String,
        /// `Typing.active`.
        typing: bool,
        /// The typing user.
        from: String,
        /// Their device.
        device: String,
    },
    /// A message the client sent and got a SendAck for.
    Sent {
        /// Conversation id.
        conversation: String,
        /// Seq from the SendAck.
        seq: u64,
        /// The id the client chose.
        client_msg_id: String,
        /// From the SendAck.
        duplicate: bool,
    },
}

/// Parses the client's stdout; blank lines are skipped, anything else that is not an output line fails.
pub fn parse_output(stdout: &str) -> Result<Vec<OutputLine>, Verdict> {
    let mut out = Vec::new();
    for (i, line) in stdout.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str(line) {
            Ok(parsed) => out.push(parsed),
            Err(e) => fail!(
                "stdout line {} is not a send or receive record ({e}): {line:?}",
                i + 1
            ),
        }
    }
    Ok(out)
}

/// A client process under test, its stdout streamed line by line.
pub struct ClientRun {
    pub(super) child: tokio::process::Child,
    pub(super) token: String,
    pub(super) lines: mpsc::Receiver<String>,
    pub(super) stderr: Arc<std::sync::Mutex<String>>,
    /// Every stdout line so far.
    pub stdout: Vec<String>,
}

impl ClientRun {
    /// Waits until the client printed `count` lines in total (bounded).
    pub async fn wait_lines(&mut self, count: usize, within: Duration) -> Result<(), Verdict> {
        let deadline = tokio::time::Instant::now() + within;
        while self.stdout.len() < count {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(line)) => self.stdout.push(line),
                Ok(None) => {
                    let status =
                        tokio::time::timeout(Duration::from_secs(2), self.child.wait()).await;
                    if let Ok(Ok(status)) = status {
                        if status.code() == Some(UNSUPPORTED_EXIT) {
                            unsupported!("the client does not support this case (exit 127)");
                        }
                    }
                    fail!(
                        "client exited after {} of {count} output lines; stderr: {}",
                        self.stdout.len(),
                        self.stderr_tail()
                    )
                }
                Err(_) => fail!(
                    "client printed {} of {count} output lines within {} s; stderr: {}",
                    self.stdout.len(),
                    within.as_secs(),
                    self.stderr_tail()
                ),
            }
        }
        Ok(())
    }

    /// Waits for the client to exit (bounded); 127 is Unsupported, other non-zero statuses fail.
    pub async fn finish(mut self, within: Duration) -> Result<Vec<OutputLine>, Verdict> {
        let status = match tokio::time::timeout(within, self.child.wait()).await {
            Ok(status) => {
                status.map_err(|e| Verdict::Fail(format!("waiting for the client: {e}")))?
            }
            Err(_) => {
                self.kill_group().await;
                fail!(
                    "client did not exit within {} s; stderr: {}",
                    within.as_secs(),
                    self.stderr_tail()
                );
            }
        };
        while let Some(line) = self.lines.recv().await {
            self.stdout.push(line);
        }
        // FERRY-SEC-1: tokens never appear in logs or output.
        let stderr = self.stderr.lock().expect("stderr lock").clone();
        ensure!(
            !self.stdout.iter().any(|l| l.contains(&self.token)) && !stderr.contains(&self.token),
            "the client printed its token (FERRY-SEC-1)"
        );
        match status.code() {
            Some(0) => {}
            Some(UNSUPPORTED_EXIT) => {
                unsupported!("the client does not support this case (exit 127)")
            }
            _ => fail!(
                "client exited with {status}; stderr: {}",
                self.stderr_tail()
            ),
        }
        parse_output(&self.stdout.join("\n"))
    }

    /// The exit code if the client has exited already.
    pub fn exit_code(&mut self) -> Option<i32> {
        self.child.try_wait().ok().flatten().and_then(|s| s.code())
    }

    /// Kills the client (cases where it is expected to run on).
    pub async fn kill(mut self) -> Vec<String> {
        self.kill_group().await;
        while let Ok(Some(line)) =
            tokio::time::timeout(Duration::from_millis(200), self.lines.recv()).await
        {
            self.stdout.push(line);
        }
        std::mem::take(&mut self.stdout)
    }

    /// SIGKILLs the client's whole process group (spawned with its own, see `Scene::spawn`) and reaps
    /// `sh`: killing only `sh` would leave the client running.
    async fn kill_group(&mut self) {
        kill_group(&self.child);
        let _ = self.child.kill().await;
    }

    pub(super) fn stderr_tail(&self) -> String {
        let text = self.stderr.lock().expect("stderr lock").clone();
        let tail: String = text
            .chars()
            .rev()
            .take(600)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        if tail.trim().is_empty() {
            "(empty)".into()
        } else {
            tail.trim().to_owned()
        }
    }
}

/// SIGKILL to the process group led by `child`, if it still runs.
fn kill_group(child: &tokio::process::Child) {
    if let Some(pid) = child.id() {
        // SAFETY: killpg has no memory-safety preconditions; the group is the child's own (process_group(0)).
        unsafe { libc::killpg(pid as libc::pid_t, libc::SIGKILL) };
    }
}

impl Drop for ClientRun {
    fn drop(&mut self) {
        kill_group(&self.child);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_lines_parse() {
        let out = "{\"conversation\":\"d:a:b\",\"seq\":3,\"client_msg_id\":\"x\",\"duplicate\":false}\n\n\
                   {\"conversation\":\"d:a:b\",\"seq\":4,\"from\":\"b\",\"device\":\"d\",\"body\":\"hi\",\"server_time\":5}\n";
        let lines = parse_output(out).unwrap();
        assert!(matches!(
            &lines[0],
            OutputLine::Sent {
                seq: 3,
                duplicate: false,
                ..
            }
        ));
        assert!(matches!(&lines[1], OutputLine::Received { seq: 4, .. }));
        assert!(parse_output("not json").is_err());
        assert!(parse_output("{\"seq\":1}").is_err());
    }
}
