// /v1/messages on the wire: SSE event names, pings while the upstream is
// silent, cancellation on disconnect, the memory budget and the operator's
// options policy answered in Anthropic's error shape, metrics by route.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { postJson, sseReader, startDouble, startProxy } from './harness.mjs';

let double, proxy;
before(async () => {
  double = await startDouble();
  proxy = await startProxy({ SSE_KEEPALIVE_INTERVAL: '0.1', LLM_PROXY_MAX_BODY_MEMORY: '4MiB' }, { upstream: double });
});
after(async () => {
  await proxy.stop();
  await double.stop();
});

const body = (content, extra = {}) => ({ model: 'qwen3:8b', max_tokens: 100, messages: [{ role: 'user', content }], ...extra });
const open = (b, signal) => fetch(`${proxy.url}/v1/messages`, {
  method: 'POST', signal, headers: { 'content-type': 'application/json', 'anthropic-version': '2023-06-01' },
  body: JSON.stringify({ stream: true, ...b }),
});
const parse = (ev) => {
  const [eventLine, dataLine] = ev.split('\n');
  return { event: eventLine.slice(7), data: JSON.parse(dataLine.slice(6)) };
};

test('SSE: event lines name each data type; ping while the upstream is silent', async () => {
  const res = await open(body('a b @gate'));
  assert.equal(res.status, 200);
  assert.match(res.headers.get('content-type'), /^text\/event-stream/);
  const sse = sseReader(res);
  const first = parse(await sse.next());
  assert.equal(first.event, 'message_start');
  assert.equal(first.data.message.role, 'assistant');
  let ev;
  while ((ev = parse(await sse.next())).event !== 'ping') assert.notEqual(ev.event, 'message_stop');
  assert.deepEqual(ev.data, { type: 'ping' });
  const seen = [];
  for (;;) {
    await double.release();
    const e = await sse.next();
    if (e === null) break;
    const p = parse(e);
    assert.equal(p.event, p.data.type);
    seen.push(p.event);
    if (p.event === 'message_stop') break;
  }
  assert.ok(seen.includes('message_delta'));
});

test('cancellation: a client leaving mid-stream aborts the upstream transfer', async () => {
  const before = (await double.stats()).disconnects;
  const ac = new AbortController();
  const sse = sseReader(await open(body('a b c @gate'), ac.signal));
  await sse.next();
  ac.abort();
  assert.equal((await double.waitDisconnects(before + 1)).status, 200);
});

test('cancellation: a client leaving a non-stream request aborts the upstream request', async () => {
  const before = (await double.stats()).disconnects;
  const ac = new AbortController();
  const pending = fetch(`${proxy.url}/v1/messages`, {
    method: 'POST', signal: ac.signal, headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body('@hang messages-nonstream')),
  }).catch((e) => e);
  while ((await double.last('/api/chat')).body.messages.at(-1).content !== '@hang messages-nonstream');
  ac.abort();
  await pending;
  assert.equal((await double.waitDisconnects(before + 1)).status, 200);
});

test('limits and policy answer in Anthropic error shape', async () => {
  const tools = Array.from({ length: 150000 }, () => ({}));
  const big = await postJson(`${proxy.url}/v1/messages`, JSON.stringify({ ...body('x'), tools }));
  assert.equal(big.status, 503);
  assert.equal(big.headers.get('retry-after'), '1');
  assert.deepEqual(big.json, { type: 'error', error: { type: 'overloaded_error', message: big.json.error.message } });
  const opt = await postJson(`${proxy.url}/v1/messages`, body('x', { options: { num_gpu: 99 } }));
  assert.equal(opt.status, 400);
  assert.equal(opt.json.error.type, 'invalid_request_error');
  assert.match(opt.json.error.message, /num_gpu/);
  const role = await postJson(`${proxy.url}/v1/messages`, { model: 'qwen3:8b', max_tokens: 5, messages: [{ role: 'system', content: 'x' }] });
  assert.equal(role.status, 400);
  assert.equal(role.json.type, 'error');
});

test('metrics carry the messages route label', async () => {
  const text = await (await fetch(`${proxy.url}/metrics`)).text();
  assert.match(text, /llm_proxy_http_requests_total\{route="messages",method="POST",status="200"\} [1-9]/);
  assert.match(text, /llm_proxy_time_to_first_token_seconds_count\{route="messages"\} [1-9]/);
});
