-- bench/memory_search_load.sql: synthetic memories for bench/memory_search.sh.
-- 2,000 users x 100 memories + one user ("heavy") with 100,000: 300,000
-- rows of vector(1024). Vectors are clustered like real embeddings: one of
-- 1,000 random centres plus two scaled random noise vectors from pools
-- (pgvector's + and * in C, so the load takes seconds, not hours).
-- Summaries are two words of a 20-word vocabulary, for the text ranking.
\set ON_ERROR_STOP on
SET maintenance_work_mem = '2GB';
SET max_parallel_maintenance_workers = 1;
DROP TABLE IF EXISTS bench_pool, bench_queries;
CREATE TABLE bench_pool (kind text, i int, v vector(1024));
INSERT INTO bench_pool
SELECT k.kind, g, (SELECT array_agg((random() - 0.5 + 0 * d) * k.amp)::vector(1024) FROM generate_series(1, 1024) d WHERE g > -d)
FROM (VALUES ('centre', 1.0), ('noise', 0.5), ('noise2', 0.25), ('query', 0.5)) k(kind, amp), generate_series(0, 999) g;
CREATE INDEX ON bench_pool (kind, i);
DROP INDEX IF EXISTS memories_embedding_hnsw;
TRUNCATE memories;
-- rows: user u0..u1999 (100 each, g < 200000), then heavy (g >= 200000).
INSERT INTO memories (user_id, room_id, summary, embedding, summary_model, embedding_model, message_count,
                      first_message_at, last_message_at, chunk_hash, created_at)
SELECT CASE WHEN g < 200000 THEN 'u' || (g % 2000) ELSE 'heavy' END,
       'room' || (g % 5),
       'note ' || (ARRAY['tea','bees','porto','bike','piano','garden','sailing','chess','coffee','rust',
                         'paris','dogs','hiking','jazz','climbing','bread','tennis','poetry','physics','kayak'])[1 + g % 20]
       || ' ' || (ARRAY['monday','june','morning','winter','family','work','holiday','friend','book','music',
                        'river','city','school','doctor','market','train','summer','night','garden','lake'])[1 + (g / 20) % 20],
       c.v + n.v + m.v,
       'bench', 'bench', 2,
       timestamptz '2024-01-01' + g * interval '1 minute',
       timestamptz '2024-01-01' + g * interval '1 minute' + interval '30 seconds',
       'b' || g,
       timestamptz '2024-01-01' + g * interval '1 minute'
FROM generate_series(0, 299999) g
JOIN bench_pool c ON c.kind = 'centre' AND c.i = (g * 7) % 1000
JOIN bench_pool n ON n.kind = 'noise' AND n.i = (g * 31 + g / 1000) % 1000
JOIN bench_pool m ON m.kind = 'noise2' AND m.i = (g * 97 + g / 997) % 1000;
-- Queries: a centre plus fresh noise (near a cluster, never a stored row).
CREATE TABLE bench_queries AS
SELECT q.i, (c.v + q.v)::text AS v FROM bench_pool q JOIN bench_pool c ON c.kind = 'centre' AND c.i = (q.i * 13) % 1000
WHERE q.kind = 'query';
\timing on
-- As migration 3 makes it (store.c).
CREATE INDEX memories_embedding_hnsw ON memories USING hnsw (embedding vector_cosine_ops) WITH (m = 24, ef_construction = 128);
\timing off
VACUUM ANALYZE memories;
SELECT count(*) AS memories, count(DISTINCT user_id) AS users, pg_size_pretty(pg_relation_size('memories_embedding_hnsw')) AS hnsw_size FROM memories;
