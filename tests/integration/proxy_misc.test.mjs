// llm_proxy: health/readiness, embeddings, models, auth, limits, routing,
// configuration and graceful shutdown.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { BIN_DIR, assertOpenAIError, chatBody, dataOf, postJson, sseReader, startDouble, startProxy } from './harness.mjs';

let double, proxy;
before(async () => {
  double = await startDouble();
  proxy = await startProxy({ MAX_BODY_BYTES: '64KiB' }, { upstream: double });
});
after(async () => {
  await proxy.stop();
  await double.stop();
});

describe('health and readiness', () => {
  test('/health is 200; /ready is 200 when Ollama answers /api/version', async () => {
    const h = await fetch(`${proxy.url}/health`);
    assert.equal(h.status, 200);
    const r = await fetch(`${proxy.url}/ready`);
    assert.equal(r.status, 200);
    assert.equal((await r.json()).ollama_version, '0.12.6');
  });

  test('/ready is 503 when Ollama is unreachable; /health stays 200', async () => {
    const p = await startProxy({ CONNECT_TIMEOUT: '0.5' }, { upstream: { url: 'http://127.0.0.1:1' } });
    try {
      const r = await fetch(`${p.url}/ready`);
      assert.equal(r.status, 503);
      assert.equal((await r.json()).status, 'not_ready');
      assert.equal((await fetch(`${p.url}/health`)).status, 200);
    } finally {
      await p.stop();
    }
  });
});

describe('embeddings', () => {
  const url = () => `${proxy.url}/v1/embeddings`;

  test('array input in one upstream call, float vectors of 1024 dims, usage', async () => {
    const before = (await double.stats()).requests['/api/embed'] || 0;
    const res = await postJson(url(), { model: 'bge-m3', input: ['first text', 'second text', 'third'] });
    assert.equal(res.status, 200, res.text);
    assert.equal(res.json.object, 'list');
    assert.equal(res.json.model, 'bge-m3');
    assert.equal(res.json.data.length, 3);
    res.json.data.forEach((d, i) => {
      assert.equal(d.object, 'embedding');
      assert.equal(d.index, i);
      assert.equal(d.embedding.length, 1024);
      const norm = Math.sqrt(d.embedding.reduce((s, x) => s + x * x, 0));
      assert.ok(Math.abs(norm - 1) < 1e-3);
    });
    assert.ok(res.json.usage.prompt_tokens > 0);
    assert.equal(res.json.usage.total_tokens, res.json.usage.prompt_tokens);
    assert.equal((await double.stats()).requests['/api/embed'], before + 1);
    assert.deepEqual((await double.last('/api/embed')).body.input, ['first text', 'second text', 'third']);
  });

  test('string input, dimensions, base64 encoding decodes to the same floats', async () => {
    const f = await postJson(url(), { model: 'bge-m3', input: 'hello', dimensions: 8 });
    assert.equal(f.json.data[0].embedding.length, 8);
    assert.equal((await double.last('/api/embed')).body.dimensions, 8);
    const b = await postJson(url(), { model: 'bge-m3', input: 'hello', dimensions: 8, encoding_format: 'base64' });
    const raw = Buffer.from(b.json.data[0].embedding, 'base64');
    const floats = Array.from(new Float32Array(raw.buffer, raw.byteOffset, raw.length / 4));
    assert.equal(floats.length, 8);
    floats.forEach((x, i) => assert.ok(Math.abs(x - f.json.data[0].embedding[i]) < 1e-6));
  });

  test('errors: unknown model 404, bad input 400, bad encoding_format 400, upstream 5xx', async () => {
    assertOpenAIError(await postJson(url(), { model: 'nosuch', input: 'x' }), 404, { code: 'model_not_found' });
    assertOpenAIError(await postJson(url(), { model: 'bge-m3', input: [] }), 400, { param: 'input' });
    assertOpenAIError(await postJson(url(), { model: 'bge-m3', input: [[1, 2]] }), 400, { param: 'input[0]' });
    assertOpenAIError(await postJson(url(), { model: 'bge-m3', input: 'x', encoding_format: 'hex' }), 400, { param: 'encoding_format' });
    assertOpenAIError(await postJson(url(), { model: 'bge-m3' }), 400, { param: 'input' });
    const e = assertOpenAIError(await postJson(url(), { model: 'bge-m3', input: '@status=500' }), 500);
    assert.match(e.message, /injected failure/);
  });
});

describe('models', () => {
  test('list from /api/tags', async () => {
    const res = await fetch(`${proxy.url}/v1/models`);
    assert.equal(res.status, 200);
    const b = await res.json();
    assert.equal(b.object, 'list');
    const ids = b.data.map((m) => m.id);
    assert.ok(ids.includes('qwen3:32b') && ids.includes('bge-m3:latest'));
    for (const m of b.data) {
      assert.equal(m.object, 'model');
      assert.equal(m.owned_by, 'library');
      assert.ok(Number.isInteger(m.created) && m.created > 1700000000);
    }
  });

  test('retrieve by id (bare name matches :latest); unknown is 404', async () => {
    const r = await fetch(`${proxy.url}/v1/models/bge-m3`);
    assert.equal(r.status, 200);
    assert.equal((await r.json()).id, 'bge-m3');
    const q = await fetch(`${proxy.url}/v1/models/qwen3:8b`);
    assert.equal((await q.json()).id, 'qwen3:8b');
    const n = await fetch(`${proxy.url}/v1/models/nosuch`);
    assertOpenAIError({ status: n.status, headers: n.headers, json: await n.json() }, 404, { code: 'model_not_found' });
  });
});

describe('routing and limits', () => {
  test('unknown route 404, wrong method 405 with Allow', async () => {
    const r = await postJson(`${proxy.url}/v1/completions`, {});
    assertOpenAIError(r, 404, { code: 'unknown_url' });
    const g = await fetch(`${proxy.url}/v1/chat/completions`);
    assertOpenAIError({ status: g.status, headers: g.headers, json: await g.json() }, 405);
    assert.equal(g.headers.get('allow'), 'POST');
  });

  test('body over MAX_BODY_BYTES → 413 in the OpenAI envelope', async () => {
    const big = JSON.stringify(chatBody('x'.repeat(70 * 1024)));
    assertOpenAIError(await postJson(`${proxy.url}/v1/chat/completions`, big), 413, { code: 'request_too_large' });
    // The server is still fine afterwards.
    assert.equal((await postJson(`${proxy.url}/v1/chat/completions`, chatBody('x'))).status, 200);
  });
});

describe('API key', () => {
  let keyed;
  before(async () => { keyed = await startProxy({ LLM_PROXY_API_KEY: 'sk-test-123' }, { upstream: double }); });
  after(async () => { await keyed.stop(); });

  test('/v1/* needs the Bearer key; health does not; the key is never logged', async () => {
    assertOpenAIError(await postJson(`${keyed.url}/v1/chat/completions`, chatBody('x')), 401, { code: null });
    assertOpenAIError(await postJson(`${keyed.url}/v1/chat/completions`, chatBody('x'), { authorization: 'Bearer wrong' }), 401, { code: 'invalid_api_key' });
    const ok = await postJson(`${keyed.url}/v1/chat/completions`, chatBody('x'), { authorization: 'Bearer sk-test-123' });
    assert.equal(ok.status, 200);
    assert.equal((await double.last('/api/chat')).authorization, null);
    const m = await fetch(`${keyed.url}/v1/models`, { headers: { authorization: 'Bearer sk-test-123' } });
    assert.equal(m.status, 200);
    assert.equal((await fetch(`${keyed.url}/health`)).status, 200);
    assert.ok(!keyed.logs.text.includes('sk-test-123'));
  });
});

describe('process', () => {
  const bin = path.join(BIN_DIR, 'llm_proxy');

  test('--help documents every setting; --version prints the version', () => {
    const h = spawnSync(bin, ['--help'], { encoding: 'utf8' });
    assert.equal(h.status, 0);
    for (const v of ['LLM_PROXY_HOST', 'LLM_PROXY_PORT', 'OLLAMA_URL_INTERNAL', 'CHAT_TIMEOUT',
      'EMBEDDINGS_TIMEOUT', 'CONNECT_TIMEOUT', 'MAX_BODY_BYTES', 'LLM_PROXY_API_KEY', 'LOG_LEVEL',
      'LLM_PROXY_MAX_BODY_MEMORY', 'READY_CACHE_TTL', 'LLM_PROXY_ALLOWED_OPTIONS', 'LLM_PROXY_MAX_NUM_CTX', 'LLM_PROXY_KEEP_ALIVE_MAX',
      'LOG_FORMAT', 'SHUTDOWN_GRACE', 'SSE_KEEPALIVE_INTERVAL']) assert.match(h.stdout, new RegExp(v));
    const v = spawnSync(bin, ['--version'], { encoding: 'utf8' });
    assert.match(v.stdout, /^llm_proxy \d+\.\d+\.\d+/);
  });

  test('a bad setting is a startup error naming the variable (exit 2)', () => {
    const r = spawnSync(bin, [], { encoding: 'utf8', env: { CHAT_TIMEOUT: 'soon' } });
    assert.equal(r.status, 2);
    assert.match(r.stderr, /CHAT_TIMEOUT/);
  });

  test('JSON logs carry the request id and no message content', async () => {
    const p = await startProxy({ LOG_FORMAT: 'json' }, { upstream: double });
    try {
      await postJson(`${p.url}/v1/chat/completions`, chatBody('secret-words-here'), { 'x-request-id': 'log-check-1' });
    } finally {
      await p.stop();
    }
    const lines = p.logs.text.trim().split('\n').map((l) => JSON.parse(l));
    const access = lines.find((l) => l.event === 'http_request' && l.req_id === 'log-check-1');
    assert.ok(access, p.logs.text);
    assert.equal(access.status, 200);
    assert.equal(access.route, 'chat_completions');
    assert.ok(!p.logs.text.includes('secret-words-here'));
  });

  test('SIGTERM: ready 503 and new work refused while in-flight streams finish, then exit 0', async () => {
    const p = await startProxy({ SHUTDOWN_GRACE: '20' }, { upstream: double });
    const res = await fetch(`${p.url}/v1/chat/completions`, {
      method: 'POST', headers: { 'content-type': 'application/json' },
      body: JSON.stringify(chatBody('a b @gate', { stream: true, think: false })),
    });
    const sse = sseReader(res);
    assert.equal(dataOf(await sse.next()).choices[0].delta.content, 'Echo:');
    const exited = p.exited();
    p.proc.kill('SIGTERM');
    // Wait for the drain to begin (it is logged), then probe.
    while (!p.logs.text.includes('event=shutdown')) await new Promise((r) => p.proc.stderr.once('data', r));
    assert.equal((await fetch(`${p.url}/ready`)).status, 503);
    assertOpenAIError(await postJson(`${p.url}/v1/chat/completions`, chatBody('x')), 503, { code: 'shutting_down' });
    const rest = [];
    for (;;) {
      await double.release();
      const ev = await sse.next();
      if (ev === null) break;
      rest.push(dataOf(ev));
      if (rest.at(-1) === '[DONE]') break;
    }
    assert.equal(rest.at(-1), '[DONE]', 'the in-flight stream must complete');
    assert.equal(await exited, 0);
  });
});
