#!/usr/bin/env bash
# bench/multihost_bench.sh: llm_proxy in front of 1 vs 3 Ollama doubles (the
# same binary), all on loopback, in one run (wrk, non-stream chat).
#
#   routing cost  doubles answer at once: req/s and latency added by the
#                 proxy with 1 and with 3 hosts, against the double alone.
#   capacity      doubles answer after DELAY_MS (model latency) and each host
#                 gets LLM_PROXY_MAX_UPSTREAM=SLOTS: what a second and third
#                 host add to throughput.
#
# Usage: bench/multihost_bench.sh [seconds-per-point]   (default 8)
# Environment: DELAY_MS (default 50), SLOTS (default 4), CONC (default 32).
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-8}
DELAY_MS=${DELAY_MS:-50}
SLOTS=${SLOTS:-4}
CONC=${CONC:-32}
command -v wrk >/dev/null || { apt-get install -y -qq wrk >/dev/null; }
[ -x build/bin/llm_proxy ] || { cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null && cmake --build build -j2 >/dev/null; }

. bench/lib.sh

start_double() { # port [delay]
  build/bin/ollama_double --port "$1" ${2:+--chat-delay-ms "$2"} 2>>"$TMP/double.log" & PIDS+=($!)
  wait_port "$1"
}
start_proxy() { # port urls [extra env...]
  local port=$1 urls=$2; shift 2
  env LLM_PROXY_HOST=127.0.0.1 LLM_PROXY_PORT="$port" OLLAMA_URL_INTERNAL="$urls" LOG_LEVEL=warn "$@" \
    build/bin/llm_proxy 2>>"$TMP/proxy.log" & PIDS+=($!)
  wait_port "$port"
}

declare -A RPS P50 P99
to_us() { awk -v v="$1" 'BEGIN{ n=v+0; if (v ~ /us$/) print n; else if (v ~ /ms$/) print n*1000; else if (v ~ /s$/) print n*1000000; else print n }'; }
run() { # name url conc
  local name=$1 url=$2 c=$3 t=$(( $3 < 2 ? 1 : 2 ))
  wrk -t"$t" -c"$c" -d2s -s bench/post_chat.lua "$url" >/dev/null
  local out; out=$(wrk -t"$t" -c"$c" -d"${DUR}s" --latency -s bench/post_chat.lua "$url")
  RPS[$name,$c]=$(echo "$out" | awk '/^Requests\/sec/ {print $2}')
  P50[$name,$c]=$(to_us "$(echo "$out" | awk '$1=="50%" {print $2}')")
  P99[$name,$c]=$(to_us "$(echo "$out" | awk '$1=="99%" {print $2}')")
  local errs; errs=$(echo "$out" | awk '/Non-2xx|Socket errors/' || true)
  [ -z "$errs" ] || echo "  warning ($name c=$c): $errs"
}

# Routing cost: instant doubles.
D1=$(free_port); D2=$(free_port); D3=$(free_port); P1=$(free_port); P3=$(free_port)
start_double "$D1"; start_double "$D2"; start_double "$D3"
start_proxy "$P1" "http://127.0.0.1:$D1"
start_proxy "$P3" "http://127.0.0.1:$D1,http://127.0.0.1:$D2,http://127.0.0.1:$D3"
for c in 1 "$CONC"; do
  run double "http://127.0.0.1:$D1/api/chat" "$c"
  run proxy_1host "http://127.0.0.1:$P1/v1/chat/completions" "$c"
  run proxy_3hosts "http://127.0.0.1:$P3/v1/chat/completions" "$c"
done

# Capacity: slow doubles, SLOTS per host.
S1=$(free_port); S2=$(free_port); S3=$(free_port); Q1=$(free_port); Q3=$(free_port)
start_double "$S1" "$DELAY_MS"; start_double "$S2" "$DELAY_MS"; start_double "$S3" "$DELAY_MS"
start_proxy "$Q1" "http://127.0.0.1:$S1" LLM_PROXY_MAX_UPSTREAM="$SLOTS"
start_proxy "$Q3" "http://127.0.0.1:$S1,http://127.0.0.1:$S2,http://127.0.0.1:$S3" LLM_PROXY_MAX_UPSTREAM="$SLOTS"
run slow_1host "http://127.0.0.1:$Q1/v1/chat/completions" "$CONC"
run slow_3hosts "http://127.0.0.1:$Q3/v1/chat/completions" "$CONC"

echo
echo "routing cost: loopback, instant doubles, ${DUR}s per point; latency in microseconds"
printf "%-6s %-13s %12s %10s %10s %12s %12s\n" conc target req/s p50 p99 "added p50" "added p99"
for c in 1 "$CONC"; do
  for n in double proxy_1host proxy_3hosts; do
    ap50=$(awk -v a="${P50[$n,$c]}" -v b="${P50[double,$c]}" 'BEGIN{printf "%.0f", a-b}')
    ap99=$(awk -v a="${P99[$n,$c]}" -v b="${P99[double,$c]}" 'BEGIN{printf "%.0f", a-b}')
    printf "%-6s %-13s %12s %10.0f %10.0f %12s %12s\n" "$c" "$n" "${RPS[$n,$c]}" "${P50[$n,$c]}" "${P99[$n,$c]}" "$ap50" "$ap99"
  done
done
echo
echo "capacity: doubles answer after ${DELAY_MS} ms, LLM_PROXY_MAX_UPSTREAM=${SLOTS} per host, c=${CONC}"
for n in slow_1host slow_3hosts; do
  printf "%-13s %10s req/s  p50 %8.1f ms  p99 %8.1f ms\n" "$n" "${RPS[$n,$CONC]}" \
    "$(awk -v a="${P50[$n,$CONC]}" 'BEGIN{print a/1000}')" "$(awk -v a="${P99[$n,$CONC]}" 'BEGIN{print a/1000}')"
done
awk -v a="${RPS[slow_3hosts,$CONC]}" -v b="${RPS[slow_1host,$CONC]}" \
  'BEGIN{printf "3 hosts / 1 host throughput: %.2f (ideal 3.00)\n", a/b}'
