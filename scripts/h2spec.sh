#!/usr/bin/env bash
# Conformance check of portcullis's HTTP/2 with h2spec (github summerwind/h2spec), next to
# nginx in the same run. Not run by CI.
#
#   scripts/h2spec.sh H2SPEC_SOURCE_DIR
#
# H2SPEC_SOURCE_DIR is a work tree of h2spec's source. h2spec is built with Debian's Go in
# GOPATH mode against Debian's Go library packages (the Go module proxy is not used):
#   apt-get install golang-go golang-golang-x-net-dev golang-github-spf13-cobra-dev \
#     golang-github-fatih-color-dev nginx openssl
# Then h2spec runs against portcullis on a plain (h2c, prior knowledge) and a TLS listener,
# and against nginx (`listen … http2`, the spelling every nginx version reads) on the same two kinds of listener. Reports go to
# target/h2spec/*.txt; the last line of each is h2spec's pass count.
set -euo pipefail

src=${1:?usage: scripts/h2spec.sh H2SPEC_SOURCE_DIR}
src=$(cd "$src" && pwd)
root=$(cd "$(dirname "$0")/.." && pwd)
work=$root/target/h2spec
mkdir -p "$work"

# --- build h2spec -------------------------------------------------------------------------
gopath=$work/gopath
mkdir -p "$gopath/src/github.com/summerwind"
ln -sfn "$src" "$gopath/src/github.com/summerwind/h2spec"
GOPATH=$gopath:/usr/share/gocode GO111MODULE=off GOFLAGS= GOPROXY=off GOCACHE=$work/gocache \
    go build -o "$work/h2spec-bin" github.com/summerwind/h2spec/cmd/h2spec

# --- build portcullis ---------------------------------------------------------------------
(cd "$root" && cargo build --quiet)
portcullis=$root/target/debug/portcullis

# --- certificates -------------------------------------------------------------------------
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=localhost \
    -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
up=$(free_port); ngx_plain=$(free_port); ngx_tls=$(free_port); pc_plain=$(free_port); pc_tls=$(free_port)

pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap cleanup EXIT

# --- nginx: the upstream (HTTP/1.1) and the comparison (h2c and TLS) -----------------------
mkdir -p "$work/nginx/logs"
cat >"$work/nginx/nginx.conf" <<EOF
worker_processes 1;
error_log $work/nginx/logs/error.log;
pid $work/nginx/nginx.pid;
events { worker_connections 256; }
http {
    access_log off;
    client_body_temp_path $work/nginx/body;
    server { listen 127.0.0.1:$up; location / { return 200 "ok\n"; } }
    server { listen 127.0.0.1:$ngx_plain http2; location / { return 200 "ok\n"; } }
    server {
        listen 127.0.0.1:$ngx_tls ssl http2;
        ssl_certificate $work/cert.pem; ssl_certificate_key $work/key.pem;
        location / { return 200 "ok\n"; }
    }
}
EOF
nginx -p "$work/nginx" -c "$work/nginx/nginx.conf" -g 'daemon off;' &
pids+=($!)

# --- portcullis: one plain, one TLS (TLS applies to every listener of a process) -----------
route='[[route]]
path = "/"
auth = []'
cat >"$work/plain.toml" <<EOF
[server]
listen = ["127.0.0.1:$pc_plain"]
[upstream]
url = "http://127.0.0.1:$up"
$route
EOF
cat >"$work/tls.toml" <<EOF
[server]
listen = ["127.0.0.1:$pc_tls"]
[server.tls]
cert_file = "$work/cert.pem"
key_file = "$work/key.pem"
[upstream]
url = "http://127.0.0.1:$up"
$route
EOF
"$portcullis" run --config "$work/plain.toml" >"$work/portcullis-plain.log" 2>&1 &
pids+=($!)
"$portcullis" run --config "$work/tls.toml" >"$work/portcullis-tls.log" 2>&1 &
pids+=($!)

wait_port() {
    for _ in $(seq 100); do
        if python3 -c "import socket,sys; socket.create_connection(('127.0.0.1',$1),0.2)" 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "nothing listens on $1" >&2
    exit 1
}
for port in $up $ngx_plain $ngx_tls $pc_plain $pc_tls; do wait_port "$port"; done

# --- run ----------------------------------------------------------------------------------
run() { # name port [flags]
    local name=$1 port=$2
    shift 2
    "$work/h2spec-bin" -h 127.0.0.1 -p "$port" -o 2 "$@" >"$work/$name.txt" 2>&1 || true
    printf '%-18s %s\n' "$name" "$(grep -E '^[0-9]+ tests' "$work/$name.txt" | tail -1)"
}
echo "h2spec built from $src, nginx $(nginx -v 2>&1 | sed 's/.*nginx\///'), $(date -u +%Y-%m-%dT%H:%MZ)"
run portcullis-h2c "$pc_plain"
run portcullis-tls "$pc_tls" -t -k
run nginx-h2c "$ngx_plain"
run nginx-tls "$ngx_tls" -t -k
echo "failures: grep -B2 -A6 '×' $work/*.txt"
