#!/usr/bin/env bash
# bench/workers_bench.sh: requests/s of llm_proxy with LLM_PROXY_WORKERS=1
# and =2 in one run (wrk, non-stream chat, loopback, in front of the Ollama
# double), at concurrency 1 and 32, the two proxies measured alternately
# (ROUNDS times) so that the machine's noise hits both alike. Prints the
# median req/s of each and the 2/1 ratio.
#   bench/workers_bench.sh [seconds per point] [rounds]
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-5}
ROUNDS=${2:-3}
command -v wrk >/dev/null || { echo "wrk is needed (apt-get install wrk)" >&2; exit 1; }
[ -x build/bin/llm_proxy ] || { cmake -S . -B build >/dev/null && cmake --build build -j2 >/dev/null; }

. bench/lib.sh

DP=$(free_port)
build/bin/ollama_double --port "$DP" 2>"$TMP/double.log" & PIDS+=($!)
wait_port "$DP"
declare -A PORT
for w in 1 2; do
  PORT[$w]=$(free_port)
  LLM_PROXY_WORKERS=$w LLM_PROXY_HOST=127.0.0.1 LLM_PROXY_PORT=${PORT[$w]} \
    OLLAMA_URL_INTERNAL=http://127.0.0.1:$DP LOG_LEVEL=warn \
    build/bin/llm_proxy 2>"$TMP/proxy$w.log" & PIDS+=($!)
  wait_port "${PORT[$w]}"
done

rps() { # workers conc -> req/s
  local t=$(( $2 < 2 ? 1 : 2 ))
  wrk -t"$t" -c"$2" -d"${DUR}s" -s bench/post_chat.lua "http://127.0.0.1:${PORT[$1]}/v1/chat/completions" |
    awk '/Requests\/sec/ {print $2}'
}
median() { sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }

echo "loopback, ${DUR}s per point, $ROUNDS rounds alternating; wrk, the double and llm_proxy share $(nproc) cores"
printf '%-6s %14s %14s %8s\n' conc 'workers=1' 'workers=2' ratio
for c in 1 32; do
  for w in 1 2; do wrk -t1 -c"$c" -d1s -s bench/post_chat.lua "http://127.0.0.1:${PORT[$w]}/v1/chat/completions" >/dev/null; done
  : >"$TMP/r1"; : >"$TMP/r2"
  for _ in $(seq "$ROUNDS"); do
    rps 1 "$c" >>"$TMP/r1"
    rps 2 "$c" >>"$TMP/r2"
  done
  a=$(median <"$TMP/r1"); b=$(median <"$TMP/r2")
  awk -v c="$c" -v a="$a" -v b="$b" 'BEGIN{printf "%-6s %14.2f %14.2f %8.2f\n", c, a, b, b/a}'
done
