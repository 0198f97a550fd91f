#!/usr/bin/env bash
# bench/run.sh — end-to-end benchmark of portcullis against nginx, on loopback.
#
# One command from a fresh clone:  bench/run.sh
#
# Builds `cargo build --release`, installs what is missing from Debian's packages (nginx,
# wrk, apache2-utils, redis-server, python3, curl), then starts on 127.0.0.1 only:
#   upstream      nginx, 1 worker, `return 200 "ok"`                     (CPU1)
#   nginx         reverse proxy, 1 worker: no auth, and auth_basic {SHA}  (CPU0)
#   portcullis    server.workers = 1, memory session store                (CPU0)
#   portcullis    server.workers = 1, Redis session store                 (CPU0)
#   redis-server  on a free port                                          (CPU1)
# and drives each case with the same wrk load (1 thread, 32 connections, warm-up, then
# DURATION): direct upstream (wrk on CPU0, the ceiling), nginx no auth, nginx auth_basic
# {SHA}, portcullis public route, Basic (argon2id, cached verification), static bearer
# token, session cookie (memory store), session cookie (Redis store).
#
# Then memory (VmRSS of the proxy): idle, with 100,000 live memory-store sessions (created
# through POST /.portcullis/login), then with 10,000 more open keep-alive connections
# (bench/conns.py). Then the wrong-password flood: a session client measured alone,
# then again while 8 connections hammer wrong passwords — (a) one user from one address
# (the rate limiter answers 429), (b) a new user name and a new X-Forwarded-For (from a
# trusted loopback peer) on every attempt, so every attempt asks for an argon2id hash.
#
# Columns: req/s; wrk's p50/p99 latency; errors (non-2xx + socket errors); x_nginx = req/s
# relative to nginx without auth in this run; us/req = the server's own CPU time
# (utime+stime of its process group, /proc) per request; cpu0%/cpu1% = whole-core busy.
# A row whose cpu0 is clearly below ~95% while cpu1 is ~100% was limited by wrk + upstream,
# not by the proxy: compare us/req then. Compare only rows of the same run.
#
# Every process started here is stopped on exit (trap); the work dir in /tmp is removed
# unless KEEP=1.
#
# Environment: DURATION (8s) WARMUP (2s) CONNS (32) SESSIONS (100000) IDLE_CONNS (10000)
#              SKIP_BUILD=1  KEEP=1  PIN=0 (do not pin to CPUs)
#              PORTCULLIS_BIN=path (measure that binary instead of target/release/portcullis)
set -euo pipefail

DURATION=${DURATION:-8s}
WARMUP=${WARMUP:-2s}
CONNS=${CONNS:-32}
SESSIONS=${SESSIONS:-100000}
IDLE_CONNS=${IDLE_CONNS:-10000}
SKIP_BUILD=${SKIP_BUILD:-0}
KEEP=${KEEP:-0}
PIN=${PIN:-1}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH=$ROOT/bench
USER_NAME=bench
USER_PASS='benchpass-123'
TOKEN='bench-token-0123456789abcdef0123456789abcdef'
BASIC_HDR="Authorization: Basic $(printf '%s:%s' "$USER_NAME" "$USER_PASS" | base64 -w0)"
BEARER_HDR="Authorization: Bearer $TOKEN"
CPU_SUT=0
CPU_LOAD=1

log() { echo "== $*" >&2; }
die() { echo "run.sh: $*" >&2; exit 2; }

# ---------------------------------------------------------------- packages
missing=()
for pair in nginx:nginx wrk:wrk htpasswd:apache2-utils redis-server:redis-server \
  python3:python3 curl:curl taskset:util-linux; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
done
if [[ ${#missing[@]} -gt 0 ]]; then
  log "installing ${missing[*]}"
  SUDO=; [[ $(id -u) == 0 ]] || SUDO=sudo
  $SUDO apt-get install -y "${missing[@]}" >/dev/null 2>&1 \
    || { $SUDO apt-get update >/dev/null && $SUDO apt-get install -y "${missing[@]}" >/dev/null; }
fi
if [[ $PIN == 1 && $(nproc) -lt 2 ]]; then echo "only $(nproc) CPU: not pinning" >&2; PIN=0; fi

# ---------------------------------------------------------------- build
cd "$ROOT"
if [[ $SKIP_BUILD != 1 ]]; then
  log "cargo build --release"
  cargo build --release >&2
fi
TARGET_DIR=${CARGO_TARGET_DIR:-$(cargo metadata --format-version 1 --no-deps \
  | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')}
BIN=${PORTCULLIS_BIN:-$TARGET_DIR/release/portcullis}
[[ -x $BIN ]] || die "no $BIN (build failed?)"

# ---------------------------------------------------------------- work dir, cleanup
D=$(mktemp -d /tmp/portcullis-bench.XXXXXX)
chmod 755 "$D"   # nginx workers run as nobody
PIDS=()
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  local p
  for p in "${PIDS[@]}"; do
    kill -TERM -- "-$p" 2>/dev/null || kill -TERM "$p" 2>/dev/null || true
  done
  for p in "${PIDS[@]}"; do
    for _ in $(seq 30); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$p" 2>/dev/null || kill -KILL "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  if [[ $KEEP == 1 ]]; then echo "work dir kept: $D" >&2; else rm -rf "$D"; fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Raise the descriptor limit for 10,000 connections (client + proxy + upstream side).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
[[ $(ulimit -n) -ge $((IDLE_CONNS + 1000)) ]] || log "ulimit -n is $(ulimit -n): the ${IDLE_CONNS}-connection test may fall short"

# start CPU NAME CMD... : own process group (setsid), pinned; stdout+stderr in $D/NAME.log,
# or with STDOUT=/dev/null set, stdout there and stderr in the log.
start() {
  local cpu=$1 name=$2; shift 2
  local out=${STDOUT:-$D/$name.log}
  if [[ $PIN == 1 ]]; then
    setsid taskset -c "$cpu" "$@" >"$out" 2>>"$D/$name.log" </dev/null &
  else
    setsid "$@" >"$out" 2>>"$D/$name.log" </dev/null &
  fi
  PIDS+=($!)
}
# stop PID: one process group we started
stop() {
  kill -TERM -- "-$1" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
  kill -KILL -- "-$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}
pin() { if [[ $PIN == 1 ]]; then taskset -c "$1" "${@:2}"; else "${@:2}"; fi; }
# bg CPU CMD... : a pinned helper in the background, in its own process group (so stopping it
# stops it, not just a subshell); its pid (== group id) in BG_PID and in PIDS for the trap.
bg() {
  if [[ $PIN == 1 ]]; then setsid taskset -c "$1" "${@:2}" & else setsid "${@:2}" & fi
  BG_PID=$!; PIDS+=("$BG_PID")
}
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_http() { # URL PID NAME
  for _ in $(seq 150); do
    curl -s -o /dev/null --max-time 1 "$1" && return 0
    kill -0 "$2" 2>/dev/null || { echo "$3 died at start:" >&2; tail -20 "$D/$3.log" >&2; return 1; }
    sleep 0.1
  done
  echo "$3 not answering on $1:" >&2; tail -20 "$D/$3.log" >&2; return 1
}
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

P_UP=$(free_port); P_NGX=$(free_port); P_NGX_SHA=$(free_port)
P_MEM=$(free_port); P_MEM_ADMIN=$(free_port); P_RED=$(free_port); P_REDIS=$(free_port)
P_FLOOD=$(free_port); P_FLOOD_ADMIN=$(free_port)

# ---------------------------------------------------------------- credentials
htpasswd -cbs "$D/htpasswd.sha" "$USER_NAME" "$USER_PASS" 2>/dev/null
chmod 644 "$D/htpasswd.sha"
HASH=$(printf '%s\n' "$USER_PASS" | "$BIN" hash-password 2>/dev/null | grep -o '\$argon2id\$[^ ]*' | head -1)
[[ $HASH == \$argon2id\$* ]] || die "hash-password printed no argon2id hash"
TOKEN_SHA=$(printf '%s' "$TOKEN" | sha256sum | cut -d' ' -f1)

# ---------------------------------------------------------------- nginx configs
NGX_HTTP_COMMON="access_log off;
  keepalive_requests 1000000;
  keepalive_timeout 120s;
  client_body_temp_path $D/tmp_body; proxy_temp_path $D/tmp_proxy;
  fastcgi_temp_path $D/tmp_fcgi; uwsgi_temp_path $D/tmp_uwsgi; scgi_temp_path $D/tmp_scgi;"
ngx_head() { printf 'worker_processes 1;\nerror_log %s/%s.err warn;\npid %s/%s.pid;\nuser nobody nogroup;\nevents { worker_connections 16384; }\n' "$D" "$1" "$D" "$1"; }

{ ngx_head upstream; cat <<EOF
http {
  $NGX_HTTP_COMMON
  server {
    listen 127.0.0.1:$P_UP backlog=4096;
    location / { default_type text/plain; return 200 "ok"; }
  }
}
EOF
} >"$D/upstream.conf"

{ ngx_head nginx; cat <<EOF
http {
  $NGX_HTTP_COMMON
  upstream up {
    server 127.0.0.1:$P_UP;
    keepalive 64;
    keepalive_requests 1000000;
  }
  proxy_http_version 1.1;
  proxy_set_header Connection "";
  server {
    listen 127.0.0.1:$P_NGX backlog=4096;
    location / { proxy_pass http://up; }
  }
  server {
    listen 127.0.0.1:$P_NGX_SHA backlog=4096;
    auth_basic "bench"; auth_basic_user_file $D/htpasswd.sha;
    location / { proxy_pass http://up; }
  }
}
EOF
} >"$D/nginx.conf"

# ---------------------------------------------------------------- portcullis configs
# pconf PORT STORE-LINES EXTRA-SERVER-LINES
pconf() {
  cat <<EOF
[server]
listen = ["127.0.0.1:$1"]
workers = 1
idle_timeout = "300s"
max_connections = $((IDLE_CONNS + 5000))
$3

[upstream]
url = "http://127.0.0.1:$P_UP"

[session]
cookie_secure = false
$2

[[users]]
name = "$USER_NAME"
password_hash = "$HASH"
groups = ["bench"]

[[tokens]]
name = "bench-bot"
token_sha256 = "$TOKEN_SHA"

[[route]]
path = "/public"
auth = []

[[route]]
path = "/basic"
auth = ["basic"]
realm = "bench"

[[route]]
path = "/bearer"
auth = ["bearer"]
realm = "bench"

[[route]]
path = "/session"
auth = ["session"]
realm = "bench"

[[route]]
path = "/"
auth = ["session", "basic", "bearer"]
realm = "bench"
EOF
}
pconf "$P_MEM" 'store = "memory"' "admin_listen = \"127.0.0.1:$P_MEM_ADMIN\"" >"$D/mem.toml"
pconf "$P_RED" "store = \"redis\"
redis_url = \"redis://127.0.0.1:$P_REDIS/0\"" "" >"$D/redis.toml"
# The flood instance believes X-Forwarded-For from loopback, so that case (b) can present
# a new client address on every attempt.
pconf "$P_FLOOD" 'store = "memory"' "trusted_proxies = [\"127.0.0.1/32\"]
admin_listen = \"127.0.0.1:$P_FLOOD_ADMIN\"" >"$D/flood.toml"
for f in mem redis flood; do
  "$BIN" check --config "$D/$f.toml" >/dev/null 2>"$D/check-$f.err" \
    || { cat "$D/check-$f.err" >&2; die "config $f.toml invalid"; }
done

# ---------------------------------------------------------------- wrk scripts
cat >"$D/stats.lua" <<'EOF'
done = function(summary, latency, requests)
  local secs = summary.duration / 1e6
  local e = summary.errors
  io.write(string.format("RESULT %d %.1f %.3f %.3f %.3f %d %d\n",
    summary.requests, summary.requests / secs,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency.max / 1000,
    e.status, e.connect + e.read + e.write + e.timeout))
end
EOF
cat >"$D/login.lua" <<EOF
-- POST /.portcullis/login until $SESSIONS sessions exist (same-origin Origin: CSRF rule).
wrk.method = "POST"
wrk.body = "username=$USER_NAME&password=$USER_PASS&next=%2F"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
wrk.headers["Origin"] = "http://127.0.0.1:$P_MEM"
local n, bad = 0, 0
response = function(status, headers, body)
  n = n + 1
  if status ~= 303 then bad = bad + 1 end
  if n >= $SESSIONS then wrk.thread:stop() end
end
EOF
cat >"$D/flood-distinct.lua" <<'EOF'
-- A new user name, a wrong password and a new client address on every request.
local chars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
local function b64(s)
  local out, pad = {}, (3 - #s % 3) % 3
  s = s .. string.rep("\0", pad)
  for i = 1, #s, 3 do
    local a, b, c = s:byte(i, i + 2)
    local n = a * 65536 + b * 256 + c
    for k = 3, 0, -1 do
      local v = math.floor(n / 64 ^ k) % 64
      out[#out + 1] = chars:sub(v + 1, v + 1)
    end
  end
  local r = table.concat(out)
  return r:sub(1, #r - pad) .. string.rep("=", pad)
end
local i = math.random(1, 1000000) * 1000
request = function()
  i = i + 1
  local ip = string.format("10.%d.%d.%d", math.floor(i / 65536) % 256, math.floor(i / 256) % 256, i % 256)
  return wrk.format("GET", "/basic/", {
    ["Authorization"] = "Basic " .. b64("flood" .. i .. ":wrong-" .. i),
    ["X-Forwarded-For"] = ip,
  })
end
EOF
cat "$D/stats.lua" >>"$D/flood-distinct.lua"

# ---------------------------------------------------------------- start servers
declare -A PG
log "starting servers in $D (pin=$PIN)"
start $CPU_LOAD upstream nginx -e "$D/upstream.err" -p "$D" -c "$D/upstream.conf" -g 'daemon off;'
PG[upstream]=${PIDS[-1]}; wait_http "http://127.0.0.1:$P_UP/" "${PG[upstream]}" upstream
start $CPU_SUT nginx nginx -e "$D/nginx.err" -p "$D" -c "$D/nginx.conf" -g 'daemon off;'
PG[nginx]=${PIDS[-1]}; wait_http "http://127.0.0.1:$P_NGX/" "${PG[nginx]}" nginx
start $CPU_LOAD redis redis-server --port "$P_REDIS" --bind 127.0.0.1 --save '' --appendonly no
PG[redis]=${PIDS[-1]}
for _ in $(seq 100); do redis-cli -p "$P_REDIS" ping 2>/dev/null | grep -q PONG && break; sleep 0.1; done
# The access log (one JSON line per request) is formatted and written to /dev/null: nginx has
# access_log off, and a file would fill /tmp.
STDOUT=/dev/null start $CPU_SUT pmem "$BIN" run --config "$D/mem.toml" --log-format json
PG[pmem]=${PIDS[-1]}; wait_http "http://127.0.0.1:$P_MEM/public/" "${PG[pmem]}" pmem
RSS_IDLE=$(rss_kib "${PG[pmem]}")
STDOUT=/dev/null start $CPU_SUT predis "$BIN" run --config "$D/redis.toml" --log-format json
PG[predis]=${PIDS[-1]}; wait_http "http://127.0.0.1:$P_RED/public/" "${PG[predis]}" predis

login_cookie() { # PORT -> "Cookie: portcullis_session=..."
  curl -s -o /dev/null -D - --max-time 10 -H "Origin: http://127.0.0.1:$1" \
    --data-urlencode "username=$USER_NAME" --data-urlencode "password=$USER_PASS" \
    --data-urlencode "next=/" "http://127.0.0.1:$1/.portcullis/login" \
    | tr -d '\r' | sed -n 's/^[Ss]et-[Cc]ookie: \(portcullis_session=[^;]*\).*/Cookie: \1/p' | head -1
}
COOKIE_MEM=$(login_cookie "$P_MEM"); [[ -n $COOKIE_MEM ]] || die "login on the memory instance failed"
COOKIE_RED=$(login_cookie "$P_RED"); [[ -n $COOKIE_RED ]] || die "login on the redis instance failed"

# ---------------------------------------------------------------- measure
cpu_snap() { awk '/^cpu[0-9]/ {b=$2+$3+$4+$7+$8+$9; t=b+$5+$6; printf "%s %s %s ", $1, b, t}' /proc/stat; }
grp_ticks() { # PGID -> utime+stime ticks of every process in the group
  cat /proc/[0-9]*/stat 2>/dev/null | awk -v pg="$1" '{ sub(/^.*\) /, ""); if ($3 == pg) s += $12 + $13 } END { print s + 0 }'
}
CLK_TCK=$(getconf CLK_TCK)
cpu_pct() {
  awk -v a="$1" -v b="$2" 'BEGIN { n = split(a, x, " "); split(b, y, " "); s = "";
    for (i = 1; i + 2 <= n && i <= 4; i += 3) { dt = y[i+2] - x[i+2];
      s = s sprintf("%.0f ", dt > 0 ? 100 * (y[i+1] - x[i+1]) / dt : 0) } print s }'
}
code() { curl -s -o /dev/null --max-time 10 -w '%{http_code}' "$@" || true; }

# measure NAME URL SERVER WRK_CPU [HEADER] -> one row in ROWS, raw figures in R_*
declare -A R_RPS R_P99
ROWS=()
FMT='%-26s %10s %8s %8s %7s %8s %7s %5s %5s'
measure() {
  local name=$1 url=$2 srv=$3 wcpu=$4 hdr=${5:-}
  local args=(-t1 -c"$CONNS" --timeout 10s) h=()
  [[ -n $hdr ]] && h=(-H "$hdr")
  args+=("${h[@]}")
  local got; got=$(code "${h[@]}" "$url")
  [[ $got == 200 ]] || { echo "$name: check got $got, want 200" >&2; ROWS+=("$(printf "$FMT" "$name" CHECK-FAILED "$got" - - - - - -)"); return; }
  pin "$wcpu" wrk "${args[@]}" -d"$WARMUP" "$url" >/dev/null 2>&1 || true
  local pg=${PG[$srv]} before after tk0 tk1 t0 t1 res
  before=$(cpu_snap); tk0=$(grp_ticks "$pg"); t0=$(date +%s%N)
  res=$(pin "$wcpu" wrk "${args[@]}" -d"$DURATION" -s "$D/stats.lua" "$url" 2>&1 | grep '^RESULT' || true)
  t1=$(date +%s%N); tk1=$(grp_ticks "$pg"); after=$(cpu_snap)
  local c0 c1; read -r c0 c1 <<<"$(cpu_pct "$before" "$after")"
  if [[ -z $res ]]; then ROWS+=("$(printf "$FMT" "$name" FAILED - - - - - "$c0" "$c1")"); return; fi
  local nreq rps p50 p99 pmax non2xx sockerr usreq
  read -r _ nreq rps p50 p99 pmax non2xx sockerr <<<"$res"
  usreq=$(awk -v d=$((tk1 - tk0)) -v hz="$CLK_TCK" -v n="$nreq" 'BEGIN { printf "%.1f", (n > 0 ? 1e6 * d / hz / n : 0) }')
  R_RPS[$name]=$rps; R_P99[$name]=$p99
  local ratio=-
  [[ -n ${R_RPS[nginx-noauth]:-} ]] && ratio=$(awk -v a="$rps" -v b="${R_RPS[nginx-noauth]}" 'BEGIN { printf "%.2f", a / b }')
  local row; row=$(printf "$FMT" "$name" "$rps" "$p50" "$p99" $((non2xx + sockerr)) "$ratio" "$usreq" "$c0" "$c1")
  echo "$row" >&2
  ROWS+=("$row")
}

HOST_DESC="$(nproc) cpu, $(awk -F: '/model name/ {print $2; exit}' /proc/cpuinfo | sed 's/^ *//')"
log "throughput: wrk -t1 -c$CONNS -d$DURATION (warm-up $WARMUP), HTTP/1.1 keep-alive, pin=$PIN; $HOST_DESC; load $(cut -d' ' -f1-3 /proc/loadavg)"
UP=http://127.0.0.1
measure upstream                  "$UP:$P_UP/"            upstream $CPU_SUT
measure nginx-noauth              "$UP:$P_NGX/"           nginx    $CPU_LOAD
measure nginx-auth_basic-sha      "$UP:$P_NGX_SHA/"       nginx    $CPU_LOAD "$BASIC_HDR"
measure portcullis-public         "$UP:$P_MEM/public/"    pmem     $CPU_LOAD
measure portcullis-basic-argon2id "$UP:$P_MEM/basic/"     pmem     $CPU_LOAD "$BASIC_HDR"
measure portcullis-bearer-static  "$UP:$P_MEM/bearer/"    pmem     $CPU_LOAD "$BEARER_HDR"
measure portcullis-session-memory "$UP:$P_MEM/session/"   pmem     $CPU_LOAD "$COOKIE_MEM"
measure portcullis-session-redis  "$UP:$P_RED/session/"   predis   $CPU_LOAD "$COOKIE_RED"
stop "${PG[predis]}"

# ---------------------------------------------------------------- memory
RSS_AFTER_LOAD=$(rss_kib "${PG[pmem]}")
# Sessions first: freed connection buffers are given back to the OS lazily, so a baseline
# taken right after the connections close would still hold them.
log "memory: $SESSIONS sessions via POST /.portcullis/login"
live_sessions() { curl -s "http://127.0.0.1:$P_MEM_ADMIN/metrics" | awk '/^portcullis_live_sessions / {print $2}'; }
S0=$(live_sessions); RSS_S0=$(rss_kib "${PG[pmem]}")
# wrk's Lua stops sending after $SESSIONS logins; wrk itself only exits at -d, so it is
# stopped here once the store holds them all.
T_LOGIN0=$(date +%s%N)
bg $CPU_LOAD wrk -t1 -c"$CONNS" -d600s --timeout 10s -s "$D/login.lua" "$UP:$P_MEM/.portcullis/login" >"$D/login.out" 2>&1
LOGIN_PID=$BG_PID
for _ in $(seq 6000); do
  [[ $(( $(live_sessions) - ${S0:-0} )) -ge $SESSIONS ]] && break
  kill -0 "$LOGIN_PID" 2>/dev/null || break
  sleep 0.1
done
T_LOGIN1=$(date +%s%N)
stop "$LOGIN_PID"
sleep 1
S1=$(live_sessions); RSS_S1=$(rss_kib "${PG[pmem]}")
LOGIN_LINE="$(( ${S1:-0} - ${S0:-0} )) logins in $(awk -v ns=$((T_LOGIN1 - T_LOGIN0)) 'BEGIN { printf "%.1f", ns / 1e9 }') s"

log "memory: $IDLE_CONNS keep-alive connections"
mkfifo "$D/conns.ctl"
exec 7<>"$D/conns.ctl"   # read-write: opening does not block; conns.py gets EOF when it closes
bg $CPU_LOAD python3 "$BENCH/conns.py" 127.0.0.1 "$P_MEM" "$IDLE_CONNS" /public/ <"$D/conns.ctl" >"$D/conns.out" 2>&1 7>&-
CONNS_PID=$BG_PID
for _ in $(seq 1200); do grep -q '^OPEN' "$D/conns.out" 2>/dev/null && break; kill -0 "$CONNS_PID" 2>/dev/null || break; sleep 0.1; done
OPENED=$(awk '/^OPEN/ {print $2}' "$D/conns.out"); OPENED=${OPENED:-0}
sleep 1
RSS_CONNS=$(rss_kib "${PG[pmem]}")
exec 7>&-   # closing the fifo tells conns.py to close its connections and exit
wait "$CONNS_PID" 2>/dev/null || true
sleep 1

stop "${PG[pmem]}"

# ---------------------------------------------------------------- flood
log "wrong-password flood (8 connections) vs one session client"
STDOUT=/dev/null start $CPU_SUT pflood "$BIN" run --config "$D/flood.toml" --log-format json
PG[pflood]=${PIDS[-1]}; wait_http "http://127.0.0.1:$P_FLOOD/public/" "${PG[pflood]}" pflood
COOKIE_FLOOD=$(login_cookie "$P_FLOOD"); [[ -n $COOKIE_FLOOD ]] || die "login on the flood instance failed"
FLOOD_ROWS_START=${#ROWS[@]}
measure session-alone             "$UP:$P_FLOOD/session/" pflood $CPU_LOAD "$COOKIE_FLOOD"
flood() { # NAME WRK-ARGS... : runs in the background for the measured client's whole run
  local name=$1; shift
  bg $CPU_LOAD wrk -t1 -c8 -d"$(( ${DURATION%s} + ${WARMUP%s} + 3 ))s" --timeout 10s "$@" \
    "$UP:$P_FLOOD/basic/" >"$D/flood-$name.out" 2>&1
  FLOOD_PID=$BG_PID
}
flood_summary() { # NAME -> the flood client's own figures
  awk '/^RESULT/ {printf "%s req/s answered (%d non-2xx), p99 %s ms", $3, $7, $5}' "$D/flood-$1.out"
}
WRONG_HDR="Authorization: Basic $(printf '%s:%s' "$USER_NAME" 'wrong-password' | base64 -w0)"
flood same -s "$D/stats.lua" -H "$WRONG_HDR"
sleep 1
measure session+flood-same-user   "$UP:$P_FLOOD/session/" pflood $CPU_LOAD "$COOKIE_FLOOD"
wait "$FLOOD_PID" 2>/dev/null || true
FLOOD_SAME=$(flood_summary same)
# (b) needs the limiter to believe the per-request X-Forwarded-For: start afresh.
flood distinct -s "$D/flood-distinct.lua"
sleep 1
measure session+flood-distinct    "$UP:$P_FLOOD/session/" pflood $CPU_LOAD "$COOKIE_FLOOD"
wait "$FLOOD_PID" 2>/dev/null || true
FLOOD_DISTINCT=$(flood_summary distinct)
FLOOD_CODES=$(curl -s "http://127.0.0.1:$P_FLOOD_ADMIN/metrics" | awk '/^portcullis_(requests|denials)_total/ {printf "%s %s; ", $1, $2}' | sed 's/portcullis_//g')

# ---------------------------------------------------------------- report
echo
echo "portcullis bench — $(date -u '+%Y-%m-%d %H:%M UTC') — $HOST_DESC — $(nginx -v 2>&1 | sed 's/.*: //'), $(wrk -v 2>&1 | awk 'NR == 1 {print "wrk " $2}')"
echo "proxy pinned to CPU$CPU_SUT (portcullis server.workers = 1, nginx 1 worker); wrk + upstream (+ redis) on CPU$CPU_LOAD"
echo "wrk -t1 -c$CONNS -d$DURATION after a $WARMUP warm-up; us/req = the server's own CPU time per request"
echo
printf "$FMT\n" target req/s p50_ms p99_ms errors x_nginx us/req cpu0% cpu1%
printf '%s\n' "${ROWS[@]:0:$FLOOD_ROWS_START}"
echo
echo "Memory (VmRSS of portcullis, memory store):"
echo "  idle, just started:                       $(mib "$RSS_IDLE") MiB"
echo "  idle, after the throughput runs:          $(mib "$RSS_AFTER_LOAD") MiB"
echo "  live sessions ${S0:-?} -> ${S1:-?}:               $(mib "$RSS_S0") -> $(mib "$RSS_S1") MiB  (+$(mib $((RSS_S1 - RSS_S0))) MiB)   [$LOGIN_LINE]"
echo "  then $OPENED open keep-alive connections:  $(mib "$RSS_CONNS") MiB  (+$(mib $((RSS_CONNS - RSS_S1))) MiB)"
echo
echo "Wrong-password flood, 8 connections, while the session client (wrk -t1 -c$CONNS) is measured:"
printf "$FMT\n" client req/s p50_ms p99_ms errors x_nginx us/req cpu0% cpu1%
printf '%s\n' "${ROWS[@]:$FLOOD_ROWS_START}"
pct() { awk -v a="${R_RPS[$1]:-0}" -v b="${R_RPS[session-alone]:-0}" 'BEGIN { printf "%.0f%%", (b > 0 ? 100 * a / b : 0) }'; }
echo "  (a) one user, one address (rate limiter):        session client keeps $(pct session+flood-same-user) of its req/s, p99 ${R_P99[session+flood-same-user]:-?} vs ${R_P99[session-alone]:-?} ms; flood: $FLOOD_SAME"
echo "  (b) new user + X-Forwarded-For every attempt:    session client keeps $(pct session+flood-distinct) of its req/s, p99 ${R_P99[session+flood-distinct]:-?} vs ${R_P99[session-alone]:-?} ms; flood: $FLOOD_DISTINCT"
echo "  flood instance counters (both phases): $FLOOD_CODES"
