//! # ferry-interop
//!
//! The ferry/1 conformance runner — what h2spec is for HTTP/2 — and the minimal wire driver it is built
//! on. It tests a server (`ferry-interop server`: cases drive the wire frame by frame) or a client
//! (`ferry-interop client`: the client under test runs against a reference server and the fault proxy,
//! QUIC-interop-runner style), names every case after the spec requirements it checks
//! (`FERRY-SEND-5`), and reports which requirements of `spec/ferry-1.md` have a case.
//!
//! Layout:
//! - [`driver`]: QUIC (`ferry-quic`'s frame reader and client configuration) + the protocol crate's codec,
//!   nothing else; also used by Ferry's end-to-end tests;
//! - [`peer_params`]: the server's QUIC transport parameters as sent, read through a recording wrapper
//!   of quinn's rustls session (quinn exposes none of them);
//! - [`runner`]: the case type, the `case!`/`ensure!` macros, running cases with timeouts;
//! - [`server_mode`]: the server cases, one file per area (handshake, auth, messaging, sync, groups,
//!   streams, framing, datagrams, limits, network);
//! - [`client_mode`]: the reference server, the scripted server, the client cases and the env/output
//!   contract, one file per concern (see its own map);
//! - [`reference`](mod@reference): the reference server as a program — finding the `ferry-server` binary, running
//!   `ferry-server run` as a child process; the runner links no server code;
//! - [`tokens`]: where tokens come from (`ferry-server token`, `--token-cmd`, or a test's function);
//! - [`report`]: pass / fail / unsupported, the terminal table, JSON and JUnit XML;
//! - [`coverage`]: parsing requirements out of the spec and joining them with the cases.
#![warn(missing_docs)]

pub mod client_mode;
pub mod coverage;
pub mod driver;
pub mod peer_params;
pub mod reference;
pub mod report;
pub mod runner;
pub mod server_mode;
pub mod tokens;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The repository root this crate was built in (for default spec and coverage-extra paths).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every case of both modes as (name, requirement ids), for the coverage report.
pub fn all_case_ids() -> Vec<(String, Vec<String>)> {
    let ids = |ids: &[&str]| ids.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let mut out: Vec<(String, Vec<String>)> = server_mode::cases()
        .iter()
        .map(|c| (format!("server: {}", c.name()), ids(c.ids)))
        .collect();
    out.extend(
        client_mode::cases()
            .iter()
            .map(|c| (format!("client: {}", c.name()), ids(c.ids))),
    );
    out
}

/// Coverage of `spec` by every case plus the `extra` mapping file (whose paths are relative to
/// `repo_root`).
pub fn coverage_report(
    spec: &Path,
    extra: Option<&Path>,
    repo_root: &Path,
) -> Result<coverage::Coverage, coverage::CoverageError> {
    let text = std::fs::read_to_string(spec).map_err(|source| coverage::CoverageError::Read {
        path: spec.to_owned(),
        source,
    })?;
    let requirements = coverage::parse_spec(&text);
    let (found, missing) = match extra {
        Some(path) => coverage::load_extra(path, repo_root)?,
        None => (BTreeMap::new(), BTreeMap::new()),
    };
    let mut report = coverage::Coverage::compute(&requirements, &all_case_ids(), &found);
    report.missing_extra_files = missing;
    Ok(report)
}
