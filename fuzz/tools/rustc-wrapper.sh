#!/usr/bin/env bash
# RUSTC_WRAPPER for the fuzz builds (scripts/fuzz.sh sets it): coverage instrumentation only for Ferry's
# own crates. cargo-fuzz puts its SanitizerCoverage flags in RUSTFLAGS, so every dependency gets inline
# 8-bit counters too (~255k with quinn, rustls, tokio and redb), and libFuzzer scans every counter after
# every execution whether the input touched it or not: that scan, not Ferry's code, was most of each
# execution. The fuzzers are after bugs in Ferry's handling of peer input; a new path inside tokio or
# rustls is not a signal worth that price. Everything else (debug assertions, overflow checks,
# `--cfg fuzzing`, codegen units) stays as cargo-fuzz set it for every crate.
#
# Instrumented: crates whose name matches FERRY_FUZZ_INSTRUMENT (an extended regex, default: Ferry's
# crates and the fuzz targets). Called by cargo as: wrapper RUSTC ARGS...
set -euo pipefail
rustc="$1"
shift
pattern="${FERRY_FUZZ_INSTRUMENT:-^(ferry_.*|decoder|client_core|server_script)$}"

crate=""
prev=""
for arg in "$@"; do
  if [ "$prev" = "--crate-name" ]; then
    crate="$arg"
    break
  fi
  prev="$arg"
done

# No crate name (cargo asking `rustc -vV`, printing cfgs) or a crate to instrument: unchanged.
if [ -z "$crate" ] || [[ "$crate" =~ $pattern ]]; then
  exec "$rustc" "$@"
fi

args=()
for arg in "$@"; do
  case "$arg" in
    -Cpasses=sancov-module | -Cllvm-args=-sanitizer-coverage-*) ;;
    *) args+=("$arg") ;;
  esac
done
exec "$rustc" "${args[@]}"
