// memory_worker: 2 minutes of upstream 500s with the DEFAULT settings
// (CIRCUIT_5XX_THRESHOLD=5, MAX_ATTEMPTS=5, RETRY_BASE=5, RETRY_MAX=600,
// WORKER_CONCURRENCY=4, POLL_INTERVAL=5) leave no chunk dead (issue #11,
// point 4: on main ~70 s of 500s sent every pending chunk to dead). The
// worker mostly waits with its breaker open, so this file is light on CPU;
// it lasts about 2.5 minutes and runs in parallel with the rest.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { freePort, startDouble, startProxy, startWorker } from './harness.mjs';
import { useServices } from './services.mjs';
import { chunkStates, healUpstream, pushFailing, tick, until } from './outage_common.mjs';

let svc, double, proxy, proxyPort;

before(async () => {
  svc = useServices('worker_outage_2min');
  double = await startDouble();
  proxyPort = await freePort();
  proxy = await startProxy({ LLM_PROXY_PORT: String(proxyPort) }, { upstream: double });
});
after(async () => {
  await proxy.stop();
  await double.stop();
});

const connection = () => ({
  LLM_PROXY_URL: `http://127.0.0.1:${proxyPort}`,
  REDIS_URL: svc.redisUrl,
  DATABASE_URL: svc.databaseUrl,
  SUMMARY_MODEL: 'qwen3:8b',
  EMBEDDING_MODEL: 'bge-m3',
});

test('2 minutes of upstream 500s with default settings: no chunk dead, then the backlog completes', { timeout: 300000 }, async () => {
  const user = 'longoutage';
  pushFailing(svc, user, 12);
  const w = await startWorker(connection()); // defaults for everything else
  await until('the backlog in PostgreSQL', () => chunkStates(svc, user).length === 12, 400);
  const start = Date.now();
  while (Date.now() - start < 120000) {
    // The outage lasts 2 minutes; meanwhile nothing may die.
    assert.ok(chunkStates(svc, user).every((c) => c.state === 'pending'), 'a chunk died during the outage');
    await tick(1000);
  }
  const states = chunkStates(svc, user);
  assert.ok(states.every((c) => c.state === 'pending' && c.attempts < 5), JSON.stringify(states));
  const ready = await fetch(`${w.url}/ready`);
  assert.equal(ready.status, 503);
  assert.match((await ready.json()).reason, /consecutive upstream 5xx/);
  assert.match(w.logs.text, /event=circuit_half_open/);
  await w.stop();

  // Ollama is back: the backlog completes with no replay.
  healUpstream(svc, user);
  const again = await startWorker(connection());
  await until('every chunk done', () => chunkStates(svc, user).every((c) => c.state === 'done'), 1200);
  assert.equal(svc.sql(`SELECT count(*) FROM memories WHERE user_id = '${user}'`), '12');
  await again.stop();
});
