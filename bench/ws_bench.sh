#!/usr/bin/env bash
# bench/ws_bench.sh: 10,000 idle WebSocket connections and 1,000 streams at once.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x build/bin/llm_proxy ] || { cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null && cmake --build build -j2 >/dev/null; }
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
exec node bench/ws_bench.mjs
