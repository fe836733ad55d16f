//! Client mode: the runner's own plumbing (exit 127, bad output), and the `ferry` CLI through
//! interop/scripts/ferry-cli-client.sh.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ferry_interop::client_mode::{self, ClientConfig};
use ferry_interop::report::{Outcome, RunReport};

async fn run(cmd: &str, filter: Option<&str>) -> RunReport {
    let config = ClientConfig {
        cmd: cmd.to_owned(),
        filter: filter.map(str::to_owned),
        case_timeout: Duration::from_secs(40),
        count: 10,
        server_bin: None,
    };
    let report = client_mode::run(config, |c| {
        eprintln!("{:<11} {}", c.outcome.label(), c.name)
    })
    .await
    .unwrap();
    eprintln!("{}", report.table());
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_127_is_unsupported_for_every_case() {
    let report = run("exit 127", None).await;
    assert_eq!(report.cases.len(), client_mode::cases().len());
    for case in &report.cases {
        assert!(
            matches!(case.outcome, Outcome::Unsupported(_)),
            "{}: {:?}",
            case.name,
            case.outcome
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_sends_nothing_fails_with_a_reason() {
    let report = run("echo not-json", Some("send:")).await;
    match &report.cases[..] {
        [case] => match &case.outcome {
            Outcome::Fail(reason) => assert!(
                reason.contains("not a send or receive record") || reason.contains("stored"),
                "{reason}"
            ),
            other => panic!("expected Fail, got {other:?}"),
        },
        other => panic!("expected one case, got {other:?}"),
    }
    assert!(!report.ok());
}

/// Client bugs found by this suite, reported to the client's owner (remove an entry once fixed); no
/// other case may fail.
const KNOWN_CLIENT_BUGS: &[(&str, &str)] = &[];

/// The `ferry` binary: `FERRY_BIN`, else next to this test's `deps` directory (scripts/test.sh builds all
/// binaries before the tests).
fn ferry_binary() -> Option<PathBuf> {
    if let Some(bin) = std::env::var_os("FERRY_BIN") {
        return Some(PathBuf::from(bin));
    }
    let exe = std::env::current_exe().ok()?;
    let path = exe.parent()?.parent()?.join("ferry");
    path.exists().then_some(path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ferry_cli_passes_the_client_suite() {
    // `cargo test -p ferry-interop` alone does not build other crates' binaries; scripts/test.sh does.
    // A missing client is a failure, never a silent skip.
    let bin = ferry_binary().expect(
        "no `ferry` binary: build it with `cargo build --workspace --bins`, or set FERRY_BIN",
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/ferry-cli-client.sh");
    let cmd = format!("FERRY_BIN={} {}", bin.display(), script.display());
    let report = run(&cmd, None).await;
    for case in &report.cases {
        let known = KNOWN_CLIENT_BUGS
            .iter()
            .any(|(part, _)| case.name.contains(part));
        match &case.outcome {
            Outcome::Pass => assert!(
                !known,
                "known client bug in {} is fixed: remove it from KNOWN_CLIENT_BUGS",
                case.name
            ),
            Outcome::Fail(reason) => assert!(known, "{}: {reason}", case.name),
            Outcome::Unsupported(reason) => panic!(
                "the adapter supports every case, but {}: {reason}",
                case.name
            ),
        }
    }
}
