// bench/worker_bench.mjs: memory_worker throughput (not a test).
//  1. chunks per second against an instant upstream (Ollama double, no delay);
//  2. against a 200 ms upstream as WORKER_CONCURRENCY grows, as a ratio of the
//     ideal (concurrency / 0.2 s chunks per second); target >= 0.90.
// Real Redis and PostgreSQL in a private directory, the real llm_proxy.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { freePort, startDouble, startProxy, startWorker } from '../tests/integration/harness.mjs';
import { start, stop } from '../tests/integration/services.mjs';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mw-bench-'));
const svcState = await start(dir);
let dbn = 0;

function database() {
  const db = `bench_${dbn++}`;
  execFileSync('psql', ['-h', '127.0.0.1', '-p', String(svcState.pgPort), '-U', 'memory', '-d', 'postgres', '-qAt', '-c', `CREATE DATABASE ${db}`]);
  return db;
}
const sql = (db, q) => execFileSync('psql', ['-h', '127.0.0.1', '-p', String(svcState.pgPort), '-U', 'memory', '-d', db, '-qAt', '-c', q], { encoding: 'utf8' }).trim();

async function run({ delayMs, concurrency, chunks, batch }) {
  const double = await startDouble(delayMs ? ['--chat-delay-ms', String(delayMs)] : []);
  const proxyPort = await freePort();
  const proxy = await startProxy({ LLM_PROXY_PORT: String(proxyPort), LOG_LEVEL: 'info' }, { upstream: double });
  const db = database();
  const redisDb = 1 + (dbn % 60);
  const rcli = (...a) => execFileSync('redis-cli', ['-p', String(svcState.redisPort), '-n', String(redisDb), ...a]);
  rcli('FLUSHDB');
  for (let c = 0; c < chunks; c++) {
    const msgs = [];
    for (let i = 0; i < 20; i++) msgs.push(JSON.stringify({ role: 'user', content: `user ${c} says thing ${i} about their day` }));
    rcli('RPUSH', `user:b${c}:messages`, ...msgs);
  }
  const t0 = process.hrtime.bigint();
  const w = await startWorker({
    LLM_PROXY_URL: `http://127.0.0.1:${proxyPort}`, REDIS_URL: `redis://127.0.0.1:${svcState.redisPort}/${redisDb}`,
    DATABASE_URL: `postgresql://memory@127.0.0.1:${svcState.pgPort}/${db}`, SUMMARY_MODEL: 'qwen3:8b',
    EMBEDDING_MODEL: 'bge-m3', WORKER_CONCURRENCY: String(concurrency), EMBED_BATCH: String(batch),
    POLL_INTERVAL: '0.02', LOG_LEVEL: 'info',
  });
  for (;;) {
    if (sql(db, 'SELECT count(*) FROM memories') === String(chunks)) break;
    await new Promise((r) => setTimeout(r, 20));
  }
  const secs = Number(process.hrtime.bigint() - t0) / 1e9;
  await w.stop();
  await proxy.stop();
  await double.stop();
  return chunks / secs;
}

try {
  const instant = await run({ delayMs: 0, concurrency: 4, chunks: 400, batch: 8 });
  console.log(`instant upstream, WORKER_CONCURRENCY=4: ${instant.toFixed(1)} chunks/s`);
  console.log('\n200 ms upstream (summary latency); ideal = concurrency / 0.2 s');
  console.log('concurrency  chunks/s   ideal   ratio');
  for (const c of [1, 2, 4, 8, 16]) {
    const rate = await run({ delayMs: 200, concurrency: c, chunks: 25 * c, batch: 1 });
    const ideal = c / 0.2;
    console.log(`${String(c).padStart(11)}  ${rate.toFixed(2).padStart(8)}  ${ideal.toFixed(1).padStart(6)}  ${(rate / ideal).toFixed(2).padStart(6)}${rate / ideal >= 0.9 ? '' : '  (below 0.90)'}`);
  }
} finally {
  stop(dir);
}
