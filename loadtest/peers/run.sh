#!/usr/bin/env bash
# Side-by-side webhook edge benchmark: fluxgate against nginx (no verification), HAProxy (the same
# HMAC check) and adnanh/webhook. Each server is pinned to CPU 0, wrk to CPU 1; the same signed GitHub
# push delivery over TLS, a fresh X-GitHub-Delivery per request. One row per (server, scenario), then
# fluxgate's ratios against the peers from this same run.
# Usage: run.sh [seconds] [connections]
#   SERVERS="fluxgate haproxy" SCENARIOS="keepalive" FLUXGATE=path/to/fluxgate BODY=file
#   extra server: GATEWAY_CMD with @PORT@ @CERT@ @KEY@ @SECRET@ @HOOK@ @DIR@
set -u
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
D=${1:-8} C=${2:-32}
SERVERS=${SERVERS:-"nginx haproxy webhook fluxgate"}
SCENARIOS=${SCENARIOS:-"keepalive newconn badsig"}
FLUXGATE=${FLUXGATE:-$root/target/release/fluxgate}
for s in $SERVERS; do
  case $s in
    nginx) need=nginx;; haproxy) need=haproxy;; webhook) need=webhook;; fluxgate) need=$FLUXGATE;; *) need=;;
  esac
  if [ -n "$need" ] && ! command -v "$need" >/dev/null; then
    echo "run.sh: $s needs $need (Debian: apt-get install wrk nginx-light haproxy webhook; fluxgate: cargo build --release)" >&2
    exit 1
  fi
done
command -v wrk >/dev/null || { echo "run.sh: needs wrk (apt-get install wrk)" >&2; exit 1; }
dir=$(mktemp -d -t peerbench.XXXX)
trap 'kill $(cat "$dir"/*.pid 2>/dev/null) 2>/dev/null; rm -rf "$dir"' EXIT
secret='bench-secret-dont-share'
hook=$(printf %s%s%s "$secret" bench flux-system | sha256sum | cut -c1-64)  # Flux formula: token+name+namespace
body=${BODY:-$root/tests/fixtures/github/push.json}
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=127.0.0.1 \
  -addext subjectAltName=IP:127.0.0.1 -keyout "$dir/key.pem" -out "$dir/cert.pem" 2>/dev/null
cat "$dir/cert.pem" "$dir/key.pem" >"$dir/both.pem"
mkdir -p "$dir/body"
sig=sha256=$(openssl dgst -sha256 -hmac "$secret" -r <"$body" | cut -d' ' -f1)
keyb64=$(printf %s "$secret" | base64 -w0)
fill() { sed -e "s|@PORT@|$2|g; s|@PEM@|$dir/both.pem|g; s|@CERT@|$dir/cert.pem|g; s|@KEY@|$dir/key.pem|g" \
  -e "s|@SECRET@|$secret|g; s|@KEYB64@|$keyb64|g; s|@HOOK@|$hook|g; s|@DIR@|$dir|g" "$1"; }
start() { # name port -> pid file
  case $1 in
    nginx) fill "$here/nginx.conf.in" "$2" >"$dir/nginx.conf"
      taskset -c 0 nginx -c "$dir/nginx.conf" -g 'daemon off;' >"$dir/nginx.out" 2>&1 & echo $! >"$dir/nginx.pid" ;;
    haproxy) fill "$here/haproxy.cfg.in" "$2" >"$dir/haproxy.cfg"
      taskset -c 0 haproxy -f "$dir/haproxy.cfg" >"$dir/haproxy.out" 2>&1 & echo $! >"$dir/haproxy.pid" ;;
    webhook) fill "$here/hooks.json.in" "$2" >"$dir/hooks.json"
      taskset -c 0 webhook -hooks "$dir/hooks.json" -ip 127.0.0.1 -port "$2" -secure -cert "$dir/cert.pem" \
        -key "$dir/key.pem" -urlprefix hook >"$dir/webhook.out" 2>&1 & echo $! >"$dir/webhook.pid" ;;
    fluxgate) # `dev --bench`: see PERFORMANCE.md for exactly what it does per request.
      printf %s "$secret" >"$dir/token"
      taskset -c 0 "$FLUXGATE" dev --bench --dir "$dir/fg" --listen "127.0.0.1:$2" --admin-listen 127.0.0.1:0 \
        --tls-cert "$dir/cert.pem" --tls-key "$dir/key.pem" --token-file "$dir/token" --receiver bench \
        >"$dir/fluxgate.out" 2>&1 & echo $! >"$dir/fluxgate.pid" ;;
    gateway) [ -n "${GATEWAY_CMD:-}" ] || return 1
      cmd=$(printf %s "$GATEWAY_CMD" | sed -e "s|@PORT@|$2|g; s|@CERT@|$dir/cert.pem|g; s|@KEY@|$dir/key.pem|g" \
        -e "s|@SECRET@|$secret|g; s|@HOOK@|$hook|g; s|@DIR@|$dir|g")
      taskset -c 0 bash -c "exec $cmd" >"$dir/gateway.out" 2>&1 & echo $! >"$dir/gateway.pid" ;;
  esac
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$2) 2>/dev/null && return 0; sleep 0.1; done
  echo "$1 did not start: $(tail -3 "$dir/$1.out")" >&2; return 1
}
stop() { kill "$(cat "$dir/$1.pid")" 2>/dev/null; wait "$(cat "$dir/$1.pid")" 2>/dev/null; rm -f "$dir/$1.pid"; }
printf '%-9s %-10s %10s %9s %9s %8s\n' server scenario req/s p50 p99 non2xx
port=19100
for s in $SERVERS; do
  port=$((port + 1))
  start "$s" $port || continue
  for sc in $SCENARIOS; do
    case $sc in keepalive) S=$sig CL=0;; newconn) S=$sig CL=1;; badsig) S=sha256=$(printf '0%.0s' $(seq 64)) CL=0;; esac
    out=$(cd "$dir" && BODY=$body SIG=$S CLOSE=$CL taskset -c 1 wrk -t1 -c"$C" -d"${D}s" --latency -s "$here/sign.lua" \
      "https://127.0.0.1:$port/hook/$hook" 2>&1)
    rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
    p50=$(awk '$1=="50%" {print $2}' <<<"$out"); p99=$(awk '$1=="99%" {print $2}' <<<"$out")
    bad=$(awk '/Non-2xx/ {print $NF}' <<<"$out")
    printf '%-9s %-10s %10s %9s %9s %8s\n' "$s" "$sc" "${rps:-?}" "${p50:-?}" "${p99:-?}" "${bad:-0}"
    echo "$s $sc ${rps:-0}" >>"$dir/rates"
  done
  stop "$s"
done
# fluxgate's ratio to each peer, per scenario, from the rows above.
if grep -q '^fluxgate ' "$dir/rates" 2>/dev/null; then
  echo
  awk '{ r[$1" "$2] = $3; seen[$1] = 1; sc[$2] = 1 }
    END { for (k in sc) for (p in seen) if (p != "fluxgate" && r[p" "k] > 0)
            printf "fluxgate/%-8s %-10s %6.2fx\n", p, k, r["fluxgate "k] / r[p" "k] }' "$dir/rates" | sort -k1,1 -k2,2
fi
