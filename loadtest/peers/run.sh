#!/usr/bin/env bash
# Issue 20's benchmark in one command: fluxgate (`serve`, as a user runs it) side by side with
# nginx (no verification), HAProxy (the same HMAC check) and adnanh/webhook. Each server is pinned
# to CPU 0; the load generators and fluxgate's stand-in Kubernetes API to CPU 1. The same signed
# GitHub push (7.3 KB) over TLS with the same certificate, a fresh X-GitHub-Delivery per request.
#
# Sections (SECTIONS, in this order), each printing a markdown table, then the targets:
#   throughput  wrk: keepalive, newconn (a TLS handshake per request), badsig (forged signatures),
#               one row per (server, scenario); ratios against HAProxy.
#   idle        RSS of the gateway holding IDLE_CONNS idle TLS connections: above idle, per
#               connection, fluxgate against HAProxy.
#   flood       a forged-signature flood from 200 addresses (fluxgate-loadtest, closed loop) while
#               another address sends valid deliveries at 10/s over new connections: "flood" with
#               the penalty box off (the flood keeps its full rate), "boxed" with it on (block
#               after 20 failures a minute, for 10 minutes), the server's CPU after the warm-up.
#
# Usage: run.sh [seconds] [connections]          (defaults 8 and 32; issue 20 uses `run.sh 6 32`)
# Knobs (environment):
#   SECTIONS="throughput idle flood"  SERVERS="nginx haproxy webhook fluxgate fluxgate-durable"
#   SCENARIOS="keepalive newconn badsig"  BODY=file  FLUXGATE=path/to/fluxgate
#   LOADTEST=path/to/fluxgate-loadtest  STANDIN=path/to/fluxgate-standin
#   IDLE_SERVERS="haproxy fluxgate"  IDLE_CONNS=10000
#   FLOOD_SERVERS="haproxy fluxgate fluxgate-durable"  FLOOD_SECONDS=<seconds>  FLOOD_WARMUP=2
#   FLOOD_CONNS=200  FLOOD_SCENARIOS="quiet flood boxed boxed-close"  FLUXGATE_LOG=<RUST_LOG for fluxgate>
#   KEEP=1: keep the run's folder (configurations, each server's output)
#   PERF=<folder>: `perf record -g` of the server over each throughput and flood row's measured
#   window, into <folder>/<server>-<scenario>.perf.data (`perf report -i` it)
#   extra servers: fluxgate-dev (`fluxgate dev --bench`, the old row), gateway (GATEWAY_CMD with
#   @PORT@ @CERT@ @KEY@ @SECRET@ @HOOK@ @DIR@)
# fluxgate rows: `fluxgate` keeps its queue in memory, `fluxgate-durable` sets relay.queue_dir in
# this run's temporary folder (the file system is printed: it must be a disk, not tmpfs).
set -u
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
D=${1:-8} C=${2:-32}
SECTIONS=${SECTIONS:-"throughput idle flood"}
SERVERS=${SERVERS:-"nginx haproxy webhook fluxgate fluxgate-durable"}
SCENARIOS=${SCENARIOS:-"keepalive newconn badsig"}
IDLE_SERVERS=${IDLE_SERVERS:-"haproxy fluxgate"}
IDLE_CONNS=${IDLE_CONNS:-10000}
FLOOD_SERVERS=${FLOOD_SERVERS:-"haproxy fluxgate fluxgate-durable"}
FLOOD_SECONDS=${FLOOD_SECONDS:-$D} FLOOD_WARMUP=${FLOOD_WARMUP:-2} FLOOD_CONNS=${FLOOD_CONNS:-200}
FLOOD_SCENARIOS=${FLOOD_SCENARIOS:-"quiet flood boxed boxed-close"}
FLUXGATE=${FLUXGATE:-$root/target/release/fluxgate}
LOADTEST=${LOADTEST:-$root/target/release/fluxgate-loadtest}
STANDIN=${STANDIN:-$root/target/release/fluxgate-standin}
has() { case " $2 " in *" $1 "*) return 0;; esac; return 1; }

# Every tool is checked before anything starts, so a run never dies half way.
missing=
need() { command -v "$1" >/dev/null || missing="$missing\n  $1: $2"; }
need taskset "apt-get install util-linux"
need openssl "apt-get install openssl"
need python3 "apt-get install python3"
need curl "apt-get install curl"
[ -n "${PERF:-}" ] && need perf "apt-get install linux-perf"
servers_used=
has throughput "$SECTIONS" && servers_used="$servers_used $SERVERS"
has idle "$SECTIONS" && servers_used="$servers_used $IDLE_SERVERS"
has flood "$SECTIONS" && servers_used="$servers_used $FLOOD_SERVERS"
has throughput "$SECTIONS" && need wrk "apt-get install wrk"
has flood "$SECTIONS" && need "$LOADTEST" "cargo build --release --workspace (or set LOADTEST)"
for s in $servers_used; do
  case $s in
    nginx) need nginx "apt-get install nginx-light";;
    haproxy) need haproxy "apt-get install haproxy";;
    webhook) need webhook "apt-get install webhook";;
    fluxgate|fluxgate-durable) need "$FLUXGATE" "cargo build --release --workspace (or set FLUXGATE)"
      need "$STANDIN" "cargo build --release --workspace (or set STANDIN)";;
    fluxgate-dev) need "$FLUXGATE" "cargo build --release --workspace (or set FLUXGATE)";;
    gateway) [ -n "${GATEWAY_CMD:-}" ] || missing="$missing\n  gateway: set GATEWAY_CMD";;
    *) missing="$missing\n  $s: unknown server (nginx haproxy webhook fluxgate fluxgate-durable fluxgate-dev gateway)";;
  esac
done
# Every held idle connection is a descriptor in the server and in the client: raise the soft
# limit to the hard one, and stop now if even that is too low.
if has idle "$SECTIONS"; then
  ulimit -n "$(ulimit -Hn)" 2>/dev/null
  fds=$(ulimit -n)
  if [ "$fds" != unlimited ] && [ "$fds" -lt $((IDLE_CONNS + 200)) ]; then
    missing="$missing\n  an open-file limit of $((IDLE_CONNS + 200)) for IDLE_CONNS=$IDLE_CONNS (ulimit -Hn is $fds)"
  fi
fi
if [ -n "$missing" ]; then
  printf "run.sh: missing:$missing\n" >&2
  exit 1
fi

dir=$(mktemp -d -t peerbench.XXXX)
# KEEP=1 keeps the folder (configurations, servers' output) for a look afterwards.
trap 'kill $(cat "$dir"/*.pid 2>/dev/null) 2>/dev/null; wait 2>/dev/null; [ -n "${KEEP:-}" ] && echo "kept $dir" >&2 || rm -rf "$dir"' EXIT
secret='bench-secret-dont-share'
printf %s "$secret" >"$dir/token"
chmod 600 "$dir/token"
hook=$(printf %s%s%s "$secret" bench flux-system | sha256sum | cut -c1-64)  # Flux formula: token+name+namespace
body=${BODY:-$root/tests/fixtures/github/push.json}
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=127.0.0.1 \
  -addext subjectAltName=IP:127.0.0.1 -keyout "$dir/key.pem" -out "$dir/cert.pem" 2>/dev/null
chmod 600 "$dir/key.pem"
cat "$dir/cert.pem" "$dir/key.pem" >"$dir/both.pem"
mkdir -p "$dir/body"
sig=sha256=$(openssl dgst -sha256 -hmac "$secret" -r <"$body" | cut -d' ' -f1)
keyb64=$(printf %s "$secret" | base64 -w0)
results=$dir/results  # "key value" lines for the summary

# Per-start settings, set by each section before `start`.
# BOX: 0 no penalty box, 1 boxed addresses held (fluxgate's tarpit; HAProxy's silent-drop),
# close: boxed addresses' connections closed at once (tarpit off; HAProxy's reject).
HEAD_TIMEOUT=5s CLIENT_TIMEOUT=10s BOX=0
fill() { sed -e "s|@PORT@|$2|g; s|@ADMIN_PORT@|$(($2 + 1000))|g; s|@PEM@|$dir/both.pem|g" \
  -e "s|@CERT@|$dir/cert.pem|g; s|@KEY@|$dir/key.pem|g; s|@SECRET@|$secret|g; s|@KEYB64@|$keyb64|g" \
  -e "s|@HOOK@|$hook|g; s|@DIR@|$dir|g; s|@HEAD_TIMEOUT@|$HEAD_TIMEOUT|g" \
  -e "s|@CLIENT_TIMEOUT@|$CLIENT_TIMEOUT|g; s|@BOX_ACTION@|$([ "$BOX" = 1 ] && echo silent-drop || echo reject)|g" \
  -e "s|@BLOCK_AFTER@|$([ "$BOX" = 0 ] && echo 0 || echo 20)|g; s|@QUEUE@|${QUEUE:-}|g" \
  -e "s|@TARPIT@|$([ "$BOX" = close ] && echo 'tarpit_connections = 0')|g" "$1"; }

wait_port() { for _ in $(seq 150); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }
# fluxgate is ready once its admin listener says so: the configuration is loaded and the
# stand-in API answered with the given credentials.
wait_ready() {
  for _ in $(seq 150); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$1/readyz")" = 200 ] && return 0
    sleep 0.1
  done
  return 1
}

# The stand-in Kubernetes API every fluxgate row patches, off the server core. fluxgate patches
# each target at most once a second (relay.min_interval), so it gets ~1 list and ~3 patches a
# second whatever the request rate.
standin_started=
start_standin() {
  [ -n "$standin_started" ] && return 0
  taskset -c 1 "$STANDIN" --kubeconfig "$dir/kubeconfig" --report-every 1s >"$dir/standin.out" 2>&1 &
  echo $! >"$dir/standin.pid"
  for _ in $(seq 100); do [ -s "$dir/kubeconfig" ] && { standin_started=1; return 0; }; sleep 0.1; done
  echo "the stand-in API did not start: $(tail -3 "$dir/standin.out")" >&2
  return 1
}

start() { # name port -> pid file $dir/<name>.pid
  local name=$1 port=$2 conf
  case $name in
    nginx) fill "$here/nginx.conf.in" "$port" >"$dir/nginx.conf"
      taskset -c 0 nginx -c "$dir/nginx.conf" -g 'daemon off;' >"$dir/nginx.out" 2>&1 & echo $! >"$dir/nginx.pid" ;;
    haproxy) conf=haproxy.cfg.in; [ "$BOX" != 0 ] && conf=haproxy-box.cfg.in
      fill "$here/$conf" "$port" >"$dir/haproxy.cfg"
      taskset -c 0 haproxy -f "$dir/haproxy.cfg" >"$dir/haproxy.out" 2>&1 & echo $! >"$dir/haproxy.pid" ;;
    webhook) fill "$here/hooks.json.in" "$port" >"$dir/hooks.json"
      taskset -c 0 webhook -hooks "$dir/hooks.json" -ip 127.0.0.1 -port "$port" -secure -cert "$dir/cert.pem" \
        -key "$dir/key.pem" -urlprefix hook >"$dir/webhook.out" 2>&1 & echo $! >"$dir/webhook.pid" ;;
    fluxgate|fluxgate-durable)
      start_standin || return 1
      QUEUE=
      if [ "$name" = fluxgate-durable ]; then
        rm -rf "$dir/queue"; mkdir -p "$dir/queue"; QUEUE="queue_dir = \"$dir/queue\""
      fi
      fill "$here/fluxgate.toml.in" "$port" >"$dir/$name.toml"
      if [ -n "${FLUXGATE_LOG:-}" ]; then export RUST_LOG=$FLUXGATE_LOG; fi
      taskset -c 0 "$FLUXGATE" serve --config "$dir/$name.toml" >"$dir/$name.out" 2>&1 & echo $! >"$dir/$name.pid"
      wait_port "$port" && wait_ready $((port + 1000)) && return 0
      echo "$name did not start: $(tail -3 "$dir/$name.out")" >&2; return 1 ;;
    fluxgate-dev) # `dev --bench`: its own in-process stand-in, warn-level logs (PERFORMANCE.md).
      taskset -c 0 "$FLUXGATE" dev --bench --dir "$dir/fg" --listen "127.0.0.1:$port" --admin-listen 127.0.0.1:0 \
        --tls-cert "$dir/cert.pem" --tls-key "$dir/key.pem" --token-file "$dir/token" --receiver bench \
        >"$dir/fluxgate-dev.out" 2>&1 & echo $! >"$dir/fluxgate-dev.pid" ;;
    gateway)
      cmd=$(printf %s "$GATEWAY_CMD" | sed -e "s|@PORT@|$port|g; s|@CERT@|$dir/cert.pem|g; s|@KEY@|$dir/key.pem|g" \
        -e "s|@SECRET@|$secret|g; s|@HOOK@|$hook|g; s|@DIR@|$dir|g")
      taskset -c 0 bash -c "exec $cmd" >"$dir/gateway.out" 2>&1 & echo $! >"$dir/gateway.pid" ;;
  esac
  wait_port "$port" && return 0
  echo "$name did not start: $(tail -3 "$dir/$name.out")" >&2; return 1
}
stop() { kill "$(cat "$dir/$1.pid")" 2>/dev/null; wait "$(cat "$dir/$1.pid")" 2>/dev/null; rm -f "$dir/$1.pid"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }  # user + system, 1/100 s
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
ms() { # wrk's "812.00us" / "1.07ms" / "1.20s" -> milliseconds
  awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n += 0; else if (v ~ /s$/) n *= 1000; printf "%.2f", n }'
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a != "" && b > 0) printf "%.2f", a / b; else print "-" }'; }
get() { awk -v k="$1" '$1 == k { print $2; exit }' "$results" 2>/dev/null; }

port=19100
# Plain markdown, so the whole output pastes into PERFORMANCE.md under a heading of its own.
echo "\`loadtest/peers/run.sh $D $C\`, $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs, load average"
echo "$(cut -d' ' -f1-3 /proc/loadavg) at the start; $("$FLUXGATE" --version 2>/dev/null | head -1) ($FLUXGATE), HAProxy"
echo "$(haproxy -v 2>/dev/null | awk 'NR==1 {print $3}'); servers on CPU 0; wrk, fluxgate-loadtest, the idle client and"
echo "the stand-in API on CPU 1. Source: $(git -C "$root" describe --always --dirty 2>/dev/null || echo unknown)."
if has fluxgate-durable "$SERVERS $FLOOD_SERVERS"; then
  echo "fluxgate-durable's relay.queue_dir is on $(df -T "$dir" | awk 'NR==2 {print $2 " (" $1 ")"}')."
fi

# ---------------------------------------------------------------------------------------------
if has throughput "$SECTIONS"; then
  echo
  echo "**Throughput**: wrk -t1 -c$C -d${D}s, the 7.3 KB signed push (badsig: a wrong signature)"
  echo
  echo "| server | scenario | req/s | p50 | p99 | non-2xx |"
  echo "|---|---|---:|---:|---:|---:|"
  HEAD_TIMEOUT=5s CLIENT_TIMEOUT=10s BOX=0
  for s in $SERVERS; do
    port=$((port + 1))
    start "$s" $port || continue
    for sc in $SCENARIOS; do
      case $sc in keepalive) S=$sig CL=0;; newconn) S=$sig CL=1;; badsig) S=sha256=$(printf '0%.0s' $(seq 64)) CL=0;; *) continue;; esac
      if [ -n "${PERF:-}" ]; then
        mkdir -p "$PERF"
        perf record -q -F 999 -g -p "$(cat "$dir/$s.pid")" -o "$PERF/$s-$sc.perf.data" -- sleep "$D" >/dev/null 2>&1 &
        perfpid=$!
      fi
      out=$(cd "$dir" && BODY=$body SIG=$S CLOSE=$CL taskset -c 1 wrk -t1 -c"$C" -d"${D}s" --latency -s "$here/sign.lua" \
        "https://127.0.0.1:$port/hook/$hook" 2>&1)
      rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
      p50=$(awk '$1=="50%" {print $2}' <<<"$out"); p99=$(awk '$1=="99%" {print $2}' <<<"$out")
      bad=$(awk '/Non-2xx/ {print $NF}' <<<"$out")
      [ "$sc" = badsig ] && bad="${bad:-0} (401 expected)"
      [ -n "${PERF:-}" ] && wait "$perfpid"
      echo "| $s | $sc | ${rps:-?} | ${p50:-?} | ${p99:-?} | ${bad:-0} |"
      echo "rps.$s.$sc ${rps:-0}" >>"$results"
      [ -n "$p99" ] && echo "p99.$s.$sc $(ms "$p99")" >>"$results"
    done
    stop "$s"
  done
  # Every server's ratio to HAProxy, per scenario, from the rows above.
  if has haproxy "$SERVERS"; then
    echo
    echo "| ratio to HAProxy | $(for sc in $SCENARIOS; do printf '%s | ' "$sc"; done)"
    echo "|---|$(for _ in $SCENARIOS; do printf -- '---:|'; done)"
    for s in $SERVERS; do
      [ "$s" = haproxy ] && continue
      printf '| %s | ' "$s"
      for sc in $SCENARIOS; do printf '%sx | ' "$(ratio "$(get "rps.$s.$sc")" "$(get "rps.haproxy.$sc")")"; done
      echo
    done
  fi
fi

# ---------------------------------------------------------------------------------------------
if has idle "$SECTIONS"; then
  echo
  echo "**Idle connections**: $IDLE_CONNS TLS connections opened (handshake done, no request) and held"
  echo
  echo "| server | held | RSS idle | RSS holding | above idle | per connection |"
  echo "|---|---:|---:|---:|---:|---:|"
  # Long enough that the first connections are still held when the last are open.
  HEAD_TIMEOUT=120s CLIENT_TIMEOUT=120s BOX=0
  for s in $IDLE_SERVERS; do
    port=$((port + 1))
    start "$s" $port || continue
    sleep 1
    pid=$(cat "$dir/$s.pid")
    out=$(taskset -c 1 python3 "$root/loadtest/scripts/idle-connections.py" "127.0.0.1:$port" "$pid" "$IDLE_CONNS" 50 2>&1)
    line=$(grep '^result ' <<<"$out")
    if [ -z "$line" ]; then
      echo "| $s | failed: $(tail -1 <<<"$out") | | | | |"
    else
      eval "$(sed -e 's/^result //' <<<"$line")"  # held failed before_kib holding_kib after_kib
      above=$((holding_kib - before_kib))
      per=$(awk -v a="$above" -v n="$held" 'BEGIN { printf "%.1f", n ? a * 1.024 / n : 0 }')  # KB (1000 B)
      printf '| %s | %s | %.1f MiB | %.1f MiB | %.1f MiB | %s KB |\n' "$s" "$held$([ "$failed" != 0 ] && echo " ($failed failed)")" \
        "$(awk -v k="$before_kib" 'BEGIN{print k/1024}')" "$(awk -v k="$holding_kib" 'BEGIN{print k/1024}')" \
        "$(awk -v k="$above" 'BEGIN{print k/1024}')" "$per"
      echo "idle.above_mib.$s $(awk -v k="$above" 'BEGIN{printf "%.1f", k/1024}')" >>"$results"
      echo "idle.per_kb.$s $per" >>"$results"
      echo "idle.held.$s $held" >>"$results"
    fi
    stop "$s"
  done
fi

# ---------------------------------------------------------------------------------------------
if has flood "$SECTIONS"; then
  W=$FLOOD_WARMUP FD=$FLOOD_SECONDS
  echo
  echo "**Flood**: forged signatures from 200 addresses (fluxgate-loadtest --mix badsig=100 --sources 200"
  echo "-c $FLOOD_CONNS, closed loop, keep-alive, giving up on an answer after 2 s and reconnecting),"
  echo "and valid deliveries at 10/s from 127.0.0.1 (a new TLS connection each); ${W} s warm-up then"
  echo "${FD} s measured. quiet: the valid deliveries alone. flood: penalty box off. boxed: on"
  echo "(20 failures a minute box an address for 10 min), boxed addresses' connections held:"
  echo "fluxgate's tarpit (its default settings), HAProxy's silent-drop (stick table; TCP_REPAIR"
  echo "as root). boxed-close: closed at once instead (fluxgate: tarpit_connections = 0; HAProxy:"
  echo "reject)."
  echo "CPU: the server's user+system time over the measured ${FD} s, in % of one core."
  echo
  echo "| server | scenario | flood 401/s | flood 429/s | flood closed/s | valid sent | valid 2xx | valid p50 | valid p99 | server CPU |"
  echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"
  url="https://127.0.0.1:PORT/hook/$hook"
  for s in $FLOOD_SERVERS; do
    for sc in $FLOOD_SCENARIOS; do
      port=$((port + 1))
      case $sc in quiet|flood) BOX=0;; boxed) BOX=1;; boxed-close) BOX=close;; *) continue;; esac
      HEAD_TIMEOUT=5s CLIENT_TIMEOUT=10s
      start "$s" $port || continue
      pid=$(cat "$dir/$s.pid")
      u=${url/PORT/$port}
      rm -f "$dir/valid.json" "$dir/flood.json"
      taskset -c 1 "$LOADTEST" "$u" --secret-file "$dir/token" --insecure -q --new-conn --rate 10 -c 4 \
        -d "$((W + FD))s" --timeout 10s --json "$dir/valid.json" >/dev/null 2>"$dir/valid.err" &
      vpid=$!
      fpid=
      if [ "$sc" != quiet ]; then
        taskset -c 1 "$LOADTEST" "$u" --secret-file "$dir/token" --insecure -q --mix badsig=100 --sources 200 \
          -c "$FLOOD_CONNS" -w "${W}s" -d "${FD}s" --timeout 2s --json "$dir/flood.json" >/dev/null 2>"$dir/flood.err" &
        fpid=$!
      fi
      sleep "$W"; t0=$(cpu_ticks "$pid"); s0=$(date +%s.%N)
      if [ -n "${PERF:-}" ]; then  # a profile of the measured window instead of a sleep
        mkdir -p "$PERF"
        perf record -q -F 999 -g -p "$pid" -o "$PERF/$s-$sc.perf.data" -- sleep "$FD" >/dev/null 2>&1
      else
        sleep "$FD"
      fi
      t1=$(cpu_ticks "$pid"); s1=$(date +%s.%N)
      wait $fpid $vpid
      cpu=$(awk -v a="$t0" -v b="$t1" -v x="$s0" -v y="$s1" 'BEGIN { printf "%.1f", (b - a) / (y - x) }')  # ticks/s = % of a core
      row=$(python3 - "$dir/flood.json" "$dir/valid.json" <<'EOF'
import json, sys
def load(p):
    try:
        with open(p) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None
f, v = load(sys.argv[1]), load(sys.argv[2])
if f is None:  # quiet: no flood
    f = {"elapsed_s": 1, "status": {}, "errors": {"total": 0}}
if v is None:
    print("? ? ? ? ? ? ? ?"); sys.exit()
el = f["elapsed_s"] or 1
st = f["status"]
ok = sum(n for k, n in v["status"].items() if k.startswith("2"))
lat = v["latency_us"]
# 401/s, 429/s, connections closed or timed out without an answer /s, valid: sent, 2xx, p50, p99,
# not 2xx (errors included)
print("%.0f %.0f %.0f %d %d %.1f %.1f %d" % (st.get("401", 0) / el, st.get("429", 0) / el,
      f["errors"]["total"] / el, v["requests"], ok, lat["p50"] / 1000, lat["p99"] / 1000, v["requests"] - ok))
EOF
)
      read -r f401 f429 fclosed vsent vok vp50 vp99 vbad <<<"$row"
      echo "| $s | $sc | $f401 | $f429 | $fclosed | $vsent | $vok | $vp50 ms | $vp99 ms | $cpu% |"
      { echo "flood.cpu.$s.$sc $cpu"; echo "flood.vp99.$s.$sc $vp99"; echo "flood.vbad.$s.$sc $vbad"
        echo "flood.vsent.$s.$sc $vsent"; echo "flood.rate.$s.$sc $f401"; } >>"$results"
      stop "$s"
    done
  done
fi

# ---------------------------------------------------------------------------------------------
# Issue 20's targets, each from this run's rows: paste into PERFORMANCE.md. One column per
# fluxgate row, each with its own verdict; HAProxy's figure of the same run beside it.
echo
echo "**Targets (issue 20)**, this run:"
echo
echo "| target | fluxgate | met? | fluxgate-durable | met? |"
echo "|---|---|---|---|---|"
verdict() { # "no" if any argument is "no", else "-" if any is unknown, else "yes"
  local v out=yes
  [ $# = 0 ] && echo - && return
  for v in "$@"; do case $v in no) echo no; return;; yes) ;; *) out=-;; esac; done
  echo "$out"
}
cmp() { awk -v a="$1" -v op="$2" -v b="$3" 'BEGIN { if (a == "" || b == "" || a == "-" || b == "-") { print "-"; exit }
  r = (op == ">=") ? a >= b : (op == "<=") ? a <= b : (op == "<") ? a < b : 0; print r ? "yes" : "no" }'; }
row() { # target, then for each fluxgate row: "cell|verdict words"
  local out="| $1" c
  shift
  for c in "$@"; do out="$out | ${c%%|*} | $(verdict ${c#*|})"; done
  echo "$out |"
}
FG="fluxgate fluxgate-durable"
for sc in keepalive badsig newconn; do
  want=$([ $sc = keepalive ] && echo 1.2 || echo 1.3)
  cells=()
  for fg in $FG; do
    r=$(ratio "$(get "rps.$fg.$sc")" "$(get "rps.haproxy.$sc")")
    a=$(get "rps.$fg.$sc") b=$(get "rps.haproxy.$sc")
    cells+=("${r}×${a:+${b:+ ($a against $b req/s)}}|$(cmp "$r" ">=" "$want")")
  done
  row "$sc ≥ ${want}× HAProxy" "${cells[@]}"
done
cells=()
for fg in $FG; do
  c= v=
  for sc in keepalive badsig newconn; do
    a=$(get "p99.$fg.$sc") b=$(get "p99.haproxy.$sc")
    [ -n "$a" ] && [ -n "$b" ] && c="$c $sc ${a}/${b}," && v="$v $(cmp "$a" "<=" "$b")"
  done
  cells+=("${c:- -} ms|$v")
done
row "p99 ≤ HAProxy's (fluxgate/HAProxy)" "${cells[@]}"
a=$(get idle.above_mib.fluxgate)
row "$IDLE_CONNS idle TLS connections < 64 MiB above idle" "${a:--} MiB|$(cmp "$a" "<" 64)" "(same code)|-"
pf=$(get idle.per_kb.fluxgate) ph=$(get idle.per_kb.haproxy)
r=$(ratio "$pf" "$ph")
row "per idle connection ≤ ½ HAProxy's" "${pf:--} KB against ${ph:--} KB: ${r}×|$(cmp "$r" "<=" 0.5)" "(same code)|-"
cells=()
hp=$(get flood.vp99.haproxy.flood)
for fg in $FG; do
  sent=$(get "flood.vsent.$fg.flood") bad=$(get "flood.vbad.$fg.flood") p=$(get "flood.vp99.$fg.flood")
  if [ -n "$sent" ]; then
    cells+=("$((sent - bad))/$sent 2xx, p99 $p ms (HAProxy ${hp:--} ms)|$(cmp "$bad" "<=" 0) $(cmp "$p" "<" 50) $(cmp "$p" "<" "$hp")")
  else cells+=("-|-"); fi
done
row "under a full-rate flood, valid deliveries all answered, p99 < 50 ms and below HAProxy's" "${cells[@]}"
# The boxed flood's own cost: the server's CPU in the boxed row less its CPU in the quiet row
# (the same valid deliveries without a flood).
net() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "") print ""; else printf "%.1f", a - b }'; }
cells=()
h=$(net "$(get flood.cpu.haproxy.boxed)" "$(get flood.cpu.haproxy.quiet)")
for fg in $FG; do
  c=$(net "$(get "flood.cpu.$fg.boxed")" "$(get "flood.cpu.$fg.quiet")")
  cells+=("${c:--}% of a core (HAProxy ${h:--}%)|$(cmp "$c" "<" 5) $(cmp "$c" "<=" "$h")")
done
row "boxed flood costs < 5% of a core, at most HAProxy's (silent-drop); boxed less quiet" "${cells[@]}"
cells=()
h=$(net "$(get flood.cpu.haproxy.boxed-close)" "$(get flood.cpu.haproxy.quiet)")
for fg in $FG; do
  c=$(net "$(get "flood.cpu.$fg.boxed-close")" "$(get "flood.cpu.$fg.quiet")")
  cells+=("${c:--}% of a core (HAProxy ${h:--}%)|-")
done
row "(for comparison) boxed, closed at once: tarpit off, HAProxy reject" "${cells[@]}"
