// llm_proxy resource policy: the process-wide request memory budget
// (LLM_PROXY_MAX_BODY_MEMORY), /ready off the upstream slots, the operator's
// limits on pass-through options, and the refusal counter.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { assertOpenAIError, chatBody, dataOf, postJson, sseReader, startDouble, startProxy } from './harness.mjs';

let double;
before(async () => { double = await startDouble(); });
after(async () => { await double.stop(); });

async function metrics(p) {
  return (await fetch(`${p.url}/metrics`)).text();
}
function rejected(text, reason) {
  const m = text.match(new RegExp(`^llm_proxy_rejected_requests_total\\{reason="${reason}"\\} (\\d+)`, 'm'));
  return m ? Number(m[1]) : 0;
}

test('memory budget: a body that does not fit next to one in flight gets 503 overloaded with Retry-After', async () => {
  const p = await startProxy({ LLM_PROXY_MAX_BODY_MEMORY: '1536KiB' }, { upstream: double });
  try {
    const big = 'x'.repeat(400 * 1024);
    // Held upstream (gated): its translated body stays in memory.
    const res = await fetch(`${p.url}/v1/chat/completions`, {
      method: 'POST', headers: { 'content-type': 'application/json' },
      body: JSON.stringify(chatBody(`${big} @gate`, { stream: true, think: false })),
    });
    const held = sseReader(res);
    await held.next();
    const second = await postJson(`${p.url}/v1/chat/completions`, chatBody(`${big}${big}`));
    assertOpenAIError(second, 503, { code: 'overloaded' });
    assert.equal(second.headers.get('retry-after'), '1');
    assert.ok(rejected(await metrics(p), 'body_budget') >= 1);
    // Once the first is gone its memory is free again.
    for (;;) {
      await double.release();
      if (dataOf(await held.next()) === '[DONE]') break;
    }
    const third = await postJson(`${p.url}/v1/chat/completions`, chatBody(big));
    assert.equal(third.status, 200, third.text);
  } finally {
    await p.stop();
  }
});

test('memory budget: many tiny messages are translated one by one (fit), a value whose parsed form would not fit is refused unparsed', async () => {
  const p = await startProxy({ LLM_PROXY_MAX_BODY_MEMORY: '8MiB' }, { upstream: double });
  try {
    // 120,000 messages, 3.7 MB: parsed whole this would take ~60 MB.
    const messages = Array.from({ length: 120000 }, () => ({ role: 'user', content: 'x' }));
    messages.push({ role: 'user', content: 'last' });
    const ok = await postJson(`${p.url}/v1/chat/completions`, JSON.stringify({ model: 'qwen3:8b', messages }));
    assert.equal(ok.status, 200, ok.text);
    assert.equal(ok.json.choices[0].message.content, 'Echo: last');
    // One member that is a huge tree of tiny values: refused before parsing.
    const tools = Array.from({ length: 150000 }, () => ({}));
    const res = await postJson(`${p.url}/v1/chat/completions`, JSON.stringify({ model: 'qwen3:8b', tools, messages: [{ role: 'user', content: 'x' }] }));
    assertOpenAIError(res, 503, { code: 'overloaded' });
    assert.equal(res.headers.get('retry-after'), '1');
    // Embeddings (parsed whole) are admitted the same way.
    const emb = await postJson(`${p.url}/v1/embeddings`, JSON.stringify({ model: 'bge-m3', input: 'x', options: tools }));
    assertOpenAIError(emb, 503, { code: 'overloaded' });
    // A normal request right after is fine.
    assert.equal((await postJson(`${p.url}/v1/chat/completions`, chatBody('small'))).status, 200);
    const m = await metrics(p);
    assert.match(m, /^llm_proxy_body_memory_bytes \d+/m);
    assert.ok(rejected(m, 'body_budget') >= 2);
  } finally {
    await p.stop();
  }
});

// A raw connection; resolves sock.until(pred) once pred(text so far) holds or
// the connection closed.
async function rawConn(port) {
  const net = await import('node:net');
  const sock = net.connect(port, '127.0.0.1');
  sock.text = '';
  sock.gone = false;
  sock.on('error', () => {});
  sock.on('data', (d) => { sock.text += d.toString('latin1'); sock.emit('more'); });
  sock.on('close', () => { sock.gone = true; sock.emit('more'); });
  await new Promise((r) => sock.once('connect', r));
  sock.until = async (pred) => {
    while (!pred(sock.text) && !sock.gone) await new Promise((r) => sock.once('more', r));
    return sock.text;
  };
  return sock;
}

test('memory budget: a Content-Length upload that cannot fit is refused at once (503 overloaded, Retry-After), before its body', async () => {
  const p = await startProxy({ LLM_PROXY_MAX_BODY_MEMORY: '1MiB', MAX_BODY_BYTES: '8MiB' }, { upstream: double });
  try {
    const before = rejected(await metrics(p), 'body_budget');
    for (const expect of ['', 'Expect: 100-continue\r\n']) {
      const a = await rawConn(p.port);
      // Only the head: the answer must not wait for (or read) the body.
      a.write('POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n' +
        `${expect}Content-Length: 4500000\r\n\r\n`);
      const text = await a.until((t) => /\r\n\r\n[\s\S]*\}\n/.test(t));
      assert.match(text, /^HTTP\/1\.1 503 Service Unavailable\r\n/, text);
      assert.match(text, /\r\nRetry-After: 1\r\n/i);
      assert.match(text, /\r\nConnection: close\r\n/i);
      const body = JSON.parse(text.slice(text.indexOf('\r\n\r\n') + 4));
      assert.equal(body.error.code, 'overloaded');
      assert.equal(body.error.type, 'service_unavailable_error');
      a.destroy();
    }
    assert.equal(rejected(await metrics(p), 'body_budget'), before + 2);
    // What fits is admitted as before.
    const ok = await postJson(`${p.url}/v1/chat/completions`, chatBody('fits'));
    assert.equal(ok.status, 200, ok.text);
  } finally {
    await p.stop();
  }
});

test('memory budget: heads alone hold nothing (bodies count as they arrive, not as announced)', async () => {
  const p = await startProxy({ LLM_PROXY_MAX_BODY_MEMORY: '1MiB', MAX_BODY_BYTES: '8MiB' }, { upstream: double });
  const socks = [];
  try {
    // Three uploads announced (each fits alone) whose bodies never come:
    // reserving what they announce would lock the budget for the read
    // timeout for a few hundred bytes sent.
    for (let i = 0; i < 3; i++) {
      const a = await rawConn(p.port);
      socks.push(a);
      a.write('POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n' +
        'Expect: 100-continue\r\nContent-Length: 900000\r\n\r\n');
      assert.match(await a.until((t) => t.includes('\r\n\r\n')), /^HTTP\/1\.1 100 Continue\r\n/);
    }
    const res = await postJson(`${p.url}/v1/chat/completions`, chatBody('x'.repeat(200 * 1024)));
    assert.equal(res.status, 200, res.text);
  } finally {
    for (const a of socks) a.destroy();
    await p.stop();
  }
});

test('memory budget: a chunked upload counts while it arrives, is paused over the budget, its bytes released when it goes', async () => {
  const p = await startProxy({ LLM_PROXY_MAX_BODY_MEMORY: '1MiB', MAX_BODY_BYTES: '8MiB' }, { upstream: double });
  const bodyMemory = async () => Number((await metrics(p)).match(/^llm_proxy_body_memory_bytes (\d+)/m)[1]);
  try {
    // A slow chunked upload of 4 MB that never finishes, far beyond the
    // budget (its size is not announced, so it cannot be refused ahead).
    const a = await rawConn(p.port);
    a.write('POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n' +
      `Transfer-Encoding: chunked\r\n\r\n${(4500000).toString(16)}\r\n`);
    a.write(Buffer.alloc(4 * 1024 * 1024, 0x20));
    // Counted from its first bytes...
    let seen;
    while ((seen = await bodyMemory()) < 1024 * 1024);
    // ...and read no further than the budget (plus what one read brings).
    assert.ok(seen < 1024 * 1024 + 256 * 1024, `counted ${seen} bytes`);
    assert.ok((await bodyMemory()) < 1024 * 1024 + 256 * 1024);
    // Requests without a body are not held up.
    assert.equal((await fetch(`${p.url}/health`)).status, 200);
    // A request with a body meanwhile does not fit: 503 overloaded.
    assertOpenAIError(await postJson(`${p.url}/v1/chat/completions`, chatBody('during the upload')), 503,
      { code: 'overloaded' });
    // Once the upload's connection is gone (reset: a FIN could not get past
    // the unread data) its bytes are released.
    a.resetAndDestroy();
    while ((await bodyMemory()) > 512 * 1024);
    const res = await postJson(`${p.url}/v1/chat/completions`, chatBody('after the upload'));
    assert.equal(res.status, 200, res.text);
  } finally {
    await p.stop();
  }
});

test('memory budget: finished requests leave nothing counted (chat, stream, embeddings, upstream errors)', async () => {
  // Each request's JSON (parsed, translated, encoded) is released when it
  // ends; a leak in the accounting would grow the gauge until every request
  // is refused as overloaded.
  const p = await startProxy({}, { upstream: double });
  const bodyMemory = async () => Number((await metrics(p)).match(/^llm_proxy_body_memory_bytes (\d+)/m)[1]);
  const round = async () => {
    assert.equal((await postJson(`${p.url}/v1/chat/completions`, chatBody('hi', { think: false }))).status, 200);
    const s = await fetch(`${p.url}/v1/chat/completions`, {
      method: 'POST', headers: { 'content-type': 'application/json' },
      body: JSON.stringify(chatBody('hi @words=5', { stream: true, think: false })),
    });
    assert.match(await s.text(), /data: \[DONE\]/);
    assert.equal((await postJson(`${p.url}/v1/embeddings`, JSON.stringify({ model: 'bge-m3', input: 'x' }))).status, 200);
    assertOpenAIError(await postJson(`${p.url}/v1/chat/completions`, chatBody('@status=500')), 500);
  };
  try {
    await round(); // caches (models) filled
    const base = await bodyMemory();
    for (let i = 0; i < 50; i++) await round();
    assert.equal(await bodyMemory(), base);
  } finally {
    await p.stop();
  }
});

test('/ready never takes an upstream slot: answered while the only slot is busy and the queue is 0', async () => {
  const p = await startProxy({ LLM_PROXY_MAX_UPSTREAM: '1', LLM_PROXY_QUEUE_SIZE: '0' }, { upstream: double });
  try {
    const held = sseReader(await fetch(`${p.url}/v1/chat/completions`, {
      method: 'POST', headers: { 'content-type': 'application/json' },
      body: JSON.stringify(chatBody('hold @gate', { stream: true, think: false })),
    }));
    await held.next();
    const r = await fetch(`${p.url}/ready`);
    assert.equal(r.status, 200, await r.text());
    await held.cancel();
  } finally {
    await p.stop();
  }
});

test('/ready is one cached probe for the whole process: 300 concurrent /ready on two workers make one upstream call in total', async () => {
  const p = await startProxy({ LLM_PROXY_WORKERS: '2', READY_CACHE_TTL: '60' }, { upstream: double });
  try {
    const before = (await double.stats()).requests['/api/version'] || 0;
    const all = await Promise.all(Array.from({ length: 300 }, () => fetch(`${p.url}/ready`).then((r) => r.status)));
    assert.deepEqual([...new Set(all)], [200]);
    const calls = (await double.stats()).requests['/api/version'] - before;
    assert.equal(calls, 1, `${calls} probes for 2 workers`);
  } finally {
    await p.stop();
  }
});

function readyWaiting(text) {
  const m = text.match(/^llm_proxy_ready_waiting (\d+)/m);
  return m ? Number(m[1]) : 0;
}

test('two workers, no result yet: every waiting /ready, on either worker, is answered as soon as the one round answers', async () => {
  const dbl = await startDouble();
  // GET /api/version is held until the mode changes.
  await fetch(`${dbl.url}/_double/fault?mode=hold`, { method: 'POST' });
  const p = await startProxy({ LLM_PROXY_WORKERS: '2', CONNECT_TIMEOUT: '30', READY_WAIT_MAX: '60' }, { upstream: dbl });
  try {
    // 40 connections: the kernel spreads them over both workers' sockets.
    const n = 40;
    let answered = 0;
    const all = Promise.all(Array.from({ length: n }, () => fetch(`${p.url}/ready`).then(async (r) => {
      answered++;
      return `${r.status} ${(await r.json()).status}`;
    })));
    // Every /ready is waiting and the round has started (or, wrongly, some
    // were answered before the probe).
    while (!answered && (readyWaiting(await metrics(p)) < n || !(await dbl.stats()).requests['/api/version']));
    assert.equal(answered, 0, 'no /ready answered before the probe');
    assert.equal((await dbl.stats()).requests['/api/version'], 1, 'one probe for both workers');
    await fetch(`${dbl.url}/_double/fault?mode=none`, { method: 'POST' }); // the probe answers
    assert.deepEqual([...new Set(await all)], ['200 ready']);
    assert.equal((await dbl.stats()).requests['/api/version'], 1, 'still one probe');
  } finally {
    await p.stop();
    await dbl.stop();
  }
});

test('/ready while a probe hangs answers from the last result at once, not after the probe', async () => {
  const dbl = await startDouble();
  const p = await startProxy({ READY_CACHE_TTL: '0', CONNECT_TIMEOUT: '30' }, { upstream: dbl });
  try {
    const first = await fetch(`${p.url}/ready`);
    assert.equal(first.status, 200);
    const probes = (await dbl.stats()).requests['/api/version'];
    await fetch(`${dbl.url}/_double/fault?mode=hang`, { method: 'POST' });
    // Expired (TTL 0): this starts a probe that hangs (up to 31 s); the
    // answer is the previous result meanwhile.
    const res = await fetch(`${p.url}/ready`);
    assert.equal(res.status, 200);
    assert.equal((await res.json()).status, 'ready');
    assert.equal((await dbl.stats()).requests['/api/version'], probes + 1, 'one probe in flight');
    // Still one probe in flight, however many ask.
    const all = await Promise.all(Array.from({ length: 20 }, () => fetch(`${p.url}/ready`).then((r) => r.status)));
    assert.deepEqual([...new Set(all)], [200]);
    assert.equal((await dbl.stats()).requests['/api/version'], probes + 1);
  } finally {
    await p.stop();
    await dbl.stop();
  }
});

test('/ready before any probe result: a short wait then 503 "probe in progress"; on SIGTERM waiters get 503 at once', async () => {
  const dbl = await startDouble();
  await fetch(`${dbl.url}/_double/fault?mode=hang`, { method: 'POST' });
  const p = await startProxy({ CONNECT_TIMEOUT: '30' }, { upstream: dbl });
  try {
    const res = await fetch(`${p.url}/ready`);
    assert.equal(res.status, 503);
    assert.deepEqual(await res.json(), { status: 'not_ready', reason: 'upstream probe still in progress' });
  } finally {
    await p.stop();
  }
  // Draining: a waiting /ready is answered, not dropped with the connection.
  // Two workers, waiters on both (20 connections), the round on one of them.
  const q = await startProxy({ LLM_PROXY_WORKERS: '2', CONNECT_TIMEOUT: '30', READY_WAIT_MAX: '60' }, { upstream: dbl });
  const probes = (await dbl.stats()).requests['/api/version'] || 0;
  let answered = 0;
  const waiting = Array.from({ length: 20 }, () => fetch(`${q.url}/ready`).then(async (r) => {
    answered++;
    return `${r.status} ${(await r.json()).reason}`;
  }));
  try {
    while (!answered && (((await dbl.stats()).requests['/api/version'] || 0) === probes || readyWaiting(await metrics(q)) < 20));
    assert.equal(answered, 0, 'no /ready answered before SIGTERM');
    const exit = q.exited();
    q.proc.kill('SIGTERM');
    assert.deepEqual([...new Set(await Promise.all(waiting))], ['503 shutting down']);
    assert.equal(await exit, 0);
  } finally {
    await q.stop();
    await dbl.stop();
  }
});

test('an unauthenticated flood of /health, /ready, /metrics causes no 429/503 for authenticated API calls', async () => {
  const p = await startProxy({
    LLM_PROXY_API_KEY: 'k', LLM_PROXY_MAX_UPSTREAM: '1', LLM_PROXY_QUEUE_SIZE: '0', READY_CACHE_TTL: '0',
  }, { upstream: double });
  try {
    let stop = false;
    const flood = async (path) => {
      while (!stop) await (await fetch(`${p.url}${path}`)).arrayBuffer();
    };
    const flooders = [];
    for (let i = 0; i < 12; i++) flooders.push(flood(['/ready', '/health', '/metrics'][i % 3]));
    const statuses = [];
    for (let i = 0; i < 30; i++) {
      const res = await postJson(`${p.url}/v1/chat/completions`, chatBody(`c${i}`), { authorization: 'Bearer k' });
      statuses.push(res.status);
    }
    stop = true;
    await Promise.all(flooders);
    assert.deepEqual([...new Set(statuses)], [200]);
  } finally {
    await p.stop();
  }
});

test('operator policy: options keys, num_ctx cap, keep_alive clamp; refusals counted', async () => {
  const p = await startProxy({ LLM_PROXY_MAX_NUM_CTX: '16384', LLM_PROXY_KEEP_ALIVE_MAX: '10m', LLM_PROXY_API_KEY: 'k' },
    { upstream: double });
  const auth = { authorization: 'Bearer k' };
  try {
    const gpu = await postJson(`${p.url}/v1/chat/completions`, chatBody('x', { options: { num_gpu: 99 } }), auth);
    assertOpenAIError(gpu, 400, { code: 'invalid_value', param: 'options.num_gpu' });
    const ctx = await postJson(`${p.url}/v1/chat/completions`, chatBody('x', { options: { num_ctx: 10000000 } }), auth);
    assertOpenAIError(ctx, 400, { code: 'invalid_value', param: 'options.num_ctx' });
    const emb = await postJson(`${p.url}/v1/embeddings`, { model: 'bge-m3', input: 'x', options: { use_mmap: false } }, auth);
    assertOpenAIError(emb, 400, { param: 'options.use_mmap' });
    const ok = await postJson(`${p.url}/v1/chat/completions`,
      chatBody('policy ok', { options: { num_ctx: 16384, top_k: 20 }, keep_alive: -1 }), auth);
    assert.equal(ok.status, 200, ok.text);
    const sent = (await double.last('/api/chat')).body;
    assert.equal(sent.options.num_ctx, 16384);
    assert.equal(sent.keep_alive, 600);
    // Every refusal is counted by reason.
    assertOpenAIError(await postJson(`${p.url}/v1/chat/completions`, chatBody('x')), 401);
    const foreign = await postJson(`${p.url}/v1/chat/completions`, chatBody('x'), { ...auth, origin: 'https://evil.example' });
    assertOpenAIError(foreign, 403, { code: 'origin_not_allowed' });
    const m = await metrics(p);
    assert.equal(rejected(m, 'limits'), 3);
    assert.equal(rejected(m, 'auth'), 1);
    assert.equal(rejected(m, 'origin'), 1);
  } finally {
    await p.stop();
  }
});

test('upstream embeddings outside float range are a 502 upstream_error, not undefined behaviour', async () => {
  const p = await startProxy({}, { upstream: double });
  try {
    const res = await postJson(`${p.url}/v1/embeddings`, { model: 'bge-m3', input: ['@float-overflow', 'b'] });
    assertOpenAIError(res, 502, { code: 'upstream_error' });
  } finally {
    await p.stop();
  }
});

test('/ready with an upstream version longer than kept, cut inside a UTF-8 sequence, still answers JSON', async () => {
  // 40 two-byte characters: the 63 bytes kept end half-way through one.
  const dbl = await startDouble(['--version-string', 'é'.repeat(40)]);
  const p = await startProxy({}, { upstream: dbl });
  try {
    const res = await fetch(`${p.url}/ready`);
    assert.equal(res.status, 200);
    const body = await res.json();
    assert.equal(body.status, 'ready');
    assert.equal(body.ollama_version, 'é'.repeat(31));
  } finally {
    await p.stop();
    await dbl.stop();
  }
});
