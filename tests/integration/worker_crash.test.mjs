// memory_worker under crashes and concurrency: SIGKILL at each step then a
// restart, messages pushed during a pass, two workers at once, SIGTERM.
// After each: every message is in exactly one memory, Redis holds nothing.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { freePort, startDouble, startProxy, startWorker, workerTestEnv } from './harness.mjs';
import { useServices } from './services.mjs';

let svc, double, proxy, proxyPort;

function env(extra = {}) {
  return workerTestEnv(svc, `http://127.0.0.1:${proxyPort}`, {
    LEASE_TIMEOUT: '1',
    ...extra,
  });
}

function push(user, n, prefix = 'm') {
  const msgs = [];
  for (let i = 0; i < n; i++) msgs.push(JSON.stringify({ role: 'user', content: `${prefix} ${i}`, message_id: `${prefix}-${i}` }));
  svc.redis('RPUSH', `user:${user}:messages`, ...msgs);
}

// Every pushed message of user is in exactly one done memory; nothing left.
function assertExactlyOnce(user, expectedMessages) {
  const ids = svc.sql(`SELECT m->>'message_id' FROM memory_chunks c, jsonb_array_elements(c.messages) m WHERE user_id = '${user}'`).split('\n').filter(Boolean);
  assert.equal(ids.length, expectedMessages, `chunked messages of ${user}`);
  assert.equal(new Set(ids).size, expectedMessages, `duplicates among ${user}'s chunks`);
  assert.equal(svc.sql(`SELECT count(*) FROM memory_chunks WHERE user_id = '${user}' AND state <> 'done'`), '0');
  assert.equal(svc.sql(`SELECT count(*) FROM memories WHERE user_id = '${user}'`),
    svc.sql(`SELECT count(*) FROM memory_chunks WHERE user_id = '${user}'`));
  assert.equal(svc.sql(`SELECT coalesce(sum(message_count), 0) FROM memories WHERE user_id = '${user}'`), String(expectedMessages));
  assert.equal(svc.redis('EXISTS', `user:${user}:messages`, `user:${user}:messages:claim`, `user:${user}:messages:claim:lease`), '0');
}

// Passes until the user's work is all done (leases of the killed worker
// expire after LEASE_TIMEOUT); bounded.
async function passUntilDone(w, user) {
  for (let i = 0; i < 400; i++) {
    await w.pass();
    const left = svc.redis('EXISTS', `user:${user}:messages`, `user:${user}:messages:claim`);
    const pending = svc.sql(`SELECT count(*) FROM memory_chunks WHERE user_id = '${user}' AND state = 'pending'`);
    if (left === '0' && pending === '0') return;
    await new Promise((r) => setTimeout(r, 25));
  }
  throw new Error(`work of ${user} never finished`);
}

before(async () => {
  svc = useServices('worker_crash');
  double = await startDouble();
  proxyPort = await freePort();
  proxy = await startProxy({ LLM_PROXY_PORT: String(proxyPort) }, { upstream: double });
});
after(async () => {
  await proxy.stop();
  await double.stop();
});

for (const step of ['after_claim', 'after_persist', 'after_summary', 'after_store']) {
  test(`SIGKILL ${step.replace('_', ' ')}, then restart: no loss, no duplicates`, async () => {
    const user = `crash_${step}`;
    push(user, 45);
    const doomed = await startWorker(env({ MEMORY_WORKER_FAULT: step }));
    const exited = doomed.exited();
    doomed.pass().catch(() => {});
    assert.equal(await exited, 'SIGKILL');
    assert.match(doomed.logs.text, new RegExp(`fault_injected.*step=${step}`));
    const w = await startWorker(env());
    await passUntilDone(w, user);
    assertExactlyOnce(user, 45);
    await w.stop();
  });
}

test('messages pushed while a pass runs are neither lost nor processed twice', async () => {
  const w = await startWorker(env());
  const user = 'during';
  push(user, 10, 'a @slow=150');
  const pass = w.pass();
  // Wait until the batch is claimed (it is in PostgreSQL), then push more.
  for (let i = 0; i < 400 && svc.sql(`SELECT count(*) FROM memory_chunks WHERE user_id = '${user}'`) === '0'; i++) {
    await new Promise((r) => setTimeout(r, 10));
  }
  push(user, 7, 'b');
  await pass;
  await passUntilDone(w, user);
  assertExactlyOnce(user, 17);
  await w.stop();
});

test('two workers with background threads at once: no duplicates', async () => {
  const users = [];
  for (let u = 0; u < 12; u++) {
    users.push(`pair${u}`);
    push(`pair${u}`, 25, `p${u}`);
  }
  const a = await startWorker(env({ WORKER_CONCURRENCY: '3', POLL_INTERVAL: '0.05', EMBED_BATCH: '2' }));
  const b = await startWorker(env({ WORKER_CONCURRENCY: '3', POLL_INTERVAL: '0.05', EMBED_BATCH: '2' }));
  for (let i = 0; i < 800; i++) {
    const pending = svc.sql("SELECT count(*) FROM memory_chunks WHERE user_id LIKE 'pair%' AND state <> 'done'");
    const chunks = svc.sql("SELECT count(*) FROM memory_chunks WHERE user_id LIKE 'pair%'");
    if (pending === '0' && chunks === String(12 * 2)) break;
    await new Promise((r) => setTimeout(r, 25));
  }
  for (const u of users) assertExactlyOnce(u, 25);
  // Work was done and logged (stderr reaches us asynchronously: await the
  // line rather than race the database).
  for (let i = 0; i < 400 && !/chunk_done/.test(a.logs.text + b.logs.text); i++) await new Promise((r) => setTimeout(r, 25));
  assert.ok(/chunk_done/.test(a.logs.text + b.logs.text), 'no chunk_done logged');
  await a.stop();
  await b.stop();
});

test('SIGTERM: chunks in progress finish or are released, exit 0, nothing lost', async () => {
  const user = 'sigterm';
  push(user, 60, 'slow @slow=100');
  const w = await startWorker(env({ WORKER_CONCURRENCY: '2', POLL_INTERVAL: '0.05', EMBED_BATCH: '2' }));
  // Wait until work is under way, then stop the worker.
  for (let i = 0; i < 400 && !/chunk_done/.test(w.logs.text); i++) await new Promise((r) => setTimeout(r, 10));
  assert.equal(await w.stop(), 0);
  assert.equal(svc.sql(`SELECT count(*) FROM memory_chunks WHERE user_id = '${user}' AND lease_owner IS NOT NULL`), '0',
    'no lease may be left behind by a clean shutdown');
  const rest = await startWorker(env());
  await passUntilDone(rest, user);
  assertExactlyOnce(user, 60);
  await rest.stop();
});
