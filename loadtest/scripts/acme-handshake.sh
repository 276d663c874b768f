#!/usr/bin/env bash
# The handshake cost of a certificate obtained by ACME against the same certificate given as
# files. pebble (Let's Encrypt's test CA) issues a certificate to `fluxgate serve` with
# [server.acme] (TLS-ALPN-01 on its listener); then the same chain and key are written as
# tls_cert/tls_key and fluxgate is started with those instead. The two configurations are
# alternated ROUNDS times; each run is `openssl s_time -new` (a full handshake per connection, no
# session resumption) for SECONDS, fluxgate pinned to CPU 0 and openssl to CPU 1. Per run: the
# handshakes per second openssl completed, and fluxgate's own CPU time per handshake (user +
# system, from /proc/PID/stat), which does not depend on how fast the client is.
# Usage: acme-handshake.sh [seconds] [rounds]       FLUXGATE=path/to/fluxgate (default: release)
# Needs Debian's pebble, openssl, python3 (free ports), taskset.
set -u
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
D=${1:-10} ROUNDS=${2:-3}
FLUXGATE=${FLUXGATE:-$root/target/release/fluxgate}
for c in pebble pebble-challtestsrv openssl python3 taskset "$FLUXGATE"; do
  command -v "$c" >/dev/null || { echo "acme-handshake.sh: needs $c (apt-get install pebble openssl; cargo build --release)" >&2; exit 1; }
done
dir=$(mktemp -d -t acmehs.XXXX)
trap 'kill $(cat "$dir"/*.pid 2>/dev/null) 2>/dev/null; wait 2>/dev/null; rm -rf "$dir"' EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; return 1; }
stop() { [ -f "$dir/$1.pid" ] && { kill "$(cat "$dir/$1.pid")" 2>/dev/null; wait "$(cat "$dir/$1.pid")" 2>/dev/null; rm -f "$dir/$1.pid"; }; }
NAME=gw.fluxgate.test
listen=$(port) admin=$(port) dir_port=$(port) mgmt=$(port) dns=$(port) dns_mgmt=$(port)

# pebble's own HTTPS: a throw-away CA and a certificate for 127.0.0.1 (/work/shared/reference/acme-pebble.md).
cd "$dir" || exit 1
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=pebble-test-ca \
  -keyout ca.key -out ca.pem 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=127.0.0.1 -keyout pkey.pem -out srv.csr 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n' >ext.cnf
openssl x509 -req -in srv.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile ext.cnf -out pcert.pem 2>/dev/null
cat >pebble.json <<EOF
{"pebble": {"listenAddress": "127.0.0.1:$dir_port", "managementListenAddress": "127.0.0.1:$mgmt",
  "certificate": "$dir/pcert.pem", "privateKey": "$dir/pkey.pem", "httpPort": $(port), "tlsPort": $listen,
  "ocspResponderURL": "", "externalAccountBindingRequired": false}}
EOF
pebble-challtestsrv -dns01 "127.0.0.1:$dns" -http01 "" -https01 "" -tlsalpn01 "" -management "127.0.0.1:$dns_mgmt" \
  -defaultIPv4 127.0.0.1 -defaultIPv6 "" >/dev/null 2>&1 & echo $! >dns.pid
PEBBLE_VA_NOSLEEP=1 PEBBLE_WFE_NONCEREJECT=0 PEBBLE_AUTHZREUSE=0 \
  pebble -config pebble.json -dnsserver "127.0.0.1:$dns" >pebble.log 2>&1 & echo $! >pebble.pid
wait_port "$mgmt" || { echo "pebble did not start: $(tail -3 pebble.log)" >&2; exit 1; }

# The gateway: one receiver, and a cluster nobody answers for (handshakes never reach it).
printf 'bench-secret' >token && chmod 600 token
cat >kubeconfig <<EOF
apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:9", insecure-skip-tls-verify: true}}]
users: [{name: u, user: {token: unused}}]
contexts: [{name: c, context: {cluster: c, user: u}}]
current-context: c
EOF
chmod 600 kubeconfig
common="[kubernetes]
kubeconfig = \"$dir/kubeconfig\"

[[receivers]]
name = \"bench\"
namespace = \"flux-system\"
type = \"github\"
secret_file = \"$dir/token\"
resources = [{ kind = \"GitRepository\", name = \"app\" }]
"
cat >acme.toml <<EOF
[server]
listen = "127.0.0.1:$listen"
admin_listen = "127.0.0.1:$admin"
upgrade_sock = "$dir/sock/upgrade.sock"

[server.acme]
domains = ["$NAME"]
directory = "https://127.0.0.1:$dir_port/dir"
ca_roots = ["$dir/ca.pem"]
storage = "$dir/acme"

$common
EOF
cat >file.toml <<EOF
[server]
listen = "127.0.0.1:$listen"
admin_listen = "127.0.0.1:$admin"
upgrade_sock = "$dir/sock/upgrade.sock"
tls_cert = "$dir/chain.pem"
tls_key = "$dir/key.pem"

$common
EOF
mkdir -m 700 -p sock
serve() { # config -> pid file fluxgate.pid
  RUST_LOG=warn taskset -c 0 "$FLUXGATE" serve --config "$dir/$1.toml" >>fluxgate.log 2>&1 & echo $! >fluxgate.pid
  wait_port "$listen" || { echo "fluxgate did not start: $(tail -5 fluxgate.log)" >&2; exit 1; }
}
issuer() { openssl s_client -connect "127.0.0.1:$listen" -servername "$NAME" </dev/null 2>/dev/null |
  openssl x509 -noout -issuer -serial 2>/dev/null | tr '\n' ' '; }

# First run: the order. Wait until the issued certificate is served.
serve acme
for _ in $(seq 300); do issuer | grep -q Pebble && break; sleep 0.1; done
issuer | grep -q Pebble || { echo "no certificate issued: $(tail -5 fluxgate.log)" >&2; exit 1; }
stop fluxgate
# The same chain and key as files.
awk '/BEGIN PRIVATE KEY/ {k=1} { print > (k ? "key.pem" : "chain.pem") }' acme/certificate.pem
chmod 600 key.pem

cpu() { awk '{print $14 + $15}' "/proc/$(cat fluxgate.pid)/stat"; }  # utime + stime, in ticks
hz=$(getconf CLK_TCK)
printf '%-5s %-6s %-42s %12s %14s\n' round config certificate handshakes/s "server µs/hs"
for r in $(seq "$ROUNDS"); do
  for mode in acme file; do
    serve "$mode"
    for _ in $(seq 100); do issuer | grep -q Pebble && break; sleep 0.1; done
    cert=$(issuer | sed 's/.*CN *= *//; s/ *serial=/ #/' | cut -c1-42)
    # A second of warm-up, then the measured run.
    taskset -c 1 openssl s_time -connect "127.0.0.1:$listen" -new -time 1 >/dev/null 2>&1
    c0=$(cpu) t0=$(date +%s.%N)
    out=$(taskset -c 1 openssl s_time -connect "127.0.0.1:$listen" -new -time "$D" 2>&1)
    c1=$(cpu) t1=$(date +%s.%N)
    n=$(awk '/connections in/ && /real/ {print $1; exit}' <<<"$out")
    rate=$(awk -v n="${n:-0}" -v a="$t0" -v b="$t1" 'BEGIN { printf "%.0f", n / (b - a) }')
    us=$(awk -v a="$c0" -v b="$c1" -v hz="$hz" -v n="${n:-1}" 'BEGIN { printf "%.0f", (b - a) / hz * 1e6 / n }')
    printf '%-5s %-6s %-42s %12s %14s\n' "$r" "$mode" "$cert" "$rate" "$us"
    stop fluxgate
  done
done
grep -c "Added order" pebble.log | sed 's/^/orders placed with pebble: /'
