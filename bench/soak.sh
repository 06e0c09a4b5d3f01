#!/usr/bin/env bash
# bench/soak.sh [seconds]: mixed load against both services (default 600 s).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x build/bin/llm_proxy ] || { cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null && cmake --build build -j2 >/dev/null; }
SOAK_SECONDS=${1:-600} exec node bench/soak.mjs
