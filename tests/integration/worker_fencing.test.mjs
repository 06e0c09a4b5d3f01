// memory_worker: a stalled worker is fenced (issue #11, point 3). Workers
// are stopped at a named step with the MEMORY_WORKER_PAUSE test hook (the
// process SIGSTOPs itself after logging event=pause_injected) and resumed
// with SIGCONT, so both interleavings of the issue are reproduced exactly:
//   (a) A's lease lapses, B takes the claim over and finishes it, C claims
//       the next batch and has read it; A wakes and reads the claim key;
//   (b) A persisted and stalls before deleting; B takes over and finishes,
//       C claims the next batch; A wakes and deletes the claim keys.
// Elements carry no message_id, so only the fencing can prevent the
// duplicate of (a) and the loss of (b).
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { freePort, startDouble, startProxy, startWorker, workerTestEnv } from './harness.mjs';
import { useServices } from './services.mjs';

let svc, double, proxy, proxyPort;

function env(extra = {}) {
  return workerTestEnv(svc, `http://127.0.0.1:${proxyPort}`, {
    LEASE_TIMEOUT: '30',
    ...extra,
  });
}

function push(user, prefix, n) {
  const msgs = [];
  for (let i = 0; i < n; i++) msgs.push(JSON.stringify({ role: 'user', content: `${prefix} ${i}` }));
  svc.redis('RPUSH', `user:${user}:messages`, ...msgs);
}

const tick = () => new Promise((r) => setTimeout(r, 20));

// Resolves once the worker has logged that it stops at step.
async function pausedAt(w, step) {
  const re = new RegExp(`event=pause_injected msg="step=${step}`);
  for (let i = 0; i < 1500 && !re.test(w.logs.text); i++) await tick();
  assert.ok(re.test(w.logs.text), `worker never paused at ${step}`);
}

// Waits until the user's Redis lease key is gone (its TTL ran out).
async function leaseLapsed(user) {
  for (let i = 0; i < 1500 && svc.redis('EXISTS', `user:${user}:messages:claim:lease`) !== '0'; i++) await tick();
  assert.equal(svc.redis('EXISTS', `user:${user}:messages:claim:lease`), '0');
}

// Every pushed content is in exactly one chunk and one memory; Redis is empty.
function assertExactlyOnce(user, expected) {
  const contents = svc.sql(`SELECT m->>'content' FROM memory_chunks c, jsonb_array_elements(c.messages) m WHERE user_id = '${user}'`)
    .split('\n').filter(Boolean).sort();
  assert.deepEqual(contents, [...expected].sort(), `chunked messages of ${user}`);
  assert.equal(svc.sql(`SELECT count(*) FROM memory_chunks WHERE user_id = '${user}' AND state <> 'done'`), '0');
  assert.equal(svc.sql(`SELECT coalesce(sum(message_count), 0) FROM memories WHERE user_id = '${user}'`), String(expected.length));
  assert.equal(svc.redis('EXISTS', `user:${user}:messages`, `user:${user}:messages:claim`), '0');
}

const contents = (prefix, n) => Array.from({ length: n }, (_, i) => `${prefix} ${i}`);

before(async () => {
  svc = useServices('worker_fencing');
  double = await startDouble();
  proxyPort = await freePort();
  proxy = await startProxy({ LLM_PROXY_PORT: String(proxyPort) }, { upstream: double });
});
after(async () => {
  await proxy.stop();
  await double.stop();
});

test('(a) a stalled worker cannot read a newer claim under its old claim id: no duplicate', async () => {
  const user = 'fence_read';
  push(user, 'one', 5);
  const a = await startWorker(env({ MEMORY_WORKER_PAUSE: 'after_claim', LEASE_TIMEOUT: '1' }));
  const aPass = a.pass();
  await pausedAt(a, 'after_claim');
  await leaseLapsed(user);

  const b = await startWorker(env());
  const pb = await b.pass();
  assert.equal(pb.messages_claimed, 5, 'B took the lapsed claim over');

  push(user, 'two', 4);
  const c = await startWorker(env({ MEMORY_WORKER_PAUSE: 'after_read' }));
  const cPass = c.pass();
  await pausedAt(c, 'after_read');

  process.kill(a.proc.pid, 'SIGCONT');
  await aPass;
  process.kill(c.proc.pid, 'SIGCONT');
  await cPass;
  await b.pass();
  assertExactlyOnce(user, [...contents('one', 5), ...contents('two', 4)]);
  assert.ok(/event=claim_fenced/.test(a.logs.text), 'A logs that it was fenced');
  for (const w of [a, b, c]) await w.stop();
});

test('(b) a stalled worker cannot delete a claim another worker took: no loss', async () => {
  const user = 'fence_delete';
  push(user, 'one', 5);
  const a = await startWorker(env({ MEMORY_WORKER_PAUSE: 'after_persist', LEASE_TIMEOUT: '1' }));
  const aPass = a.pass();
  await pausedAt(a, 'after_persist');
  await leaseLapsed(user);

  const b = await startWorker(env());
  await b.pass();
  assert.equal(svc.redis('EXISTS', `user:${user}:messages:claim`), '0', 'B finished the first batch');

  push(user, 'two', 4);
  const c = await startWorker(env({ MEMORY_WORKER_PAUSE: 'after_claim' }));
  const cPass = c.pass();
  await pausedAt(c, 'after_claim');

  process.kill(a.proc.pid, 'SIGCONT');
  await aPass;
  assert.equal(svc.redis('LLEN', `user:${user}:messages:claim`), '4', 'the newer claim is intact');
  process.kill(c.proc.pid, 'SIGCONT');
  await cPass;
  await b.pass();
  assertExactlyOnce(user, [...contents('one', 5), ...contents('two', 4)]);
  assert.ok(/event=claim_fenced/.test(a.logs.text), 'A logs that it was fenced');
  for (const w of [a, b, c]) await w.stop();
});

test('chunk leases are renewed while a batch is worked on: a peer never takes a chunk still in progress', async () => {
  // A batch of 5 chunks at 500 ms per summary outlasts LEASE_TIMEOUT=2;
  // a second worker passes again and again meanwhile. Without renewal it
  // leases the last chunks once the batch's lease lapses and they are
  // summarised twice.
  const d = await startDouble();
  const port = await freePort();
  const px = await startProxy({ LLM_PROXY_PORT: String(port) }, { upstream: d });
  const user = 'renew_batch';
  const msgs = [];
  for (let i = 0; i < 5; i++) msgs.push(JSON.stringify({ role: 'user', content: `slow ${i} @slow=500`, room_id: `r${i}` }));
  svc.redis('RPUSH', `user:${user}:messages`, ...msgs);
  const e = { LLM_PROXY_URL: `http://127.0.0.1:${port}`, EMBED_BATCH: '5', LEASE_TIMEOUT: '2' };
  const a = await startWorker(env(e));
  const b = await startWorker(env(e));
  let done = false;
  const aPass = a.pass().then((r) => { done = true; return r; });
  while (!done) {
    await b.pass();
    await tick();
  }
  await aPass;
  assert.equal(svc.sql(`SELECT count(*) FROM memory_chunks WHERE user_id = '${user}' AND state = 'done'`), '5');
  assert.equal((await d.stats()).requests['/api/chat'], 5, 'each chunk summarised once');
  for (const w of [a, b, px, d]) await w.stop();
});

test('leases are renewed while work continues: a long pass keeps its claim', async () => {
  const user = 'fence_renew';
  push(user, 'long', 3);
  // Paused after the claim for longer than the lease: nobody took over, so
  // the worker re-takes its lapsed lease and goes on.
  const a = await startWorker(env({ MEMORY_WORKER_PAUSE: 'after_claim', LEASE_TIMEOUT: '1' }));
  const aPass = a.pass();
  await pausedAt(a, 'after_claim');
  await leaseLapsed(user);
  process.kill(a.proc.pid, 'SIGCONT');
  const p = await aPass;
  assert.equal(p.messages_claimed, 3);
  assertExactlyOnce(user, contents('long', 3));
  await a.stop();
});
