#!/usr/bin/env bash
# bench/proxy_bench.sh: requests/s and added latency of llm_proxy against
# the Ollama double alone and nginx (proxy_pass, keepalive upstream) in front
# of the same double, all on loopback, in one run. Prints ratios against the
# references measured in this run (machines are noisy: compare ratios, not
# absolute numbers).
#
# Usage: bench/proxy_bench.sh [seconds-per-point]   (default 8)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DUR=${1:-8}
command -v wrk >/dev/null || { apt-get install -y -qq wrk >/dev/null; }
command -v nginx >/dev/null || { apt-get install -y -qq nginx-light >/dev/null || apt-get install -y -qq nginx >/dev/null; }
[ -x build/bin/llm_proxy ] || { cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null && cmake --build build -j2 >/dev/null; }

. bench/lib.sh

DP=$(free_port); NP=$(free_port); PP=$(free_port)
build/bin/ollama_double --port "$DP" 2>"$TMP/double.log" & PIDS+=($!)
wait_port "$DP"

mkdir -p "$TMP/nginx/logs"
cat >"$TMP/nginx/nginx.conf" <<CONF
worker_processes 1;
error_log $TMP/nginx/logs/error.log warn;
pid $TMP/nginx/nginx.pid;
events { worker_connections 4096; }
http {
  access_log off;
  upstream ollama { server 127.0.0.1:$DP; keepalive 64; }
  server {
    listen 127.0.0.1:$NP;
    location /v1/chat/completions {
      proxy_pass http://ollama/api/chat;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }
  }
}
CONF
nginx -p "$TMP/nginx" -c "$TMP/nginx/nginx.conf" -g 'daemon off;' & PIDS+=($!)
wait_port "$NP"

LLM_PROXY_HOST=127.0.0.1 LLM_PROXY_PORT=$PP OLLAMA_URL_INTERNAL=http://127.0.0.1:$DP LOG_LEVEL=warn \
  build/bin/llm_proxy 2>"$TMP/proxy.log" & PIDS+=($!)
wait_port "$PP"

declare -A RPS P50 P99
to_us() { # wrk latency like 123.45us / 1.23ms / 1.01s -> microseconds
  awk -v v="$1" 'BEGIN{ n=v+0; if (v ~ /us$/) print n; else if (v ~ /ms$/) print n*1000; else if (v ~ /s$/) print n*1000000; else print n }'
}
run() { # name url conc
  local name=$1 url=$2 c=$3 t=$(( $3 < 2 ? 1 : 2 ))
  wrk -t"$t" -c"$c" -d2s -s bench/post_chat.lua "$url" >/dev/null  # warm-up
  local out; out=$(wrk -t"$t" -c"$c" -d"${DUR}s" --latency -s bench/post_chat.lua "$url")
  RPS[$name,$c]=$(echo "$out" | awk '/^Requests\/sec/ {print $2}')
  P50[$name,$c]=$(to_us "$(echo "$out" | awk '$1=="50%" {print $2}')")
  P99[$name,$c]=$(to_us "$(echo "$out" | awk '$1=="99%" {print $2}')")
  local errs; errs=$(echo "$out" | awk '/Non-2xx|Socket errors/' || true)
  [ -z "$errs" ] || echo "  warning ($name c=$c): $errs"
}

for c in 1 32; do
  run double "http://127.0.0.1:$DP/api/chat" "$c"
  run nginx "http://127.0.0.1:$NP/v1/chat/completions" "$c"
  run llm_proxy "http://127.0.0.1:$PP/v1/chat/completions" "$c"
done

echo
echo "loopback, 1 worker each, ${DUR}s per point; latency in microseconds"
printf "%-6s %-10s %12s %10s %10s %14s %14s\n" conc target req/s p50 p99 "added p50" "added p99"
for c in 1 32; do
  for n in double nginx llm_proxy; do
    ap50=$(awk -v a="${P50[$n,$c]}" -v b="${P50[double,$c]}" 'BEGIN{printf "%.0f", a-b}')
    ap99=$(awk -v a="${P99[$n,$c]}" -v b="${P99[double,$c]}" 'BEGIN{printf "%.0f", a-b}')
    printf "%-6s %-10s %12s %10.0f %10.0f %14s %14s\n" "$c" "$n" "${RPS[$n,$c]}" "${P50[$n,$c]}" "${P99[$n,$c]}" "$ap50" "$ap99"
  done
done
echo
for c in 1 32; do
  awk -v p="${RPS[llm_proxy,$c]}" -v n="${RPS[nginx,$c]}" -v c="$c" \
    'BEGIN{printf "c=%-3s llm_proxy/nginx throughput ratio: %.2f (target >= 1.00)\n", c, p/n}'
done
awk -v a="${P50[llm_proxy,1]}" -v b="${P50[double,1]}" -v x="${P99[llm_proxy,1]}" -v y="${P99[double,1]}" \
  'BEGIN{printf "c=1   llm_proxy added latency: p50 %.3f ms (target <= 0.3), p99 %.3f ms (target <= 1.0)\n", (a-b)/1000, (x-y)/1000}'
