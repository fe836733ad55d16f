#!/usr/bin/env bash
# Runs Ferry's cargo-fuzz targets (fuzz/, nightly) for N seconds or N executions each, one job each,
# one target after the other, at the lowest priority (nice 19: the machine is shared), after seeding
# their corpora from spec/vectors; prints each target's executions, wall time, rate and coverage.
#
#   scripts/fuzz.sh --seconds N [TARGET...]     # default: every target (decoder client_core server_script)
#   scripts/fuzz.sh --runs N [TARGET...]        # stop after N executions (e.g. 10000000)
#   scripts/fuzz.sh --seed-only                 # only (re)write the seed corpora
#   scripts/fuzz.sh --runs N TARGET -- -entropic=0   # anything after `--` goes to libFuzzer
#
# Builds with `-s none` (no sanitizer: the targets are safe Rust, and ASan would halve the execution
# rate the 10-million-execution goal needs) and `-a` (debug assertions and overflow checks: an
# arithmetic overflow on a peer's numbers is a bug to find). Crashes land in fuzz/artifacts/TARGET/;
# reproduce one with `cd fuzz && cargo +nightly fuzz run -s none -a TARGET artifacts/TARGET/FILE`.
# Coverage instrumentation covers Ferry's crates only (fuzz/tools/rustc-wrapper.sh says why); reproduce
# with the same RUSTC_WRAPPER, or cargo rebuilds everything instrumented.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { echo "usage: $0 --seconds N|--runs N [TARGET...] | --seed-only" >&2; exit 2; }

seconds=""
runs=""
seed_only=false
targets=()
libfuzzer_options=()
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) [ $# -ge 2 ] || usage; seconds="$2"; shift 2 ;;
    --runs) [ $# -ge 2 ] || usage; runs="$2"; shift 2 ;;
    --seed-only) seed_only=true; shift ;;
    -h|--help) usage ;;
    --) shift; libfuzzer_options=("$@"); break ;;
    -*) usage ;;
    *) targets+=("$1"); shift ;;
  esac
done
if ! $seed_only; then
  if [ -n "$runs" ]; then
    [[ "$runs" =~ ^[1-9][0-9]*$ ]] && [ -z "$seconds" ] || usage
    limit=(-runs="$runs")
  else
    [[ "$seconds" =~ ^[1-9][0-9]*$ ]] || usage
    limit=(-max_total_time="$seconds")
  fi
fi
[ ${#targets[@]} -gt 0 ] || targets=(decoder client_core server_script)

# --- seed corpora ------------------------------------------------------------------------------------
# Each spec/vectors frame (valid and invalid) becomes one input per target, in that target's script
# format (see fuzz/src/lib.rs and the opcode tables at the top of each target).
python3 - <<'EOF'
import json, os, struct

vectors = []
for name in ("frames", "invalid"):
    for v in json.load(open(f"spec/vectors/{name}.json")):
        vectors.append((f"{name}-{v['name']}", bytes.fromhex(v["hex"])))

def chunk(b):
    return struct.pack("<H", len(b)) + b

def write(target, name, data):
    os.makedirs(f"fuzz/corpus/{target}", exist_ok=True)
    with open(f"fuzz/corpus/{target}/seed-{name}", "wb") as f:
        f.write(data)

# client_core opcodes: WIRE_CONTROL 0, WIRE_CONV 1, WELCOME 2, ADVANCE 10.
welcome = bytes([2, 2, 4, 8, 8, 0x10, 0x27, 1, 1])  # limits on, heartbeat 10 s, store epoch 1
to_deadline = bytes([10, 0, 0])
# server_script opcodes: OPEN 0 (its "with Open" byte 0), RAW 6, CONTROL_RAW 16.
open_dm = bytes([0, 0, 0])
for name, b in vectors:
    write("decoder", name, b"\0" + b)
    write("client_core", name,
          b"\0" + welcome + bytes([0]) + chunk(b) + bytes([1, 0]) + chunk(b) + to_deadline)
    write("server_script", name + "-conversation", open_dm + bytes([6]) + chunk(b) + bytes([0]))
    write("server_script", name + "-control", bytes([16]) + chunk(b))
EOF
echo "seed corpora written under fuzz/corpus/"
$seed_only && exit 0

# --- run ---------------------------------------------------------------------------------------------
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz
fi
cd fuzz
mkdir -p logs
export RUSTC_WRAPPER="$PWD/tools/rustc-wrapper.sh"

for target in "${targets[@]}"; do
  log="logs/$target.log"
  echo "== $target: ${limit[*]} ${libfuzzer_options[*]}"
  # Built first, so the wall time below is the fuzzing's alone.
  nice -n 19 cargo +nightly fuzz build -s none -a "$target" >"$log" 2>&1
  # libFuzzer's exit status is non-zero on a crash; report it after the figures.
  status=0
  start=$(date +%s)
  # regressions/TARGET holds inputs that once failed: read-only extra corpus, run first.
  corpora=("corpus/$target")
  [ -d "regressions/$target" ] && corpora+=("regressions/$target")
  nice -n 19 cargo +nightly fuzz run -s none -a "$target" "${corpora[@]}" -- \
    "${limit[@]}" -print_final_stats=1 "${libfuzzer_options[@]}" >>"$log" 2>&1 || status=$?
  wall=$(( $(date +%s) - start ))
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  last=$(grep -E '^#[0-9]+' "$log" | tail -1 || true)
  cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
  ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
  average=$(( ${execs:-0} / (wall > 0 ? wall : 1) ))
  echo "$target: execs ${execs:-?} in ${wall}s (${average}/s) cov ${cov:-?} ft ${ft:-?} (log fuzz/$log)"
  if [ "$status" -ne 0 ]; then
    echo "$target: libFuzzer exited with $status; see fuzz/$log and fuzz/artifacts/$target/" >&2
    exit "$status"
  fi
done
