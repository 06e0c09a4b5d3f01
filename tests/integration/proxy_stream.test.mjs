// llm_proxy SSE streaming: wire format, one chunk per upstream line as it
// arrives (gated double), keepalives, mid-stream failures, cancellation.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { assertOpenAIError, chatBody, dataOf, openChatStream, postJson, sseReader, startDouble, startProxy } from './harness.mjs';

let double, proxy, slow;
before(async () => {
  double = await startDouble();
  proxy = await startProxy({}, { upstream: double });
  // A proxy with short timers for keepalive and timeout tests.
  slow = await startProxy({ SSE_KEEPALIVE_INTERVAL: '0.2', CHAT_TIMEOUT: '1.5' }, { upstream: double });
});
after(async () => {
  await slow.stop();
  await proxy.stop();
  await double.stop();
});

const openStream = openChatStream;

describe('SSE wire format', () => {
  test('headers, role first, content chunks, finish, usage, [DONE]', async () => {
    const res = await openStream(proxy, chatBody('alpha beta', { stream_options: { include_usage: true } }));
    assert.equal(res.status, 200);
    assert.match(res.headers.get('content-type'), /^text\/event-stream/);
    assert.equal(res.headers.get('cache-control'), 'no-cache');
    assert.equal(res.headers.get('x-accel-buffering'), 'no');
    const events = await sseReader(res).all();
    for (const ev of events) assert.match(ev, /^data: /, `not a data event: ${ev}`);
    const data = events.map(dataOf);
    assert.equal(data.at(-1), '[DONE]');
    const chunks = data.slice(0, -1);
    const ids = new Set(chunks.map((c) => c.id));
    assert.equal(ids.size, 1);
    for (const c of chunks) {
      assert.equal(c.object, 'chat.completion.chunk');
      assert.equal(c.model, 'qwen3:8b');
    }
    assert.equal(chunks[0].choices[0].delta.role, 'assistant');
    assert.ok(chunks.slice(1).every((c) => !c.choices[0] || c.choices[0].delta.role === undefined));
    const usage = chunks.at(-1);
    assert.deepEqual(usage.choices, []);
    assert.ok(usage.usage.total_tokens > 0);
    const finish = chunks.at(-2);
    assert.equal(finish.choices[0].finish_reason, 'stop');
    assert.deepEqual(finish.choices[0].delta, {});
    for (const c of chunks.slice(0, -1)) assert.equal(c.usage, null);
    const content = chunks.map((c) => c.choices[0]?.delta.content || '').join('');
    const reasoning = chunks.map((c) => c.choices[0]?.delta.reasoning_content || '').join('');
    assert.equal(content, 'Echo: alpha beta');
    assert.equal(reasoning, 'The user wants an answer.');
    assert.equal((await double.last('/api/chat')).body.stream, true);
  });

  test('no usage chunk without include_usage', async () => {
    const data = (await sseReader(await openStream(proxy, chatBody('x'))).all()).map(dataOf);
    assert.equal(data.at(-1), '[DONE]');
    assert.ok(data.slice(0, -1).every((c) => !('usage' in c)));
    assert.equal(data.at(-2).choices[0].finish_reason, 'stop');
  });

  test('legacy inline <think> is moved to reasoning_content while streaming', async () => {
    const data = (await sseReader(await openStream(proxy, { ...chatBody('why'), model: 'qwen3-legacy' })).all()).map(dataOf);
    const chunks = data.slice(0, -1);
    const content = chunks.map((c) => c.choices[0]?.delta.content || '').join('');
    const reasoning = chunks.map((c) => c.choices[0]?.delta.reasoning_content || '').join('');
    assert.equal(content, 'Echo: why');
    assert.equal(reasoning, 'Inline reasoning.');
  });

  test('tool calls stream with string arguments and finish_reason tool_calls', async () => {
    const tools = [{ type: 'function', function: { name: 'get_time', parameters: { type: 'object' } } }];
    const data = (await sseReader(await openStream(proxy, chatBody('t', { tools, think: false }))).all()).map(dataOf);
    const call = data.find((c) => c !== '[DONE]' && c.choices[0]?.delta.tool_calls);
    assert.ok(call);
    const tc = call.choices[0].delta.tool_calls[0];
    assert.equal(tc.index, 0);
    assert.equal(tc.type, 'function');
    assert.equal(tc.function.name, 'get_time');
    assert.deepEqual(JSON.parse(tc.function.arguments), { tz: 'UTC' });
    assert.equal(data.at(-2).choices[0].finish_reason, 'tool_calls');
  });
});

describe('no buffering', () => {
  test('each upstream line reaches the client before the next is produced', async () => {
    const res = await openStream(proxy, chatBody('one two three @gate', { think: false }));
    const sse = sseReader(res);
    // The double sends line 1, then holds every further line until released.
    const first = dataOf(await sse.next());
    assert.equal(first.choices[0].delta.content, 'Echo:');
    const seen = [first.choices[0].delta.content];
    for (;;) {
      await double.release();
      const d = dataOf(await sse.next());
      if (d.choices[0].finish_reason) break;
      seen.push(d.choices[0].delta.content);
    }
    assert.deepEqual(seen, ['Echo:', ' one', ' two', ' three']);
    assert.equal(dataOf(await sse.next()), '[DONE]');
  });
});

describe('keepalive and failures', () => {
  test('SSE comments keep a silent stream alive; a gap over CHAT_TIMEOUT ends it with an error event', async () => {
    const res = await openStream(slow, chatBody('@hang-after-first', { think: false }));
    const sse = sseReader(res);
    assert.equal(dataOf(await sse.next()).choices[0].delta.content, 'Echo:');
    assert.equal(await sse.next(), ': keepalive');
    let ev;
    while ((ev = await sse.next()) === ': keepalive');
    const err = dataOf(ev);
    assert.equal(err.error.code, 'upstream_timeout');
    assert.equal(await sse.next(), null, 'stream must end after the error event');
  });

  test('a stream whose upstream is slow to answer is committed, kept alive, then timed out', async () => {
    const res = await openStream(slow, chatBody('@hang first-byte'));
    assert.equal(res.status, 200);
    const sse = sseReader(res);
    assert.equal(await sse.next(), ': keepalive');
    let ev;
    while ((ev = await sse.next()) === ': keepalive');
    const err = dataOf(ev);
    assert.equal(err.error.code, 'upstream_timeout');
    assert.match(err.error.message, /first-byte/);
    assert.equal(await sse.next(), null);
  });

  test('upstream error line mid-stream → one error event, no [DONE]', async () => {
    const events = await sseReader(await openStream(proxy, chatBody('@error-mid', { think: false }))).all();
    const last = dataOf(events.at(-1));
    assert.equal(last.error.type, 'server_error');
    assert.match(last.error.message, /model runner crashed/);
    assert.ok(!events.includes('data: [DONE]'));
    assert.ok(events.length >= 2);
  });

  test('upstream stream ending without its final line is an error', async () => {
    const events = await sseReader(await openStream(proxy, chatBody('@truncate', { think: false }))).all();
    const last = dataOf(events.at(-1));
    assert.equal(last.error.code, 'upstream_incomplete');
    assert.ok(!events.includes('data: [DONE]'));
  });

  test('errors before the stream starts are plain JSON with their status', async () => {
    const res = await openStream(proxy, { ...chatBody('x'), model: 'nosuch' });
    const r = { status: res.status, headers: res.headers, text: await res.text() };
    r.json = JSON.parse(r.text);
    assertOpenAIError(r, 404, { code: 'model_not_found' });
  });
});

describe('cancellation', () => {
  test('client leaving mid-stream aborts the upstream transfer', async () => {
    const before = (await double.stats()).disconnects;
    const ac = new AbortController();
    const res = await openStream(proxy, chatBody('a b c d @gate', { think: false }), ac.signal);
    const sse = sseReader(res);
    await sse.next();
    ac.abort();
    const w = await double.waitDisconnects(before + 1);
    assert.equal(w.status, 200);
    assert.equal((await double.stats()).active_streams, 0);
  });

  test('an upstream that never ends its body after the final line: the client stream ends at once, the upstream connection is closed within the grace', async () => {
    // The final line ends the client's stream; the upstream transfer is left
    // to end (so its connection can be reused) but only for 1 s.
    const before = (await double.stats()).disconnects;
    const res = await openStream(proxy, chatBody('a b @hang-after-done', { think: false }));
    const events = await sseReader(res).all();
    assert.equal(events.at(-1), 'data: [DONE]');
    assert.equal((await double.waitDisconnects(before + 1)).status, 200);
    assert.equal((await double.stats()).active_streams, 0);
    const again = await postJson(`${proxy.url}/v1/chat/completions`, chatBody('after hang', { stream: false, think: false }));
    assert.equal(again.status, 200);
  });

  test('client leaving before the first byte aborts the upstream request', async () => {
    const before = (await double.stats()).disconnects;
    const ac = new AbortController();
    const pending = openStream(proxy, chatBody('@hang stream-before-first'), ac.signal).catch((e) => e);
    while ((await double.last('/api/chat')).body.messages[0].content !== '@hang stream-before-first');
    ac.abort();
    await pending;
    assert.equal((await double.waitDisconnects(before + 1)).status, 200);
  });
});

test('/metrics counts requests, time to first token and tokens', async () => {
  const res = await fetch(`${proxy.url}/metrics`);
  assert.equal(res.status, 200);
  assert.match(res.headers.get('content-type'), /^text\/plain; version=0.0.4/);
  const text = await res.text();
  assert.match(text, /llm_proxy_http_requests_total\{route="chat_completions",method="POST",status="200"\} \d+/);
  assert.match(text, /llm_proxy_time_to_first_token_seconds_count\{route="chat_completions"\} [1-9]/);
  assert.match(text, /llm_proxy_tokens_total\{type="completion"\} [1-9]/);
  assert.match(text, /llm_proxy_upstream_errors_total\{route="chat_completions",kind="model_not_found"\} [1-9]/);
  assert.match(text, /llm_proxy_http_requests_in_flight \d+/);
  assert.match(text, /llm_proxy_http_request_duration_seconds_bucket\{route="chat_completions",le="\+Inf"\} \d+/);
});

test('clients that leave while a reply is being written leave nothing counted in flight; SIGTERM does not wait for them', async () => {
  // A reply handed to evhttp counts as in flight until written; when the
  // client is gone evhttp frees it without reporting it complete. Before the
  // close callback ended the count too, a few of these 600 stayed counted for
  // ever (llm_proxy_http_requests_in_flight 7) and SIGTERM waited out the grace.
  const p = await startProxy({ SHUTDOWN_GRACE: '5' }, { upstream: double });
  const inFlight = async () => Number((await (await fetch(`${p.url}/metrics`)).text())
    .split('\n').find((l) => l.startsWith('llm_proxy_http_requests_in_flight ')).split(' ')[1]);
  try {
    for (const content of ['@status=500 x', '@error-mid x', 'hello x']) {
      for (let round = 0; round < 10; round++) {
        await Promise.all(Array.from({ length: 20 }, async () => {
          const ac = new AbortController();
          setTimeout(() => ac.abort(), Math.random() * 15);
          try {
            const r = await fetch(`${p.url}/v1/chat/completions`, {
              method: 'POST', headers: { 'content-type': 'application/json' },
              body: JSON.stringify(chatBody(content, { stream: true })), signal: ac.signal,
            });
            await r.text();
          } catch { /* aborted */ }
        }));
      }
    }
    // The server notices the last departures on its own loop: wait for the
    // gauge to settle (bounded), then it must be zero.
    let n = await inFlight();
    for (let i = 0; i < 100 && n !== 0; i++) {
      await new Promise((r) => setTimeout(r, 50));
      n = await inFlight();
    }
    assert.equal(n, 0, 'requests still counted in flight after every client left');
  } finally {
    await p.stop();
    assert.doesNotMatch(p.logs.text, /grace period over/);
  }
});
