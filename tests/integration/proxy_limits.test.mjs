// llm_proxy overload protection: a cap on concurrent upstream requests with
// a bounded queue; overflow is answered 429 and a too-long wait 503, both
// with Retry-After, instead of memory growing.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { assertOpenAIError, chatBody, dataOf, postJson, sseReader, startDouble, startProxy } from './harness.mjs';

let double, proxy;
before(async () => {
  double = await startDouble();
  // Slots and queue places are per worker (each worker has its own upstream
  // clients, see README "Workers"): one worker makes the counts exact.
  proxy = await startProxy({
    LLM_PROXY_MAX_UPSTREAM: '2', LLM_PROXY_QUEUE_SIZE: '1', LLM_PROXY_QUEUE_TIMEOUT: '0.5', LLM_PROXY_WORKERS: '1',
  }, { upstream: double });
});
after(async () => {
  await proxy.stop();
  await double.stop();
});

const openStream = (content) => fetch(`${proxy.url}/v1/chat/completions`, {
  method: 'POST', headers: { 'content-type': 'application/json' },
  body: JSON.stringify(chatBody(content, { stream: true, think: false })),
});

async function metric(name) {
  const text = await (await fetch(`${proxy.url}/metrics`)).text();
  const m = text.match(new RegExp(`^${name} (\\d+)`, 'm'));
  return m ? Number(m[1]) : 0;
}

test('slots full: one request waits in the queue, the next gets 429; the waiter runs when a slot frees', async () => {
  // Two gated streams hold both upstream slots.
  const a = sseReader(await openStream('a @gate'));
  const b = sseReader(await openStream('b @gate'));
  await a.next();
  await b.next();
  // The third waits in the queue.
  const queued = postJson(`${proxy.url}/v1/chat/completions`, chatBody('queued'));
  while ((await metric('llm_proxy_upstream_queue_depth')) !== 1);
  // The fourth finds the queue full.
  const refused = await postJson(`${proxy.url}/v1/chat/completions`, chatBody('refused'));
  assertOpenAIError(refused, 429, { code: 'too_many_requests' });
  assert.equal(refused.headers.get('retry-after'), '1');
  // Finish stream a: its slot goes to the queued request.
  for (;;) {
    await double.release();
    const d = dataOf(await a.next());
    if (d === '[DONE]') break;
  }
  const q = await queued;
  assert.equal(q.status, 200, q.text);
  assert.equal(q.json.choices[0].message.content, 'Echo: queued');
  for (;;) {
    await double.release();
    if (dataOf(await b.next()) === '[DONE]') break;
  }
});

test('a request that waits longer than LLM_PROXY_QUEUE_TIMEOUT gets 503 with Retry-After', async () => {
  const a = sseReader(await openStream('a2 @gate'));
  const b = sseReader(await openStream('b2 @gate'));
  await a.next();
  await b.next();
  const res = await postJson(`${proxy.url}/v1/embeddings`, { model: 'bge-m3', input: 'waits' });
  assertOpenAIError(res, 503, { code: 'overloaded' });
  assert.equal(res.headers.get('retry-after'), '1');
  await a.cancel();
  await b.cancel();
  // Slots come back once the aborted streams are gone.
  let ok;
  for (let i = 0; i < 100 && ok !== 200; i++) ok = (await postJson(`${proxy.url}/v1/chat/completions`, chatBody('again'))).status;
  assert.equal(ok, 200);
  const m = await (await fetch(`${proxy.url}/metrics`)).text();
  assert.match(m, /llm_proxy_upstream_errors_total\{route="chat_completions",kind="queue_full"\} [1-9]/);
  assert.match(m, /llm_proxy_upstream_errors_total\{route="embeddings",kind="queue_timeout"\} [1-9]/);
  // Both refusals (429 queue full in the first test, 503 queue timeout here)
  // are counted by reason.
  const q = m.match(/^llm_proxy_rejected_requests_total\{reason="queue"\} (\d+)/m);
  assert.ok(q && Number(q[1]) >= 2, 'queue refusals counted');
});

import net from 'node:net';
import { once } from 'node:events';

function rawConnect(port) {
  const sock = net.connect(port, '127.0.0.1');
  sock.data = '';
  sock.on('error', () => {}); // a reset from the server shows up as 'close'

  sock.on('data', (d) => { sock.data += d.toString(); });
  sock.closedP = once(sock, 'close');
  return once(sock, 'connect').then(() => sock);
}

test('slowloris: a request trickling in past LLM_PROXY_REQUEST_READ_TIMEOUT is cut off', async () => {
  const p = await startProxy({ LLM_PROXY_REQUEST_READ_TIMEOUT: '0.5' }, { upstream: double });
  try {
    const sock = await rawConnect(p.port);
    sock.write('POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n');
    let closed = false;
    sock.closedP.then(() => { closed = true; });
    // One header byte at a time, each within the idle timeout.
    for (let i = 0; i < 100 && !closed; i++) {
      sock.write('X');
      await new Promise((r) => setTimeout(r, 50));
    }
    assert.ok(closed, 'the slow request must be closed by the server');
    assert.match(p.logs.text, /request_read_timeout/);
    // A normal request still works, and a keep-alive connection that has
    // finished a request is not cut by the read deadline.
    assert.equal((await fetch(`${p.url}/health`)).status, 200);
  } finally {
    await p.stop();
  }
});

test('LLM_PROXY_MAX_CONNECTIONS: at the cap new connections wait until one closes', async () => {
  const p = await startProxy({ LLM_PROXY_MAX_CONNECTIONS: '3' }, { upstream: double });
  try {
    // Each held connection is known to be accepted (a round trip on it)
    // before the next: with several workers the accept order is otherwise
    // the kernel's.
    const held = [];
    for (let i = 0; i < 3; i++) {
      const s = await rawConnect(p.port);
      s.write('GET /health HTTP/1.1\r\nHost: x\r\n\r\n');
      while (!s.data.includes('"ok"')) await once(s, 'data');
      s.data = '';
      held.push(s);
    }
    const extra = await rawConnect(p.port); // accepted by the kernel, not by llm_proxy
    extra.write('GET /health HTTP/1.1\r\nHost: x\r\n\r\n');
    // A round trip on a held connection: the server has had its chance to
    // serve the extra one, had it accepted it.
    held[0].write('GET /health HTTP/1.1\r\nHost: x\r\n\r\n');
    while (!held[0].data.includes('"ok"')) await once(held[0], 'data');
    assert.equal(extra.data, '', 'the fourth connection must wait');
    held[1].destroy();
    while (!extra.data.includes('"ok"')) await once(extra, 'data');
    assert.match(p.logs.text, /connection_cap/);
    for (const s of [held[0], held[2], extra]) s.destroy();
  } finally {
    await p.stop();
  }
});

test('headers over LLM_PROXY_MAX_HEADER_BYTES are refused with a JSON error', async () => {
  const p = await startProxy({ LLM_PROXY_MAX_HEADER_BYTES: '2KiB' }, { upstream: double });
  try {
    const res = await fetch(`${p.url}/health`, { headers: { 'x-big': 'a'.repeat(4096) } });
    assert.ok(res.status === 400 || res.status === 413 || res.status === 431, `status ${res.status}`);
    const e = (await res.json()).error;
    assert.equal(typeof e.message, 'string');
    assert.equal((await fetch(`${p.url}/health`)).status, 200);
  } finally {
    await p.stop();
  }
});
