#!/usr/bin/env bash
# Ferry's mobile bindings (issue 19): builds the ferry-ffi cdylib, regenerates the Kotlin, Swift and
# Python bindings into their checked-in places and fails if they drifted from what is committed.
# With --test it then runs the Kotlin JVM tests and pytest against a real ferry-server, installing what
# it needs on a fresh Debian machine (kotlinc from npm, JNA from apt, pytest from PyPI in a venv).
#
#   scripts/bindings.sh           regenerate + drift check
#   scripts/bindings.sh --test    ... and run the Kotlin and Python tests
#   scripts/bindings.sh --release ... also build the release library and print its size
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n== %s\n' "$*"; }

run_tests=false
release=false
for arg in "$@"; do
  case "$arg" in
    --test) run_tests=true ;;
    --release) release=true ;;
    *) echo "usage: $0 [--test] [--release]" >&2; exit 2 ;;
  esac
done

LIB=target/debug/libferry_ffi.so
TOOLS=target/bindings-tools
GEN="$TOOLS/generated"
KOTLIN_OUT=bindings/kotlin/src/main/kotlin
SWIFT_OUT=bindings/swift/Sources
PYTHON_OUT=bindings/python

# --- build + generate --------------------------------------------------------------------------------
log "building ferry-ffi (cdylib + uniffi-bindgen)"
# With the workspace's feature set (plus `cli`), not `-p ferry-ffi`'s own: after `cargo build --workspace`
# (scripts/test.sh) that reuses tokio, rustls, quinn and the rest instead of building them a second time
# with fewer features (~60 crates, minutes of CI).
cargo build --workspace --features ferry-ffi/cli --lib --bin uniffi-bindgen

# --no-format: the output must not depend on whether ktlint/swiftformat/yapf happen to be installed.
bindgen() { target/debug/uniffi-bindgen generate --no-format --library "$LIB" "$@"; }

log "generating bindings"
rm -rf "$GEN" && mkdir -p "$GEN"/{kotlin,swift,python}
bindgen --language kotlin --out-dir "$GEN/kotlin"
bindgen --language swift --out-dir "$GEN/swift"
bindgen --language python --out-dir "$GEN/python"

rm -rf "$KOTLIN_OUT" && mkdir -p "$KOTLIN_OUT" && cp -r "$GEN/kotlin/." "$KOTLIN_OUT/"
# Swift: the Swift sources form one target, the C header + module map (the FFI declarations) another.
rm -rf "$SWIFT_OUT/FerryFFI" "$SWIFT_OUT/FerryFFIC"
mkdir -p "$SWIFT_OUT/FerryFFI" "$SWIFT_OUT/FerryFFIC/include"
cp "$GEN/swift/FerryFFI.swift" "$SWIFT_OUT/FerryFFI/"
cp "$GEN/swift/FerryFFIC.h" "$SWIFT_OUT/FerryFFIC/include/"
cp "$GEN/swift/FerryFFIC.modulemap" "$SWIFT_OUT/FerryFFIC/include/module.modulemap"
# SwiftPM wants a source file in every C target.
printf '// The FFI declarations are in include/FerryFFIC.h; this file only makes SwiftPM build the target.\n' \
  > "$SWIFT_OUT/FerryFFIC/shim.c"
cp "$GEN/python/ferry_ffi.py" "$PYTHON_OUT/ferry_ffi.py"

log "checking for drift against the committed bindings"
generated=("$KOTLIN_OUT" "$SWIFT_OUT" "$PYTHON_OUT/ferry_ffi.py")
untracked=$(git ls-files --others --exclude-standard -- "${generated[@]}")
if ! git diff --exit-code --stat -- "${generated[@]}" || [ -n "$untracked" ]; then
  [ -n "$untracked" ] && printf 'untracked generated files:\n%s\n' "$untracked" >&2
  echo "bindings drifted from the committed ones: commit the regenerated files" >&2
  exit 1
fi

if $release; then
  log "release library"
  cargo build -p ferry-ffi --release --lib
  ls -l target/release/libferry_ffi.so
  strip -o "$TOOLS/libferry_ffi.stripped.so" target/release/libferry_ffi.so
  ls -l "$TOOLS/libferry_ffi.stripped.so"
fi

$run_tests || exit 0

# --- tools for the tests -----------------------------------------------------------------------------
log "test tools"
mkdir -p "$TOOLS"
KOTLIN_HOME="$TOOLS/node_modules/kotlin-compiler"
if [ ! -x "$KOTLIN_HOME/bin/kotlinc" ]; then
  command -v npm >/dev/null || { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y npm; }
  # The npm package is the full kotlinc distribution, with kotlinx-coroutines (Maven Central is not
  # reachable from every CI machine; the npm registry is).
  npm install --prefix "$TOOLS" --no-audit --no-fund --silent kotlin-compiler@2.4
fi
command -v java >/dev/null || { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y openjdk-17-jdk-headless; }
JNA=/usr/share/java/jna.jar
[ -f "$JNA" ] || { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y libjna-java; }
VENV="$TOOLS/venv"
[ -x "$VENV/bin/pytest" ] || { python3 -m venv "$VENV" && "$VENV/bin/pip" install --quiet pytest; }

log "building ferry-server"
# The workspace's binaries (a no-op after scripts/test.sh built them; `-p ferry-server` alone would
# rebuild ~50 crates with its own, smaller feature set).
cargo build --workspace --bins
SERVER="$PWD/target/debug/ferry-server"

# --- Kotlin on the JVM -------------------------------------------------------------------------------
log "Kotlin: compiling the bindings and the JVM tests"
COROUTINES=$(ls "$KOTLIN_HOME"/lib/kotlinx-coroutines-core-jvm*.jar | head -1)
CLASSES="$TOOLS/kotlin-classes"
rm -rf "$CLASSES"
"$KOTLIN_HOME/bin/kotlinc" -nowarn -jvm-target 17 -cp "$JNA:$COROUTINES" -d "$CLASSES" \
  "$KOTLIN_OUT" bindings/kotlin/src/test/kotlin
log "Kotlin: running the JVM tests"
java -Djna.library.path="$PWD/target/debug" \
  -cp "$CLASSES:$JNA:$COROUTINES:$KOTLIN_HOME/lib/kotlin-stdlib.jar" \
  dev.ferry.ffi.test.BindingsTestKt "$SERVER"

# --- Python ------------------------------------------------------------------------------------------
log "Python: pytest"
# The generated module loads the library from its own directory.
cp "$LIB" "$PYTHON_OUT/libferry_ffi.so"
FERRY_SERVER="$SERVER" "$VENV/bin/pytest" -q bindings/python/tests

log "bindings tests passed"
