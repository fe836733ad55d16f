//! Command-line arguments of `ferry` (clap derive).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Exit codes, shown in `--help`.
pub const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  other failure
  2  bad input or usage
  3  authentication failed (token rejected)
  4  server unreachable, or --timeout expired (unacknowledged messages stay in the outbox)
  5  rejected by the server (FORBIDDEN, INVALID_ARGUMENT, NOT_FOUND, ...)";

/// Examples of `ferry` as a whole, shown in `ferry --help` before the exit codes.
const MAIN_EXAMPLES: &str = "\
Examples:
  export FERRY_SERVER=127.0.0.1:7700 FERRY_CA=ca.pem FERRY_TOKEN=v1.<payload>.<mac>
  ferry send --to bob 'hello bob'
  ferry listen                      # follow until Ctrl-C
  ferry history d:alice:bob --limit 500
  ferry status";

const SEND_HELP: &str = "\
Examples:
  ferry send --to bob 'hello bob'
  ferry send --conversation g:0123456789abcdef0123456789abcdef 'hello all'
  seq 1 1000 | ferry send --to bob --stdin --json   # a progress bar on stderr if it is a terminal";

const LISTEN_HELP: &str = "\
Examples:
  ferry listen                                  # every conversation, until Ctrl-C
  ferry listen --conversation d:alice:bob --json
  ferry listen --count 1 --timeout 30           # wait for one message: exit 0, or 4 after 30 s";

const HISTORY_HELP: &str = "\
Examples:
  ferry history d:alice:bob                     # the first 100 messages
  ferry history d:alice:bob --after 1200 --limit 5000 --json";

const GROUP_HELP: &str = "\
Examples:
  ferry group create crew --members bob,carol   # prints the group's conversation id
  ferry group add g:0123456789abcdef0123456789abcdef dave
  ferry group remove g:0123456789abcdef0123456789abcdef alice   # leave";

const TYPING_HELP: &str = "\
Examples:
  ferry typing --conversation d:alice:bob
  ferry typing --conversation d:alice:bob --stop";

const STATUS_HELP: &str = "\
Examples:
  ferry status           # server, user, device, connection state, outbox size
  ferry whoami --json

Exit code 4 if no connection was made within --timeout (the rest is printed anyway).";

/// Ferry command-line client: send, listen, read history, manage groups, signal typing.
#[derive(Debug, Parser)]
#[command(name = "ferry", version, after_help = format!("{MAIN_EXAMPLES}\n\n{EXIT_CODES}"))]
pub struct Cli {
    /// Server endpoint(s) as host:port; repeat or separate with commas for failover.
    #[arg(
        long = "server",
        env = "FERRY_SERVER",
        value_delimiter = ',',
        required = true
    )]
    pub servers: Vec<String>,
    /// Bearer token (`v1.<payload>.<mac>`).
    #[arg(long, env = "FERRY_TOKEN", hide_env_values = true)]
    pub token: String,
    /// PEM file with the CA (or the server's own certificate, to pin it).
    #[arg(long, env = "FERRY_CA")]
    pub ca: PathBuf,
    /// TLS server name to verify.
    #[arg(long, env = "FERRY_SERVER_NAME", default_value = "localhost")]
    pub server_name: String,
    /// Device id (default: the token's `dev` claim).
    #[arg(long, env = "FERRY_DEVICE")]
    pub device: Option<String>,
    /// Client store, SQLite (default: `<data dir>/ferry/<user>-<device>.sqlite3`).
    #[arg(long, env = "FERRY_STORE")]
    pub store: Option<PathBuf>,
    /// Print JSON, one object per line.
    #[arg(long, global = true)]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Send messages; prints one receipt per message once the server stored it.
    #[command(after_help = SEND_HELP)]
    Send(SendArgs),
    /// Print delivered messages as they arrive, until Ctrl-C (or --count / --timeout).
    #[command(after_help = LISTEN_HELP)]
    Listen(ListenArgs),
    /// Print stored messages of a conversation (pulling what is not local).
    #[command(after_help = HISTORY_HELP)]
    History(HistoryArgs),
    /// Group administration.
    #[command(subcommand, after_help = GROUP_HELP)]
    Group(GroupCommand),
    /// Tell the other members you are typing (or stopped): one unreliable signal, once connected.
    #[command(after_help = TYPING_HELP)]
    Typing(TypingArgs),
    /// Print server, user, device, connection state and outbox size.
    #[command(visible_alias = "whoami", after_help = STATUS_HELP)]
    Status(StatusArgs),
    /// Offline push: register this device's push endpoint, remove it, or list the user's.
    #[command(subcommand, after_help = PUSH_HELP)]
    Push(PushCommand),
}

const PUSH_HELP: &str = "\
Examples:
  ferry push register --endpoint https://ntfy.example/upAbc123   # a UnifiedPush endpoint
  ferry push register --endpoint https://ntfy.example/upAbc123 --policy preview
  ferry push register --app-token <FCM token>   # when the server posts to a push gateway
  ferry push unregister
  ferry push list

The server must allow the endpoint (push.allow); a refused endpoint exits with status 5.";

/// `ferry push ...`.
#[derive(Debug, Subcommand)]
pub enum PushCommand {
    /// Register (or replace) this device's push endpoint; prints the stored registration.
    #[command(after_help = PUSH_HELP)]
    Register {
        /// The URL the server POSTs to (from the UnifiedPush distributor); may be omitted when the
        /// server posts to a push gateway.
        #[arg(long, default_value = "")]
        endpoint: String,
        /// What a notification may reveal: none (wake-up only), preview (sender and group name) or
        /// body (preview plus the message body; only where the server allows it).
        #[arg(long, default_value = "none")]
        policy: crate::push::PushPolicy,
        /// Opaque token copied into every notification (e.g. a gateway's pushkey).
        #[arg(long, default_value = "")]
        app_token: String,
        /// Give up after this many seconds without a connection (exit 4).
        #[arg(long, default_value_t = 30)]
        timeout: u64,
    },
    /// Remove this device's push registration.
    #[command(after_help = PUSH_HELP)]
    Unregister {
        /// Give up after this many seconds without a connection (exit 4).
        #[arg(long, default_value_t = 30)]
        timeout: u64,
    },
    /// List the push registrations of every device of this user.
    #[command(after_help = PUSH_HELP)]
    List {
        /// Give up after this many seconds without a connection (exit 4).
        #[arg(long, default_value_t = 30)]
        timeout: u64,
    },
}

/// `ferry status` (or `ferry whoami`).
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Wait this many seconds for a connection before reporting it as missing (exit 4).
    #[arg(long, default_value_t = 5)]
    pub timeout: u64,
}

/// A well-formed conversation id (`d:<user>:<user>` or `g:<32 hex>`), checked before connecting.
fn conversation_id(id: &str) -> Result<String, String> {
    match ferry_protocol::ids::parse_conversation_id(id) {
        Some(_) => Ok(id.to_owned()),
        None => Err(
            "malformed conversation id: expected d:<user>:<user> (users in byte order) or \
                     g:<32 lowercase hex digits>"
                .to_owned(),
        ),
    }
}

/// `ferry send`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["to", "conversation"])))]
#[command(group(clap::ArgGroup::new("input").required(true).args(["text", "stdin"])))]
pub struct SendArgs {
    /// Send to the direct conversation with this user.
    #[arg(long)]
    pub to: Option<String>,
    /// Send to this conversation id.
    #[arg(long)]
    pub conversation: Option<String>,
    /// Read messages from standard input, one per line (empty lines are skipped).
    #[arg(long)]
    pub stdin: bool,
    /// The message text.
    pub text: Option<String>,
    /// Give up after this many seconds (exit 4); unacknowledged messages stay in the outbox and are
    /// sent by the next run.
    #[arg(long, default_value_t = 30)]
    pub timeout: u64,
}

/// `ferry listen`.
#[derive(Debug, Args)]
pub struct ListenArgs {
    /// Only print messages of this conversation.
    #[arg(long)]
    pub conversation: Option<String>,
    /// Exit 0 after this many messages (without it: follow until Ctrl-C, then exit 0).
    #[arg(long)]
    pub count: Option<u64>,
    /// Stop after this many seconds: exit 4 if --count was not reached, else 0.
    #[arg(long)]
    pub timeout: Option<u64>,
}

/// `ferry history`.
#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// Conversation id.
    pub conversation: String,
    /// Only messages after this seq.
    #[arg(long, default_value_t = 0)]
    pub after: u64,
    /// At most this many messages (paged from the server as needed).
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
    /// Stop after this many seconds, keeping what was printed (exit 4, said on stderr).
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
}

/// `ferry typing`.
#[derive(Debug, Args)]
pub struct TypingArgs {
    /// Conversation id.
    #[arg(long, value_parser = conversation_id)]
    pub conversation: String,
    /// Signal that you stopped typing.
    #[arg(long)]
    pub stop: bool,
    /// Give up after this many seconds without a connection (exit 4).
    #[arg(long, default_value_t = 30)]
    pub timeout: u64,
}

/// `ferry group ...`.
#[derive(Debug, Subcommand)]
pub enum GroupCommand {
    /// Create a group; prints its conversation id.
    #[command(after_help = GROUP_HELP)]
    Create {
        /// Group name.
        name: String,
        /// Initial members besides you, comma-separated.
        #[arg(long, value_delimiter = ',')]
        members: Vec<String>,
    },
    /// Add a user to a group (owner only).
    #[command(after_help = GROUP_HELP)]
    Add {
        /// Conversation id of the group.
        conversation: String,
        /// User to add.
        user: String,
    },
    /// Remove a user from a group (owner, or yourself to leave).
    #[command(after_help = GROUP_HELP)]
    Remove {
        /// Conversation id of the group.
        conversation: String,
        /// User to remove.
        user: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::error::ErrorKind;

    const BASE: [&str; 7] = [
        "ferry",
        "--server",
        "127.0.0.1:1,127.0.0.1:2",
        "--token",
        "v1.x.y",
        "--ca",
        "ca.pem",
    ];

    fn parse(extra: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(BASE.iter().chain(extra))
    }

    #[test]
    fn send_to_user_with_comma_separated_servers() {
        let cli = parse(&["send", "--to", "bob", "hi there", "--json"]).unwrap();
        assert_eq!(cli.servers, ["127.0.0.1:1", "127.0.0.1:2"]);
        assert!(cli.json);
        let Command::Send(send) = cli.command else {
            panic!()
        };
        assert_eq!(send.to.as_deref(), Some("bob"));
        assert_eq!(send.text.as_deref(), Some("hi there"));
        assert_eq!(send.timeout, 30);
    }

    #[test]
    fn send_needs_exactly_one_target_and_one_input() {
        let err = |args: &[&str]| parse(args).unwrap_err().kind();
        assert_eq!(err(&["send", "hi"]), ErrorKind::MissingRequiredArgument);
        assert_eq!(
            err(&["send", "--to", "bob", "--conversation", "d:a:b", "hi"]),
            ErrorKind::ArgumentConflict
        );
        assert_eq!(
            err(&["send", "--to", "bob"]),
            ErrorKind::MissingRequiredArgument
        );
        assert_eq!(
            err(&["send", "--to", "bob", "--stdin", "hi"]),
            ErrorKind::ArgumentConflict
        );
        assert!(parse(&["send", "--conversation", "g:1", "--stdin", "--timeout", "5"]).is_ok());
    }

    #[test]
    fn listen_history_and_group_parse() {
        let cli = parse(&["listen", "--count", "3", "--timeout", "9"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Listen(ListenArgs {
                count: Some(3),
                timeout: Some(9),
                conversation: None
            })
        ));
        let cli = parse(&["history", "d:a:b", "--after", "4", "--limit", "2"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::History(HistoryArgs {
                after: 4,
                limit: 2,
                ..
            })
        ));
        let cli = parse(&["group", "create", "team", "--members", "a,b,c"]).unwrap();
        let Command::Group(GroupCommand::Create { name, members }) = cli.command else {
            panic!()
        };
        assert_eq!((name.as_str(), members.len()), ("team", 3));
        assert!(parse(&["group", "add", "g:1", "dave"]).is_ok());
    }

    #[test]
    fn typing_needs_a_well_formed_conversation() {
        let cli = parse(&["typing", "--conversation", "d:alice:bob"]).unwrap();
        let Command::Typing(args) = cli.command else {
            panic!()
        };
        assert_eq!(
            (args.conversation.as_str(), args.stop, args.timeout),
            ("d:alice:bob", false, 30)
        );
        let cli = parse(&["typing", "--conversation", "d:alice:bob", "--stop"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Typing(TypingArgs { stop: true, .. })
        ));
        let err = parse(&["typing", "--conversation", "d:bob:alice"]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ValueValidation);
        assert!(
            err.to_string().contains("malformed conversation id"),
            "{err}"
        );
        assert_eq!(
            parse(&["typing"]).unwrap_err().kind(),
            ErrorKind::MissingRequiredArgument
        );
    }

    #[test]
    fn server_is_required_and_help_lists_exit_codes() {
        assert_eq!(
            Cli::try_parse_from(["ferry", "--token", "t", "--ca", "c", "listen"])
                .unwrap_err()
                .kind(),
            ErrorKind::MissingRequiredArgument
        );
        let help = parse(&["--help"]).unwrap_err().to_string();
        assert!(help.contains("3  authentication failed"), "{help}");
    }

    /// Every command's `--help` shows at least one example that uses the command itself.
    #[test]
    fn every_command_help_has_an_example() {
        let mut commands: Vec<Vec<&str>> = vec![vec![]];
        for sub in [
            "send", "listen", "history", "typing", "status", "whoami", "group",
        ] {
            commands.push(vec![sub]);
        }
        for sub in ["create", "add", "remove"] {
            commands.push(vec!["group", sub]);
        }
        for command in commands {
            let mut args = command.clone();
            args.push("--help");
            let help = parse(&args).unwrap_err();
            assert_eq!(help.kind(), ErrorKind::DisplayHelp, "{command:?}");
            let help = help.to_string();
            let example = format!("ferry {}", command.first().map_or("", |c| *c));
            let example = match command.first() {
                Some(&"whoami") => "ferry whoami".to_owned(),
                _ => example,
            };
            assert!(
                help.contains("Examples:") && help.contains(example.trim_end()),
                "{command:?}: {help}"
            );
        }
    }

    #[test]
    fn status_and_its_whoami_alias_parse() {
        for name in ["status", "whoami"] {
            let cli = parse(&[name]).unwrap();
            assert!(matches!(
                cli.command,
                Command::Status(StatusArgs { timeout: 5 })
            ));
        }
    }
}
