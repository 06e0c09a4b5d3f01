// /v1/responses on the wire: SSE event lines, keepalives, cancellation on
// disconnect, the memory budget and options policy, metrics by route.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { assertOpenAIError, postJson, sseReader, startDouble, startProxy } from './harness.mjs';

let double, proxy;
before(async () => {
  double = await startDouble();
  proxy = await startProxy({ SSE_KEEPALIVE_INTERVAL: '0.1', LLM_PROXY_MAX_BODY_MEMORY: '4MiB' }, { upstream: double });
});
after(async () => {
  await proxy.stop();
  await double.stop();
});

const body = (input, extra = {}) => ({ model: 'qwen3:8b', input, reasoning: { effort: 'none' }, ...extra });
const open = (b, signal) => fetch(`${proxy.url}/v1/responses`, {
  method: 'POST', signal, headers: { 'content-type': 'application/json' },
  body: JSON.stringify({ stream: true, ...b }),
});

test('SSE: event lines match the data type; keepalive comments while silent', async () => {
  const sse = sseReader(await open(body('a b @gate')));
  const types = [];
  let keepalive = false;
  for (;;) {
    const ev = await sse.next();
    if (ev === null) break;
    if (ev === ': keepalive') {
      keepalive = true;
      await double.release();
      continue;
    }
    const [e, d] = ev.split('\n');
    const data = JSON.parse(d.slice(6));
    assert.equal(e.slice(7), data.type);
    types.push(data.type);
  }
  assert.ok(keepalive);
  assert.equal(types[0], 'response.created');
  assert.equal(types.at(-1), 'response.completed');
});

test('cancellation: a client leaving mid-stream aborts the upstream transfer', async () => {
  const before = (await double.stats()).disconnects;
  const ac = new AbortController();
  const sse = sseReader(await open(body('a b c @gate'), ac.signal));
  await sse.next();
  ac.abort();
  assert.equal((await double.waitDisconnects(before + 1)).status, 200);
});

test('limits and policy: 503 overloaded, options refused, input required, bad items', async () => {
  const tools = Array.from({ length: 150000 }, () => ({}));
  const big = await postJson(`${proxy.url}/v1/responses`, JSON.stringify({ ...body('x'), tools }));
  assertOpenAIError(big, 503, { code: 'overloaded' });
  assertOpenAIError(await postJson(`${proxy.url}/v1/responses`, body('x', { options: { num_gpu: 99 } })), 400,
    { param: 'options.num_gpu' });
  assertOpenAIError(await postJson(`${proxy.url}/v1/responses`, { model: 'qwen3:8b' }), 400, { param: 'input' });
  assertOpenAIError(await postJson(`${proxy.url}/v1/responses`, body([{ type: 'item_reference', id: 'msg_1' }])), 400,
    { param: 'input[0]' });
  assertOpenAIError(await postJson(`${proxy.url}/v1/responses`, body('x', { text: { format: { type: 'xml' } } })), 400,
    { param: 'text.format.type' });
});

test('metrics carry the responses route label', async () => {
  assert.equal((await postJson(`${proxy.url}/v1/responses`, body('count me'))).status, 200);
  const text = await (await fetch(`${proxy.url}/metrics`)).text();
  assert.match(text, /llm_proxy_http_requests_total\{route="responses",method="POST",status="200"\} [1-9]/);
  assert.match(text, /llm_proxy_time_to_first_token_seconds_count\{route="responses"\} [1-9]/);
});
