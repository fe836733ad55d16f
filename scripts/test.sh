#!/usr/bin/env bash
# Ferry's whole test suite, from a fresh Debian machine: installs what is missing, then checks formatting,
# lints with -D warnings, builds every binary (end-to-end tests spawn them), runs all tests, and checks
# that the fuzz target builds. CI (.ci/run) calls exactly this script.
set -euo pipefail
cd "$(dirname "$0")/.."

# Each step prints the seconds since the start, so a slow CI run shows where its time went.
log() { printf '\n== [%ss] %s\n' "$SECONDS" "$*"; }

# --- tools -------------------------------------------------------------------------------------------
if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo not found: install Rust (rustup) first" >&2
  exit 1
fi
rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
if ! cargo nextest --version >/dev/null 2>&1; then
  log "installing cargo-nextest"
  cargo install --locked cargo-nextest
fi

# Store tests start real redis-server processes and a Redis Cluster (redis-cli --cluster create); they
# fail, never skip, without them.
if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
  log "installing redis-server and redis-tools"
  apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y redis-server redis-tools
fi

# --- checks ------------------------------------------------------------------------------------------
log "cargo fmt --check"
cargo fmt --all -- --check

log "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --all-features -- -D warnings

log "build binaries"
cargo build --workspace --bins

log "tests"
# No backtraces: CI shows only the tail of a failure's output, and that must be the panic message.
RUST_BACKTRACE=0 cargo nextest run --workspace --no-fail-fast --failure-output final
log "chaos short profile"
target/debug/ferry-chaos run --profile short --report target/chaos-short.json  # issue 18, ~3 min; a fresh seed each run (printed, replay with --seed)
log "bindings"
scripts/bindings.sh --test  # issue 19: bindings drift check, Kotlin JVM tests and pytest against a real server
log "doc tests"
cargo test --workspace --doc

log "rustdoc -D warnings"
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --workspace --quiet

log "fuzz target builds"
# The fuzz workspace pins the same dependency versions: sharing the main target dir reuses their builds.
CARGO_TARGET_DIR=target cargo check --manifest-path fuzz/Cargo.toml --quiet

log "all checks passed"
