#!/usr/bin/env bash
# Runs ferry-bench against Mosquitto, NATS JetStream and Redis in the same run.
#
#   scripts/bench.sh [--quick] [more ferry-bench flags...]
#
# Installs the peers from Debian when missing (mosquitto, nats-server, redis-server, strace; needs
# root), builds ferry-bench and ferry-server in release mode, runs `ferry-bench all` and prints where
# the report is. --quick finishes in under 10 minutes on a 2-core machine, installs included.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || missing+=(mosquitto)
command -v nats-server >/dev/null 2>&1 || missing+=(nats-server)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v strace >/dev/null 2>&1 || missing+=(strace)
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: ${missing[*]}"
    sudo_cmd=""
    [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
    $sudo_cmd apt-get update
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y "${missing[@]}"
fi
cargo build --release -p ferry-bench -p ferry-server
out="bench-results/$(date -u +%Y-%m-%dT%H-%M-%SZ)"
status=0
./target/release/ferry-bench all --out "$out" "$@" || status=$?
echo
echo "report: $out/report.md (results.json and SVG plots beside it)"
exit "$status"
