// memory_worker: consecutive upstream 5xx are an outage (issue #11, point 4).
// CIRCUIT_5XX_THRESHOLD of them in a row open the circuit breaker like a
// connection failure: no attempts are spent while it is open, /ready is 503
// with the reason, one chunk probes after each pause, and the backlog
// completes by itself once upstream answers again. Short settings here;
// worker_outage_2min.test.mjs runs the 2 minutes with the defaults.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { freePort, startDouble, startProxy, startWorker } from './harness.mjs';
import { useServices } from './services.mjs';
import { chunkStates, healUpstream, pushFailing, until } from './outage_common.mjs';

let svc, double, proxy, proxyPort;

before(async () => {
  svc = useServices('worker_outage');
  double = await startDouble();
  proxyPort = await freePort();
  proxy = await startProxy({ LLM_PROXY_PORT: String(proxyPort) }, { upstream: double });
});
after(async () => {
  await proxy.stop();
  await double.stop();
});

test('upstream 5xx open the breaker: no chunk spends its attempts, /ready 503, half-open probes, recovery without replay', async () => {
  const user = 'crashloop';
  pushFailing(svc, user, 6);
  const w = await startWorker({
    LLM_PROXY_URL: `http://127.0.0.1:${proxyPort}`,
    REDIS_URL: svc.redisUrl,
    DATABASE_URL: svc.databaseUrl,
    SUMMARY_MODEL: 'qwen3:8b',
    EMBEDDING_MODEL: 'bge-m3',
    WORKER_CONCURRENCY: '2',
    POLL_INTERVAL: '0.05',
    CIRCUIT_5XX_THRESHOLD: '2',
    RETRY_BASE: '0.1',
    RETRY_MAX: '0.2',
    MAX_ATTEMPTS: '3',
  });
  // Several probes fail in a row: far more 500s than MAX_ATTEMPTS.
  await until('five half-open probes (or a dead chunk)', () => (w.logs.text.match(/event=circuit_half_open/g) || []).length >= 5
    || chunkStates(svc, user).some((c) => c.state === 'dead'));
  const during = chunkStates(svc, user);
  assert.equal(during.length, 6);
  assert.ok(during.every((c) => c.state === 'pending' && c.attempts < 3), JSON.stringify(during));
  const ready = await fetch(`${w.url}/ready`);
  assert.equal(ready.status, 503);
  const body = await ready.json();
  assert.equal(body.circuit_open, true);
  assert.match(body.reason, /circuit open: \d+ consecutive upstream 5xx/);
  const metrics = await (await fetch(`${w.url}/metrics`)).text();
  assert.match(metrics, /memory_worker_circuit_open 1/);

  healUpstream(svc, user);
  await until('every chunk done', () => chunkStates(svc, user).every((c) => c.state === 'done'));
  assert.equal(svc.sql(`SELECT count(*) FROM memories WHERE user_id = '${user}'`), '6');
  // (stderr reaches us asynchronously: await the line, do not race it)
  await until('event=circuit_closed', () => /event=circuit_closed/.test(w.logs.text));
  assert.ok(!/event=chunk_dead/.test(w.logs.text), 'no chunk died');
  await until('/ready 200', async () => (await fetch(`${w.url}/ready`)).status === 200);
  await w.stop();
});
