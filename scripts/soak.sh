#!/usr/bin/env bash
# Soak (issue 18): the chaos suite with N minutes of faults against a real ferry-server process, judged by
# the independent invariant checker. Writes a JSON report; exits non-zero on any violation.
#
#   scripts/soak.sh [--minutes N] [--seed S] [--report FILE] [--release] [--target single|cluster] [--nodes N]
#
# Defaults: 30 minutes, a random seed (printed; pass it back with --seed to replay the schedule),
# target/chaos-soak.json, the single node. Needs root for the tmpfs that makes disk-full faults real
# (otherwise the report says disk-full faults were not injected). `--target cluster` runs N nodes (default
# 3) on a redis-server the run starts (redis-server must be installed) with node and Redis faults instead.
set -euo pipefail
cd "$(dirname "$0")/.."

minutes=30
seed=()
report=target/chaos-soak.json
profile_dir=debug
build=()
target=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --minutes) minutes="$2"; shift 2 ;;
    --seed) seed=(--seed "$2"); shift 2 ;;
    --report) report="$2"; shift 2 ;;
    --release) profile_dir=release; build=(--release); shift ;;
    --target|--nodes) target+=("$1" "$2"); shift 2 ;;
    *) echo "usage: $0 [--minutes N] [--seed S] [--report FILE] [--release] [--target single|cluster] [--nodes N]" >&2; exit 2 ;;
  esac
done

cargo build "${build[@]}" -p ferry-server -p ferry-chaos --bins
"target/$profile_dir/ferry-chaos" run --profile soak --minutes "$minutes" "${seed[@]}" "${target[@]}" --report "$report"
