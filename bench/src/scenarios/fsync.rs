//! `fsync-check`: does each system fsync before it acks? strace (`-f -c -e trace=fsync,fdatasync`)
//! is attached to the server process during a short closed-loop run; the table compares acked sends
//! with fsync calls. Fewer fsyncs than acks means group commit; none means no fsync before the ack.

use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};

use super::Config;
use crate::harness::Params;
use crate::peers::process::find;
use crate::peers::{Running, System};
use crate::report::{FsyncRow, Results};

/// Runs the check for every configured system.
pub async fn run(config: &Config, results: &mut Results) {
    for &system in &config.systems {
        match measure(config, system).await {
            Ok(row) => {
                println!(
                    "fsync-check {:>14}: {} acked, {} fsync/fdatasync calls",
                    system.name(),
                    row.acked,
                    row.fsyncs
                );
                results.fsync_check.push(row);
            }
            Err(e) => results
                .errors
                .push(format!("fsync-check {}: {e:#}", system.name())),
        }
    }
}

async fn measure(config: &Config, system: System) -> anyhow::Result<FsyncRow> {
    let strace = find("strace", "strace")?;
    let running = Running::start(system, &config.ferry_binary).await?;
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("strace.txt");
    let errors = dir.path().join("strace.err");
    let mut tracer = Command::new(strace)
        .args(["-f", "-c", "-e", "trace=fsync,fdatasync", "-o"])
        .arg(&out)
        .arg("-p")
        .arg(running.durable_pid().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&errors)?)
        .spawn()
        .context("starting strace")?;
    // strace needs a moment to attach to every thread.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let p = Params {
        clients: 10,
        body: 256,
        window: config.window,
        duration: Duration::from_secs(2),
    };
    let counted = running.throughput(&p).await;
    // SIGINT makes strace detach and write its summary.
    // SAFETY: kill has no memory preconditions; the pid is our own child's.
    unsafe { libc::kill(tracer.id() as libc::pid_t, libc::SIGINT) };
    let status = tracer.wait()?;
    let counted = counted?;
    // strace writes no summary at all when it counted no call, so an empty summary means zero fsyncs;
    // a failed attach shows on its stderr.
    let summary = std::fs::read_to_string(&out).unwrap_or_default();
    let stderr = std::fs::read_to_string(&errors).unwrap_or_default();
    if stderr.contains("ptrace") || stderr.contains("Operation not permitted") {
        bail!("strace could not attach ({status}): {}", stderr.trim());
    }
    Ok(FsyncRow {
        system,
        acked: counted.acked,
        fsyncs: parse_calls(&summary),
    })
}

/// Sums the `calls` column of the fsync and fdatasync rows of strace's `-c` summary.
fn parse_calls(summary: &str) -> u64 {
    summary
        .lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line.split_whitespace().collect();
            match cells.last() {
                Some(&"fsync") | Some(&"fdatasync") => cells.get(3)?.parse::<u64>().ok(),
                _ => None,
            }
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::parse_calls;

    #[test]
    fn sums_fsync_and_fdatasync_rows() {
        let summary = "% time     seconds  usecs/call     calls    errors syscall\n\
            ------ ----------- ----------- --------- --------- ----------------\n\
            100.00    0.500000         250      2000           fdatasync\n\
              0.00    0.000100          10        10         1 fsync\n\
            ------ ----------- ----------- --------- --------- ----------------\n\
            100.00    0.500100         249      2010         1 total\n";
        assert_eq!(parse_calls(summary), 2010);
    }

    #[test]
    fn no_rows_is_zero() {
        assert_eq!(parse_calls(""), 0);
    }
}
