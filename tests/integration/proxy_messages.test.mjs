// POST /v1/messages (Anthropic Messages API) with the official
// `@anthropic-ai/sdk` (messages.create / messages.stream) against llm_proxy
// in front of the Ollama double.
import assert from 'node:assert/strict';
import Anthropic from '@anthropic-ai/sdk';
import { after, before, test } from 'node:test';
import { startDouble, startProxy, postJson } from './harness.mjs';

let double, proxy, client;
before(async () => {
  double = await startDouble();
  proxy = await startProxy({ LLM_PROXY_API_KEY: 'sk-ant-test' }, { upstream: double });
  client = new Anthropic({ apiKey: 'sk-ant-test', baseURL: proxy.url, maxRetries: 0 });
});
after(async () => {
  await proxy.stop();
  await double.stop();
});

const timeTool = {
  name: 'get_time', description: 'Current time in a zone',
  input_schema: { type: 'object', properties: { tz: { type: 'string' } }, required: ['tz'] },
};

test('messages.create: text, usage, native request (x-api-key, anthropic-version)', async () => {
  const m = await client.messages.create({
    model: 'qwen3:8b', max_tokens: 64, system: 'Be brief.', temperature: 0.2, top_k: 20,
    stop_sequences: ['END'], messages: [{ role: 'user', content: 'hello claude' }],
  });
  assert.match(m.id, /^msg_/);
  assert.equal(m.type, 'message');
  assert.equal(m.role, 'assistant');
  assert.deepEqual(m.content, [{ type: 'text', text: 'Echo: hello claude' }]);
  assert.equal(m.stop_reason, 'end_turn');
  assert.ok(m.usage.input_tokens > 0 && m.usage.output_tokens > 0);
  assert.match(m._request_id, /\S/);
  const last = await double.last('/api/chat');
  const sent = last.body;
  assert.equal(last.request_id, m._request_id, 'one request id from client to Ollama');
  assert.deepEqual(sent.messages, [
    { role: 'system', content: 'Be brief.' }, { role: 'user', content: 'hello claude' }]);
  assert.equal(sent.think, false);
  assert.deepEqual(sent.options, { num_predict: 64, temperature: 0.2, top_k: 20, stop: ['END'] });
});

test('messages.create: thinking on, system blocks, image block', async () => {
  const png = 'iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==';
  const m = await client.messages.create({
    model: 'qwen3:8b', max_tokens: 100, thinking: { type: 'enabled', budget_tokens: 1024 },
    system: [{ type: 'text', text: 'One.' }, { type: 'text', text: 'Two.' }],
    messages: [{ role: 'user', content: [
      { type: 'image', source: { type: 'base64', media_type: 'image/png', data: png } },
      { type: 'text', text: 'what is this' }] }],
  });
  assert.deepEqual(m.content.map((b) => b.type), ['thinking', 'text']);
  assert.equal(m.content[0].thinking, 'The user wants an answer.');
  assert.equal(m.content[1].text, 'Echo: what is this');
  const sent = (await double.last('/api/chat')).body;
  assert.equal(sent.think, true);
  assert.equal(sent.messages[0].content, 'One.\nTwo.');
  assert.deepEqual(sent.messages[1].images, [png]);
});

test('messages.create: tools over two turns', async () => {
  const messages = [{ role: 'user', content: 'what time is it?' }];
  const m1 = await client.messages.create({ model: 'qwen3:8b', max_tokens: 100, tools: [timeTool], messages });
  assert.equal(m1.stop_reason, 'tool_use');
  const use = m1.content.find((b) => b.type === 'tool_use');
  assert.equal(use.name, 'get_time');
  assert.deepEqual(use.input, { tz: 'UTC' });
  const m2 = await client.messages.create({
    model: 'qwen3:8b', max_tokens: 100, tools: [timeTool],
    messages: [...messages, { role: 'assistant', content: m1.content },
      { role: 'user', content: [{ type: 'tool_result', tool_use_id: use.id, content: '12:00' }] }],
  });
  assert.equal(m2.stop_reason, 'end_turn');
  assert.equal(m2.content[0].text, 'Echo: what time is it?');
  const sent = (await double.last('/api/chat')).body;
  assert.equal(sent.tools[0].function.name, 'get_time');
  assert.deepEqual(sent.tools[0].function.parameters, timeTool.input_schema);
  assert.deepEqual(sent.messages[1].tool_calls[0].function, { name: 'get_time', arguments: { tz: 'UTC' }, index: 0 });
  assert.deepEqual(sent.messages[2], { role: 'tool', content: '12:00', tool_call_id: use.id, tool_name: 'get_time' });
});

test('messages.stream: text with thinking, event order, final message', async () => {
  const stream = client.messages.stream({
    model: 'qwen3:8b', max_tokens: 100, thinking: { type: 'enabled', budget_tokens: 1024 },
    messages: [{ role: 'user', content: 'stream me' }],
  });
  const types = [];
  let text = '';
  let thinking = '';
  stream.on('text', (t) => { text += t; });
  stream.on('thinking', (t) => { thinking += t; });
  for await (const ev of stream) types.push(ev.type);
  const final = await stream.finalMessage();
  assert.equal(text, 'Echo: stream me');
  assert.equal(thinking, 'The user wants an answer.');
  assert.deepEqual(final.content.map((b) => b.type), ['thinking', 'text']);
  assert.equal(final.stop_reason, 'end_turn');
  assert.ok(final.usage.output_tokens > 0);
  assert.ok(final.usage.input_tokens > 0, 'input tokens arrive with message_delta');
  assert.equal(types[0], 'message_start');
  assert.equal(types[1], 'content_block_start');
  assert.deepEqual(types.slice(-2), ['message_delta', 'message_stop']);
  assert.equal(types.filter((t) => t === 'content_block_start').length, 2);
  assert.equal(types.filter((t) => t === 'content_block_stop').length, 2);
});

test('messages.stream: tool_use with input_json_delta', async () => {
  const stream = client.messages.stream({
    model: 'qwen3:8b', max_tokens: 100, tools: [timeTool],
    messages: [{ role: 'user', content: 'call it' }],
  });
  let json = '';
  stream.on('inputJson', (partial) => { json += partial; });
  const final = await stream.finalMessage();
  assert.deepEqual(JSON.parse(json), { tz: 'UTC' });
  assert.equal(final.stop_reason, 'tool_use');
  assert.deepEqual(final.content[0].input, { tz: 'UTC' });
});

test('messages.stream: max_tokens stop reason', async () => {
  const final = await client.messages.stream({
    model: 'qwen3:8b', max_tokens: 3, messages: [{ role: 'user', content: 'long @words=20' }],
  }).finalMessage();
  assert.equal(final.stop_reason, 'max_tokens');
});

test('errors in Anthropic shape map to the SDK exception classes', async () => {
  await assert.rejects(
    client.messages.create({ model: 'nosuch', max_tokens: 10, messages: [{ role: 'user', content: 'x' }] }),
    (e) => e instanceof Anthropic.NotFoundError && e.error.type === 'error' && e.error.error.type === 'not_found_error');
  await assert.rejects(
    client.messages.create({ model: 'qwen3:8b', messages: [{ role: 'user', content: 'x' }] }),
    (e) => e instanceof Anthropic.BadRequestError && e.error.error.type === 'invalid_request_error'
      && /max_tokens/.test(e.error.error.message));
  await assert.rejects(
    client.messages.create({ model: 'qwen3:8b', max_tokens: 10, messages: [{ role: 'user', content: '@status=503' }] }),
    (e) => e instanceof Anthropic.InternalServerError && e.status === 503 && e.error.error.type === 'overloaded_error');
  const bad = new Anthropic({ apiKey: 'wrong', baseURL: proxy.url, maxRetries: 0 });
  await assert.rejects(
    bad.messages.create({ model: 'qwen3:8b', max_tokens: 10, messages: [{ role: 'user', content: 'x' }] }),
    (e) => e instanceof Anthropic.AuthenticationError && e.error.type === 'error'
      && e.error.error.type === 'authentication_error');
  const bearer = await postJson(`${proxy.url}/v1/messages`,
    { model: 'qwen3:8b', max_tokens: 10, messages: [{ role: 'user', content: 'x' }] },
    { authorization: 'Bearer sk-ant-test' });
  assert.equal(bearer.status, 200);
  const notJson = await postJson(`${proxy.url}/v1/messages`, '{nope', { 'x-api-key': 'sk-ant-test' });
  assert.equal(notJson.status, 400);
  assert.equal(notJson.json.type, 'error');
  assert.equal(notJson.json.error.type, 'invalid_request_error');
});

test('errors: a mid-stream upstream failure is an error event', async () => {
  const stream = client.messages.stream({
    model: 'qwen3:8b', max_tokens: 100, messages: [{ role: 'user', content: '@error-mid a b c' }],
  });
  await assert.rejects(stream.finalMessage(), (e) => /model runner crashed/.test(e.message));
});
