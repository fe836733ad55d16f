//! The commands of `ferry`. Each builds a [`Client`], does its work while watching the connection
//! events (an auth failure or a replaced session ends the run with the right exit code), and shuts the
//! client down gracefully.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::sync::watch;
use tokio::time::Instant;

use super::args::{Cli, Command, GroupCommand, HistoryArgs, ListenArgs, SendArgs, TypingArgs};
use super::format::{message_line, receipt_line, typing_line};
use super::status::{status, Status};
use super::{CliError, EXIT_AUTH, EXIT_OTHER, EXIT_UNREACHABLE, EXIT_USAGE};
use crate::{token, Client, ClientBuilder, ConnectionState, Event, Events};

/// How long commands that need the server (group, history) wait for a connection.
const CONNECT_WAIT: Duration = Duration::from_secs(30);
/// How long `typing` stays connected after its signal: datagrams leave asynchronously, and closing the
/// connection at once could discard this one.
const TYPING_LINGER: Duration = Duration::from_millis(300);

/// Runs the parsed command line.
pub async fn run(cli: Cli) -> Result<(), CliError> {
    let claims = token::read_claims(&cli.token);
    let device = cli
        .device
        .clone()
        .or_else(|| claims.as_ref().map(|c| c.dev.clone()))
        .ok_or_else(|| CliError::new(EXIT_USAGE, "no --device given and the token names none"))?;
    let user = claims.as_ref().map(|c| c.sub.clone());
    let store = match (&cli.store, &user) {
        (Some(path), _) => path.clone(),
        (None, Some(user)) => default_store_path(user, &device)?,
        (None, None) => {
            return Err(CliError::new(
                EXIT_USAGE,
                "no --store given and the token names no user",
            ))
        }
    };
    let (client, events) = ClientBuilder::new()
        .endpoints(cli.servers.iter().cloned())
        .server_name(cli.server_name.clone())
        .ca_file(&cli.ca)
        .token(cli.token.clone())
        .device_id(device.clone())
        .store_path(store.clone())
        .build()
        .await?;
    let (fatal_tx, fatal_rx) = watch::channel(None);
    let result = match cli.command {
        Command::Send(args) => {
            let watcher = tokio::spawn(watch_events(events, fatal_tx, None));
            let r = send(&client, user.as_deref(), args, cli.json, fatal_rx).await;
            watcher.abort();
            r
        }
        Command::Listen(args) => listen(&client, events, args, cli.json).await,
        Command::History(args) => {
            let watcher = tokio::spawn(watch_events(events, fatal_tx, None));
            let r = history(&client, args, cli.json, fatal_rx).await;
            watcher.abort();
            r
        }
        Command::Group(cmd) => {
            let watcher = tokio::spawn(watch_events(events, fatal_tx, None));
            let r = group(&client, cmd, fatal_rx).await;
            watcher.abort();
            r
        }
        Command::Push(cmd) => {
            let watcher = tokio::spawn(watch_events(events, fatal_tx, None));
            let r = super::push::run(&client, cmd, fatal_rx).await;
            watcher.abort();
            r
        }
        Command::Typing(args) => {
            let watcher = tokio::spawn(watch_events(events, fatal_tx, None));
            let r = typing(&client, args, fatal_rx).await;
            watcher.abort();
            r
        }
        Command::Status(args) => {
            let watcher = tokio::spawn(watch_events(events, fatal_tx, None));
            let describe =
                |stats: &_| Status::new(&cli.servers, user.as_deref(), &device, &store, stats);
            let r = status(&client, args, describe, cli.json, fatal_rx).await;
            watcher.abort();
            r
        }
    };
    client.shutdown().await;
    result
}

/// `<data dir>/ferry/<user>-<device>.sqlite3`, the data dir being `$XDG_DATA_HOME` or
/// `$HOME/.local/share`.
pub fn default_store_path(user: &str, device: &str) -> Result<PathBuf, CliError> {
    let base = std::env::var_os("XDG_DATA_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .ok_or_else(|| CliError::new(EXIT_USAGE, "no --store given and no HOME to default it"))?;
    Ok(base.join("ferry").join(format!("{user}-{device}.sqlite3")))
}

/// Maps a connection state that ends the run to its error.
fn fatal_error(state: &ConnectionState) -> Option<CliError> {
    match state {
        ConnectionState::AuthFailed { reason } => Some(CliError::new(
            EXIT_AUTH,
            format!("authentication failed: {reason}"),
        )),
        ConnectionState::Replaced => Some(CliError::new(
            EXIT_OTHER,
            "session replaced by another login of this device",
        )),
        _ => None,
    }
}

/// Consumes events, publishing the first fatal one; forwards messages and typing signals to `shown` if
/// given.
async fn watch_events(
    mut events: Events,
    fatal: watch::Sender<Option<ConnectionState>>,
    shown: Option<tokio::sync::mpsc::Sender<Event>>,
) {
    while let Some(event) = events.recv().await {
        match event {
            Event::Connection(state) => {
                tracing::debug!(?state, "connection");
                if fatal_error(&state).is_some() {
                    let _ = fatal.send(Some(state));
                }
            }
            event @ (Event::Message(_) | Event::Typing { .. }) => {
                if let Some(tx) = &shown {
                    let _ = tx.send(event).await;
                }
            }
            _ => {}
        }
    }
}

/// Resolves with the error of the first fatal connection state (never, while there is none).
pub(super) async fn wait_fatal(mut rx: watch::Receiver<Option<ConnectionState>>) -> CliError {
    match rx.wait_for(|s| s.is_some()).await {
        Ok(state) => fatal_error(state.as_ref().expect("some")).expect("fatal"),
        Err(_) => CliError::new(EXIT_OTHER, "client stopped"),
    }
}

/// The client stopped (a receipt resolved Interrupted). The state that stopped it, if any, was reported
/// just before, so its exit code (3 for a rejected token) wins over the generic `fallback`; waiting is
/// bounded because the event channel closes right after.
async fn stopped_error(
    mut rx: watch::Receiver<Option<ConnectionState>>,
    fallback: CliError,
) -> CliError {
    match tokio::time::timeout(Duration::from_secs(2), rx.wait_for(|s| s.is_some())).await {
        Ok(Ok(state)) => fatal_error(state.as_ref().expect("some")).unwrap_or(fallback),
        _ => fallback,
    }
}

/// Prints one line on stdout and flushes it (a pipe reader sees each line at once).
pub(super) fn print(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Sends of at least this many messages show a progress bar (fewer finish before it would be read).
const PROGRESS_FROM: usize = 10;

/// A progress bar on stderr for `total` receipts, only on a terminal: a pipe or a file gets nothing
/// (stdout keeps one receipt per line either way).
fn progress_bar(total: usize, terminal: bool) -> Option<ProgressBar> {
    if !terminal || total < PROGRESS_FROM {
        return None;
    }
    let bar = ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template("{bar:40} {pos}/{len} stored ({per_sec}, {eta} left)")
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    Some(bar)
}

async fn send(
    client: &Client,
    user: Option<&str>,
    args: SendArgs,
    json: bool,
    fatal: watch::Receiver<Option<ConnectionState>>,
) -> Result<(), CliError> {
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    let conversation = match (&args.conversation, &args.to) {
        (Some(c), _) => c.clone(),
        (None, Some(to)) => {
            let me = user.ok_or_else(|| {
                CliError::new(EXIT_USAGE, "--to needs a token that names its user")
            })?;
            ferry_protocol::ids::direct_conversation_id(me, to).ok_or_else(|| {
                CliError::new(
                    EXIT_USAGE,
                    format!("no direct conversation between {me} and {to}"),
                )
            })?
        }
        (None, None) => unreachable!("clap requires a target"),
    };
    let texts: Vec<String> = if args.stdin {
        std::io::stdin()
            .lock()
            .lines()
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| CliError::new(EXIT_USAGE, format!("reading stdin: {e}")))?
            .into_iter()
            .filter(|l| !l.is_empty())
            .collect()
    } else {
        args.text.into_iter().collect()
    };
    let progress = progress_bar(texts.len(), std::io::stderr().is_terminal());
    // Queue everything first (pipelined), then wait for the receipts in order.
    let mut receipts = Vec::with_capacity(texts.len());
    for text in texts {
        match client.send(conversation.clone(), text).await {
            Ok(receipt) => receipts.push(receipt),
            Err(e @ crate::SendError::Closed { .. }) => {
                return Err(stopped_error(fatal.clone(), e.into()).await)
            }
            Err(e) => return Err(e.into()),
        }
    }
    let total = receipts.len();
    for (done, receipt) in receipts.into_iter().enumerate() {
        tokio::select! {
            r = receipt => match r {
                Ok(r) => match &progress {
                    Some(bar) => {
                        bar.suspend(|| print(&receipt_line(&r, json)));
                        bar.inc(1);
                    }
                    None => print(&receipt_line(&r, json)),
                },
                Err(e @ crate::SendError::Interrupted { .. }) => {
                    return Err(stopped_error(fatal.clone(), e.into()).await)
                }
                Err(e) => return Err(e.into()),
            },
            e = wait_fatal(fatal.clone()) => return Err(e),
            _ = tokio::time::sleep_until(deadline) => {
                return Err(CliError::new(
                    EXIT_UNREACHABLE,
                    format!("timed out: {} of {total} message(s) not acknowledged; they stay in the outbox", total - done),
                ))
            }
        }
    }
    if let Some(bar) = progress {
        bar.finish_and_clear();
    }
    // Messages left over from earlier runs are flushed too before exiting.
    let remaining = deadline.saturating_duration_since(Instant::now());
    tokio::select! {
        flushed = client.flush(remaining) => {
            if !flushed {
                return Err(CliError::new(
                    EXIT_UNREACHABLE,
                    format!("timed out: {} earlier message(s) still in the outbox", client.stats().outbox),
                ));
            }
        }
        e = wait_fatal(fatal) => return Err(e),
    }
    Ok(())
}

async fn listen(
    client: &Client,
    events: Events,
    args: ListenArgs,
    json: bool,
) -> Result<(), CliError> {
    let (fatal_tx, fatal_rx) = watch::channel(None);
    let (shown_tx, mut shown_rx) = tokio::sync::mpsc::channel(1024);
    let watcher = tokio::spawn(watch_events(events, fatal_tx, Some(shown_tx)));
    let deadline = args
        .timeout
        .map(|t| Instant::now() + Duration::from_secs(t));
    let mut seen = 0u64;
    // Installed once, before the first message: a Ctrl-C at any point afterwards ends the run cleanly.
    let stop = interrupted();
    tokio::pin!(stop);
    let result = loop {
        if args.count.is_some_and(|n| seen >= n) {
            break Ok(());
        }
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            event = shown_rx.recv() => {
                let Some(event) = event else {
                    break Err(CliError::new(EXIT_OTHER, "client stopped"))
                };
                let listened = |c: &str| args.conversation.as_ref().is_none_or(|l| l == c);
                match event {
                    Event::Message(m) if listened(&m.conversation) => {
                        print(&message_line(&m, json));
                        seen += 1;
                    }
                    // Typing lines are shown but do not count towards --count.
                    Event::Typing { conversation, user, device, active } if listened(&conversation) => {
                        print(&typing_line(&conversation, &user, &device, active, json));
                    }
                    _ => {}
                }
            }
            e = wait_fatal(fatal_rx.clone()) => break Err(e),
            // Following until interrupted is the normal end of `ferry listen` (exit 0); the client
            // still shuts down gracefully, so the server sees the connection close.
            _ = &mut stop => break Ok(()),
            _ = sleep => {
                break match args.count {
                    Some(n) => Err(CliError::new(
                        EXIT_UNREACHABLE,
                        format!("timed out after {seen} of {n} message(s)"),
                    )),
                    None => Ok(()),
                };
            }
        }
    };
    watcher.abort();
    let _ = client;
    result
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM. If the handlers cannot be installed it never resolves (the
/// signal then ends the process the default way, as before).
async fn interrupted() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            return std::future::pending().await;
        };
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Messages asked of the library per call: each call pulls its pages pipelined; printing between calls
/// shows progress on long histories and keeps what was printed when `--timeout` ends the run.
const HISTORY_CHUNK: usize = 1000;

async fn history(
    client: &Client,
    args: HistoryArgs,
    json: bool,
    fatal: watch::Receiver<Option<ConnectionState>>,
) -> Result<(), CliError> {
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    // Connected, missing history can be pulled; offline, the local store answers alone.
    let connected = tokio::select! {
        c = client.connected(Duration::from_secs(5).min(Duration::from_secs(args.timeout))) => c,
        e = wait_fatal(fatal.clone()) => return Err(e),
    };
    let (mut after, mut printed) = (args.after, 0usize);
    while printed < args.limit {
        let chunk = (args.limit - printed).min(HISTORY_CHUNK);
        let page = tokio::select! {
            r = tokio::time::timeout_at(deadline, client.history(&args.conversation, after, chunk)) => match r {
                Ok(page) => page?,
                Err(_) => {
                    return Err(CliError::new(
                        EXIT_UNREACHABLE,
                        format!("history stopped early after {printed} messages: --timeout of {} s expired", args.timeout),
                    ))
                }
            },
            e = wait_fatal(fatal.clone()) => return Err(e),
        };
        for m in &page {
            print(&message_line(m, json));
        }
        printed += page.len();
        match page.last() {
            Some(last) if page.len() == chunk => after = last.seq,
            _ => break, // the end of what this reader can see
        }
    }
    if !connected && printed < args.limit {
        eprintln!("ferry: not connected: only the local store answered ({printed} messages)");
    }
    Ok(())
}

async fn typing(
    client: &Client,
    args: TypingArgs,
    fatal: watch::Receiver<Option<ConnectionState>>,
) -> Result<(), CliError> {
    // The client drops typing signals until Welcome (FERRY-DGRAM-5), so wait for the session first.
    let connected = tokio::select! {
        c = client.connected(Duration::from_secs(args.timeout)) => c,
        e = wait_fatal(fatal.clone()) => return Err(e),
    };
    if !connected {
        return Err(CliError::new(
            EXIT_UNREACHABLE,
            "timed out waiting for the server",
        ));
    }
    client.typing(&args.conversation, !args.stop).await?;
    tokio::select! {
        _ = tokio::time::sleep(TYPING_LINGER) => Ok(()),
        e = wait_fatal(fatal) => Err(e),
    }
}

async fn group(
    client: &Client,
    cmd: GroupCommand,
    fatal: watch::Receiver<Option<ConnectionState>>,
) -> Result<(), CliError> {
    let work = async {
        match cmd {
            GroupCommand::Create { name, members } => {
                print(&client.create_group(&name, &members).await?);
            }
            GroupCommand::Add { conversation, user } => {
                let change = client.add_member(&conversation, &user).await?;
                print(&format!(
                    "added {user} to {} at seq={}",
                    change.conversation, change.seq
                ));
            }
            GroupCommand::Remove { conversation, user } => {
                let change = client.remove_member(&conversation, &user).await?;
                print(&format!(
                    "removed {user} from {} at seq={}",
                    change.conversation, change.seq
                ));
            }
        }
        Ok::<(), CliError>(())
    };
    tokio::select! {
        r = tokio::time::timeout(CONNECT_WAIT, work) => r.unwrap_or_else(|_| {
            Err(CliError::new(EXIT_UNREACHABLE, "timed out waiting for the server"))
        }),
        e = wait_fatal(fatal) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn a_progress_bar_only_on_a_terminal_and_for_many_lines() {
        assert!(progress_bar(1000, false).is_none(), "piped: nothing");
        assert!(
            progress_bar(PROGRESS_FROM - 1, true).is_none(),
            "a few lines"
        );
        let bar = progress_bar(1000, true).expect("a terminal and many lines");
        assert_eq!(bar.length(), Some(1000));
    }

    #[test]
    fn default_store_path_names_user_and_device() {
        let path = default_store_path("alice", "phone").unwrap();
        assert!(
            path.ends_with("ferry/alice-phone.sqlite3"),
            "{}",
            path.display()
        );
    }

    #[test]
    fn auth_failure_and_replacement_end_the_run() {
        let auth = fatal_error(&ConnectionState::AuthFailed {
            reason: "expired".into(),
        })
        .unwrap();
        assert_eq!(auth.code, EXIT_AUTH);
        assert!(fatal_error(&ConnectionState::Replaced).is_some());
        assert!(fatal_error(&ConnectionState::Disconnected { reason: "x".into() }).is_none());
    }
}
