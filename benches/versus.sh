#!/usr/bin/env bash
# Two builds of the daemon head to head on the cache-hit path, in one run: a baseline binary
# (another commit's release build) against this tree's, each also against the null responder.
#
#   bash benches/versus.sh BASELINE_BINARY [MAP...]
#
# Both daemons serve the same 10 seeded enforce policies (keys d0..d9.example, DNS pointed at a
# dead port, so nothing but the cache answers) on 127.0.0.1; the load tool (target/release/
# loadgen of this tree) runs `compare` at 1, 64 and 256 connections: null vs baseline, null vs
# this build, baseline vs this build, alternating rounds. The MAPs (default: postfix) are the
# socketmap map names asked, with the same (default) profile on both sides.
# With taskset and 2+ CPUs the load tool runs on CPU 0 and the daemons on CPU 1.
#
# Knobs (environment): DURATION (5s), WARMUP (1s), ROUNDS (3), CONNS ("1 64 256").
set -euo pipefail

if [[ $# -lt 1 || "${1:-}" == -h || "${1:-}" == --help ]]; then
    sed -n '2,/^set -euo pipefail/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
    exit 0
fi
BASE_BIN=$(realpath "$1")
shift
MAPS=("${@:-postfix}")
cd "$(dirname "$0")/.."
DURATION=${DURATION:-5s}
WARMUP=${WARMUP:-1s}
ROUNDS=${ROUNDS:-3}
CONNS=${CONNS:-1 64 256}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/mta-sts-versus.XXXXXX")
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

cargo build --release --locked -p mta-sts-policyd -p loadgen >&2
LOADGEN=$PWD/target/release/loadgen
NEW_BIN=$PWD/target/release/mta-sts-policyd
CLIENT_PIN=()
SERVER_PIN=()
if command -v taskset >/dev/null && [[ $(nproc) -ge 2 ]]; then
    CLIENT_PIN=(taskset -c 0)
    SERVER_PIN=(taskset -c 1)
fi

# start NAME BINARY: a daemon on its own seeded state directory; prints "ADDR PID".
start() {
    local name=$1 bin=$2 dir=$WORK/$1 i
    mkdir -p "$dir/state"
    "$LOADGEN" seed --dir "$dir/state" --domains 10 --mx 3 >/dev/null
    cat >"$dir/config.toml" <<EOF
[socketmap]
listen = ["inet:127.0.0.1:0"]
[dns]
nameservers = ["127.0.0.1:9"]
[cache]
dir = "$dir/state"
[control]
socket = ""
EOF
    "${SERVER_PIN[@]}" "$bin" -c "$dir/config.toml" serve 2>"$dir/log" >/dev/null &
    for i in $(seq 1 600); do
        grep -q 'INFO ready' "$dir/log" && break
        sleep 0.05
    done
    echo "$(grep -o 'listen=inet:[0-9.:]*' "$dir/log" | head -n 1 | cut -d= -f2) $!"
}

"${SERVER_PIN[@]}" "$LOADGEN" null --listen 127.0.0.1:0 --protocol socketmap --max-time 30m \
    >"$WORK/null.out" &
PIDS+=("$!")
NULL_PID=$!
for _ in $(seq 1 100); do grep -q 'listening on' "$WORK/null.out" && break; sleep 0.05; done
NULL_ADDR=$(grep -o 'listening on [^ ]*' "$WORK/null.out" | cut -d' ' -f3)
# start runs in a subshell: the parent records the PIDs it prints, for the cleanup.
read -r BASE_ADDR BASE_PID < <(start base "$BASE_BIN")
PIDS+=("$BASE_PID")
read -r NEW_ADDR NEW_PID < <(start new "$NEW_BIN")
PIDS+=("$NEW_PID")

ratio() { grep '^== ratio' "$1" | grep -o 'throughput=[0-9.]*' | cut -d= -f2; }
tput() { grep 'throughput:' "$1" | sed -n "${2}p" | awk '{print $2}'; }
srv() { grep 'cpu: client' "$1" | sed -n "${2}p" | sed -n 's/.*server=[0-9]*% (\([0-9.]*\) us\/req).*/\1/p'; }

echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
echo "baseline: $BASE_BIN ($("$BASE_BIN" --version)); this build: $(git rev-parse --short HEAD)"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
printf '| %-7s | %5s | %12s | %12s | %12s | %11s | %11s | %13s |\n' map conns \
    "null req/s" "base req/s" "new req/s" "base / null" "new / null" "new / base"
printf '|---|---|---|---|---|---|---|---|\n'
for map in "${MAPS[@]}"; do
    for c in $CONNS; do
        common=(--rounds "$ROUNDS" --duration "$DURATION" --warmup "$WARMUP" --connections "$c"
            --domains 10 --map "$map" --expect found)
        "${CLIENT_PIN[@]}" "$LOADGEN" compare "${common[@]}" --baseline "$NULL_ADDR" \
            --baseline-pid "$NULL_PID" --target "$BASE_ADDR" --server-pid "$BASE_PID" \
            >"$WORK/nb.txt"
        "${CLIENT_PIN[@]}" "$LOADGEN" compare "${common[@]}" --baseline "$NULL_ADDR" \
            --baseline-pid "$NULL_PID" --target "$NEW_ADDR" --server-pid "$NEW_PID" \
            >"$WORK/nn.txt"
        "${CLIENT_PIN[@]}" "$LOADGEN" compare "${common[@]}" --baseline "$BASE_ADDR" \
            --baseline-pid "$BASE_PID" --target "$NEW_ADDR" --server-pid "$NEW_PID" \
            >"$WORK/bn.txt"
        printf '| %-7s | %5s | %12s | %12s | %12s | %11s | %11s | %13s |\n' "$map" "$c" \
            "$(tput "$WORK/nb.txt" 1)" "$(tput "$WORK/bn.txt" 1)" "$(tput "$WORK/bn.txt" 2)" \
            "$(ratio "$WORK/nb.txt")" "$(ratio "$WORK/nn.txt")" "$(ratio "$WORK/bn.txt")"
    done
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
