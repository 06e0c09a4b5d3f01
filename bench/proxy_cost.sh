#!/usr/bin/env bash
# bench/proxy_cost.sh: per-request cost of llm_proxy against nginx (a plain
# reverse proxy relaying the same bytes: proxy_pass to the Ollama double with
# an upstream keepalive pool), one worker each, same workload, one run.
#
# Per request (differencing two request counts, so start-up and shutdown
# cancel out):
#   instr    user-space instructions   valgrind --tool=callgrind (Ir)
#   sysc     system calls              strace -c -f
#   alloc    bytes allocated           valgrind --tool=dhat (heap total)
#   blocks   heap blocks allocated     valgrind --tool=dhat
# Workloads: non-stream chat, streaming chat (reported per relayed upstream
# line: @words=$WORDS gives $WORDS+1 NDJSON lines per request), embeddings.
# Then wrk throughput and p50 with the proxy pinned to CPU 0 and wrk and the
# double pinned to CPU 1 (taskset), concurrency 1 and 32, non-stream chat.
#
# callgrind, dhat and strace counts are repeatable; the wrk figures depend on
# whatever else runs on the machine: compare ratios from one run only.
#
# Usage: bench/proxy_cost.sh [wrk-seconds-per-point]   (default 6)
#   N1/N2 (env): request counts differenced (default 40/240)
#   SKIP_WRK=1: only the counted costs;  SKIP_COUNTS=1: only wrk
#   ONLY=chat|stream|embed: one workload
#   PROXY_BIN: the llm_proxy binary (default build/bin/llm_proxy), e.g. to
#   measure another build against the same nginx
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "$0")/.."
DUR=${1:-6}
N1=${N1:-40}
N2=${N2:-240}
WORDS=${WORDS:-64}
need() { command -v "$1" >/dev/null || apt-get install -y -qq "$2" >/dev/null; }
need wrk wrk
need nginx nginx-light || need nginx nginx
need valgrind valgrind
need strace strace
need taskset util-linux
[ -x build/bin/llm_proxy ] || { cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null && cmake --build build -j2 >/dev/null; }
PROXY_BIN=${PROXY_BIN:-build/bin/llm_proxy}
NCPU=$(nproc)
PIN_PROXY="taskset -c 0"
PIN_LOAD="taskset -c $((NCPU > 1 ? 1 : 0))"

WAIT_PORT_TRIES=2400 # valgrind start-ups
. bench/lib.sh

DP=$(free_port)
$PIN_LOAD build/bin/ollama_double --port "$DP" 2>"$TMP/double.log" & PIDS+=($!)
wait_port "$DP"

nginx_conf() { # port -> config file path
  mkdir -p "$TMP/nginx-$1/logs"
  cat >"$TMP/nginx-$1/nginx.conf" <<CONF
daemon off;
master_process off;
worker_processes 1;
error_log $TMP/nginx-$1/logs/error.log warn;
pid $TMP/nginx-$1/nginx.pid;
events { worker_connections 4096; }
http {
  access_log off;
  upstream ollama { server 127.0.0.1:$DP; keepalive 64; }
  server {
    listen 127.0.0.1:$1;
    location /v1/chat/completions {
      proxy_pass http://ollama/api/chat;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }
    location /v1/embeddings {
      proxy_pass http://ollama/api/embed;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }
  }
}
CONF
  echo "$TMP/nginx-$1/nginx.conf"
}

# start TARGET PORT WRAPPER... : runs the target (under WRAPPER) in the background
start() {
  local target=$1 port=$2; shift 2
  if [ "$target" = nginx ]; then
    "$@" nginx -p "$TMP/nginx-$port" -c "$(nginx_conf "$port")" 2>>"$TMP/run.err" &
  else
    # one worker, as nginx (llm_proxy defaults to one per CPU)
    LLM_PROXY_WORKERS=1 LLM_PROXY_HOST=127.0.0.1 LLM_PROXY_PORT=$port \
      OLLAMA_URL_INTERNAL=http://127.0.0.1:$DP LOG_LEVEL=warn \
      "$@" "$PROXY_BIN" 2>>"$TMP/run.err" &
  fi
  RUNPID=$!
  wait_port "$port"
}

declare -A PATHS BODIES
PATHS[chat]=/v1/chat/completions
BODIES[chat]='{"model":"qwen3:8b","messages":[{"role":"user","content":"hi there"}],"stream":false,"think":false}'
PATHS[stream]=/v1/chat/completions
BODIES[stream]='{"model":"qwen3:8b","messages":[{"role":"user","content":"hi there @words='$WORDS'"}],"stream":true,"think":false}'
PATHS[embed]=/v1/embeddings
BODIES[embed]='{"model":"bge-m3:latest","input":"hello world"}'

# one TOOL TARGET WORKLOAD N -> prints the raw total (instructions, syscalls or "bytes blocks")
one() {
  local tool=$1 target=$2 w=$3 n=$4 port out
  port=$(free_port)
  out="$TMP/$tool-$target-$w-$n"
  case $tool in
    callgrind) start "$target" "$port" valgrind -q --tool=callgrind --callgrind-out-file="$out" ;;
    dhat) start "$target" "$port" valgrind --tool=dhat --dhat-out-file=/dev/null --log-file="$out" ;;
    strace) start "$target" "$port" strace -qq -f -c -o "$out" ;;
  esac
  python3 bench/cost_client.py "$port" "${PATHS[$w]}" "${BODIES[$w]}" "$n" ||
    { echo "$target ($tool, $w) failed; its stderr:" >&2; tail -20 "$TMP/run.err" >&2; kill "$RUNPID"; exit 1; }
  # the target itself: under strace it is strace's child
  local kid; kid=$(pgrep -P "$RUNPID" | head -1 || true)
  kill -TERM "${kid:-$RUNPID}"
  wait "$RUNPID" || true
  case $tool in
    callgrind) awk '/^totals:|^summary:/ {print $2; exit}' "$out" ;;
    dhat) awk '/Total:/ {gsub(",",""); print $3, $6; exit}' "$out" ;;
    strace) awk '$NF=="total" {print $4}' "$out" ;;
  esac
}

per() { awk -v a="$1" -v b="$2" -v d="$3" 'BEGIN{printf "%.0f", (b-a)/d}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (b+0 == 0) print "-"; else printf "%.2f", a/b }'; }

declare -A C
WORKLOADS=${ONLY:-chat stream embed}
[ "${SKIP_COUNTS:-0}" = 1 ] && WORKLOADS=""
for w in $WORKLOADS; do
  div=$((N2 - N1))
  [ "$w" = stream ] && div=$(((N2 - N1) * (WORDS + 1)))
  for t in nginx llm_proxy; do
    echo "measuring $w through $t ..." >&2
    a=$(one callgrind "$t" "$w" "$N1"); b=$(one callgrind "$t" "$w" "$N2")
    C[$t,$w,instr]=$(per "$a" "$b" "$div")
    a=$(one strace "$t" "$w" "$N1"); b=$(one strace "$t" "$w" "$N2")
    C[$t,$w,sysc]=$(awk -v a="$a" -v b="$b" -v d="$div" 'BEGIN{printf "%.1f", (b-a)/d}')
    read -r ab ak < <(one dhat "$t" "$w" "$N1"); read -r bb bk < <(one dhat "$t" "$w" "$N2")
    C[$t,$w,alloc]=$(per "$ab" "$bb" "$div")
    C[$t,$w,blocks]=$(awk -v a="$ak" -v b="$bk" -v d="$div" 'BEGIN{printf "%.1f", (b-a)/d}')
  done
done

[ -n "$WORKLOADS" ] && echo
[ -n "$WORKLOADS" ] && echo "per-request cost (stream: per relayed upstream line), one worker each, N=$N2-$N1 requests differenced"
[ -n "$WORKLOADS" ] && printf "%-7s %-8s %12s %12s %8s\n" workload metric llm_proxy nginx ratio
for w in $WORKLOADS; do
  for m in instr sysc alloc blocks; do
    printf "%-7s %-8s %12s %12s %8s\n" "$w" "$m" "${C[llm_proxy,$w,$m]}" "${C[nginx,$w,$m]}" \
      "$(ratio "${C[llm_proxy,$w,$m]}" "${C[nginx,$w,$m]}")"
  done
done

# System calls by name (what the difference is made of), per request
# (stream: per relayed line), for each workload measured.
for w in $WORKLOADS; do
  div=$((N2 - N1))
  [ "$w" = stream ] && div=$(((N2 - N1) * (WORDS + 1)))
  echo
  echo "system calls per $w request$([ "$w" = stream ] && echo " (per relayed line)"), by name"
  for t in llm_proxy nginx; do
    awk -v d="$div" -v t="$t" '
      FNR==1 { f++ }
      $NF!="total" && $4 ~ /^[0-9]+$/ { c[f,$NF]=$4; n[$NF]=1 }
      END { s=""; for (k in n) { v=(c[2,k]-c[1,k])/d; if (v >= 0.005 || v <= -0.005) s=s sprintf(" %s=%.2f", k, v) } print "  " t ":" s }' \
      "$TMP/strace-$t-$w-$N1" "$TMP/strace-$t-$w-$N2"
  done
done

[ "${SKIP_WRK:-0}" = 1 ] && exit 0

# ---------------------------------------------------------------- wrk, pinned
declare -A RPS P50
to_us() { awk -v v="$1" 'BEGIN{ n=v+0; if (v ~ /us$/) print n; else if (v ~ /ms$/) print n*1000; else if (v ~ /s$/) print n*1000000; else print n }'; }
bench() { # name port path conc
  local name=$1 c=$4 t=$(( $4 < 2 ? 1 : 2 )) url="http://127.0.0.1:$2$3" out
  $PIN_LOAD wrk -t"$t" -c"$c" -d2s -s bench/post_chat.lua "$url" >/dev/null
  out=$($PIN_LOAD wrk -t"$t" -c"$c" -d"${DUR}s" --latency -s bench/post_chat.lua "$url")
  RPS[$name,$c]=$(echo "$out" | awk '/^Requests\/sec/ {print $2}')
  P50[$name,$c]=$(to_us "$(echo "$out" | awk '$1=="50%" {print $2}')")
  local errs; errs=$(echo "$out" | awk '/Non-2xx|Socket errors/' || true)
  [ -z "$errs" ] || echo "  warning ($name c=$c): $errs" >&2
}
NP=$(free_port); start nginx "$NP" $PIN_PROXY; PIDS+=("$RUNPID")
PP=$(free_port); start llm_proxy "$PP" $PIN_PROXY; PIDS+=("$RUNPID")
for c in 1 32; do
  bench double "$DP" /api/chat "$c"
  bench nginx "$NP" /v1/chat/completions "$c"
  bench llm_proxy "$PP" /v1/chat/completions "$c"
done
echo
echo "wrk, non-stream chat, proxy pinned to CPU 0, wrk and double on CPU ${PIN_LOAD##* }, ${DUR}s per point (wall clock: noisy)"
printf "%-5s %-10s %10s %9s %10s\n" conc target req/s p50_us added_us
for c in 1 32; do
  for n in double nginx llm_proxy; do
    printf "%-5s %-10s %10s %9.0f %10.0f\n" "$c" "$n" "${RPS[$n,$c]}" "${P50[$n,$c]}" \
      "$(awk -v a="${P50[$n,$c]}" -v b="${P50[double,$c]}" 'BEGIN{print a-b}')"
  done
done
echo
for c in 1 32; do
  echo "c=$c throughput llm_proxy/nginx: $(ratio "${RPS[llm_proxy,$c]}" "${RPS[nginx,$c]}") (target >= 1.00)"
done
awk -v p="${P50[llm_proxy,1]}" -v n="${P50[nginx,1]}" \
  'BEGIN{printf "c=1 added p50 over nginx: %+.0f us (target <= +30)\n", p-n}'
case " $WORKLOADS " in *" stream "*)
  echo "stream: instructions per relayed line llm_proxy/nginx: $(ratio "${C[llm_proxy,stream,instr]}" "${C[nginx,stream,instr]}") (target <= 2.00)" ;;
esac
