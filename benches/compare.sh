#!/usr/bin/env bash
# shellcheck disable=SC2154  # PID_x, ... are set with printf -v
# mta-sts-policyd beside postfix-mta-sts-resolver (PyPI), same domains, same load, one run.
#
#   bash benches/compare.sh            # about 7 minutes on 2 cores, after the release build
#   bash benches/compare.sh --help     # this text
#
# Installs the peer (PEER_VERSION, default 1.5.1, with its `sqlite` extra and pinned
# dependencies) in a virtualenv (VENV, default target/compare-venv; reused when it holds that
# version), builds the daemon and
# the load tool (loadgen/) in release, then enters new network and mount namespaces (unshare;
# as root, or with a user namespace otherwise) in which both daemons see the same offline
# world on loopback (the peer runs twice: with its default in-memory cache and with the
# SQLite cache its Docker image uses):
#   - DNS: unbound on 127.0.0.1:53, a static zone `example.` (record TTL 3600, negative TTL
#     300 from the SOA); /etc/resolv.conf is bind-mounted to "nameserver 127.0.0.1" because the
#     peer resolves with the system's resolver configuration (c-ares and getaddrinfo);
#   - HTTPS: benches/compare_world.py on 127.0.0.1:443 with a certificate from a test CA made
#     here (the peer trusts it through SSL_CERT_FILE, our daemon through https.ca_files);
#   - d0..d9.example publish an enforce policy (three mx lines, max_age 604800);
#     n0..n9.example have no _mta-sts record (NXDOMAIN); further domains show behaviours.
# Then:
#   1. behaviours: the same keys asked of both daemons, answers side by side (each key on a
#      new connection, followed by a lookup of d0.example on that connection);
#   2. cache hits (d0..d9.example, primed by one lookup each) at 1, 64 and 256 connections;
#   3. a domain without policy (n0..n9.example, primed likewise) at 1, 64 and 256 connections;
#   4. DNS queries that 1,000 lookups of a domain without policy cause (unbound's counter);
#   each of 2 and 3 with `loadgen compare`, once per peer cache: that peer and our daemon
#   alternate, ROUNDS rounds each of DURATION after WARMUP; req/s, p99, server CPU per lookup
#   (/proc/PID/stat); RSS (/proc/PID/status VmRSS) at ready and after 2 and 3.
# With taskset (util-linux) and 2+ CPUs, the load tool, unbound and the HTTPS server run on
# CPU 0, the daemon and the peer on CPU 1. The peer runs with its defaults otherwise
# (cache_grace 60 s, zone timeout 4 s, asyncio's event loop: PEER_UVLOOP=1 installs uvloop and
# lets the peer use it).
#
# Needs: python3 with venv, unbound, openssl, ip (iproute2), unshare (util-linux).
# Knobs (environment): DURATION (4s), WARMUP (1s), ROUNDS (3), PEER_VERSION (1.5.1),
# VENV, PEER_UVLOOP (0), KEEP=1 keeps the work directory.
set -euo pipefail

if [[ "${1:-}" == -h || "${1:-}" == --help ]]; then
    # This header, up to `set -e`, is the usage.
    sed -n '3,/^set -euo pipefail/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
    exit 0
fi
if [[ $# -gt 0 ]]; then
    echo "compare.sh: no arguments but --help (the knobs are environment variables)" >&2
    exit 2
fi

cd "$(dirname "$0")/.."
ROOT=$PWD
DURATION=${DURATION:-4s}
WARMUP=${WARMUP:-1s}
ROUNDS=${ROUNDS:-3}
PEER_VERSION=${PEER_VERSION:-1.5.1}
PEER_UVLOOP=${PEER_UVLOOP:-0}
RELEASE=${CARGO_TARGET_DIR:-$ROOT/target}/release
[[ "$RELEASE" == /* ]] || RELEASE=$ROOT/$RELEASE
VENV=${VENV:-$(dirname "$RELEASE")/compare-venv}
# The dependency versions this comparison was made with (pip resolves the rest).
PEER_PINS=(aiodns==4.0.4 pycares==5.2.1 aiohttp==3.14.5 PyYAML==6.0.4 aiosqlite==0.22.1)

say() { printf '\n### %s\n' "$*"; }

# ---- outside the namespaces: build, install the peer, re-enter ------------------------------
if [[ "${COMPARE_INSIDE:-0}" != 1 ]]; then
    for tool in python3 unbound unbound-control openssl ip unshare; do
        command -v "$tool" >/dev/null || { echo "compare.sh: $tool is missing" >&2; exit 1; }
    done
    say "build"
    echo "+ cargo build --release --locked -p mta-sts-policyd -p loadgen"
    cargo build --release --locked -p mta-sts-policyd -p loadgen
    say "postfix-mta-sts-resolver $PEER_VERSION in $VENV"
    if ! "$VENV/bin/python" -m pip show postfix-mta-sts-resolver 2>/dev/null |
        grep -qx "Version: $PEER_VERSION" || ! "$VENV/bin/python" -c 'import aiosqlite' 2>/dev/null; then
        echo "+ python3 -m venv $VENV && $VENV/bin/pip install postfix-mta-sts-resolver[sqlite]==$PEER_VERSION ${PEER_PINS[*]}"
        python3 -m venv "$VENV"
        "$VENV/bin/pip" install --quiet --disable-pip-version-check \
            "postfix-mta-sts-resolver[sqlite]==$PEER_VERSION" "${PEER_PINS[@]}"
    fi
    if [[ "$PEER_UVLOOP" == 1 ]]; then
        "$VENV/bin/pip" install --quiet --disable-pip-version-check uvloop
    fi
    UNSHARE=(unshare --net --mount)
    [[ $EUID -eq 0 ]] || UNSHARE+=(--map-root-user)
    echo "+ ${UNSHARE[*]} bash $0   # the measurement, in its own network and mount namespaces"
    export COMPARE_INSIDE=1 VENV RELEASE
    exec "${UNSHARE[@]}" bash "$0"
fi

# ---- inside: the offline world ---------------------------------------------------------------
SCRIPT_START=$(date +%s)
LOADGEN=$RELEASE/loadgen
DAEMON=$RELEASE/mta-sts-policyd
PEER=$VENV/bin/mta-sts-daemon
WORLD=$ROOT/benches/compare_world.py
for f in "$LOADGEN" "$DAEMON" "$PEER"; do
    [[ -x "$f" ]] || { echo "missing $f" >&2; exit 1; }
done
WORK=$(mktemp -d "${TMPDIR:-/tmp}/mta-sts-compare.XXXXXX")
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
: >"$COMMANDS"
run() {
    echo "+ $*"
    echo "$*" >>"$COMMANDS"
    "$@"
}
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
mib() { awk -v k="$1" 'BEGIN {printf "%.1f", k / 1024}'; }

CLIENT_PIN=()
SERVER_PIN=()
if command -v taskset >/dev/null && [[ "$(nproc)" -ge 2 ]]; then
    CLIENT_PIN=(taskset -c 0)
    SERVER_PIN=(taskset -c 1)
    PINNING="load tool, unbound and HTTPS server on CPU 0, daemon and peer on CPU 1 (taskset)"
else
    PINNING="no pinning (taskset missing or one CPU)"
fi
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)

say "network and resolver of the namespace"
ip link set lo up
echo "nameserver 127.0.0.1" >"$WORK/resolv.conf"
mount --bind "$WORK/resolv.conf" /etc/resolv.conf
echo "loopback up; /etc/resolv.conf: $(cat /etc/resolv.conf)"

# A sleep without a fork (as in perf.sh).
mkfifo "$WORK/nap.fifo"
exec {NAP_FD}<>"$WORK/nap.fifo"
nap() { read -r -t "$1" -u "$NAP_FD" _ || true; }
wait_line() { # FILE SECONDS PATTERN
    local start=$SECONDS
    while ((SECONDS - start <= $2)); do
        grep -q -- "$3" "$1" 2>/dev/null && return 0
        nap 0.05
    done
    echo "timed out waiting for '$3' in $1:" >&2
    cat "$1" >&2
    return 1
}

# -- the domains
BENCH=(d0 d1 d2 d3 d4 d5 d6 d7 d8 d9)
NOPOL=(n0 n1 n2 n3 n4 n5 n6 n7 n8 n9)
mkdir -p "$WORK/www"
ZONE=$WORK/zone.conf
{
    echo 'local-zone: "example." static'
    echo 'local-data: "example. 3600 IN SOA ns.example. hostmaster.example. 1 3600 600 86400 300"'
} >"$ZONE"
# publish DOMAIN POLICY_BODY TXT...: the TXT records at _mta-sts.DOMAIN, A mta-sts.DOMAIN, body.
publish() {
    local d=$1 body=$2 t
    shift 2
    for t in "$@"; do
        echo "local-data: '_mta-sts.$d. 3600 IN TXT \"$t\"'" >>"$ZONE"
    done
    echo "local-data: \"mta-sts.$d. 3600 IN A 127.0.0.1\"" >>"$ZONE"
    printf '%b' "$body" >"$WORK/www/mta-sts.$d.txt"
    HOSTS+=("mta-sts.$d")
}
HOSTS=()
for d in "${BENCH[@]}"; do
    publish "$d.example" "version: STSv1\nmode: enforce\nmx: mx1.$d.example\nmx: mx2.$d.example\nmx: *.backup.$d.example\nmax_age: 604800\n" \
        "v=STSv1; id=1"
done
# The behaviours of part 1 (the README's "Compared with" section names a test of ours for each).
enforce() { echo "version: STSv1\nmode: enforce\nmx: mx.$1\nmax_age: 86400\n"; }
publish badid.example "$(enforce badid.example)" "v=STSv1; id=2024-01-01"
publish lookalike.example "$(enforce lookalike.example)" "v=STSv10; id=zzz" "v=STSv1; id=abc"
publish repeat.example "version: STSv1\nmode: enforce\nmode: testing\nmx: mx.repeat.example\nmax_age: 86400\nmax_age: 0\n" "v=STSv1; id=1"
publish longage.example "version: STSv1\nmode: enforce\nmx: mx.longage.example\nmax_age: 31557601\n" "v=STSv1; id=1"
publish ipmx.example "version: STSv1\nmode: enforce\nmx: 192.0.2.1\nmax_age: 86400\n" "v=STSv1; id=1"
publish badline.example "version: STSv1\nmode: enforce\nmx: mx.badline.example\nmax_age: 86400\nthis line has no colon\n" "v=STSv1; id=1"
publish xn--bcher-kva.example "$(enforce xn--bcher-kva.example)" "v=STSv1; id=1"

say "test CA and the policy hosts' certificate"
SAN=$(printf 'DNS:%s,' "${HOSTS[@]}")
cat >"$WORK/ext.cnf" <<EOF
basicConstraints = CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
subjectAltName = ${SAN%,}
EOF
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj /CN=compare-test-ca -addext basicConstraints=critical,CA:TRUE \
    -addext keyUsage=critical,keyCertSign,cRLSign \
    -keyout "$WORK/ca.key" -out "$WORK/ca.pem" 2>/dev/null
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=mta-sts.d0.example \
    -keyout "$WORK/srv.key" -out "$WORK/srv.csr" 2>/dev/null
openssl x509 -req -in "$WORK/srv.csr" -CA "$WORK/ca.pem" -CAkey "$WORK/ca.key" -CAcreateserial \
    -days 2 -extfile "$WORK/ext.cnf" -out "$WORK/srv.pem" 2>/dev/null
echo "${#HOSTS[@]} policy hosts in one certificate"

say "unbound on 127.0.0.1:53 and the HTTPS server on 127.0.0.1:443"
cat >"$WORK/unbound.conf" <<EOF
server:
    interface: 127.0.0.1
    port: 53
    do-ip6: no
    do-daemonize: no
    chroot: ""
    username: ""
    directory: "$WORK"
    pidfile: ""
    use-syslog: no
    logfile: ""
    verbosity: 0
    num-threads: 1
    access-control: 127.0.0.0/8 allow
    module-config: "iterator"
    extended-statistics: no
    include: "$ZONE"
remote-control:
    control-enable: yes
    control-interface: "$WORK/unbound.ctl"
    control-use-cert: no
EOF
"${CLIENT_PIN[@]}" unbound -c "$WORK/unbound.conf" >"$WORK/unbound.log" 2>&1 &
PID_UNBOUND=$!
PIDS+=("$PID_UNBOUND")
"${CLIENT_PIN[@]}" "$VENV/bin/python" "$WORLD" https --cert "$WORK/srv.pem" --key "$WORK/srv.key" \
    --root "$WORK/www" >"$WORK/https.out" 2>"$WORK/https.log" &
PIDS+=("$!")
wait_line "$WORK/https.out" 30 listening
for _ in $(seq 100); do
    unbound-control -c "$WORK/unbound.conf" status >/dev/null 2>&1 && break
    nap 0.1
done
dns_queries() {
    unbound-control -c "$WORK/unbound.conf" stats_noreset | awk -F= '$1 == "total.num.queries" {print $2}'
}
echo "unbound pid $PID_UNBOUND, $(dns_queries) queries so far"

# ---- the daemons -----------------------------------------------------------------------------
# The peer twice: with its default in-memory cache, and with the SQLite cache its Docker image
# uses (the cache that survives a restart); our daemon once (its cache always survives).
ADDR_PEER=127.0.0.1:8461
ADDR_SQL=127.0.0.1:8463
ADDR_OURS=127.0.0.1:8462
peer_yml() { # PORT CACHE_LINES
    printf 'host: 127.0.0.1\nport: %s\ncache:\n%s\ndefault_zone:\n  strict_testing: false\n  timeout: 4\n' "$1" "$2"
}
peer_yml 8461 $'  type: internal\n  options:\n    cache_size: 10000' >"$WORK/peer.yml"
peer_yml 8463 $'  type: sqlite\n  options:\n    filename: '"$WORK/peer-cache.db" >"$WORK/peer-sqlite.yml"
cat >"$WORK/ours.toml" <<EOF
[socketmap]
listen = ["inet:$ADDR_OURS"]
[dns]
nameservers = ["127.0.0.1:53"]
[https]
ca_files = ["$WORK/ca.pem"]
# The offline world lives on 127.0.0.1.
allow_private_addresses = true
[cache]
dir = "$WORK/state"
[control]
socket = ""
EOF
mkdir -p "$WORK/state"
PEER_FLAGS=()
[[ "$PEER_UVLOOP" == 1 ]] || PEER_FLAGS=(--disable-uvloop)
start_peer() { # NAME CONFIG: sets PID_<NAME>
    local pid
    echo "+ SSL_CERT_FILE=$WORK/ca.pem ${SERVER_PIN[*]} $PEER -c $2 ${PEER_FLAGS[*]}   # $(basename "$2"): $(tr '\n' ' ' <"$2")"
    echo "SSL_CERT_FILE=ca.pem ${SERVER_PIN[*]} mta-sts-daemon -c $(basename "$2") ${PEER_FLAGS[*]}   # $(basename "$2"): $(tr '\n' ' ' <"$2")" >>"$COMMANDS"
    SSL_CERT_FILE=$WORK/ca.pem "${SERVER_PIN[@]}" "$PEER" -c "$2" "${PEER_FLAGS[@]}" \
        2>"$WORK/$1.log" &
    pid=$!
    PIDS+=("$pid")
    printf -v "PID_$1" '%s' "$pid"
    wait_line "$WORK/$1.log" 60 'Server started'
}
start_peer peer "$WORK/peer.yml"
start_peer sql "$WORK/peer-sqlite.yml"
echo "+ ${SERVER_PIN[*]} $DAEMON -c ours.toml serve   # ours.toml: $(grep -v '^#' "$WORK/ours.toml" | tr '\n' ' ')"
echo "${SERVER_PIN[*]} mta-sts-policyd -c ours.toml serve   # ours.toml: $(grep -v '^#' "$WORK/ours.toml" | tr '\n' ' ')" >>"$COMMANDS"
"${SERVER_PIN[@]}" "$DAEMON" -c "$WORK/ours.toml" serve 2>"$WORK/ours.log" >/dev/null &
PID_ours=$!
PIDS+=("$PID_ours")
wait_line "$WORK/ours.log" 60 'INFO ready'
declare -A RSS
for n in peer sql ours; do
    pid_var=PID_$n
    RSS[$n,start]=$(rss_kib "${!pid_var}")
done
echo "peer (internal cache) pid $PID_peer on $ADDR_PEER, peer (sqlite cache) pid $PID_sql on $ADDR_SQL"
echo "ours pid $PID_ours on $ADDR_OURS"

ask() { # ADDR [options and keys of compare_world.py ask]
    local addr=$1
    shift
    "$VENV/bin/python" "$WORLD" ask --addr "$addr" "$@"
}

# ---- 1. behaviours ---------------------------------------------------------------------------
say "1. behaviours: the same keys asked of both daemons"
KEYS=(d0.example n0.example badid.example lookalike.example repeat.example longage.example
    ipmx.example badline.example bücher.example "hex:ff2e6578616d706c65" long:1100)
ask "$ADDR_PEER" --then d0.example "${KEYS[@]}" >"$WORK/b-peer.tsv"
ask "$ADDR_OURS" --then d0.example "${KEYS[@]}" >"$WORK/b-ours.tsv"
BEHAVIOURS=$WORK/behaviours.md
{
    echo "| key | peer: reply | peer: then d0.example | ours: reply | ours: then d0.example |"
    echo "|---|---|---|---|---|"
    paste "$WORK/b-peer.tsv" "$WORK/b-ours.tsv" |
        awk -F'\t' '{printf "| `%s` | `%s` | %s | `%s` | %s |\n", $1, $2, ($3 ~ /^OK/ ? "answered" : $3), $5, ($6 ~ /^OK/ ? "answered" : $6)}'
} >"$BEHAVIOURS"
cat "$BEHAVIOURS"

# ---- 2./3. load ------------------------------------------------------------------------------
printf '%s.example\n' "${BENCH[@]}" >"$WORK/hit.keys"
printf '%s.example\n' "${NOPOL[@]}" >"$WORK/nopolicy.keys"
# Primed: every key asked once of each server before the measured rounds.
for a in "$ADDR_PEER" "$ADDR_SQL" "$ADDR_OURS"; do
    # shellcheck disable=SC2046
    ask "$a" $(cat "$WORK/hit.keys" "$WORK/nopolicy.keys") >/dev/null
done

SUMMARY=$WORK/summary.md
: >"$SUMMARY"
FAILED=()
tput_of() { grep 'throughput:' "$1" | sed -n "${2}p" | awk '{print $2}'; }
lat() { grep 'latency_us:' "$1" | grep -v schedule | sed -n "${2}p" | grep -o "$3=[0-9.]*" | cut -d= -f2; }
srv() { grep 'cpu: client' "$1" | sed -n "${2}p" | sed -n 's/.*server=[0-9]*% (\([0-9.]*\) us\/req).*/\1/p'; }
pct() { grep 'cpu: client' "$1" | sed -n "${2}p" | sed -n 's/.*server=\([0-9]*\)%.*/\1/p'; }
ratio() { grep '^== ratio' "$1" | grep -o 'throughput=[0-9.]*' | cut -d= -f2; }
# measure LOOKUPS KEYS EXPECT CONNECTIONS PEER_NAME PEER_LABEL: baseline the peer, target ours.
measure() {
    local out=$WORK/$1-$4-$5.txt pid_var=PID_$5 addr
    addr=$ADDR_PEER
    [[ "$5" == sql ]] && addr=$ADDR_SQL
    if ! run "${CLIENT_PIN[@]}" "$LOADGEN" compare --rounds "$ROUNDS" --duration "$DURATION" \
        --warmup "$WARMUP" --expect "$3" --keys "$2" --connections "$4" \
        --baseline "inet:$addr" --baseline-pid "${!pid_var}" \
        --target "inet:$ADDR_OURS" --server-pid "$PID_ours" | tee "$out"; then
        FAILED+=("$1 at $4 connections against the peer ($6): not every reply was $3 (see above)")
    fi
    printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$1" "$4" "$6" \
        "$(tput_of "$out" 1)" "$(tput_of "$out" 2)" "$(ratio "$out")" \
        "$(lat "$out" 1 p99)" "$(lat "$out" 2 p99)" "$(srv "$out" 1)" "$(srv "$out" 2)" \
        "$(pct "$out" 1)" "$(pct "$out" 2)" >>"$SUMMARY"
}
say "2. cache hits, d0..d9.example"
for c in 1 64 256; do
    measure "cache hit" "$WORK/hit.keys" found "$c" peer internal
    measure "cache hit" "$WORK/hit.keys" found "$c" sql sqlite
done
for n in peer sql ours; do
    pid_var=PID_$n
    RSS[$n,hit]=$(rss_kib "${!pid_var}")
done
say "3. domain without policy, n0..n9.example"
for c in 1 64 256; do
    measure "no policy" "$WORK/nopolicy.keys" notfound "$c" peer internal
    measure "no policy" "$WORK/nopolicy.keys" notfound "$c" sql sqlite
done
for n in peer sql ours; do
    pid_var=PID_$n
    RSS[$n,end]=$(rss_kib "${!pid_var}")
done

# ---- 4. DNS queries per lookup of a domain without policy -------------------------------------
say "4. DNS queries caused by 1,000 lookups of n0.example"
echo n0.example >"$WORK/one.keys"
dns_for() { # ADDR
    local before after
    before=$(dns_queries)
    "${CLIENT_PIN[@]}" "$LOADGEN" run --target "inet:$1" --keys "$WORK/one.keys" --connections 4 \
        --requests 1000 --warmup 0s --expect notfound >/dev/null
    after=$(dns_queries)
    echo $((after - before))
}
DNS_PEER=$(dns_for "$ADDR_PEER")
DNS_OURS=$(dns_for "$ADDR_OURS")
echo "peer: $DNS_PEER DNS queries; ours: $DNS_OURS"
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

# ---- summary ---------------------------------------------------------------------------------
say "summary"
echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(uname -sr)"
echo "date: $(date -u '+%Y-%m-%d %H:%M UTC'); commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?'); $(rustc --version 2>/dev/null || echo 'rustc ?')"
echo "peer: postfix-mta-sts-resolver $PEER_VERSION, $("$VENV/bin/python" --version), uvloop $([[ "$PEER_UVLOOP" == 1 ]] && echo on || echo off); $("$VENV/bin/pip" freeze 2>/dev/null | grep -iE '^(aiodns|aiohttp|aiosqlite|pycares|pyyaml)==' | tr '\n' ' ')"
echo "pinning: $PINNING; rounds: $ROUNDS x $DURATION (+$WARMUP warm-up) per side, alternating"
echo "load average (1/5/15 min): before $LOAD_BEFORE, after $LOAD_AFTER"
echo
echo "req/s; p99 in microseconds; \"CPU/lookup\": the server's CPU time per lookup in microseconds"
echo "(/proc/PID/stat, 10 ms ticks); \"CPU %\": the server's use of one core (100 = saturated)."
echo "\"ratio\": our req/s over the peer's, measured in alternating rounds."
echo
echo "| lookups | conns | peer cache | peer req/s | ours req/s | ratio | peer p99 | ours p99 | peer CPU/lookup | ours CPU/lookup | peer CPU % | ours CPU % |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
cat "$SUMMARY"
echo
echo "| RSS (VmRSS) | peer, internal cache | peer, sqlite cache | ours |"
echo "|---|---|---|---|"
echo "| at ready | $(mib "${RSS[peer,start]}") MiB | $(mib "${RSS[sql,start]}") MiB | $(mib "${RSS[ours,start]}") MiB |"
echo "| after the cache-hit runs | $(mib "${RSS[peer,hit]}") MiB | $(mib "${RSS[sql,hit]}") MiB | $(mib "${RSS[ours,hit]}") MiB |"
echo "| after the no-policy runs | $(mib "${RSS[peer,end]}") MiB | $(mib "${RSS[sql,end]}") MiB | $(mib "${RSS[ours,end]}") MiB |"
echo
echo "DNS queries reaching unbound for 1,000 lookups of n0.example (no _mta-sts record, NXDOMAIN"
echo "with negative TTL 300 s), after the runs above: peer (internal cache) $DNS_PEER, ours $DNS_OURS."
echo
echo "Behaviours (peer with the internal cache; each key on a new connection, then d0.example on"
echo "the same connection):"
cat "$BEHAVIOURS"
for f in "${FAILED[@]}"; do
    echo "WARNING: $f"
done
echo
echo "Whole measurement: $(($(date +%s) - SCRIPT_START)) s. Commands, in order:"
sed 's/^/    /' "$COMMANDS"
