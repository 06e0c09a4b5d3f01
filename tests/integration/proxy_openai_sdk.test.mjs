// The official `openai` npm SDK, unmodified, against llm_proxy: chat, stream,
// embeddings with the SDK's defaults (base64 on the wire), models, errors.
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import { after, before, test } from 'node:test';
import { startDouble, startProxy } from './harness.mjs';

let double, proxy, client;
before(async () => {
  double = await startDouble();
  proxy = await startProxy({ LLM_PROXY_API_KEY: 'sk-sdk-test' }, { upstream: double });
  client = new OpenAI({ apiKey: 'sk-sdk-test', baseURL: `${proxy.url}/v1`, maxRetries: 0 });
});
after(async () => {
  await proxy.stop();
  await double.stop();
});

test('chat.completions.create', async () => {
  const c = await client.chat.completions.create({
    model: 'qwen3:8b', messages: [{ role: 'user', content: 'hello sdk' }], max_completion_tokens: 50,
  });
  assert.equal(c.object, 'chat.completion');
  assert.equal(c.choices[0].message.content, 'Echo: hello sdk');
  assert.equal(c.choices[0].finish_reason, 'stop');
  assert.ok(c.usage.total_tokens > 0);
  assert.ok(c._request_id === undefined || typeof c._request_id === 'string');
});

test('streaming with include_usage', async () => {
  const stream = await client.chat.completions.create({
    model: 'qwen3:8b', messages: [{ role: 'user', content: 'stream me' }], stream: true,
    stream_options: { include_usage: true }, reasoning_effort: 'none',
  });
  let text = '';
  let usage = null;
  let finish = null;
  for await (const chunk of stream) {
    if (chunk.choices[0]) {
      text += chunk.choices[0].delta.content || '';
      finish = chunk.choices[0].finish_reason || finish;
    }
    if (chunk.usage) usage = chunk.usage;
  }
  assert.equal(text, 'Echo: stream me');
  assert.equal(finish, 'stop');
  assert.ok(usage.total_tokens > 0);
});

test('a mid-stream upstream failure surfaces as an SDK error', async () => {
  const stream = await client.chat.completions.create({
    model: 'qwen3:8b', messages: [{ role: 'user', content: '@error-mid a b c' }], stream: true, think: false,
  });
  await assert.rejects(async () => {
    for await (const chunk of stream) void chunk;
  }, (e) => /model runner crashed/.test(e.message));
});

test('embeddings with the SDK defaults (base64 on the wire, floats for the caller)', async () => {
  const e = await client.embeddings.create({ model: 'bge-m3', input: ['one', 'two'] });
  assert.equal((await double.last('/api/embed')).body.input.length, 2);
  assert.equal(e.data.length, 2);
  assert.equal(e.data[0].embedding.length, 1024);
  assert.equal(typeof e.data[0].embedding[0], 'number');
  const norm = Math.sqrt(e.data[1].embedding.reduce((s, x) => s + x * x, 0));
  assert.ok(Math.abs(norm - 1) < 1e-3);
  assert.ok(e.usage.prompt_tokens > 0);
});

test('models list and retrieve', async () => {
  const ids = [];
  for await (const m of client.models.list()) ids.push(m.id);
  assert.ok(ids.includes('qwen3:32b'));
  const m = await client.models.retrieve('bge-m3:latest');
  assert.equal(m.id, 'bge-m3:latest');
});

test('errors map to the SDK exception classes', async () => {
  await assert.rejects(
    client.chat.completions.create({ model: 'nosuch', messages: [{ role: 'user', content: 'x' }] }),
    (e) => e instanceof OpenAI.NotFoundError && e.status === 404 && e.code === 'model_not_found');
  await assert.rejects(
    client.chat.completions.create({ model: 'qwen3:8b', messages: [] }),
    (e) => e instanceof OpenAI.BadRequestError && e.param === 'messages');
  const bad = new OpenAI({ apiKey: 'wrong', baseURL: `${proxy.url}/v1`, maxRetries: 0 });
  await assert.rejects(bad.models.list(), (e) => e instanceof OpenAI.AuthenticationError);
  await assert.rejects(
    client.chat.completions.create({ model: 'qwen3:8b', messages: [{ role: 'user', content: '@status=503' }] }),
    (e) => e instanceof OpenAI.InternalServerError && e.status === 503);
});
