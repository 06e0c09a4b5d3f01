// memory_worker end to end: real Redis and PostgreSQL (ctest fixture), the
// real llm_proxy, the Ollama double. Claims, chunking, summaries, vectors,
// failures, dead chunks and replay.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { BIN_DIR, freePort, startDouble, startProxy, startWorker, workerTestEnv } from './harness.mjs';
import { useServices } from './services.mjs';

let svc, double, proxy, proxyPort;
const workers = [];

function workerEnv(extra = {}) {
  return workerTestEnv(svc, `http://127.0.0.1:${proxyPort}`, {
    MAX_ATTEMPTS: '3',
    LEASE_TIMEOUT: '2',
    API_TIMEOUT: '5',
    ...extra,
  });
}

async function worker(extra) {
  const w = await startWorker(workerEnv(extra));
  workers.push(w);
  return w;
}

function push(user, ...msgs) {
  svc.redis('RPUSH', `user:${user}:messages`, ...msgs.map((m) => (typeof m === 'string' ? m : JSON.stringify(m))));
}

const msg = (content, extra = {}) => ({ role: 'user', content, ...extra });

before(async () => {
  svc = useServices('worker_pipeline');
  double = await startDouble();
  proxyPort = await freePort();
  proxy = await startProxy({ LLM_PROXY_PORT: String(proxyPort) }, { upstream: double });
});
after(async () => {
  for (const w of workers) if (w.proc.exitCode === null && w.proc.signalCode === null) await w.stop();
  await proxy.stop();
  await double.stop();
});

describe('pipeline', () => {
  let w;
  before(async () => { w = await worker(); });

  test('happy path: chunks per room, summaries, 1024-dim vectors, Redis emptied', async () => {
    push('alice',
      msg('I love hiking in the Alps', { room_id: 'r1', timestamp: 1716800000 }),
      { role: 'assistant', content: 'Nice! Which trails?', room_id: 'r1', timestamp: '2024-05-27T09:00:00Z' },
      msg('Cooking pasta tonight', { room_id: 'r2' }),
      msg('Mostly the Eiger trail', { room_id: 'r1', message_id: 'm4', name: 'Alice', extra_field: true }));
    const p = await w.pass();
    assert.equal(p.status, 200);
    assert.equal(p.messages_claimed, 4);
    assert.equal(p.chunks_created, 2);
    assert.equal(p.chunks_done, 2);
    const rows = svc.sql("SELECT room_id, message_count, vector_dims(embedding), summary_model, embedding_model, summary FROM memories WHERE user_id = 'alice' ORDER BY room_id")
      .split('\n').map((l) => l.split('\t'));
    assert.equal(rows.length, 2);
    assert.deepEqual(rows[0].slice(0, 5), ['r1', '3', '1024', 'qwen3:8b', 'bge-m3']);
    assert.deepEqual(rows[1].slice(0, 3), ['r2', '1', '1024']);
    assert.match(rows[0][5], /^Echo: /);
    assert.ok(!rows[0][5].includes('think'));
    assert.equal(svc.sql("SELECT count(*) FROM memory_chunks WHERE user_id = 'alice' AND state = 'done'"), '2');
    const times = svc.sql("SELECT extract(epoch FROM first_message_at)::bigint, extract(epoch FROM last_message_at)::bigint FROM memories WHERE room_id = 'r1'");
    assert.equal(times, '1716800000\t1716800400');
    assert.equal(svc.redis('EXISTS', 'user:alice:messages', 'user:alice:messages:claim'), '0');
    // The summary request: thinking off, num_ctx set, our model.
    const up = (await double.last('/api/chat')).body;
    assert.equal(up.think, false);
    assert.ok(up.options.num_ctx >= 4096);
    assert.equal(up.model, 'qwen3:8b');
    assert.match((await double.last('/api/chat')).request_id, /^mw-\d+-1-s$/);
    assert.match((await double.last('/api/embed')).request_id, /^mw-\d+-e$/);
    // Vectors are unit length (Ollama normalises).
    const norm = Number(svc.sql("SELECT sqrt(sum(x * x)) FROM memories, unnest(embedding::real[]) x WHERE room_id = 'r2'"));
    assert.ok(Math.abs(norm - 1) < 1e-3);
  });

  test('chunking limits: at most CHUNK_MAX_MESSAGES per chunk, message order kept', async () => {
    for (let i = 0; i < 45; i++) push('bob', msg(`message number ${i}`, { room_id: 'x' }));
    const p = await w.pass();
    assert.equal(p.chunks_created, 3);
    assert.equal(svc.sql("SELECT string_agg(message_count::text, ',' ORDER BY id) FROM memory_chunks WHERE user_id = 'bob'"), '20,20,5');
    assert.equal(svc.sql("SELECT messages->0->>'content' FROM memory_chunks WHERE user_id = 'bob' ORDER BY id OFFSET 1 LIMIT 1"), 'message number 20');
  });

  test('a poison element is kept as a dead message, the rest goes on', async () => {
    push('carol', 'secretpoison not json', msg('fine message'), { role: 'user' }, '{"content": ""}');
    const p = await w.pass();
    assert.equal(p.messages_claimed, 1);
    assert.equal(p.dead_messages, 3);
    assert.equal(svc.sql("SELECT count(*) FROM memories WHERE user_id = 'carol'"), '1');
    const dead = svc.sql("SELECT position, convert_from(raw, 'UTF8'), error FROM dead_messages WHERE user_id = 'carol' ORDER BY position").split('\n');
    assert.equal(dead.length, 3);
    assert.match(dead[0], /^0\tsecretpoison not json\tnot valid JSON/);
    assert.ok(!w.logs.text.includes('secretpoison'), 'dead elements are not quoted in logs');
    assert.match(dead[1], /content/);
    assert.equal(svc.redis('EXISTS', 'user:carol:messages'), '0');
  });

  test('thinking residue (orphan </think>) is stripped from summaries', async () => {
    push('dave', msg('please @orphan-think'));
    await w.pass();
    const s = svc.sql("SELECT summary FROM memories WHERE user_id = 'dave'");
    assert.match(s, /^Echo: /);
    assert.ok(!/think|Residue/.test(s), s);
  });

  test('transient failures retry with backoff, then dead after MAX_ATTEMPTS; replay resets', async () => {
    push('erin', msg('this one fails @status=500'));
    let p = await w.pass();
    assert.equal(p.chunks_retried, 1);
    // Later passes retry once the backoff is over; never more than MAX_ATTEMPTS.
    let state;
    for (let i = 0; i < 200; i++) {
      state = svc.sql("SELECT state, attempts FROM memory_chunks WHERE user_id = 'erin'");
      if (state.startsWith('dead')) break;
      p = await w.pass();
    }
    assert.equal(state, 'dead\t3');
    assert.match(svc.sql("SELECT last_error FROM memory_chunks WHERE user_id = 'erin'"), /injected failure 500/);
    assert.equal(svc.sql("SELECT messages->0->>'content' FROM memory_chunks WHERE user_id = 'erin'"), 'this one fails @status=500');
    assert.equal((await w.pass()).chunks_retried, 0, 'a dead chunk is not retried');
    assert.match(w.logs.text, /event=chunk_dead/);
    assert.match(w.logs.text, /event=chunk_retry/);

    const r = spawnSync(path.join(BIN_DIR, 'memory_worker'), ['--replay-dead', '--user', 'erin'],
      { encoding: 'utf8', env: { PATH: process.env.PATH, ...workerEnv() } });
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /replayed 1 dead chunk/);
    assert.equal(svc.sql("SELECT state, attempts FROM memory_chunks WHERE user_id = 'erin'"), 'pending\t0');

    // And over HTTP.
    svc.sql("UPDATE memory_chunks SET state = 'dead' WHERE user_id = 'erin'");
    const res = await fetch(`${w.url}/v1/replay-dead?user=erin`, { method: 'POST' });
    assert.deepEqual(await res.json(), { replayed: 1 });
    svc.sql("UPDATE memory_chunks SET state = 'dead' WHERE user_id = 'erin'"); // keep it out of later passes
  });

  test('metrics and readiness', async () => {
    const m = await (await fetch(`${w.url}/metrics`)).text();
    assert.match(m, /memory_worker_messages_claimed_total [1-9]/);
    assert.match(m, /memory_worker_chunks_total\{result="done"\} [1-9]/);
    assert.match(m, /memory_worker_chunks_total\{result="dead"\} [1-9]/);
    assert.match(m, /memory_worker_llm_request_duration_seconds_count\{op="summary"\} [1-9]/);
    let ready;
    for (let i = 0; i < 100; i++) { // the monitor's first round may still be running
      ready = await fetch(`${w.url}/ready`);
      if (ready.status === 200) break;
      await new Promise((r) => setTimeout(r, 50));
    }
    assert.equal(ready.status, 200);
    assert.equal((await fetch(`${w.url}/health`)).status, 200);
    const hc = spawnSync(path.join(BIN_DIR, 'memory_worker'), ['--healthcheck'],
      { env: { MEMORY_WORKER_HOST: '127.0.0.1', MEMORY_WORKER_PORT: new URL(w.url).port } });
    assert.equal(hc.status, 0);
  });
});

describe('failures', () => {
  test('llm_proxy down: nothing lost, no attempts spent, no loop; back up: memories appear', async () => {
    const w = await worker();
    await proxy.stop();
    push('frank', msg('while the proxy is down'), msg('second message'));
    const p = await w.pass();
    assert.equal(p.messages_claimed, 2, 'messages are persisted even while the LLM is down');
    assert.equal(p.chunks_done, 0);
    assert.equal(p.chunks_retried, 0);
    assert.equal(svc.redis('EXISTS', 'user:frank:messages', 'user:frank:messages:claim'), '0');
    assert.equal(svc.sql("SELECT state, attempts FROM memory_chunks WHERE user_id = 'frank'"), 'pending\t0');
    assert.match(w.logs.text, /event=circuit_open/);
    // Further passes while down spend nothing either.
    for (let i = 0; i < 3; i++) await w.pass();
    assert.equal(svc.sql("SELECT state, attempts FROM memory_chunks WHERE user_id = 'frank'"), 'pending\t0');

    proxy = await startProxy({ LLM_PROXY_PORT: String(proxyPort) }, { upstream: double });
    let done = '0';
    for (let i = 0; i < 200 && done === '0'; i++) {
      await w.pass();
      done = svc.sql("SELECT count(*) FROM memories WHERE user_id = 'frank'");
    }
    assert.equal(done, '1');
    assert.equal(svc.sql("SELECT state, attempts FROM memory_chunks WHERE user_id = 'frank'"), 'done\t0');
    await w.stop();
  });

  test('unknown model is a configuration error: /ready 503, attempts not spent', async () => {
    const w = await worker({ SUMMARY_MODEL: 'nosuch-model' });
    push('gina', msg('hello'));
    const p = await w.pass();
    assert.equal(p.chunks_retried, 0, JSON.stringify(p) + w.logs.text);
    assert.equal(p.chunks_released, 1, JSON.stringify(p) + w.logs.text);
    const ready = await fetch(`${w.url}/ready`);
    assert.equal(ready.status, 503);
    assert.match((await ready.json()).config_error, /nosuch-model|404/);
    assert.equal(svc.sql("SELECT state, attempts FROM memory_chunks WHERE user_id = 'gina'"), 'pending\t0');
    assert.match(w.logs.text, /event=config_error/);
    await w.stop();
    // Fixed configuration: it goes through.
    svc.sql("UPDATE memory_chunks SET next_attempt_at = now() WHERE user_id = 'gina'");
    const ok = await worker();
    await ok.pass();
    assert.equal(svc.sql("SELECT count(*) FROM memories WHERE user_id = 'gina'"), '1');
    await ok.stop();
  });

  test('wrong EMBEDDING_DIM is a configuration error', async () => {
    const w = await worker({ EMBEDDING_DIM: '768' });
    push('hank', msg('hello'));
    const p = await w.pass();
    assert.equal(p.chunks_done, 0);
    assert.equal(p.chunks_retried, 0);
    const ready = await (await fetch(`${w.url}/ready`)).json();
    // Found at start: the stored vectors are vector(1024) (issue #13).
    assert.match(ready.config_error, /EMBEDDING_DIM=768 but memories\.embedding is vector\(1024\)/);
    await w.stop();
    svc.sql("UPDATE memory_chunks SET next_attempt_at = now() WHERE user_id = 'hank'");
  });
});

describe('process', () => {
  const bin = path.join(BIN_DIR, 'memory_worker');
  test('--help documents every setting; bad settings exit 2 naming the variable', () => {
    const h = spawnSync(bin, ['--help'], { encoding: 'utf8' });
    assert.equal(h.status, 0);
    for (const v of ['LLM_PROXY_URL', 'SUMMARY_MODEL', 'EMBEDDING_MODEL', 'API_TIMEOUT', 'REDIS_URL',
      'POSTGRES_HOST', 'POSTGRES_PORT', 'POSTGRES_DB', 'POSTGRES_USER', 'POSTGRES_PASSWORD', 'DATABASE_URL',
      'POLL_INTERVAL', 'WORKER_CONCURRENCY', 'MEMORY_WORKER_PORT', 'CHUNK_MAX_MESSAGES', 'CHUNK_MAX_CHARS',
      'RETRY_BASE', 'RETRY_MAX', 'MAX_ATTEMPTS', 'EMBEDDING_DIM', 'SUMMARY_PROMPT', 'CIRCUIT_5XX_THRESHOLD',
      'MEMORY_WORKER_API_KEY', 'LEASE_TIMEOUT', 'MEMORY_FTS_CONFIG', 'MEMORY_API_THREADS', 'MEMORY_API_QUEUE',
      'MEMORY_SEARCH_EMBED_TIMEOUT']) assert.match(h.stdout, new RegExp(v));
    for (const [k, v] of [['WORKER_CONCURRENCY', 'many'], ['REDIS_URL', 'http://x'], ['RETRY_BASE', '-1'], ['LLM_PROXY_URL', 'proxy:8000']]) {
      const r = spawnSync(bin, [], { encoding: 'utf8', env: { [k]: v } });
      assert.equal(r.status, 2, `${k}=${v}`);
      assert.match(r.stderr, new RegExp(k));
    }
  });
});
