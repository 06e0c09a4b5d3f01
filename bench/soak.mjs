// bench/soak.mjs: mixed load for SOAK_SECONDS (default 600) against the real
// llm_proxy and memory_worker (Ollama double, real Redis and PostgreSQL):
// chat, SSE streams, embeddings, WebSocket chats, and messages flowing through
// the worker. Reports RSS and open file descriptors of both services after a
// warm-up and at the end (targets: RSS growth < 5%, no fd growth), and checks
// that every pushed message ended in exactly one memory.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import WebSocket from '../tests/node_modules/ws/wrapper.mjs';
import { freePort, startDouble, startProxy, startWorker } from '../tests/integration/harness.mjs';
import { start, stop } from '../tests/integration/services.mjs';

const SECONDS = Number(process.env.SOAK_SECONDS || 600);
const WARMUP = Math.min(60, SECONDS / 5);
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'soak-'));
const svc = await start(dir);
execFileSync('psql', ['-h', '127.0.0.1', '-p', String(svc.pgPort), '-U', 'memory', '-d', 'postgres', '-qAt', '-c', 'CREATE DATABASE soak']);
const sql = (q) => execFileSync('psql', ['-h', '127.0.0.1', '-p', String(svc.pgPort), '-U', 'memory', '-d', 'soak', '-qAt', '-c', q], { encoding: 'utf8' }).trim();

const stat = (pid) => ({
  rss: Number(fs.readFileSync(`/proc/${pid}/status`, 'utf8').match(/VmRSS:\s+(\d+)/)[1]) * 1024,
  fds: fs.readdirSync(`/proc/${pid}/fd`).length,
});

const double = await startDouble();
const proxyPort = await freePort();
const proxy = await startProxy({ LLM_PROXY_PORT: String(proxyPort), LOG_LEVEL: 'info' }, { upstream: double });
const worker = await startWorker({
  LLM_PROXY_URL: `http://127.0.0.1:${proxyPort}`, REDIS_URL: `redis://127.0.0.1:${svc.redisPort}/0`,
  DATABASE_URL: `postgresql://memory@127.0.0.1:${svc.pgPort}/soak`, SUMMARY_MODEL: 'qwen3:8b', EMBEDDING_MODEL: 'bge-m3',
  WORKER_CONCURRENCY: '4', POLL_INTERVAL: '0.2',
});
// Both services log one line per request; drop what we collected so far.
proxy.proc.stderr.removeAllListeners('data');
worker.proc.stderr.removeAllListeners('data');
proxy.proc.stderr.resume();
worker.proc.stderr.resume();

let stopAt = Date.now() + SECONDS * 1000;
const counts = { chat: 0, stream: 0, embed: 0, ws: 0, pushed: 0, errors: 0 };
const body = (extra) => JSON.stringify({ model: 'qwen3:8b', messages: [{ role: 'user', content: 'soak test message' }], ...extra });

async function httpLoop(i) {
  while (Date.now() < stopAt) {
    try {
      const kind = i % 3;
      if (kind === 0) {
        const r = await fetch(`http://127.0.0.1:${proxyPort}/v1/chat/completions`, { method: 'POST', body: body({}) });
        await r.text();
        counts.chat++;
      } else if (kind === 1) {
        const r = await fetch(`http://127.0.0.1:${proxyPort}/v1/chat/completions`, { method: 'POST', body: body({ stream: true }) });
        await r.text();
        counts.stream++;
      } else {
        const r = await fetch(`http://127.0.0.1:${proxyPort}/v1/embeddings`, { method: 'POST', body: JSON.stringify({ model: 'bge-m3', input: ['a', 'b'] }) });
        await r.text();
        counts.embed++;
      }
    } catch { counts.errors++; }
  }
}

async function wsLoop() {
  while (Date.now() < stopAt) {
    const ws = new WebSocket(`ws://127.0.0.1:${proxyPort}/ws/chat`);
    try {
      await new Promise((res, rej) => { ws.once('open', res); ws.once('error', rej); });
      for (let k = 0; k < 20 && Date.now() < stopAt; k++) {
        await new Promise((res) => {
          ws.on('message', function onm(d) {
            const m = JSON.parse(d);
            if (m.type === 'done' || m.type === 'error') { ws.off('message', onm); res(); }
          });
          ws.send(JSON.stringify({ type: 'chat', id: `k${k}`, model: 'qwen3:8b', messages: [{ role: 'user', content: 'ws soak' }] }));
        });
        counts.ws++;
      }
    } catch { counts.errors++; }
    ws.close();
  }
}

async function pushLoop() {
  let n = 0;
  while (Date.now() < stopAt) {
    const user = `soak${n % 50}`;
    execFileSync('redis-cli', ['-p', String(svc.redisPort), 'RPUSH', `user:${user}:messages`,
      JSON.stringify({ role: 'user', content: `message ${n}`, message_id: `m${n}` })]);
    n++;
    counts.pushed++;
    await new Promise((r) => setTimeout(r, 20));
  }
}

const samples = [];
async function sampler() {
  const t0 = Date.now();
  while (Date.now() < stopAt) {
    samples.push({ t: (Date.now() - t0) / 1000, proxy: stat(proxy.proc.pid), worker: stat(worker.proc.pid) });
    await new Promise((r) => setTimeout(r, 5000));
  }
}

const loops = [sampler(), pushLoop(), wsLoop(), wsLoop()];
for (let i = 0; i < 6; i++) loops.push(httpLoop(i));
await Promise.all(loops);

// Let the worker finish, then check every message.
for (let i = 0; i < 600; i++) {
  const left = execFileSync('redis-cli', ['-p', String(svc.redisPort), 'KEYS', 'user:*'], { encoding: 'utf8' }).trim();
  if (!left && sql("SELECT count(*) FROM memory_chunks WHERE state <> 'done'") === '0') break;
  await new Promise((r) => setTimeout(r, 200));
}
const ids = sql("SELECT m->>'message_id' FROM memory_chunks c, jsonb_array_elements(c.messages) m").split('\n').filter(Boolean);
const stored = Number(sql('SELECT coalesce(sum(message_count), 0) FROM memories'));

const base = samples.find((s) => s.t >= WARMUP) || samples[0];
const last = samples.at(-1);
const pct = (a, b) => (((b - a) / a) * 100).toFixed(1);
console.log(`soak: ${SECONDS}s; requests: chat ${counts.chat}, stream ${counts.stream}, embeddings ${counts.embed}, websocket ${counts.ws}; client errors ${counts.errors}`);
console.log(`worker: ${counts.pushed} messages pushed, ${ids.length} in chunks (${new Set(ids).size} distinct), ${stored} in memories`);
for (const svcName of ['proxy', 'worker']) {
  console.log(`${svcName === 'proxy' ? 'llm_proxy    ' : 'memory_worker'}: RSS ${(base[svcName].rss / 1048576).toFixed(1)} MB at ${base.t.toFixed(0)}s -> ${(last[svcName].rss / 1048576).toFixed(1)} MB at ${last.t.toFixed(0)}s (${pct(base[svcName].rss, last[svcName].rss)}%), fds ${base[svcName].fds} -> ${last[svcName].fds}`);
}
await worker.stop();
await proxy.stop();
await double.stop();
stop(dir);
void stopAt;
