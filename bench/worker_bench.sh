#!/usr/bin/env bash
# bench/worker_bench.sh: memory_worker throughput (see worker_bench.mjs).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x build/bin/memory_worker ] || { cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null && cmake --build build -j2 >/dev/null; }
exec node bench/worker_bench.mjs
