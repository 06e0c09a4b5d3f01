// memory_worker's memories API (issue #13): search (vector, full text,
// hybrid RRF), filters, listing with cursors, get/delete, per-user
// isolation, degraded mode, bad input, auth. Real PostgreSQL with pgvector,
// real Redis, the real llm_proxy in front of the Ollama double (whose
// embeddings are deterministic per text: the tests build memories with
// known similarities to a query from them).
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { assertOpenAIError, freePort, postJson, startDouble, startProxy, startWorker, workerTestEnv } from './harness.mjs';
import { useServices } from './services.mjs';

let svc, double, proxy, w;

function env(extra = {}) {
  return workerTestEnv(svc, proxy.url, extra);
}

async function embed(text) {
  const r = await postJson(`${proxy.url}/v1/embeddings`, { model: 'bge-m3', input: text });
  assert.equal(r.status, 200, r.text);
  return r.json.data[0].embedding;
}

// w * q + sqrt(1 - w^2) * r, normalised: cosine with q close to w for a
// random r (nearly orthogonal to q in 1024 dimensions).
function mix(q, r, wq) {
  const v = q.map((x, i) => wq * x + Math.sqrt(1 - wq * wq) * r[i]);
  const n = Math.sqrt(v.reduce((s, x) => s + x * x, 0));
  return v.map((x) => x / n);
}

const lit = (v) => `'[${v.join(',')}]'`;
const q$ = (s) => (s === null || s === undefined ? 'NULL' : `$q$${s}$q$`);
let hashN = 0;
function insertMemory({ user, room = null, summary = 'a memory', vec, first = null, last = null, created = null }) {
  hashN++;
  return Number(svc.sql(`INSERT INTO memories (user_id, room_id, summary, embedding, summary_model, embedding_model,
    message_count, first_message_at, last_message_at, chunk_hash, created_at) VALUES (${q$(user)}, ${q$(room)}, ${q$(summary)},
    ${lit(vec)}, 'qwen3:8b', 'bge-m3', 2, ${q$(first)}, ${q$(last)}, 'h${hashN}', coalesce(${q$(created)}::timestamptz, now())) RETURNING id`).split('\n')[0]);
}

const search = (body, headers = {}, worker = w) => postJson(`${worker.url}/v1/memories/search`, body, headers);
async function get(path, opts = {}, worker = w) {
  const res = await fetch(`${worker.url}${path}`, opts);
  const text = await res.text();
  let json = null;
  try { json = JSON.parse(text); } catch { /* not JSON */ }
  return { status: res.status, headers: res.headers, text, json };
}
const ids = (r) => r.json.data.map((m) => m.id);

before(async () => {
  svc = useServices('worker_search');
  double = await startDouble();
  proxy = await startProxy({}, { upstream: double });
  w = await startWorker(env());
});
after(async () => {
  await w.stop();
  await proxy.stop();
  await double.stop();
});

test('vector search ranks by cosine similarity (known vectors)', async () => {
  const q = await embed('where does the user live');
  const weights = [0.2, 1.0, 0.0, 0.8, 0.5];
  const byW = {};
  for (const [i, wq] of weights.entries()) {
    byW[wq] = insertMemory({ user: 'rel', summary: `memory ${i}`, vec: mix(q, await embed(`noise ${i}`), wq) });
  }
  const r = await search({ user_id: 'rel', query: 'where does the user live', mode: 'vector', limit: 5 });
  assert.equal(r.status, 200, r.text);
  assert.equal(r.json.object, 'list');
  assert.deepEqual(ids(r), [1.0, 0.8, 0.5, 0.2, 0.0].map((x) => byW[x]));
  const scores = r.json.data.map((m) => m.score);
  assert.ok(scores[0] > 0.999, `exact match scores ${scores[0]}`);
  for (const [i, x] of [1.0, 0.8, 0.5, 0.2, 0.0].entries()) assert.ok(Math.abs(scores[i] - x) < 0.12, `score ${scores[i]} for ${x}`);
  const m = r.json.data[0];
  assert.deepEqual(Object.keys(m).sort(), ['created_at', 'first_message_at', 'id', 'last_message_at', 'message_count',
    'object', 'room_id', 'score', 'summary', 'user_id']);
  assert.equal(m.user_id, 'rel');
  assert.match(m.created_at, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$/);
  // limit cuts the ranking.
  const two = await search({ user_id: 'rel', query: 'where does the user live', mode: 'vector', limit: 2 });
  assert.deepEqual(ids(two), [byW[1.0], byW[0.8]]);
});

test('full-text search (simple configuration) matches words, ranks, and survives any query syntax', async () => {
  const v = await embed('x');
  const porto = insertMemory({ user: 'txt', summary: 'Alice is moving to Porto in June', vec: v });
  const bees = insertMemory({ user: 'txt', summary: 'She keeps bees in the garden; the bees swarm in May', vec: v });
  insertMemory({ user: 'txt', summary: 'Likes green tea', vec: v });
  let r = await search({ user_id: 'txt', query: 'PORTO', mode: 'text' });
  assert.equal(r.status, 200, r.text);
  assert.deepEqual(ids(r), [porto]);
  assert.ok(r.json.data[0].score > 0);
  r = await search({ user_id: 'txt', query: 'bees garden', mode: 'text' });
  assert.deepEqual(ids(r), [bees]);
  // Any of the words matches (a question need not contain every word);
  // more matching words rank higher.
  r = await search({ user_id: 'txt', query: 'what about porto and the bees?', mode: 'text' });
  assert.deepEqual(new Set(ids(r)), new Set([porto, bees]));
  r = await search({ user_id: 'txt', query: 'is alice moving to porto?', mode: 'text' });
  assert.equal(ids(r)[0], porto);
  for (const odd of ['"unclosed', '-', '!!! ((( & | :*', "'; DROP TABLE memories; --", 'ünïcödé 😀']) {
    r = await search({ user_id: 'txt', query: odd, mode: 'text' });
    assert.equal(r.status, 200, `${odd}: ${r.text}`);
  }
  assert.equal(svc.sql("SELECT count(*) FROM memories WHERE user_id = 'txt'"), '3');
});

test('hybrid fuses the vector and full-text rankings with RRF (k = 60) over 4 x limit', async () => {
  const q = await embed('hybrid query');
  const mk = (summary, wq, i) => embed(`hn ${i}`).then((r) => insertMemory({ user: 'hyb', summary, vec: mix(q, r, wq) }));
  const both = await mk('alpha and omega', 0.95, 1); // near, and matches the words
  const nearOnly = await mk('nothing relevant', 0.9, 2);
  const textOnly = await mk('alpha alpha', 0.0, 3);
  for (let i = 0; i < 9; i++) await mk(`filler ${i}`, 0.3, 10 + i);
  const limit = 2;
  // The two rankings hybrid fuses, as the other modes return them.
  const vr = await search({ user_id: 'hyb', query: 'hybrid query', mode: 'vector', limit: 4 * limit });
  const tr = await postJson(`${w.url}/v1/memories/search`, { user_id: 'hyb', query: 'alpha', mode: 'text', limit: 4 * limit });
  assert.equal(vr.json.data.length, 8);
  // Hybrid embeds and full-text-searches the same query text.
  const h = await search({ user_id: 'hyb', query: 'alpha', limit: 12 });
  assert.equal(h.status, 200, h.text);
  assert.equal(h.json.mode, 'hybrid');
  assert.equal(h.json.degraded, undefined);
  const qa = await embed('alpha');
  assert.ok(qa.length === 1024);
  // Expected fusion computed here from the rankings of the same query.
  const v2 = await search({ user_id: 'hyb', query: 'alpha', mode: 'vector', limit: 48 });
  const t2 = await search({ user_id: 'hyb', query: 'alpha', mode: 'text', limit: 48 });
  const score = new Map();
  v2.json.data.forEach((m, i) => score.set(m.id, (score.get(m.id) || 0) + 1 / (60 + i + 1)));
  t2.json.data.forEach((m, i) => score.set(m.id, (score.get(m.id) || 0) + 1 / (60 + i + 1)));
  const got = h.json.data.map((m) => [m.id, m.score]);
  for (const [id, s] of got) assert.ok(Math.abs(s - score.get(id)) < 1e-9, `score of ${id}: ${s} vs ${score.get(id)}`);
  const sorted = [...got].sort((a, b) => b[1] - a[1]);
  assert.deepEqual(got.map((x) => x[0]), sorted.map((x) => x[0]));
  // Documents found by both rankings outrank those found by one.
  const inBoth = new Set(t2.json.data.map((m) => m.id));
  assert.ok(inBoth.has(got[0][0]));
  // With the query the vectors were built around: 'both' is first (rank 1
  // or 2 in each), then the near-only and text-only memories come in.
  const h2 = await search({ user_id: 'hyb', query: 'hybrid query', limit });
  assert.equal(h2.json.data.length, limit);
  assert.ok(vr.json.data.some((m) => m.id === both));
  assert.ok(tr.json.data.some((m) => m.id === both) && tr.json.data.some((m) => m.id === textOnly));
  assert.ok(!tr.json.data.some((m) => m.id === nearOnly));
});

test('filters: room_id, since/until (ISO 8601 and unix seconds) on message times', async () => {
  const q = await embed('filters');
  const jan = insertMemory({ user: 'filt', room: 'r1', vec: q, first: '2024-01-01T10:00:00Z', last: '2024-01-02T10:00:00Z' });
  const jun = insertMemory({ user: 'filt', room: 'r1', vec: q, first: '2024-06-01T10:00:00Z', last: '2024-06-02T10:00:00Z' });
  const junR2 = insertMemory({ user: 'filt', room: 'r2', vec: q, first: '2024-06-10T10:00:00Z', last: '2024-06-10T11:00:00Z' });
  const noTimes = insertMemory({ user: 'filt', room: 'r2', vec: q, created: '2025-03-01T00:00:00Z' });
  const s = async (extra) => {
    const r = await search({ user_id: 'filt', query: 'filters', mode: 'vector', limit: 100, ...extra });
    assert.equal(r.status, 200, r.text);
    return new Set(ids(r));
  };
  assert.deepEqual(await s({}), new Set([jan, jun, junR2, noTimes]));
  assert.deepEqual(await s({ room_id: 'r1' }), new Set([jan, jun]));
  assert.deepEqual(await s({ room_id: 'nope' }), new Set());
  assert.deepEqual(await s({ since: '2024-05-01T00:00:00Z' }), new Set([jun, junR2, noTimes]));
  assert.deepEqual(await s({ since: '2024-05-01' }), new Set([jun, junR2, noTimes]));
  assert.deepEqual(await s({ until: 1704240000 }), new Set([jan])); // 2024-01-03
  assert.deepEqual(await s({ until: '1704240000' }), new Set([jan]));
  assert.deepEqual(await s({ since: '2024-06-02T11:00:00+02:00', until: '2024-06-05T00:00:00Z' }), new Set([jun]));
  assert.deepEqual(await s({ since: '2024-06-01T00:00:00Z', until: '2024-06-30T00:00:00Z', room_id: 'r2' }), new Set([junR2]));
  // The same filters in text and hybrid modes.
  svc.sql(`UPDATE memories SET summary = 'filters apply' WHERE user_id = 'filt'`);
  for (const mode of ['text', 'hybrid']) {
    const r = await search({ user_id: 'filt', query: 'filters', mode, room_id: 'r1', since: '2024-05-01' });
    assert.deepEqual(ids(r), [jun], mode);
  }
});

test('a filtered search returns limit rows when more exist (iterative HNSW scan, exact fallback)', async () => {
  const q = await embed('needle');
  // 3000 memories of other users sit exactly on the query; the user's own
  // 30 are far from it: without iterative scans the index would hand back
  // only other users' rows.
  svc.sql(`INSERT INTO memories (user_id, summary, embedding, summary_model, embedding_model, message_count, chunk_hash)
    SELECT 'crowd' || (g % 50), 'crowd', ${lit(q)}, 's', 'e', 1, 'crowd' || g FROM generate_series(1, 3000) g`);
  for (let i = 0; i < 30; i++) insertMemory({ user: 'needle', summary: `needle ${i}`, vec: await embed(`far ${i}`) });
  svc.sql('ANALYZE memories');
  for (const limit of [1, 10, 20, 30]) {
    const r = await search({ user_id: 'needle', query: 'needle', mode: 'vector', limit });
    assert.equal(r.json.data.length, limit, `limit ${limit}`);
    assert.ok(r.json.data.every((m) => m.user_id === 'needle'));
    const sc = r.json.data.map((m) => m.score);
    assert.deepEqual(sc, [...sc].sort((a, b) => b - a), 'nearest first');
  }
  const all = await search({ user_id: 'needle', query: 'needle', mode: 'vector', limit: 100 });
  assert.equal(all.json.data.length, 30);
  const h = await search({ user_id: 'needle', query: 'needle', limit: 25 });
  assert.equal(h.json.data.length, 25);
  assert.equal(svc.sql("SELECT count(*) FROM pg_indexes WHERE indexname = 'memories_embedding_hnsw' AND indexdef LIKE '%hnsw%vector_cosine_ops%'"), '1');
});

test('listing: newest first, cursor paging, room filter', async () => {
  const v = await embed('page');
  const made = [];
  const times = ['2025-01-01T00:00:01Z', '2025-01-01T00:00:02Z', '2025-01-01T00:00:03Z', '2025-01-01T00:00:03Z',
    '2025-01-01T00:00:03.5Z', '2025-01-01T00:00:04Z', '2025-01-01T00:00:05Z'];
  for (const [i, t] of times.entries()) made.push({ id: insertMemory({ user: 'page', room: i % 2 ? 'odd' : 'even', vec: v, created: t }), t, i });
  const expected = [...made].sort((a, b) => (a.t === b.t ? b.id - a.id : Date.parse(b.t) - Date.parse(a.t))).map((m) => m.id);
  const seen = [];
  let cursor = null;
  for (let page = 0; page < 10; page++) {
    const r = await get(`/v1/memories?user_id=page&limit=2${cursor ? `&before=${encodeURIComponent(cursor)}` : ''}`);
    assert.equal(r.status, 200, r.text);
    assert.equal(r.json.object, 'list');
    seen.push(...ids(r));
    if (!r.json.has_more) {
      assert.equal(r.json.next_cursor, null);
      break;
    }
    assert.equal(r.json.data.length, 2);
    cursor = r.json.next_cursor;
  }
  assert.deepEqual(seen, expected);
  const odd = await get('/v1/memories?user_id=page&room_id=odd&limit=100');
  assert.deepEqual(ids(odd), expected.filter((id) => made.find((m) => m.id === id).i % 2));
  const def = await get('/v1/memories?user_id=page');
  assert.equal(def.json.data.length, 7);
  assertOpenAIError(await get('/v1/memories?user_id=page&before=garbage'), 400, { param: 'before' });
  assertOpenAIError(await get('/v1/memories?user_id=page&limit=0'), 400, { param: 'limit' });
  assertOpenAIError(await get('/v1/memories?user_id=page&limit=101'), 400, { param: 'limit' });
  assertOpenAIError(await get('/v1/memories?user_id=page&limit=1e2'), 400, { param: 'limit' });
  assertOpenAIError(await get('/v1/memories'), 400, { param: 'user_id' });
  assertOpenAIError(await get('/v1/memories?user_id=%01x'), 400, { param: 'user_id' });
});

test('get and delete one memory (and its chunk); unknown ids 404; bad ids 400', async () => {
  svc.redis('RPUSH', 'user:gd:messages', JSON.stringify({ role: 'user', content: 'I adopted a cat named Miso', message_id: 'gd1' }));
  assert.equal((await w.pass()).chunks_done, 1);
  const id = Number(svc.sql("SELECT id FROM memories WHERE user_id = 'gd'"));
  const r = await get(`/v1/memories/${id}`);
  assert.equal(r.status, 200, r.text);
  assert.equal(r.json.id, id);
  assert.equal(r.json.user_id, 'gd');
  assert.match(r.json.summary, /Miso/);
  assert.equal((await get(`/v1/memories/${id}?user_id=gd`)).status, 200);
  assertOpenAIError(await get(`/v1/memories/${id}?user_id=someone_else`), 404, { code: 'memory_not_found' });
  assertOpenAIError(await get(`/v1/memories/${id}?user_id=someone_else`, { method: 'DELETE' }), 404);
  assert.equal(svc.sql(`SELECT count(*) FROM memories WHERE id = ${id}`), '1');
  const d = await get(`/v1/memories/${id}`, { method: 'DELETE' });
  assert.equal(d.status, 200, d.text);
  assert.deepEqual(d.json, { id, object: 'memory.deleted', deleted: true });
  assert.equal(svc.sql("SELECT count(*) FROM memories WHERE user_id = 'gd'"), '0');
  assert.equal(svc.sql("SELECT count(*) FROM memory_chunks WHERE user_id = 'gd'"), '0');
  assertOpenAIError(await get(`/v1/memories/${id}`), 404);
  assertOpenAIError(await get(`/v1/memories/${id}`, { method: 'DELETE' }), 404);
  assertOpenAIError(await get('/v1/memories/999999999'), 404, { param: 'id' });
  for (const bad of ['abc', '0', '-1', '1.5', '99999999999999999999', '1%00', '%20']) {
    assertOpenAIError(await get(`/v1/memories/${bad}`), 400, { param: 'id' });
  }
});

test('per-user isolation: no search, list or get crosses users', async () => {
  const q = await embed('isolation');
  const a = [], b = [];
  for (let i = 0; i < 5; i++) {
    a.push(insertMemory({ user: 'iso_a', summary: 'shared secret words', vec: q, room: 'r' }));
    b.push(insertMemory({ user: 'iso_b', summary: 'shared secret words', vec: q, room: 'r' }));
  }
  for (const mode of ['vector', 'text', 'hybrid']) {
    for (const [user, mine] of [['iso_a', a], ['iso_b', b]]) {
      const r = await search({ user_id: user, query: 'shared secret words isolation', mode, limit: 100 });
      assert.equal(r.status, 200);
      assert.deepEqual(new Set(ids(r)), new Set(mine), `${mode} ${user}`);
    }
    // A pattern is not a pattern: no LIKE, no prefix match.
    for (const user of ['iso_%', 'iso_', '%', 'ISO_A']) {
      const r = await search({ user_id: user, query: 'shared secret words', mode, limit: 100 });
      assert.equal(r.json.data.length, 0, `${mode} ${user}`);
    }
  }
  const l = await get('/v1/memories?user_id=iso_a&limit=100');
  assert.deepEqual(new Set(ids(l)), new Set(a));
  assert.equal((await get(`/v1/memories/${b[0]}?user_id=iso_a`)).status, 404);
});

test('bad input: 400 naming the field', async () => {
  const cases = [
    [{ query: 'x' }, 'user_id'],
    [{ user_id: '', query: 'x' }, 'user_id'],
    [{ user_id: 5, query: 'x' }, 'user_id'],
    [{ user_id: 'a\u0001b', query: 'x' }, 'user_id'],
    [{ user_id: 'x'.repeat(257), query: 'x' }, 'user_id'],
    [{ user_id: 'u' }, 'query'],
    [{ user_id: 'u', query: '' }, 'query'],
    [{ user_id: 'u', query: '   ' }, 'query'],
    [{ user_id: 'u', query: ['x'] }, 'query'],
    [{ user_id: 'u', query: 'x'.repeat(4097) }, 'query'],
    [{ user_id: 'u', query: 'x', limit: 0 }, 'limit'],
    [{ user_id: 'u', query: 'x', limit: 101 }, 'limit'],
    [{ user_id: 'u', query: 'x', limit: '5' }, 'limit'],
    [{ user_id: 'u', query: 'x', limit: 2.5 }, 'limit'],
    [{ user_id: 'u', query: 'x', limit: -1 }, 'limit'],
    [{ user_id: 'u', query: 'x', room_id: 7 }, 'room_id'],
    [{ user_id: 'u', query: 'x', room_id: 'r'.repeat(257) }, 'room_id'],
    [{ user_id: 'u', query: 'x', since: 'yesterday' }, 'since'],
    [{ user_id: 'u', query: 'x', since: '2024-13-01' }, 'since'],
    [{ user_id: 'u', query: 'x', since: '2024-02-30T00:00:00Z' }, 'since'],
    [{ user_id: 'u', query: 'x', since: -5 }, 'since'],
    [{ user_id: 'u', query: 'x', since: true }, 'since'],
    [{ user_id: 'u', query: 'x', until: '2024-01-01T25:00:00Z' }, 'until'],
    [{ user_id: 'u', query: 'x', until: 1e300 }, 'until'],
    [{ user_id: 'u', query: 'x', since: '2024-02-01', until: '2024-01-01' }, 'until'],
    [{ user_id: 'u', query: 'x', mode: 'fuzzy' }, 'mode'],
    [{ user_id: 'u', query: 'x', mode: 1 }, 'mode'],
  ];
  for (const [body, param] of cases) {
    const r = await search(body);
    assert.equal(r.status, 400, `${JSON.stringify(body).slice(0, 200)}: ${r.text}`);
    assertOpenAIError(r, 400, { type: 'invalid_request_error', param });
  }
  assertOpenAIError(await search('{"user_id":'), 400);
  assertOpenAIError(await search({ user_id: 'u', query: 'a\u0000b' }), 400);
  assertOpenAIError(await search('[1,2]'), 400);
  assertOpenAIError(await search('{"user_id":"u","query":"x","limit":1e400}'), 400);
  // Bodies over the limit are refused before parsing.
  assert.equal((await search({ user_id: 'u', query: 'x', pad: 'p'.repeat(70 * 1024) })).status, 413);
  // Unknown paths and methods.
  assert.equal((await get('/v1/memories/search')).status, 400);
  assert.equal((await get('/v1/users/u')).status, 405);
  // The server still answers.
  assert.equal((await search({ user_id: 'u', query: 'x', mode: 'text' })).status, 200);
});

test('degraded: llm_proxy unreachable -> hybrid falls back to full text with degraded: "vector"; vector mode 503', async () => {
  const dead = `http://127.0.0.1:${await freePort()}`;
  const w2 = await startWorker(env({ LLM_PROXY_URL: dead }));
  try {
    const v = await embed('deg');
    const m = insertMemory({ user: 'deg', summary: 'remembers the lighthouse', vec: v });
    insertMemory({ user: 'deg', summary: 'unrelated', vec: v });
    const h = await search({ user_id: 'deg', query: 'lighthouse' }, {}, w2);
    assert.equal(h.status, 200, h.text);
    assert.equal(h.json.degraded, 'vector');
    assert.deepEqual(ids(h), [m]);
    assert.match(w2.logs.text, /event=search_degraded/);
    const t = await search({ user_id: 'deg', query: 'lighthouse', mode: 'text' }, {}, w2);
    assert.equal(t.json.degraded, undefined);
    assertOpenAIError(await search({ user_id: 'deg', query: 'lighthouse', mode: 'vector' }, {}, w2), 503,
      { code: 'embedding_unavailable' });
    // An embeddings reply of another size is no better: degraded too.
    const hx = await search({ user_id: 'deg', query: 'lighthouse' });
    assert.equal(hx.json.degraded, undefined);
  } finally {
    await w2.stop();
  }
});

test('auth: with MEMORY_WORKER_API_KEY every memories endpoint needs the Bearer key', async () => {
  const w3 = await startWorker(env({ MEMORY_WORKER_API_KEY: 'sesame' }));
  try {
    const body = { user_id: 'auth', query: 'x', mode: 'text' };
    assertOpenAIError(await search(body, {}, w3), 401);
    assertOpenAIError(await search(body, { authorization: 'Bearer wrong' }, w3), 401);
    assert.equal((await search(body, { authorization: 'Bearer sesame' }, w3)).status, 200);
    assert.equal((await get('/v1/memories?user_id=auth', {}, w3)).status, 401);
    assert.equal((await get('/v1/memories/1', { method: 'DELETE' }, w3)).status, 401);
    assert.equal((await get('/v1/users/auth', { method: 'DELETE' }, w3)).status, 401);
    assert.equal((await get('/v1/memories?user_id=auth', { headers: { authorization: 'Bearer sesame' } }, w3)).status, 200);
    assert.equal((await get('/v1/users/auth', { method: 'DELETE', headers: { authorization: 'Bearer sesame' } }, w3)).status, 200);
  } finally {
    await w3.stop();
  }
});

describe('dimension and migration', () => {
  test('EMBEDDING_DIM different from the stored vectors: config error, /ready 503, clear log', async () => {
    const s2 = useServices('worker_search_dim');
    const first = await startWorker(env({ DATABASE_URL: s2.databaseUrl, REDIS_URL: s2.redisUrl }));
    await first.stop();
    assert.equal(s2.sql("SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'memories'::regclass AND attname = 'embedding'"), 'vector(1024)');
    const w4 = await startWorker(env({ DATABASE_URL: s2.databaseUrl, REDIS_URL: s2.redisUrl, EMBEDDING_DIM: '8' }));
    try {
      assert.match(w4.logs.text, /level=error .*event=config_error msg="EMBEDDING_DIM=8 but memories.embedding is vector\(1024\)/);
      let ready;
      for (let i = 0; i < 200; i++) {
        ready = await get('/ready', {}, w4);
        if (ready.json.reason !== 'starting') break;
        await new Promise((r) => setTimeout(r, 25));
      }
      assert.equal(ready.status, 503);
      assert.match(ready.json.config_error, /EMBEDDING_DIM=8 but memories\.embedding is vector\(1024\)/);
      assertOpenAIError(await search({ user_id: 'u', query: 'x', mode: 'vector' }, {}, w4), 503, { code: 'config_error' });
      const h = await search({ user_id: 'u', query: 'x' }, {}, w4);
      assert.equal(h.status, 200);
      assert.equal(h.json.degraded, 'vector');
      // Nothing is processed while the dimension is wrong; claiming goes on.
      s2.redis('RPUSH', 'user:dim:messages', JSON.stringify({ role: 'user', content: 'kept for later' }));
      const p = await w4.pass();
      assert.equal(p.messages_claimed, 1);
      assert.equal(p.chunks_done, 0);
      assert.equal(s2.sql("SELECT state FROM memory_chunks WHERE user_id = 'dim'"), 'pending');
    } finally {
      await w4.stop();
    }
  });

  test('migration converts real[] embeddings to vector in place', async () => {
    const s3 = useServices('worker_search_mig');
    // The schema as migrations 1 and 2 left it, with a stored memory.
    s3.sql(`CREATE TABLE schema_migrations (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now());
      INSERT INTO schema_migrations (version) VALUES (1), (2);
      CREATE TABLE memory_chunks (id bigserial PRIMARY KEY, user_id text NOT NULL, room_id text, chunk_hash text NOT NULL,
        claim_id text NOT NULL, messages jsonb NOT NULL, message_count integer NOT NULL, first_message_at timestamptz,
        last_message_at timestamptz, state text NOT NULL DEFAULT 'pending', attempts integer NOT NULL DEFAULT 0,
        next_attempt_at timestamptz NOT NULL DEFAULT now(), lease_owner text, lease_expires_at timestamptz, last_error text,
        created_at timestamptz NOT NULL DEFAULT now(), updated_at timestamptz NOT NULL DEFAULT now(), UNIQUE (user_id, chunk_hash));
      CREATE TABLE memories (id bigserial PRIMARY KEY, user_id text NOT NULL, room_id text, summary text NOT NULL,
        embedding real[] NOT NULL, summary_model text NOT NULL, embedding_model text NOT NULL, message_count integer NOT NULL,
        first_message_at timestamptz, last_message_at timestamptz, chunk_hash text NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now(), UNIQUE (user_id, chunk_hash));
      CREATE INDEX memories_user_created ON memories (user_id, created_at);
      CREATE TABLE dead_messages (id bigserial PRIMARY KEY, user_id text NOT NULL, claim_id text NOT NULL, position integer NOT NULL,
        raw bytea NOT NULL, error text NOT NULL, created_at timestamptz NOT NULL DEFAULT now(), UNIQUE (user_id, claim_id, position));
      CREATE TABLE message_ids (user_id text NOT NULL, message_id text NOT NULL, chunk_hash text NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (user_id, message_id));`);
    const v = await embed('old memory');
    s3.sql(`INSERT INTO memories (user_id, summary, embedding, summary_model, embedding_model, message_count, chunk_hash)
      VALUES ('old', 'an old memory about sailing', '{${v.join(',')}}'::real[], 's', 'e', 1, 'h')`);
    const w5 = await startWorker(env({ DATABASE_URL: s3.databaseUrl, REDIS_URL: s3.redisUrl }));
    try {
      assert.match(w5.logs.text, /event=schema_migrated msg="version=3"/);
      assert.equal(s3.sql("SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'memories'::regclass AND attname = 'embedding'"), 'vector(1024)');
      const r = await search({ user_id: 'old', query: 'old memory', mode: 'vector' }, {}, w5);
      assert.equal(r.status, 200, r.text);
      assert.equal(r.json.data.length, 1);
      assert.ok(r.json.data[0].score > 0.999, `the converted vector is the same: ${r.json.data[0].score}`);
      const t = await search({ user_id: 'old', query: 'sailing', mode: 'text' }, {}, w5);
      assert.equal(t.json.data.length, 1);
    } finally {
      await w5.stop();
    }
  });
});
