#!/usr/bin/env bash
# bench/peers-candidate.sh — starts portcullis as the --candidate of ../shared/bench/peers.sh:
# Basic auth (argon2id, cached verification) in front of the harness's upstream, one worker.
#
#   ../shared/bench/peers.sh --candidate portcullis-basic=http://127.0.0.1:18090 \
#       --candidate-cmd "$PWD/bench/peers-candidate.sh"
#
# peers.sh runs this in its own process group, pinned like the peers, with BENCH_UPSTREAM,
# BENCH_USER, BENCH_PASS and BENCH_DIR set. PORTCULLIS_BIN picks the binary
# (default: target/release/portcullis of this checkout). PORT overrides 18090.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${PORTCULLIS_BIN:-$ROOT/target/release/portcullis}
PORT=${PORT:-18090}
: "${BENCH_UPSTREAM:?run me from peers.sh}" "${BENCH_USER:?}" "${BENCH_PASS:?}" "${BENCH_DIR:?}"
HASH=$(printf '%s\n' "$BENCH_PASS" | "$BIN" hash-password 2>/dev/null | grep -o '\$argon2id\$[^ ]*' | head -1)
CONFIG=$BENCH_DIR/portcullis.toml
cat > "$CONFIG" <<TOML
[server]
listen = ["127.0.0.1:$PORT"]
workers = 1

[upstream]
url = "http://$BENCH_UPSTREAM"

[[users]]
name = "$BENCH_USER"
password_hash = "$HASH"

[[route]]
path = "/"
auth = ["basic"]
realm = "bench"
TOML
exec "$BIN" run --config "$CONFIG" --log-format json > "$BENCH_DIR/portcullis.log" 2>&1
