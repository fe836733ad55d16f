//! Where the runner's tokens come from. ferry/1 leaves the token format to the server (FERRY-AUTH-2),
//! so the runner never mints one itself: it asks `ferry-server token` (for ferry-server, `--data-dir`),
//! a command of the user's (`--token-cmd`, for other servers), or a function a test hands it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::runner::Verdict;
use crate::{ensure, fail};

/// How long a token asked for a session lives: longer than any run.
const TOKEN_TTL: Duration = Duration::from_secs(3600);
/// Bound on one token command (a process start and an HMAC; seconds only on a very loaded machine).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// Mints a token for (user, device) valid for `ttl` from `issued_at`.
pub type MintFn = dyn Fn(&str, &str, Duration, SystemTime) -> String + Send + Sync;

/// How the runner gets tokens for the users it invents.
#[derive(Clone)]
pub enum TokenSource {
    /// `ferry-server token --data-dir DATA_DIR` with the binary at `bin` (`--data-dir`).
    ServerToken {
        /// The `ferry-server` binary.
        bin: PathBuf,
        /// The server's data dir (it holds the token secret).
        data_dir: PathBuf,
    },
    /// `sh -c "<cmd> USER DEVICE"` prints a token on stdout (`--token-cmd`), for other servers.
    Command(String),
    /// A function of the test that started the server and holds its secret.
    Mint(Arc<MintFn>),
}

impl TokenSource {
    /// Tokens minted in process by `mint(user, device, ttl, issued_at)`.
    pub fn minted_by(
        mint: impl Fn(&str, &str, Duration, SystemTime) -> String + Send + Sync + 'static,
    ) -> TokenSource {
        TokenSource::Mint(Arc::new(mint))
    }

    /// A token for `user` on `device`, valid for an hour.
    pub async fn token(&self, user: &str, device: &str) -> Result<String, Verdict> {
        match self {
            TokenSource::ServerToken { bin, data_dir } => {
                server_token(bin, data_dir, user, device, "1h").await
            }
            TokenSource::Command(cmd) => {
                // User and device ids are [A-Za-z0-9._@-] only, so they need no shell quoting.
                let mut command = tokio::process::Command::new("sh");
                command.arg("-c").arg(format!("{cmd} {user} {device}"));
                run_token_command(command, "--token-cmd").await
            }
            TokenSource::Mint(mint) => Ok(mint(user, device, TOKEN_TTL, SystemTime::now())),
        }
    }

    /// A token for `user` on `device` that has expired (not with `--token-cmd`: Unsupported).
    pub async fn expired_token(&self, user: &str, device: &str) -> Result<String, Verdict> {
        match self {
            TokenSource::ServerToken { bin, data_dir } => {
                // `ferry-server token` mints from now on; the shortest lifetime is one second and
                // expiry is checked in whole seconds (expired once now >= iat + ttl). iat is at most
                // the second this returns in, so from the next whole second on the token is expired.
                let token = server_token(bin, data_dir, user, device, "1s").await?;
                tokio::time::sleep(until_next_second(SystemTime::now())).await;
                Ok(token)
            }
            TokenSource::Command(_) => Err(Verdict::Unsupported(
                "needs --data-dir to mint an expired token".into(),
            )),
            TokenSource::Mint(mint) => {
                let past = SystemTime::now() - 2 * TOKEN_TTL;
                Ok(mint(user, device, TOKEN_TTL, past))
            }
        }
    }
}

/// From `now` to the start of the next whole unix second, plus a little for clock granularity.
fn until_next_second(now: SystemTime) -> Duration {
    let into_second = now
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    Duration::from_nanos(1_000_000_000 - u64::from(into_second)) + Duration::from_millis(20)
}

async fn server_token(
    bin: &std::path::Path,
    data_dir: &std::path::Path,
    user: &str,
    device: &str,
    ttl: &str,
) -> Result<String, Verdict> {
    let mut command = tokio::process::Command::new(bin);
    command
        .arg("token")
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--user", user, "--device", device, "--ttl", ttl]);
    run_token_command(command, "ferry-server token").await
}

/// Runs `command` (bounded) and returns the token it printed.
async fn run_token_command(
    command: tokio::process::Command,
    what: &str,
) -> Result<String, Verdict> {
    let output = run_bounded(command, what).await?;
    let token = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    ensure!(!token.is_empty(), "{what} printed no token");
    Ok(token)
}

/// Runs `command` with no stdin, at most `COMMAND_TIMEOUT`; it must exit 0. `what` names it in failures.
pub(crate) async fn run_bounded(
    mut command: tokio::process::Command,
    what: &str,
) -> Result<std::process::Output, Verdict> {
    let run = command
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(COMMAND_TIMEOUT, run)
        .await
        .map_err(|_| {
            Verdict::Fail(format!(
                "{what} took more than {} s",
                COMMAND_TIMEOUT.as_secs()
            ))
        })?
        .map_err(|e| Verdict::Fail(format!("{what}: {e}")))?;
    if !output.status.success() {
        fail!(
            "{what} exited with {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(output)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_second_is_reached() {
        let at = UNIX_EPOCH + Duration::from_millis(5_300);
        let wait = until_next_second(at);
        assert_eq!(wait, Duration::from_millis(720));
        let whole = UNIX_EPOCH + Duration::from_secs(7);
        assert_eq!(until_next_second(whole), Duration::from_millis(1_020));
    }

    #[tokio::test]
    async fn command_tokens_are_trimmed_and_failures_are_reasons() {
        let source = TokenSource::Command("echo tok-".into());
        assert_eq!(
            source.token("alice", "phone").await.unwrap(),
            "tok- alice phone"
        );
        let failing = TokenSource::Command("exit 3 #".into());
        match failing.token("alice", "phone").await {
            Err(Verdict::Fail(reason)) => assert!(reason.contains("exited"), "{reason}"),
            other => panic!("expected a failure, got {other:?}"),
        }
        let silent = TokenSource::Command("true".into());
        assert!(matches!(
            silent.token("a", "b").await,
            Err(Verdict::Fail(_))
        ));
        assert!(matches!(
            failing.expired_token("a", "b").await,
            Err(Verdict::Unsupported(_))
        ));
    }
}
