//! The `ferry` command-line tool: argument parsing (`args`), the commands (`run`, and `status` for
//! `ferry status`/`whoami`) and what they print (`format`). Exit codes are listed in `args::EXIT_CODES`
//! and in `--help`.

pub mod args;
pub mod format;
mod push;
pub mod run;
pub mod status;

use crate::error::{ClientError, SendError};

/// A failure with its exit code and a one-line message for stderr.
#[derive(Debug)]
pub struct CliError {
    /// Process exit code.
    pub code: u8,
    /// One line for stderr.
    pub message: String,
}

/// Exit code: other failure.
pub const EXIT_OTHER: u8 = 1;
/// Exit code: bad input or usage (clap's own code, too).
pub const EXIT_USAGE: u8 = 2;
/// Exit code: authentication failed.
pub const EXIT_AUTH: u8 = 3;
/// Exit code: server unreachable or timeout.
pub const EXIT_UNREACHABLE: u8 = 4;
/// Exit code: rejected by the server.
pub const EXIT_REJECTED: u8 = 5;

impl CliError {
    /// A failure with an explicit code.
    pub fn new(code: u8, message: impl Into<String>) -> Self {
        CliError {
            code,
            message: message.into(),
        }
    }
}

impl From<ClientError> for CliError {
    fn from(e: ClientError) -> Self {
        let code = match &e {
            ClientError::Auth(_) => EXIT_AUTH,
            ClientError::Unreachable(_) | ClientError::Disconnected => EXIT_UNREACHABLE,
            ClientError::Protocol { .. } => EXIT_REJECTED,
            ClientError::Config(_) => EXIT_USAGE,
            ClientError::Store(_) | ClientError::Closed => EXIT_OTHER,
        };
        CliError::new(code, e.to_string())
    }
}

impl From<SendError> for CliError {
    fn from(e: SendError) -> Self {
        let code = match &e {
            SendError::Rejected { .. } => EXIT_REJECTED,
            SendError::Invalid { .. } | SendError::TooLarge { .. } => EXIT_USAGE,
            SendError::Closed { .. } | SendError::Interrupted { .. } | SendError::Store { .. } => {
                EXIT_OTHER
            }
        };
        CliError::new(code, e.to_string())
    }
}
