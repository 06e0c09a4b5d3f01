// POST /v1/responses (stateless Responses API) with the official `openai`
// SDK (responses.create / responses.stream) and the Vercel AI SDK's default
// `openai(model)` provider, against llm_proxy in front of the Ollama double.
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import { createOpenAI } from '@ai-sdk/openai';
import { generateObject, generateText, streamText, tool, jsonSchema, stepCountIs } from 'ai';
import { after, before, test } from 'node:test';
import { startDouble, startProxy, postJson, assertOpenAIError } from './harness.mjs';

let double, proxy, client, openai;
before(async () => {
  double = await startDouble();
  proxy = await startProxy({ LLM_PROXY_API_KEY: 'sk-resp' }, { upstream: double });
  client = new OpenAI({ apiKey: 'sk-resp', baseURL: `${proxy.url}/v1`, maxRetries: 0 });
  openai = createOpenAI({ apiKey: 'sk-resp', baseURL: `${proxy.url}/v1` });
});
after(async () => {
  await proxy.stop();
  await double.stop();
});

const weather = {
  type: 'function', name: 'get_time', description: 'Current time in a zone',
  parameters: { type: 'object', properties: { tz: { type: 'string' } }, required: ['tz'] },
};

test('responses.create: text, reasoning item, usage, native request', async () => {
  const r = await client.responses.create({
    model: 'qwen3:8b', input: 'hello responses', instructions: 'Be brief.',
    max_output_tokens: 50, temperature: 0.5, reasoning: { effort: 'low' },
  });
  assert.match(r.id, /^resp_/);
  assert.equal(r.object, 'response');
  assert.equal(r.status, 'completed');
  assert.equal(r.output_text, 'Echo: hello responses');
  assert.deepEqual(r.output.map((i) => i.type), ['reasoning', 'message']);
  assert.equal(r.output[0].summary[0].text, 'The user wants an answer.');
  assert.equal(r.output[1].content[0].type, 'output_text');
  assert.ok(r.usage.input_tokens > 0 && r.usage.output_tokens > 0);
  assert.equal(r.usage.total_tokens, r.usage.input_tokens + r.usage.output_tokens);
  const sent = (await double.last('/api/chat')).body;
  assert.deepEqual(sent.messages, [
    { role: 'system', content: 'Be brief.' }, { role: 'user', content: 'hello responses' }]);
  assert.equal(sent.think, 'low');
  assert.equal(sent.options.num_predict, 50);
  assert.equal(sent.options.temperature, 0.5);
  assert.equal(sent.stream, false);
});

test('responses.create: tools over two turns', async () => {
  const input = [{ role: 'user', content: 'what time is it?' }];
  const r1 = await client.responses.create({ model: 'qwen3:8b', input, tools: [weather], reasoning: { effort: 'none' } });
  const call = r1.output.find((i) => i.type === 'function_call');
  assert.ok(call, JSON.stringify(r1.output));
  assert.equal(call.name, 'get_time');
  assert.deepEqual(JSON.parse(call.arguments), { tz: 'UTC' });
  assert.match(call.call_id, /\S/);
  const r2 = await client.responses.create({
    model: 'qwen3:8b', tools: [weather], reasoning: { effort: 'none' },
    input: [...input, ...r1.output, { type: 'function_call_output', call_id: call.call_id, output: '12:00' }],
  });
  assert.equal(r2.output_text, 'Echo: what time is it?');
  const sent = (await double.last('/api/chat')).body;
  assert.equal(sent.tools[0].function.name, 'get_time');
  assert.equal(sent.messages[1].role, 'assistant');
  assert.equal(sent.messages[1].tool_calls[0].function.name, 'get_time');
  assert.deepEqual(sent.messages[1].tool_calls[0].function.arguments, { tz: 'UTC' });
  assert.equal(sent.messages[2].role, 'tool');
  assert.equal(sent.messages[2].content, '12:00');
  assert.equal(sent.messages[2].tool_name, 'get_time');
});

test('responses.create: json_schema text format reaches Ollama as format', async () => {
  const schema = { type: 'object', properties: { a: { type: 'string' } }, required: ['a'], additionalProperties: false };
  const r = await client.responses.create({
    model: 'qwen3:8b', input: 'json please', reasoning: { effort: 'none' },
    text: { format: { type: 'json_schema', name: 'thing', schema, strict: true } },
  });
  assert.equal(r.status, 'completed');
  assert.equal(r.text.format.type, 'json_schema');
  assert.deepEqual((await double.last('/api/chat')).body.format, schema);
});

test('responses.parse: structured output with a json_schema format', async () => {
  const schema = { type: 'object', properties: { echo: { type: 'string' } }, required: ['echo'], additionalProperties: false };
  const r = await client.responses.parse({
    model: 'qwen3:8b', input: 'structured please @json', reasoning: { effort: 'none' },
    text: { format: { type: 'json_schema', name: 'echo', schema, strict: true } },
  });
  assert.deepEqual(r.output_parsed, { echo: 'structured please' });
  assert.deepEqual((await double.last('/api/chat')).body.format, schema);
});

test('responses.stream: event sequence, deltas, final response', async () => {
  const stream = client.responses.stream({ model: 'qwen3:8b', input: 'stream me please' });
  const types = [];
  const seqs = [];
  let text = '';
  let reasoning = '';
  for await (const ev of stream) {
    types.push(ev.type);
    seqs.push(ev.sequence_number);
    if (ev.type === 'response.output_text.delta') text += ev.delta;
    if (ev.type === 'response.reasoning_summary_text.delta') reasoning += ev.delta;
  }
  const final = await stream.finalResponse();
  assert.equal(text, 'Echo: stream me please');
  assert.equal(reasoning, 'The user wants an answer.');
  assert.equal(final.output.at(-1).content[0].text, 'Echo: stream me please');
  assert.equal(final.status, 'completed');
  assert.ok(final.usage.output_tokens > 0);
  assert.deepEqual(seqs, seqs.map((_, i) => i));
  assert.deepEqual(types.slice(0, 4), ['response.created', 'response.in_progress',
    'response.output_item.added', 'response.reasoning_summary_part.added']);
  const msgStart = types.indexOf('response.content_part.added');
  assert.ok(msgStart > types.indexOf('response.reasoning_summary_part.done'));
  assert.equal(types.at(-1), 'response.completed');
  assert.equal(types.at(-2), 'response.output_item.done');
  assert.equal(types.at(-3), 'response.content_part.done');
  assert.equal(types.at(-4), 'response.output_text.done');
});

test('responses.stream: a function call streams its arguments', async () => {
  const stream = client.responses.stream({
    model: 'qwen3:8b', input: 'call it', tools: [weather], reasoning: { effort: 'none' },
  });
  const types = [];
  let args = '';
  for await (const ev of stream) {
    types.push(ev.type);
    if (ev.type === 'response.function_call_arguments.delta') args += ev.delta;
  }
  const final = await stream.finalResponse();
  assert.deepEqual(JSON.parse(args), { tz: 'UTC' });
  assert.ok(types.includes('response.function_call_arguments.done'));
  assert.equal(final.output[0].type, 'function_call');
  assert.equal(final.output[0].name, 'get_time');
});

test('responses.stream: max_output_tokens ends as response.incomplete', async () => {
  const stream = client.responses.stream({
    model: 'qwen3:8b', input: 'a long one @words=20', max_output_tokens: 3, reasoning: { effort: 'none' },
  });
  const types = [];
  for await (const ev of stream) types.push(ev.type);
  assert.equal(types.at(-1), 'response.incomplete');
});

test('AI SDK openai(model): generateText', async () => {
  const r = await generateText({ model: openai('qwen3:8b'), prompt: 'hello ai sdk' });
  assert.equal(r.text, 'Echo: hello ai sdk');
  assert.equal(r.finishReason, 'stop');
  assert.ok(r.usage.inputTokens > 0 && r.usage.outputTokens > 0);
  assert.equal(r.reasoningText, 'The user wants an answer.');
});

test('AI SDK openai(model): streamText', async () => {
  const r = streamText({ model: openai('qwen3:8b'), prompt: 'stream ai sdk' });
  let text = '';
  for await (const t of r.textStream) text += t;
  assert.equal(text, 'Echo: stream ai sdk');
  assert.equal(await r.finishReason, 'stop');
  assert.ok((await r.usage).outputTokens > 0);
});

test('AI SDK openai(model): tools', async () => {
  let got = null;
  const r = await generateText({
    model: openai('qwen3:8b'), prompt: 'what time?',
    tools: {
      get_time: tool({
        description: 'Current time', inputSchema: jsonSchema({ type: 'object', properties: { tz: { type: 'string' } } }),
        execute: async (args) => { got = args; return '12:00'; },
      }),
    },
  });
  assert.deepEqual(got, { tz: 'UTC' });
  assert.equal(r.finishReason, 'tool-calls');
  assert.equal(r.toolResults[0].output, '12:00');
});

test('AI SDK openai(model): streamText with a tool call', async () => {
  let got = null;
  const r = streamText({
    model: openai('qwen3:8b'), prompt: 'stream a call',
    tools: {
      get_time: tool({
        description: 'Current time', inputSchema: jsonSchema({ type: 'object', properties: { tz: { type: 'string' } } }),
        execute: async (args) => { got = args; return '12:00'; },
      }),
    },
  });
  const parts = [];
  for await (const p of r.fullStream) parts.push(p.type);
  assert.deepEqual(got, { tz: 'UTC' });
  assert.ok(parts.includes('tool-call') && parts.includes('tool-result'), parts.join(','));
  assert.equal(await r.finishReason, 'tool-calls');
});

test('AI SDK openai(model): generateObject (json_schema text format)', async () => {
  const schema = { type: 'object', properties: { echo: { type: 'string' } }, required: ['echo'], additionalProperties: false };
  const r = await generateObject({ model: openai('qwen3:8b'), schema: jsonSchema(schema), prompt: 'an object @json' });
  assert.deepEqual(r.object, { echo: 'an object' });
  assert.equal((await double.last('/api/chat')).body.format.type, 'object');
});

test('AI SDK openai(model): a multi-step tool loop (defaults: reasoning sent back as item_reference)', async () => {
  const r = await generateText({
    model: openai('qwen3:8b'), prompt: 'what time now?', stopWhen: stepCountIs(3),
    tools: {
      get_time: tool({
        description: 'Current time', inputSchema: jsonSchema({ type: 'object', properties: { tz: { type: 'string' } } }),
        execute: async () => '12:00',
      }),
    },
  });
  assert.equal(r.steps.length, 2);
  assert.equal(r.text, 'Echo: what time now?');
  const sent = (await double.last('/api/chat')).body;
  assert.deepEqual(sent.messages.map((m) => m.role), ['user', 'assistant', 'tool']);
  assert.equal(sent.messages[2].content, '12:00');
});

test('AI SDK openai(model): a second turn with store: false sends the earlier items whole', async () => {
  const first = await generateText({ model: openai('qwen3:8b'), prompt: 'turn one' });
  const r = await generateText({
    model: openai('qwen3:8b'), providerOptions: { openai: { store: false } },
    messages: [{ role: 'user', content: 'turn one' }, ...first.response.messages, { role: 'user', content: 'turn two' }],
  });
  assert.equal(r.text, 'Echo: turn two');
  const sent = (await double.last('/api/chat')).body;
  assert.deepEqual(sent.messages.map((m) => m.role), ['user', 'assistant', 'user']);
  assert.equal(sent.messages[1].content, 'Echo: turn one');
});

test('errors: stateless refusals, missing model, unknown model, auth, upstream status', async () => {
  await assert.rejects(
    client.responses.create({ model: 'qwen3:8b', input: 'x', previous_response_id: 'resp_abc' }),
    (e) => e instanceof OpenAI.BadRequestError && e.param === 'previous_response_id');
  await assert.rejects(
    client.responses.create({ model: 'qwen3:8b', input: 'x', store: true }),
    (e) => e instanceof OpenAI.BadRequestError && e.param === 'store' && /stateless/.test(e.message));
  await assert.rejects(
    client.responses.create({ model: 'nosuch', input: 'x' }),
    (e) => e instanceof OpenAI.NotFoundError && e.code === 'model_not_found');
  await assert.rejects(
    client.responses.create({ model: 'qwen3:8b', input: '@status=503' }),
    (e) => e instanceof OpenAI.InternalServerError && e.status === 503);
  const bad = new OpenAI({ apiKey: 'wrong', baseURL: `${proxy.url}/v1`, maxRetries: 0 });
  await assert.rejects(bad.responses.create({ model: 'qwen3:8b', input: 'x' }),
    (e) => e instanceof OpenAI.AuthenticationError);
  const res = await postJson(`${proxy.url}/v1/responses`, { input: 'x' }, { authorization: 'Bearer sk-resp' });
  assertOpenAIError(res, 400, { param: 'model' });
  const tools = await postJson(`${proxy.url}/v1/responses`,
    { model: 'qwen3:8b', input: 'x', tools: [{ type: 'web_search' }] }, { authorization: 'Bearer sk-resp' });
  assertOpenAIError(tools, 400, { param: 'tools[0]' });
});

test('errors: a mid-stream upstream failure is response.failed', async () => {
  const stream = client.responses.stream({ model: 'qwen3:8b', input: '@error-mid a b c', reasoning: { effort: 'none' } });
  const types = [];
  let failed = null;
  for await (const ev of stream) {
    types.push(ev.type);
    if (ev.type === 'response.failed') failed = ev.response;
  }
  assert.equal(types.at(-1), 'response.failed');
  assert.equal(failed.status, 'failed');
  assert.match(failed.error.message, /model runner crashed/);
});

test('errors: the AI SDK sees a mid-stream failure as a stream error', async () => {
  const errors = [];
  const r = streamText({
    model: openai('qwen3:8b'), prompt: '@error-mid a b c', onError: ({ error }) => errors.push(error),
  });
  for await (const t of r.textStream) void t;
  assert.equal(errors.length, 1);
  assert.match(String(errors[0].message ?? errors[0]), /model runner crashed/);
});
