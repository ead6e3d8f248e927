#!/usr/bin/env bash
# shellcheck disable=SC2154  # ADDR_x, PID_x, READY_MS_x, ... are set with printf -v
# Performance run of mta-sts-policyd against the null responder, side by side in one run.
#
#   bash benches/perf.sh            # about 5-6 minutes on 2 cores, after the release build
#   bash benches/perf.sh --help     # this text
#
# Builds release, then measures with the load tool (loadgen/, the binary target/release/loadgen;
# alone: `cargo run -p loadgen --release -- --help`), every scenario as
# "null responder vs daemon, same settings, alternating rounds":
#   1. cache-hit throughput at 1, 64 and 256 connections: daemon on a journal seeded with 10
#      domains (DNS pointed at the dead port 127.0.0.1:9), keys d0..d9.example; ratio daemon/null;
#   2. latency at 64 connections paced at half of the daemon's maximum from (1) (--rate: open
#      loop, per-connection slots of one global schedule; latency from the actual send and from
#      the scheduled time);
#   3. 1,000,000 cached domains (random keys over all of them) vs 10: seeding time, start-up to
#      ready, RSS, throughput and p99 at 64 connections;
#   plus start-up to ready and RSS with 100,000 cached policies, and the same again after a
#   restart: that daemon is stopped with SIGTERM and started again on the same state directory
#   (the journal it left is reloaded, compacted at load if it holds more than the live
#   records); RSS at ready and after a few hundred lookups over all keys.
# Every seeded policy is `mode: enforce`, `max_age: 604800` with MX mx lines, in the shapes
# real policies have: mx1.<domain>, mx2.<domain>, *.backup.<domain>, then mx3.<domain>, ...
# With taskset (util-linux) and 2+ CPUs, the load tool runs on CPU 0 and the server on CPU 1.
# Loopback only. Numbers are noisy when anything else runs on the machine (the load average
# is printed before and after every measurement).
#
# Knobs (environment): DURATION (5s) and WARMUP (1s) per round, ROUNDS (3) per side,
# BIG (1000000) and MID (100000) seeded policies, MX (3) mx lines per seeded policy,
# UNIT_TUNABLES (the GLIBC_TUNABLES of systemd/mta-sts-policyd.service; empty for glibc's own
# defaults), KEEP=1 keeps the work directory.
set -euo pipefail

if [[ "${1:-}" == -h || "${1:-}" == --help ]]; then
    # This header, up to `set -e`, is the usage.
    sed -n '3,/^set -euo pipefail/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
    exit 0
fi
if [[ $# -gt 0 ]]; then
    echo "perf.sh: no arguments but --help (the knobs are environment variables)" >&2
    exit 2
fi

cd "$(dirname "$0")/.."
ROOT=$PWD
DURATION=${DURATION:-5s}
WARMUP=${WARMUP:-1s}
ROUNDS=${ROUNDS:-3}
BIG=${BIG:-1000000}
MID=${MID:-100000}
MX=${MX:-3}
# Lookups against the restarted daemon: a few hundred, over all MID keys.
RESTART_LOOKUPS=500
SCRIPT_START=$(date +%s)
# The daemon runs with the shipped unit's Environment=GLIBC_TUNABLES (read from the unit file);
# UNIT_TUNABLES= (empty) measures glibc's defaults instead.
UNIT_TUNABLES=${UNIT_TUNABLES-$(sed -n 's/^Environment=GLIBC_TUNABLES=//p' systemd/mta-sts-policyd.service 2>/dev/null)}

WORK=$(mktemp -d "${TMPDIR:-/tmp}/mta-sts-perf.XXXXXX")
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do
        kill "$p" 2>/dev/null || true
    done
    for p in "${PIDS[@]}"; do
        wait "$p" 2>/dev/null || true
    done
    if [[ "${KEEP:-0}" == 1 ]]; then
        echo "work directory kept: $WORK"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT

COMMANDS=$WORK/commands.txt
SUMMARY=$WORK/summary.txt
: >"$COMMANDS"
: >"$SUMMARY"

say() { printf '\n### %s\n' "$*"; }
# Runs a command, echoing it and recording it for the summary.
run() {
    echo "+ $*"
    echo "$*" >>"$COMMANDS"
    "$@"
}
now_ms() { local t=${EPOCHREALTIME/[.,]/}; echo $((t / 1000)); }
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
mib() { awk -v k="$1" 'BEGIN {printf "%.1f", k / 1024}'; }

# ---- build ---------------------------------------------------------------------------------
say "build"
# The daemon and the load tool (the workspace member loadgen/), both release.
run cargo build --release --locked -p mta-sts-policyd -p loadgen
RELEASE=${CARGO_TARGET_DIR:-$ROOT/target}/release
[[ "$RELEASE" == /* ]] || RELEASE=$ROOT/$RELEASE
LOADGEN=$RELEASE/loadgen
DAEMON=$RELEASE/mta-sts-policyd
[[ -x "$DAEMON" && -x "$LOADGEN" ]] || { echo "missing $DAEMON or $LOADGEN" >&2; exit 1; }
echo "loadgen: $LOADGEN"
echo "daemon:  $DAEMON"

CLIENT_PIN=()
SERVER_PIN=()
if command -v taskset >/dev/null && [[ "$(nproc)" -ge 2 ]]; then
    CLIENT_PIN=(taskset -c 0)
    SERVER_PIN=(taskset -c 1)
    PINNING="load tool on CPU 0, server on CPU 1 (taskset)"
else
    PINNING="no pinning (taskset missing or one CPU)"
fi
echo "pinning: $PINNING"
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)

# ---- servers -------------------------------------------------------------------------------
# A sleep without a fork: read with a timeout on a fifo nobody writes to.
mkfifo "$WORK/nap.fifo"
exec {NAP_FD}<>"$WORK/nap.fifo"
nap() { read -r -t "$1" -u "$NAP_FD" _ || true; }

# Waits up to $2 seconds for a line containing $3 in file $1. Builtins only (no grep or sleep
# processes), so that polling every 5 ms does not disturb a daemon that is starting.
wait_line() {
    local file=$1 secs=$2 pattern=$3 fd line carry="" start=$SECONDS
    exec {fd}<"$file"
    while ((SECONDS - start <= secs)); do
        while IFS= read -r -u "$fd" line; do
            line=$carry$line
            carry=""
            if [[ "$line" == *"$pattern"* ]]; then
                exec {fd}<&-
                return 0
            fi
        done
        carry+=$line
        nap 0.005
    done
    exec {fd}<&-
    echo "timed out waiting for '$pattern' in $file:" >&2
    cat "$file" >&2
    return 1
}

# start_daemon NAME STATE_DIR: sets ADDR_<NAME>, PID_<NAME>, READY_MS_<NAME>, LOAD_MS_<NAME>.
start_daemon() {
    local name=$1 dir=$2 conf log t0 t1 pid addr
    conf=$WORK/$name.toml
    log=$WORK/$name.log
    cat >"$conf" <<EOF
[socketmap]
listen = ["inet:127.0.0.1:0"]
[dns]
nameservers = ["127.0.0.1:9"]
[cache]
dir = "$dir"
[control]
socket = ""
[log]
level = "info"
EOF
    echo "+ ${SERVER_PIN[*]} $DAEMON -c $conf serve   # config: $(tr '\n' ' ' <"$conf")"
    echo "${SERVER_PIN[*]} $DAEMON -c $conf serve   # config: $(tr '\n' ' ' <"$conf")" >>"$COMMANDS"
    : >"$log"
    t0=$(now_ms)
    # The allocator settings of the shipped unit (systemd/mta-sts-policyd.service), set by `env`
    # after taskset: glibc in taskset would rewrite GLIBC_TUNABLES on its way through.
    "${SERVER_PIN[@]}" env "GLIBC_TUNABLES=$UNIT_TUNABLES" "$DAEMON" -c "$conf" serve 2>"$log" >/dev/null &
    pid=$!
    PIDS+=("$pid")
    wait_line "$log" 300 'INFO ready'
    t1=$(now_ms)
    addr=$(grep -o 'listen=inet:[0-9.:]*' "$log" | head -n 1 | cut -d= -f2)
    [[ -n "$addr" ]] || { echo "no listen address in $log" >&2; exit 1; }
    printf -v "ADDR_$name" '%s' "$addr"
    printf -v "PID_$name" '%s' "$pid"
    printf -v "READY_MS_$name" '%s' $((t1 - t0))
    printf -v "LOAD_MS_$name" '%s' "$(grep -o 'policy cache loaded.*elapsed_ms=[0-9]*' "$log" | grep -o '[0-9]*$')"
    echo "$name: pid $pid on $addr, ready after $((t1 - t0)) ms (journal loaded in $(grep -o 'policy cache loaded.*elapsed_ms=[0-9]*' "$log" | grep -o '[0-9]*$') ms), RSS $(mib "$(rss_kib "$pid")") MiB"
}

stop_pid() {
    kill -TERM "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

# seed NAME N: a state directory with N cached policies of MX mx lines each; sets
# SEED_MS_<NAME> (wall time).
seed() {
    local name=$1 n=$2 t0 t1
    mkdir -p "$WORK/$name"
    t0=$(now_ms)
    run "${CLIENT_PIN[@]}" "$LOADGEN" seed --dir "$WORK/$name" --domains "$n" --mx "$MX"
    t1=$(now_ms)
    printf -v "SEED_MS_$name" '%s' $((t1 - t0))
}

say "null responder and the 10-domain daemon"
echo "+ ${SERVER_PIN[*]} $LOADGEN null --listen 127.0.0.1:0 --protocol socketmap --max-time 30m"
echo "${SERVER_PIN[*]} $LOADGEN null --listen 127.0.0.1:0 --protocol socketmap --max-time 30m" >>"$COMMANDS"
: >"$WORK/null.out"
"${SERVER_PIN[@]}" "$LOADGEN" null --listen 127.0.0.1:0 --protocol socketmap --max-time 30m >"$WORK/null.out" &
PID_NULL=$!
PIDS+=("$PID_NULL")
wait_line "$WORK/null.out" 30 'listening on'
ADDR_NULL=$(grep -o 'listening on [^ ]*' "$WORK/null.out" | cut -d' ' -f3)
echo "null responder: pid $PID_NULL on $ADDR_NULL"

seed small 10
start_daemon small "$WORK/small"
RSS_SMALL=$(rss_kib "$PID_small")

# compare OUTFILE TARGET_ADDR TARGET_PID [extra options]: null vs TARGET, or as given.
compare() {
    local out=$1
    shift
    run "${CLIENT_PIN[@]}" "$LOADGEN" compare --rounds "$ROUNDS" --duration "$DURATION" \
        --warmup "$WARMUP" --expect found "$@" | tee "$out"
}
# field FILE N NAME: value of NAME= on the Nth latency_us line (1 baseline, 2 target).
lat() { grep 'latency_us:' "$1" | grep -v schedule | sed -n "${2}p" | grep -o "$3=[0-9.]*" | cut -d= -f2; }
sched() { grep 'latency_from_schedule_us:' "$1" | sed -n "${2}p" | grep -o "$3=[0-9.]*" | cut -d= -f2; }
tput() { grep 'throughput:' "$1" | sed -n "${2}p" | awk '{print $2}'; }
ratio() { grep '^== ratio' "$1" | grep -o 'throughput=[0-9.]*' | cut -d= -f2; }
# srv FILE N: the server's CPU time per request (us) of the Nth report.
srv() { grep 'cpu: client' "$1" | sed -n "${2}p" | sed -n 's/.*server=[0-9]*% (\([0-9.]*\) us\/req).*/\1/p'; }

# pct FILE N: "client%/server%" CPU of the Nth report.
pct() {
    grep 'cpu: client' "$1" | sed -n "${2}p" | sed -n 's/.*client=\([0-9]*\)%.*server=\([0-9]*\)%.*/\1\/\2/p'
}

FMT='| %-36s | %10s | %10s | %6s | %8s | %8s | %8s | %8s | %7s | %7s | %7s | %7s |\n'
row() { # scenario file
    # shellcheck disable=SC2059
    printf "$FMT" "$1" "$(tput "$2" 1)" "$(tput "$2" 2)" "$(ratio "$2")" "$(lat "$2" 1 p50)" \
        "$(lat "$2" 2 p50)" "$(lat "$2" 1 p99)" "$(lat "$2" 2 p99)" "$(srv "$2" 1)" "$(srv "$2" 2)" \
        "$(pct "$2" 1)" "$(pct "$2" 2)" >>"$SUMMARY"
}

# ---- 1. cache-hit throughput ---------------------------------------------------------------
say "1. cache-hit throughput, 10 cached domains, null vs daemon"
for c in 1 64 256; do
    compare "$WORK/s1-$c.txt" --baseline "$ADDR_NULL" --baseline-pid "$PID_NULL" \
        --target "$ADDR_small" --server-pid "$PID_small" --connections "$c" --domains 10
    row "1. hit, $c conn, 10 domains" "$WORK/s1-$c.txt"
done

# ---- 2. latency at half of the maximum -----------------------------------------------------
say "2. p99 at 64 connections, paced at half of the daemon's maximum"
MAX64=$(tput "$WORK/s1-64.txt" 2)
RATE=$(awk -v m="$MAX64" 'BEGIN {printf "%d", m / 2}')
echo "daemon maximum at 64 connections: $MAX64 req/s; pacing at $RATE req/s"
compare "$WORK/s2.txt" --baseline "$ADDR_NULL" --baseline-pid "$PID_NULL" \
    --target "$ADDR_small" --server-pid "$PID_small" --connections 64 --domains 10 --rate "$RATE"
row "2. 64 conn at $RATE/s (from send)" "$WORK/s2.txt"
# shellcheck disable=SC2059
printf "$FMT" "   same run, latency from schedule" "" "" "" "$(sched "$WORK/s2.txt" 1 p50)" \
    "$(sched "$WORK/s2.txt" 2 p50)" "$(sched "$WORK/s2.txt" 1 p99)" "$(sched "$WORK/s2.txt" 2 p99)" \
    "" "" "" "" >>"$SUMMARY"

# ---- 100,000 cached policies: start-up and RSS -----------------------------------------------
say "start-up and RSS with $MID cached policies"
seed mid "$MID"
start_daemon mid "$WORK/mid"
RSS_MID_READY=$(rss_kib "$PID_mid")
run "${CLIENT_PIN[@]}" "$LOADGEN" run --target "$ADDR_mid" --connections 64 --domains "$MID" \
    --duration 3s --warmup 0s --expect found --server-pid "$PID_mid" | tee "$WORK/mid-run.txt"
RSS_MID_LOADED=$(rss_kib "$PID_mid")
JOURNAL_MID_BEFORE=$(stat -c %s "$WORK/mid/policies.journal")
echo "+ kill -TERM $PID_mid   # then start again on the same state directory"
echo "kill -TERM $PID_mid   # then start again on the same state directory" >>"$COMMANDS"
kill -TERM "$PID_mid"
STOP_RC_MID=0
wait "$PID_mid" || STOP_RC_MID=$?
echo "mid: exit status $STOP_RC_MID after SIGTERM"

say "restart with $MID cached policies: RSS at ready and after $RESTART_LOOKUPS lookups"
start_daemon midr "$WORK/mid"
RSS_MIDR_READY=$(rss_kib "$PID_midr")
COMPACTED_MIDR=$(grep -o 'policy journal loaded.*compacted=[a-z]*' "$WORK/midr.log" | grep -o '[a-z]*$' || true)
run "${CLIENT_PIN[@]}" "$LOADGEN" run --target "$ADDR_midr" --connections 4 --domains "$MID" \
    --requests "$RESTART_LOOKUPS" --warmup 0s --expect found --server-pid "$PID_midr" |
    tee "$WORK/midr-run.txt"
RSS_MIDR_LOADED=$(rss_kib "$PID_midr")
JOURNAL_MID_AFTER=$(stat -c %s "$WORK/mid/policies.journal")
stop_pid "$PID_midr"

# ---- 3. 1,000,000 cached domains vs 10 -----------------------------------------------------
say "3. $BIG cached domains vs 10"
seed big "$BIG"
start_daemon big "$WORK/big"
RSS_BIG_READY=$(rss_kib "$PID_big")
compare "$WORK/s3.txt" --baseline "$ADDR_small" --baseline-pid "$PID_small" \
    --target "$ADDR_big" --server-pid "$PID_big" --connections 64 --domains 10 \
    --target-domains "$BIG"
RSS_BIG_LOADED=$(rss_kib "$PID_big")
row "3. 64 conn, 10 vs $BIG domains" "$WORK/s3.txt"
stop_pid "$PID_big"
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

# ---- summary -------------------------------------------------------------------------------
say "summary"
echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(uname -sr)"
echo "date: $(date -u '+%Y-%m-%d %H:%M UTC'); commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet 2>/dev/null || echo ' (modified tree)'); $(rustc --version)"
echo "daemon environment: GLIBC_TUNABLES=${UNIT_TUNABLES:-(unset: glibc defaults)}"
echo "pinning: $PINNING; rounds: $ROUNDS x $DURATION (+$WARMUP warm-up) per side, alternating"
echo "seeded policies: MX=$MX mx lines each (enforce, max_age 604800); BIG=$BIG, MID=$MID"
echo "load average (1/5/15 min): before $LOAD_BEFORE, after $LOAD_AFTER (other work on the machine makes the numbers noisy)"
echo
echo "Throughput in req/s; latency in microseconds (from the send; in 2 also from the scheduled"
echo "send time); \"us\": server CPU time per request in microseconds (/proc/PID/stat, 10 ms ticks);"
echo "\"c/s\": CPU use of the load tool / the server in % of one core (100 = that side is saturated)."
echo "In 3 the left columns are the 10-domain daemon, the right ones the $BIG-domain daemon."
# shellcheck disable=SC2059
printf "$FMT" scenario "null req/s" "dmn req/s" ratio "null p50" "dmn p50" "null p99" "dmn p99" \
    "null us" "dmn us" "null c/s" "dmn c/s"
# shellcheck disable=SC2059
printf "$FMT" "" "" "" "" "" "" "" "" "" "" "" "" | tr ' ' '-'
cat "$SUMMARY"
echo
echo "| cache | seed (journal write) | start-up to ready | journal load | RSS at ready | RSS after load |"
echo "|---|---|---|---|---|---|"
echo "| 10 policies | ${SEED_MS_small} ms | ${READY_MS_small} ms | ${LOAD_MS_small} ms | $(mib "$RSS_SMALL") MiB | |"
echo "| $MID policies | ${SEED_MS_mid} ms | ${READY_MS_mid} ms | ${LOAD_MS_mid} ms | $(mib "$RSS_MID_READY") MiB | $(mib "$RSS_MID_LOADED") MiB |"
echo "| $MID policies, after a restart | | ${READY_MS_midr} ms | ${LOAD_MS_midr} ms | $(mib "$RSS_MIDR_READY") MiB | $(mib "$RSS_MIDR_LOADED") MiB |"
echo "| $BIG policies | ${SEED_MS_big} ms | ${READY_MS_big} ms | ${LOAD_MS_big} ms | $(mib "$RSS_BIG_READY") MiB | $(mib "$RSS_BIG_LOADED") MiB |"
echo
echo "\"start-up to ready\": from spawning serve to its 'ready' log line (polled every 5 ms);"
echo "\"journal load\": the daemon's own 'policy cache loaded' elapsed_ms. RSS: /proc/PID/status VmRSS."
echo "\"RSS after load\": after a 3 s run over all keys; after a restart, after $RESTART_LOOKUPS lookups over all keys."
echo "Restart: the $MID-policy daemon stopped with SIGTERM (exit status $STOP_RC_MID) and started again on its"
echo "state directory; journal $JOURNAL_MID_BEFORE bytes before, $JOURNAL_MID_AFTER after; compacted at load: ${COMPACTED_MIDR:-?}."
echo "Whole script: $(($(date +%s) - SCRIPT_START)) s. Commands, in order:"
sed 's/^/    /' "$COMMANDS"
