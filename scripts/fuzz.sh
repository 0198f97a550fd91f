#!/usr/bin/env bash
# Runs every cargo-fuzz target under fuzz/ for a bounded time.
#
#   scripts/fuzz.sh                         # every target, 60 s each
#   scripts/fuzz.sh path_route config       # only these targets
#   FUZZ_TIME=600 scripts/fuzz.sh           # 10 minutes each
#   FUZZ_ARGS="-max_len=4096" scripts/fuzz.sh   # extra libFuzzer flags
#   FUZZ_JOBS=2 scripts/fuzz.sh             # libFuzzer -fork workers per target (default 1)
#
# Needs a nightly toolchain (`rustup toolchain install nightly`); installs cargo-fuzz when it
# is missing. Corpora grow in fuzz/corpus/<target> (seeded from fuzz/seeds/<target>); a crash
# is saved in fuzz/artifacts/<target>/ and reproduced with
#   (cd fuzz && cargo +nightly fuzz run -O <target> artifacts/<target>/crash-...)
# Exits non-zero when any target crashed (or failed to build); prints a summary per target.
set -uo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
TIME=${FUZZ_TIME:-60}
JOBS=${FUZZ_JOBS:-1}
TOOLCHAIN=${FUZZ_TOOLCHAIN:-nightly}
EXTRA=${FUZZ_ARGS:-}

if ! cargo "+$TOOLCHAIN" --version >/dev/null 2>&1; then
    echo "fuzz.sh: the $TOOLCHAIN toolchain is missing: rustup toolchain install $TOOLCHAIN" >&2
    exit 2
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz" >&2
    cargo install --locked cargo-fuzz || exit 2
fi

if [ "$#" -gt 0 ]; then
    TARGETS=("$@")
else
    mapfile -t TARGETS < <(cd fuzz && cargo "+$TOOLCHAIN" fuzz list)
fi

echo "fuzz.sh: building ${TARGETS[*]}" >&2
(cd fuzz && cargo "+$TOOLCHAIN" fuzz build -O) >&2 || exit 2
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_odr_violation=0}"
# Run the built binaries directly: `cargo fuzz run` would rebuild whenever a source file's
# timestamp changes, which makes the time budget meaningless on a tree being edited.
BIN_DIR="$ROOT/fuzz/target/$(rustc "+$TOOLCHAIN" -vV | sed -n 's/^host: //p')/release"

failed=()
summary=()
for target in "${TARGETS[@]}"; do
    corpus="$ROOT/fuzz/corpus/$target"
    seeds="$ROOT/fuzz/seeds/$target"
    artifacts="$ROOT/fuzz/artifacts/$target"
    mkdir -p "$corpus" "$artifacts"
    dirs=("$corpus")
    [ -d "$seeds" ] && dirs+=("$seeds")
    log="$ROOT/fuzz/artifacts/$target.log"
    parallel=""
    [ "$JOBS" -gt 1 ] && parallel="-fork=$JOBS"
    echo "fuzz.sh: $target for ${TIME}s" >&2
    start=$(date +%s)
    # shellcheck disable=SC2086 # EXTRA and parallel are lists of flags
    "$BIN_DIR/$target" -artifact_prefix="$artifacts/" -max_total_time="$TIME" \
        -print_final_stats=1 $parallel $EXTRA "${dirs[@]}" >"$log" 2>&1
    status=$?
    took=$(($(date +%s) - start))
    execs=$(awk '/stat::number_of_executed_units:/ { n += $2 } END { if (n) print n }' "$log")
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*')
    if [ "$status" -ne 0 ] || grep -q -e '^==[0-9]*== *ERROR' -e 'panicked at' -e 'Test unit written to' "$log"; then
        failed+=("$target")
        verdict="CRASH (exit $status): see $log and fuzz/artifacts/$target/"
        grep -m3 -e 'panicked at' -e 'ERROR:' -A3 "$log" >&2
    else
        verdict="ok"
    fi
    summary+=("$(printf '%-16s %5ss  %12s execs  cov %6s  %s' "$target" "$took" "${execs:-?}" "${cov:-?}" "$verdict")")
done

echo
printf '%s\n' "${summary[@]}"
if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzz.sh: crashes in: ${failed[*]}" >&2
    exit 1
fi
