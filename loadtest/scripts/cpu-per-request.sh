#!/usr/bin/env bash
# CPU time per request of one fluxgate build, for A/B comparisons on a busy machine, where
# requests per second swing with the neighbours but the CPU a request costs does not.
# Starts `fluxgate dev --bench` pinned to CPU 0 (as peers/run.sh does), drives each scenario
# with wrk pinned to CPU 1 (the 7.3 KB signed GitHub push, a fresh delivery id per request),
# and reads the gateway's utime+stime from /proc before and after each scenario.
# Usage: cpu-per-request.sh LABEL [seconds] [connections]
#   FLUXGATE=path/to/fluxgate  SCENARIOS="keepalive newconn badsig"
#   SCENARIOS=idle: instead, 10,000 idle TLS connections held (idle-connections.py) and the
#   gateway's resident memory with them.
#   Any other environment (LD_PRELOAD=..., MIMALLOC_...=...) is passed on to the gateway.
# Prints one line per scenario: label, scenario, requests, req/s, CPU µs per request, p50,
# p99, and the gateway's resident memory (KiB) at start and at the end of the scenario.
set -u
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
peers=$root/loadtest/peers
label=${1:?usage: cpu-per-request.sh LABEL [seconds] [connections]}
D=${2:-8} C=${3:-32}
SCENARIOS=${SCENARIOS:-"keepalive newconn badsig"}
FLUXGATE=${FLUXGATE:-$root/target/release/fluxgate}
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
dir=$(mktemp -d -t cpureq.XXXX)
trap 'kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; rm -rf "$dir"' EXIT
secret='bench-secret-dont-share'
hook=$(printf %s%s%s "$secret" bench flux-system | sha256sum | cut -c1-64)
body=${BODY:-$root/tests/fixtures/github/push.json}
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=127.0.0.1 \
  -addext subjectAltName=IP:127.0.0.1 -keyout "$dir/key.pem" -out "$dir/cert.pem" 2>/dev/null
sig=sha256=$(openssl dgst -sha256 -hmac "$secret" -r <"$body" | cut -d' ' -f1)
printf %s "$secret" >"$dir/token"
port=$((19300 + RANDOM % 500))
taskset -c 0 "$FLUXGATE" dev --bench --dir "$dir/fg" --listen "127.0.0.1:$port" --admin-listen 127.0.0.1:0 \
  --tls-cert "$dir/cert.pem" --tls-key "$dir/key.pem" --token-file "$dir/token" --receiver bench \
  >"$dir/fluxgate.out" 2>&1 &
pid=$!
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
sleep 1
ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
rss() { awk '/^VmRSS:/ {print $2}' "/proc/$pid/status"; }
hz=$(getconf CLK_TCK)
start_rss=$(rss)
for sc in $SCENARIOS; do
  if [ "$sc" = idle ]; then
    printf '%-14s idle       %s\n' "$label" "$(python3 "$here/idle-connections.py" "127.0.0.1:$port" "$pid" 10000 50 | tr '\n' ' ')"
    continue
  fi
  case $sc in keepalive) S=$sig CL=0;; newconn) S=$sig CL=1;; badsig) S=sha256=$(printf '0%.0s' $(seq 64)) CL=0;; esac
  t0=$(ticks)
  out=$(cd "$dir" && BODY=$body SIG=$S CLOSE=$CL taskset -c 1 wrk -t1 -c"$C" -d"${D}s" --latency \
    -s "$peers/sign.lua" "https://127.0.0.1:$port/hook/$hook" 2>&1)
  t1=$(ticks)
  n=$(awk '/requests in/ {print $1}' <<<"$out")
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out"); p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  us=$(awk -v t=$((t1 - t0)) -v hz="$hz" -v n="${n:-0}" 'BEGIN { if (n > 0) printf "%.2f", t / hz * 1e6 / n; else print "?" }')
  printf '%-14s %-10s %8s %10s %8s %9s %9s %8s %8s\n' "$label" "$sc" "${n:-?}" "${rps:-?}" "$us" \
    "${p50:-?}" "${p99:-?}" "$start_rss" "$(rss)"
done
