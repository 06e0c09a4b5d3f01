// memory_worker: DELETE /v1/users/{user_id} (issue #13). Erasure removes a
// user's memories, chunks, dead messages, idempotency rows and Redis keys,
// is idempotent, leaves other users alone, and cannot be undone by a worker
// that was in the middle of a pass: workers are stopped at a named step with
// the MEMORY_WORKER_PAUSE hook (as in worker_fencing), the user is erased
// through another worker, the stopped one resumes and finishes its pass.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { startDouble, startProxy, startWorker, workerTestEnv } from './harness.mjs';
import { useServices } from './services.mjs';

let svc, double, proxy, w;

function env(extra = {}) {
  return workerTestEnv(svc, proxy.url, {
    LEASE_TIMEOUT: '30',
    ...extra,
  });
}

const msg = (content, extra = {}) => JSON.stringify({ role: 'user', content, ...extra });
function push(user, ...elements) {
  svc.redis('RPUSH', `user:${user}:messages`, ...elements);
}
const erase = async (user, worker = w) => {
  const res = await fetch(`${worker.url}/v1/users/${encodeURIComponent(user)}`, { method: 'DELETE' });
  return { status: res.status, json: await res.json() };
};
const q = (s) => s.replace(/'/g, "''");
function rows(user) {
  const u = q(user);
  return {
    memories: Number(svc.sql(`SELECT count(*) FROM memories WHERE user_id = '${u}'`)),
    chunks: Number(svc.sql(`SELECT count(*) FROM memory_chunks WHERE user_id = '${u}'`)),
    dead_messages: Number(svc.sql(`SELECT count(*) FROM dead_messages WHERE user_id = '${u}'`)),
    message_ids: Number(svc.sql(`SELECT count(*) FROM message_ids WHERE user_id = '${u}'`)),
  };
}
const nothing = { memories: 0, chunks: 0, dead_messages: 0, message_ids: 0 };
function redisKeys(user) {
  return svc.redis('--scan', '--pattern', `user:${user}:*`).split('\n').filter(Boolean);
}

const tick = () => new Promise((r) => setTimeout(r, 20));
async function pausedAt(worker, step) {
  const re = new RegExp(`event=pause_injected msg="step=${step}`);
  for (let i = 0; i < 1500 && !re.test(worker.logs.text); i++) await tick();
  assert.ok(re.test(worker.logs.text), `worker never paused at ${step}`);
}

before(async () => {
  svc = useServices('worker_erase');
  double = await startDouble();
  proxy = await startProxy({}, { upstream: double });
  w = await startWorker(env());
});
after(async () => {
  await w.stop();
  await proxy.stop();
  await double.stop();
});

test('erasure removes every row and key of the user, returns the counts, is idempotent, spares others', async () => {
  for (const user of ['er', 'keep']) {
    push(user, msg('I live in Lyon', { message_id: `${user}-1` }), msg('and I ride a bike', { message_id: `${user}-2` }),
      'not json at all', msg('in room two', { room_id: 'r2', message_id: `${user}-3` }));
  }
  const p = await w.pass();
  assert.equal(p.chunks_done, 4);
  push('er', msg('still in redis'));
  const before = rows('er');
  assert.deepEqual(before, { memories: 2, chunks: 2, dead_messages: 1, message_ids: 3 });
  const keep = rows('keep');
  const r = await erase('er');
  assert.equal(r.status, 200, JSON.stringify(r.json));
  assert.deepEqual(r.json, { object: 'user.erased', user_id: 'er', erased: true,
    counts: { ...before, redis_keys: 1 } });
  assert.deepEqual(rows('er'), nothing);
  assert.deepEqual(redisKeys('er'), []);
  assert.deepEqual(rows('keep'), keep);
  assert.match(w.logs.text, /event=user_erased msg="user=er memories=2 chunks=2 dead_messages=1 message_ids=3 redis_keys=1"/);
  // Again: nothing left to erase, same answer shape.
  const again = await erase('er');
  assert.equal(again.status, 200);
  assert.deepEqual(again.json.counts, { ...nothing, redis_keys: 0 });
  // The user may come back: new messages are stored as usual (the erased
  // message ids no longer block them).
  push('er', msg('I live in Lyon', { message_id: 'er-1' }));
  assert.equal((await w.pass()).chunks_done, 1);
  assert.equal(rows('er').memories, 1);
});

test('erasure of user ids that need encoding; bad ids are 400', async () => {
  const odd = 'we!rd/ü ser:{x}';
  push(odd, msg('hello'));
  await w.pass();
  assert.equal(rows(odd).memories, 1);
  const r = await erase(odd);
  assert.equal(r.status, 200);
  assert.equal(r.json.user_id, odd);
  assert.equal(r.json.counts.memories, 1);
  assert.deepEqual(rows(odd), nothing);
  for (const bad of ['%00x', 'a%01b', '%ff', 'x'.repeat(257)]) {
    const res = await fetch(`${w.url}/v1/users/${bad}`, { method: 'DELETE' });
    assert.equal(res.status, 400, bad);
    assert.equal((await res.json()).error.param, 'user_id');
  }
  const res = await fetch(`${w.url}/v1/users/`, { method: 'DELETE' });
  assert.equal(res.status, 404); // no user in the path: not this route
});

// A worker stopped at `step` while it holds user's batch; erased; resumed.
async function eraseDuringPass(user, step) {
  const paused = await startWorker(env({ MEMORY_WORKER_PAUSE: step }));
  try {
    push(user, msg(`secret one of ${user}`, { message_id: `${user}-a` }), msg(`secret two of ${user}`, { message_id: `${user}-b` }));
    const pass = paused.pass();
    await pausedAt(paused, step);
    const r = await erase(user);
    assert.equal(r.status, 200, JSON.stringify(r.json));
    paused.proc.kill('SIGCONT');
    const p = await pass;
    assert.equal(p.status, 200, JSON.stringify(p));
    // Nothing of the batch taken before the erasure was stored after it.
    assert.deepEqual(rows(user), nothing, `${step}: rows after the resumed pass`);
    assert.deepEqual(redisKeys(user), [], `${step}: redis keys`);
    // Another full pass (any worker) finds nothing to bring back.
    await w.pass();
    assert.deepEqual(rows(user), nothing);
    return { paused, r, p };
  } finally {
    await paused.stop();
  }
}

test('erasure while a worker holds the claim (after reading it): the claim is fenced, nothing stored', async () => {
  const { paused } = await eraseDuringPass('race_read', 'after_read');
  assert.match(paused.logs.text, /claim_fenced|claim_erased/);
});

test('erasure between the claim and its commit to PostgreSQL: the erasure epoch refuses the batch', async () => {
  const { paused, r } = await eraseDuringPass('race_persist', 'before_persist');
  assert.equal(r.json.counts.redis_keys, 3); // claim, meta and lease: the worker held them
  assert.match(paused.logs.text, /event=claim_erased msg="user=race_persist .*the user was erased after this claim was taken/);
});

test('erasure while a chunk is summarised and embedded: its memory is not stored', async () => {
  const user = 'race_store';
  const paused = await startWorker(env({ MEMORY_WORKER_PAUSE: 'before_store' }));
  try {
    push(user, msg('a secret that must go'));
    const pass = paused.pass();
    await pausedAt(paused, 'before_store');
    assert.equal(rows(user).chunks, 1);
    const r = await erase(user);
    assert.equal(r.json.counts.chunks, 1);
    paused.proc.kill('SIGCONT');
    assert.equal((await pass).status, 200);
    assert.deepEqual(rows(user), nothing);
  } finally {
    await paused.stop();
  }
});

test('erasure racing a store in PostgreSQL itself: the chunk row lock orders them', async () => {
  // The memory is being stored while the erasure runs: whichever commits
  // first, nothing of the user is left (store_complete locks the chunk row;
  // the erasure deletes chunks before memories, each with a fresh snapshot).
  const user = 'race_lock';
  for (let round = 0; round < 5; round++) {
    push(user, msg(`round ${round}`));
    const [p, r] = await Promise.all([w.pass(), erase(user)]);
    assert.equal(p.status, 200);
    assert.equal(r.status, 200);
    const left = rows(user);
    // Either the erasure came first (the pass may then store the new
    // messages it claimed after it) or last (nothing left); never a memory
    // without its chunk.
    assert.equal(left.memories, Number(svc.sql(`SELECT count(*) FROM memory_chunks WHERE user_id = '${user}' AND state = 'done'`)));
    await erase(user);
    assert.deepEqual(rows(user), nothing);
  }
});
