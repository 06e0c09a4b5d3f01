// Fault injection: broken upstreams (invalid JSON, connection cut mid-line),
// llm_proxy SIGTERMed with 50 streams in flight, Redis and PostgreSQL
// crash-restarted in the middle of memory_worker passes. After each: every
// claimed message is in exactly one memory, and the services still answer.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { chatBody, dataOf, freePort, openChatStream, postJson, sseReader, startDouble, startProxy, startWorker } from './harness.mjs';
import { restartPostgres, restartRedis, start, stop } from './services.mjs';

let double, proxy;
before(async () => {
  double = await startDouble();
  proxy = await startProxy({}, { upstream: double });
});
after(async () => {
  await proxy.stop();
  await double.stop();
});

const openStream = openChatStream;

describe('broken upstream streams', () => {
  for (const [directive, code] of [['@garbage', 'upstream_invalid_response'], ['@cut', null]]) {
    test(`${directive}: one error event, no [DONE], the proxy still serves`, async () => {
      const events = await sseReader(await openStream(proxy, chatBody(`x ${directive}`, { think: false }))).all();
      assert.equal(dataOf(events[0]).choices[0].delta.content, 'Echo:');
      const last = dataOf(events.at(-1));
      assert.ok(last.error, `last event: ${events.at(-1)}`);
      if (code) assert.equal(last.error.code, code);
      assert.ok(!events.includes('data: [DONE]'));
      assert.equal((await postJson(`${proxy.url}/v1/chat/completions`, chatBody('after'))).status, 200);
    });
  }
});

test('SIGTERM with 50 streams in flight: each finishes or gets a clean error; exit 0', async () => {
  const p = await startProxy({ SHUTDOWN_GRACE: '30' }, { upstream: double });
  const streams = [];
  for (let i = 0; i < 50; i++) streams.push(sseReader(await openStream(p, chatBody(`s${i} a b @gate`, { think: false }))));
  await Promise.all(streams.map((s) => s.next())); // all 50 are flowing
  const exited = p.exited();
  p.proc.kill('SIGTERM');
  while (!p.logs.text.includes('event=shutdown')) await new Promise((r) => p.proc.stderr.once('data', r));
  const outcomes = streams.map(async (s) => {
    for (;;) {
      const ev = await s.next();
      if (ev === null) return 'cut';
      const d = dataOf(ev);
      if (d === '[DONE]') return 'done';
      if (d.error) return 'error';
    }
  });
  // Let the gated lines out until every stream has ended.
  let settled = false;
  Promise.all(outcomes).then(() => { settled = true; });
  while (!settled) {
    await double.release();
    await new Promise((r) => setImmediate(r));
  }
  const results = await Promise.all(outcomes);
  assert.deepEqual(results.filter((r) => r === 'cut'), [], 'no stream may be cut off silently');
  assert.equal(results.filter((r) => r === 'done').length, 50);
  assert.equal(await exited, 0);
});

describe('memory_worker with Redis and PostgreSQL restarted mid-pass', () => {
  let svc, dir, proxyPort, p2;
  const sql = (q) => execFileSync('psql', ['-h', '127.0.0.1', '-p', String(svc.pgPort), '-U', 'memory', '-d', 'faults', '-qAt', '-c', q], { encoding: 'utf8' }).trim();
  const redis = (...a) => execFileSync('redis-cli', ['-p', String(svc.redisPort), ...a.map(String)], { encoding: 'utf8' }).trim();
  before(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'faults-'));
    svc = await start(dir, { persistent: true });
    execFileSync('psql', ['-h', '127.0.0.1', '-p', String(svc.pgPort), '-U', 'memory', '-d', 'postgres', '-qAt', '-c', 'CREATE DATABASE faults']);
    proxyPort = await freePort();
    p2 = await startProxy({ LLM_PROXY_PORT: String(proxyPort) }, { upstream: double });
  });
  after(async () => {
    await p2.stop();
    stop(dir);
  });
  const env = () => ({
    LLM_PROXY_URL: `http://127.0.0.1:${proxyPort}`, REDIS_URL: `redis://127.0.0.1:${svc.redisPort}/0`,
    DATABASE_URL: `postgresql://memory@127.0.0.1:${svc.pgPort}/faults`, SUMMARY_MODEL: 'qwen3:8b',
    EMBEDDING_MODEL: 'bge-m3', WORKER_CONCURRENCY: '2', POLL_INTERVAL: '0.05', EMBED_BATCH: '2',
    RETRY_BASE: '0.05', RETRY_MAX: '0.2', LEASE_TIMEOUT: '1',
  });
  function push(prefix, users, per) {
    for (let u = 0; u < users; u++) {
      const msgs = [];
      for (let i = 0; i < per; i++) msgs.push(JSON.stringify({ role: 'user', content: `${prefix}${u} says ${i} @slow=20`, message_id: `${prefix}${u}-${i}` }));
      redis('RPUSH', `user:${prefix}${u}:messages`, ...msgs);
    }
  }
  async function until(cond) {
    for (let i = 0; i < 3000 && !cond(); i++) await new Promise((r) => setTimeout(r, 20));
    assert.ok(cond(), 'condition never held');
  }
  function assertExactlyOnce(prefix, total) {
    const ids = sql(`SELECT m->>'message_id' FROM memory_chunks c, jsonb_array_elements(c.messages) m WHERE user_id LIKE '${prefix}%'`).split('\n').filter(Boolean);
    assert.equal(ids.length, total);
    assert.equal(new Set(ids).size, total, 'duplicates');
    assert.equal(sql(`SELECT coalesce(sum(message_count), 0) FROM memories WHERE user_id LIKE '${prefix}%'`), String(total));
    assert.equal(sql(`SELECT count(*) FROM memory_chunks WHERE user_id LIKE '${prefix}%' AND state <> 'done'`), '0');
  }
  const allDone = (prefix, total) => () => {
    try {
      return redis('KEYS', `user:${prefix}*`) === '' &&
        sql(`SELECT coalesce(sum(message_count), 0) FROM memories WHERE user_id LIKE '${prefix}%'`) === String(total);
    } catch { return false; }
  };

  test('Redis crash-restarted mid-pass: nothing lost, nothing twice', async () => {
    push('r', 30, 12);
    const w = await startWorker(env());
    await until(() => /claim_persisted/.test(w.logs.text));
    await restartRedis(svc);
    await until(allDone('r', 360));
    assertExactlyOnce('r', 360);
    assert.equal((await fetch(`${w.url}/health`)).status, 200);
    await w.stop();
  });

  test('PostgreSQL crash-restarted mid-transaction: nothing lost, nothing twice', async () => {
    push('p', 30, 12);
    const w = await startWorker(env());
    await until(() => /chunk_done/.test(w.logs.text.split('claim_persisted').slice(1).join('')));
    restartPostgres(svc);
    await until(allDone('p', 360));
    assertExactlyOnce('p', 360);
    assert.equal((await fetch(`${w.url}/health`)).status, 200);
    await w.stop();
  });
});
