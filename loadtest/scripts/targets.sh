#!/usr/bin/env bash
# The figures of PERFORMANCE.md that run.sh does not give, with the gateway on CPU 0 and the
# generator on CPU 1:
#   1. latency at half of the maximum rate (open loop), fluxgate and HAProxy in turn, 3 runs each;
#   2. end to end: delivery received -> patch accepted by the stand-in API (fluxgate dev, with
#      its durable queue, answering once the patches are in);
#   3. cost by body size, 1 KB -> 25 MiB;
#   4. resident memory idle, and with 10,000 idle TLS connections open.
# Usage: targets.sh MAX_REQ_PER_S   (fluxgate's keepalive row of run.sh)
# Needs: target/release/fluxgate and target/release/fluxgate-loadtest (cargo build --release
# --workspace), haproxy, openssl, python3.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
max=${1:?give the maximum keep-alive rate measured by run.sh}
FLUXGATE=${FLUXGATE:-$root/target/release/fluxgate}
LOADTEST=${LOADTEST:-$root/target/release/fluxgate-loadtest}
dir=$(mktemp -d -t fgtargets.XXXX)
trap 'kill $(cat "$dir"/*.pid 2>/dev/null) 2>/dev/null; rm -rf "$dir"' EXIT
secret='bench-secret-dont-share'
printf %s "$secret" >"$dir/token"
hook=$(printf %s%s%s "$secret" bench flux-system | sha256sum | cut -c1-64)
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=127.0.0.1 \
  -addext subjectAltName=IP:127.0.0.1 -keyout "$dir/key.pem" -out "$dir/cert.pem" 2>/dev/null

wait_port() { for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }
gateway() { # name port [--bench]
  taskset -c 0 "$FLUXGATE" dev ${3:-} --dir "$dir/$1" --listen "127.0.0.1:$2" --admin-listen 127.0.0.1:0 \
    --tls-cert "$dir/cert.pem" --tls-key "$dir/key.pem" --token-file "$dir/token" --receiver bench \
    >"$dir/$1.out" 2>&1 &
  echo $! >"$dir/$1.pid"
  wait_port "$2"
}
stop() { kill "$(cat "$dir/$1.pid")" 2>/dev/null; wait "$(cat "$dir/$1.pid")" 2>/dev/null || true; rm -f "$dir/$1.pid"; }
load() { # port args... -> prints the latency row
  taskset -c 1 "$LOADTEST" "https://127.0.0.1:$1/hook/$hook" --secret-file "$dir/token" --insecure -q "${@:2}"
}
row() { awk '/^latency/ {getline; print}'; }

half=$((max / 2))
echo "== 1. latency at half of $max req/s: $half req/s, 32 connections, 10 s after 2 s of warm-up"
echo "                       p50        p90        p99      p99.9        max       mean"
gateway fg 19501 --bench
for i in 1 2 3; do printf 'fluxgate run %s ' "$i"; load 19501 -c 32 --rate "$half" -d 10s -w 2s | row; done
stop fg
cat "$dir/cert.pem" "$dir/key.pem" >"$dir/both.pem"
keyb64=$(printf %s "$secret" | base64 -w0)
sed -e "s|@PORT@|19502|g; s|@PEM@|$dir/both.pem|g; s|@SECRET@|$secret|g; s|@KEYB64@|$keyb64|g" \
  -e "s|@HOOK@|$hook|g; s|@DIR@|$dir|g" "$root/loadtest/peers/haproxy.cfg.in" >"$dir/haproxy.cfg"
taskset -c 0 haproxy -f "$dir/haproxy.cfg" >"$dir/haproxy.out" 2>&1 &
echo $! >"$dir/haproxy.pid"
wait_port 19502
for i in 1 2 3; do printf 'haproxy  run %s ' "$i"; load 19502 -c 32 --rate "$half" -d 10s -w 2s | row; done
stop haproxy

echo
echo "== 2. end to end: fluxgate dev (durable queue, relay.wait 2s); each answer comes once the"
echo "   stand-in API has accepted the patches (1 GitRepository + a label selector: 1 list, 3 patches)"
gateway e2e 19503
load 19503 -c 1 --rate 0.9 -d 30s | grep -E '^(status|latency)' -A1 | grep -v '^--'
stop e2e

echo
echo "== 3. by body size (keep-alive, 8 connections, 5 s each; 413 above max_body_bytes = 25 MiB)"
gateway size 19504 --bench
printf '%-8s %12s %12s %10s %10s\n' body req/s MiB/s p50 p99
for size in 1KB 8KB 64KiB 1MiB 8MiB 25MiB; do
  c=8; d=5s
  out=$(load 19504 -c $c -d $d --body-size "$size" --json - 2>/dev/null)
  python3 -c 'import json,sys; r=json.load(sys.stdin); l=r["latency_us"]
print("%-8s %12.1f %12.1f %9.2fms %9.2fms  %s" % (sys.argv[1], r["throughput_rps"], r["throughput_rps"]*r["body_bytes"]/2**20, l["p50"]/1000, l["p99"]/1000, r["status"]))' "$size" <<<"$out"
done
echo
echo "== 4. memory (VmRSS of the gateway: fluxgate dev --bench, stand-in API in the same process)"
pid=$(cat "$dir/size.pid")
stop size
gateway idle 19505 --bench
pid=$(cat "$dir/idle.pid")
sleep 2
echo "idle, before any request: $(awk '/VmRSS/ {printf "%.1f MiB", $2/1024}' /proc/"$pid"/status)"
python3 "$here/idle-connections.py" 127.0.0.1:19505 "$pid" 10000 50
stop idle
