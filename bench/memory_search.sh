#!/usr/bin/env bash
# bench/memory_search.sh: latency and recall of the memories API's search
# (issue #13), without the embedding call.
#
# A private PostgreSQL (with pgvector) in build/bench-memory-search holds
# 300,000 synthetic memories: 2,000 users x 100 plus one user with 100,000
# (bench/memory_search_load.sql: clustered 1024-dimension vectors, loaded with
# SQL, HNSW index built after the load). bench_memory_search then calls the
# API's own query code (memory_db_search) with precomputed query vectors:
# p50/p99 per search for a typical and for the heavy user, vector and hybrid
# modes, and recall@10 of the indexed vector search against an exact scan of
# the same user's rows.
# Usage: bench/memory_search.sh   (BENCH_REUSE=1 keeps an existing data set;
#        BENCH_QUERIES per category, default 300)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DIR=$ROOT/build/bench-memory-search
[ -x build/bin/bench_memory_search ] && [ -x build/bin/memory_worker ] \
  || { cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null && cmake --build build -j2 >/dev/null; }
pg_up() { [ -f "$DIR/services.json" ] && pg_isready -q -h 127.0.0.1 -p "$(node -e 'console.log(require(process.argv[1]).pgPort)' "$DIR/services.json")"; }
if [ "${BENCH_REUSE:-0}" != 1 ] || ! pg_up; then
  node tests/integration/services.mjs stop "$DIR" >/dev/null 2>&1 || true
  node tests/integration/services.mjs start "$DIR" >/dev/null
  FRESH=1
fi
PORT=$(node -e 'console.log(require(process.argv[1]).pgPort)' "$DIR/services.json")
URL=postgresql://memory@127.0.0.1:$PORT/memory
if [ "${FRESH:-0}" = 1 ]; then
  # Room for the index and the vectors in PostgreSQL's own cache (the
  # default 128MB is a toy; production servers give it a quarter of RAM).
  psql -h 127.0.0.1 -p "$PORT" -U memory -d postgres -qc "ALTER SYSTEM SET shared_buffers = '${BENCH_SHARED_BUFFERS:-4GB}'"
  PGDATA_DIR=$(node -e 'console.log(require(process.argv[1]).pgData)' "$DIR/services.json")
  PG_CTL=$(ls /usr/lib/postgresql/*/bin/pg_ctl | sort -V | tail -1)
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$PG_CTL" -D "$PGDATA_DIR" -w restart >/dev/null
  else "$PG_CTL" -D "$PGDATA_DIR" -w restart >/dev/null; fi
  psql -h 127.0.0.1 -p "$PORT" -U memory -d postgres -qc 'CREATE DATABASE memory'
  # The schema as the worker makes it (migrations; --replay-dead then exits).
  DATABASE_URL=$URL REDIS_URL=redis://127.0.0.1:1/0 build/bin/memory_worker --replay-dead >/dev/null
  t=$(date +%s)
  echo "loading 300,000 memories and building the HNSW index (a few minutes)..."
  psql -h 127.0.0.1 -p "$PORT" -U memory -d memory -q -f bench/memory_search_load.sql
  echo "loaded in $(( $(date +%s) - t ))s"
fi
# A warm server, as in production: index, table and vectors (TOAST) in
# shared_buffers before measuring.
psql -h 127.0.0.1 -p "$PORT" -U memory -d memory -qAt >/dev/null <<'SQL'
CREATE EXTENSION IF NOT EXISTS pg_prewarm;
SELECT pg_prewarm('memories_embedding_hnsw'), pg_prewarm('memories'), pg_prewarm('memories_user_created_id'),
       pg_prewarm('memories_summary_tsv'), pg_prewarm(reltoastrelid) FROM pg_class WHERE relname = 'memories';
SQL
DATABASE_URL=$URL build/bin/bench_memory_search "${BENCH_QUERIES:-300}"
echo "(PostgreSQL left running in $DIR; stop it with: node tests/integration/services.mjs stop $DIR)"
