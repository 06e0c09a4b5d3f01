// llm_proxy chat completions (non-stream): translation both ways, thinking,
// tools, Ollama controls, headers sent upstream, and error statuses.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { assertOpenAIError, chatBody, postJson, startDouble, startProxy } from './harness.mjs';

let double, proxy, chatUrl;
before(async () => {
  double = await startDouble();
  proxy = await startProxy({ CHAT_TIMEOUT: '1' }, { upstream: double });
  chatUrl = `${proxy.url}/v1/chat/completions`;
});
after(async () => {
  await proxy.stop();
  await double.stop();
});

describe('non-stream chat', () => {
  test('answer in the chat.completion shape with usage', async () => {
    const res = await postJson(chatUrl, chatBody('hello world'));
    assert.equal(res.status, 200);
    assert.match(res.headers.get('content-type'), /^application\/json/);
    assert.ok(res.headers.get('x-request-id'));
    const b = res.json;
    assert.equal(b.object, 'chat.completion');
    assert.match(b.id, /^chatcmpl-[A-Za-z0-9]{24}$/);
    assert.equal(typeof b.created, 'number');
    assert.equal(b.model, 'qwen3:8b');
    assert.equal(b.choices.length, 1);
    assert.equal(b.choices[0].index, 0);
    assert.equal(b.choices[0].message.role, 'assistant');
    assert.equal(b.choices[0].message.content, 'Echo: hello world');
    assert.equal(b.choices[0].finish_reason, 'stop');
    assert.ok(b.usage.prompt_tokens > 0);
    assert.ok(b.usage.completion_tokens > 0);
    assert.equal(b.usage.total_tokens, b.usage.prompt_tokens + b.usage.completion_tokens);
  });

  test('sends stream:false explicitly and maps sampling fields to native options', async () => {
    const res = await postJson(chatUrl, chatBody('x', {
      max_tokens: 99, max_completion_tokens: 12, temperature: 0.3, top_p: 0.7, seed: 5,
      stop: ['END', 'STOP'], frequency_penalty: 0.1, presence_penalty: 0.2,
      response_format: { type: 'json_object' },
    }));
    assert.equal(res.status, 200);
    const up = (await double.last('/api/chat')).body;
    assert.equal(up.stream, false);
    assert.deepEqual(up.options, {
      num_predict: 12, temperature: 0.3, top_p: 0.7, seed: 5, stop: ['END', 'STOP'],
      frequency_penalty: 0.1, presence_penalty: 0.2,
    });
    assert.equal(up.format, 'json');
  });

  test('exposes Ollama controls: keep_alive, options (num_ctx), think, reasoning_effort', async () => {
    await postJson(chatUrl, chatBody('x', { keep_alive: '20m', options: { num_ctx: 16384 }, think: false }));
    let up = (await double.last('/api/chat')).body;
    assert.equal(up.keep_alive, '20m');
    assert.equal(up.options.num_ctx, 16384);
    assert.equal(up.think, false);

    const res = await postJson(chatUrl, chatBody('x', { reasoning_effort: 'none' }));
    up = (await double.last('/api/chat')).body;
    assert.equal(up.think, false);
    assert.equal(res.json.choices[0].message.reasoning_content, undefined);

    await postJson(chatUrl, chatBody('x', { response_format: { type: 'json_schema', json_schema: { name: 's', schema: { type: 'object' } } } }));
    up = (await double.last('/api/chat')).body;
    assert.deepEqual(up.format, { type: 'object' });
  });

  test('thinking goes to reasoning_content, never content', async () => {
    const res = await postJson(chatUrl, chatBody('why'));
    const m = res.json.choices[0].message;
    assert.equal(m.reasoning_content, 'The user wants an answer.');
    assert.ok(!m.content.includes('user wants'));

    const legacy = await postJson(chatUrl, { ...chatBody('why'), model: 'qwen3-legacy' });
    assert.equal(legacy.status, 200, legacy.text);
    const lm = legacy.json.choices[0].message;
    assert.equal(lm.content, 'Echo: why');
    assert.equal(lm.reasoning_content, 'Inline reasoning.');
  });

  test('finish_reason length when max_tokens cuts the answer', async () => {
    const res = await postJson(chatUrl, chatBody('one two three four', { max_tokens: 2, think: false }));
    assert.equal(res.json.choices[0].finish_reason, 'length');
    assert.equal(res.json.choices[0].message.content, 'Echo: one');
  });

  test('tools: definitions forwarded, tool_calls come back with string arguments', async () => {
    const tools = [{ type: 'function', function: { name: 'get_time', parameters: { type: 'object', properties: { tz: { type: 'string' } } } } }];
    const res = await postJson(chatUrl, chatBody('time?', { tools }));
    assert.equal(res.status, 200, res.text);
    const msg = res.json.choices[0].message;
    assert.equal(res.json.choices[0].finish_reason, 'tool_calls');
    assert.equal(msg.content, null);
    assert.equal(msg.tool_calls[0].type, 'function');
    assert.equal(msg.tool_calls[0].function.name, 'get_time');
    assert.deepEqual(JSON.parse(msg.tool_calls[0].function.arguments), { tz: 'UTC' });
    assert.deepEqual((await double.last('/api/chat')).body.tools, tools);

    // Replaying the call: arguments string -> object, tool result named.
    const follow = await postJson(chatUrl, {
      model: 'qwen3:8b', tools,
      messages: [
        { role: 'user', content: 'time?' },
        { role: 'assistant', content: null, tool_calls: msg.tool_calls },
        { role: 'tool', tool_call_id: msg.tool_calls[0].id, content: '12:00' },
      ],
    });
    assert.equal(follow.status, 200, follow.text);
    const up = (await double.last('/api/chat')).body;
    assert.deepEqual(up.messages[1].tool_calls[0].function.arguments, { tz: 'UTC' });
    assert.equal(up.messages[2].tool_name, 'get_time');
  });

  test('image parts become native base64 images', async () => {
    await postJson(chatUrl, {
      model: 'qwen3:8b',
      messages: [{ role: 'user', content: [
        { type: 'text', text: 'describe' },
        { type: 'image_url', image_url: { url: 'data:image/png;base64,iVBORw0KGgo=' } },
      ] }],
    });
    const up = (await double.last('/api/chat')).body;
    assert.equal(up.messages[0].content, 'describe');
    assert.deepEqual(up.messages[0].images, ['iVBORw0KGgo=']);
  });

  test('own Host upstream; client Authorization never forwarded; request id propagated', async () => {
    const res = await postJson(chatUrl, chatBody('x'), {
      host: 'evil.example.com', authorization: 'Bearer client-secret', 'x-request-id': 'req-abc-123',
    });
    assert.equal(res.status, 200);
    assert.equal(res.headers.get('x-request-id'), 'req-abc-123');
    const last = await double.last('/api/chat');
    assert.equal(last.host, `127.0.0.1:${double.port}`);
    assert.equal(last.authorization, null);
    assert.equal(last.request_id, 'req-abc-123');
  });
});

describe('chat errors', () => {
  test('bad JSON → 400', async () => {
    assertOpenAIError(await postJson(chatUrl, '{"model":'), 400, { type: 'invalid_request_error' });
    assertOpenAIError(await postJson(chatUrl, '[1,2]'), 400);
    assertOpenAIError(await postJson(chatUrl, ''), 400);
  });

  test('missing or invalid fields → 400 naming the field', async () => {
    assertOpenAIError(await postJson(chatUrl, { messages: [{ role: 'user', content: 'x' }] }), 400, { param: 'model' });
    assertOpenAIError(await postJson(chatUrl, { model: 'qwen3:8b' }), 400, { param: 'messages' });
    assertOpenAIError(await postJson(chatUrl, chatBody('x', { temperature: 'hot' })), 400, { param: 'temperature' });
    assertOpenAIError(await postJson(chatUrl, chatBody('x', { reasoning_effort: 'galaxy' })), 400, { param: 'reasoning_effort' });
  });

  test('unknown model → 404 model_not_found', async () => {
    const e = assertOpenAIError(await postJson(chatUrl, { ...chatBody('x'), model: 'nosuch:1b' }), 404,
      { type: 'invalid_request_error', code: 'model_not_found', param: 'model' });
    assert.match(e.message, /nosuch:1b/);
  });

  test('upstream 4xx and 5xx are passed on with their message', async () => {
    let e = assertOpenAIError(await postJson(chatUrl, chatBody('@status=503')), 503);
    assert.match(e.message, /server busy/);
    e = assertOpenAIError(await postJson(chatUrl, chatBody('@status=500')), 500, { type: 'server_error' });
    assert.match(e.message, /injected failure 500/);
    e = assertOpenAIError(await postJson(chatUrl, { ...chatBody('x'), model: 'bge-m3', think: false }), 400);
    assert.match(e.message, /does not support chat/);
  });

  test('upstream timeout → 504', async () => {
    const e = assertOpenAIError(await postJson(chatUrl, chatBody('@hang')), 504, { code: 'upstream_timeout' });
    assert.match(e.message, /did not answer in time/);
  });

  test('upstream unreachable → 502', async () => {
    const dead = await startProxy({}, { upstream: { url: 'http://127.0.0.1:1' } });
    try {
      assertOpenAIError(await postJson(`${dead.url}/v1/chat/completions`, chatBody('x')), 502, { code: 'upstream_unreachable' });
      assertOpenAIError(await postJson(`${dead.url}/v1/embeddings`, { model: 'bge-m3', input: 'x' }), 502);
    } finally {
      await dead.stop();
    }
  });

  test('a client that goes away aborts the upstream request at once', async () => {
    const before = (await double.stats()).disconnects;
    const ac = new AbortController();
    const pending = fetch(chatUrl, {
      method: 'POST', signal: ac.signal, headers: { 'content-type': 'application/json' },
      body: JSON.stringify(chatBody('@hang cancel-me')),
    }).catch((e) => e);
    // Wait until the double holds this request, then leave.
    while ((await double.last('/api/chat')).body.messages[0].content !== '@hang cancel-me');
    ac.abort();
    await pending;
    const w = await double.waitDisconnects(before + 1);
    assert.equal(w.status, 200, 'upstream request was not aborted');
  });
});
