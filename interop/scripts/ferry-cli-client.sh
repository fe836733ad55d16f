#!/bin/sh
# ferry-interop client adapter for the `ferry` CLI (crate ferry-client): maps TESTCASE to CLI invocations.
# The environment contract is in interop/README.md. Exit 127 = this client does not support the case.
#
#   ferry-interop client --cmd interop/scripts/ferry-cli-client.sh
#
# FERRY_BIN overrides the CLI binary (default: `ferry` on PATH). FERRY_SERVER, FERRY_TOKEN, FERRY_CA,
# FERRY_SERVER_NAME and FERRY_DEVICE are read by the CLI itself.
set -eu

bin=${FERRY_BIN:-ferry}
store="$FERRY_STORE/ferry.sqlite3"

messages() {
    i=1
    while [ "$i" -le "$FERRY_COUNT" ]; do
        echo "message $i"
        i=$((i + 1))
    done
}

case "$TESTCASE" in
    send | lossy | untrusted | limits)
        messages | "$bin" --store "$store" --json send \
            --conversation "$FERRY_CONVERSATION" --stdin --timeout "$FERRY_TIMEOUT"
        ;;
    early)
        # A typing signal, then the messages: two runs, each a connection of its own.
        "$bin" --store "$store" typing --conversation "$FERRY_CONVERSATION" --timeout "$FERRY_TIMEOUT"
        messages | "$bin" --store "$store" --json send \
            --conversation "$FERRY_CONVERSATION" --stdin --timeout "$FERRY_TIMEOUT"
        ;;
    receive | reconnect | goaway | zero-rtt | epoch | server-time | sync-crash | datagrams | keepalive)
        exec "$bin" --store "$store" --json listen \
            --conversation "$FERRY_CONVERSATION" --count "$FERRY_COUNT" --timeout "$FERRY_TIMEOUT"
        ;;
    tokens | history)
        # Every conversation of the account.
        exec "$bin" --store "$store" --json listen --count "$FERRY_COUNT" --timeout "$FERRY_TIMEOUT"
        ;;
    group-lost)
        exec "$bin" --store "$store" group create "interop group" --members "$FERRY_PEER"
        ;;
    replaced)
        # Listens until the runner stops it; the CLI exits (without reconnecting) when replaced.
        exec "$bin" --store "$store" --json listen \
            --conversation "$FERRY_CONVERSATION" --timeout "$FERRY_TIMEOUT"
        ;;
    *)
        exit 127
        ;;
esac
