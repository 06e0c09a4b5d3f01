// llm_proxy overload protection: a cap on concurrent upstream requests with
// a bounded queue; overflow is answered 429 and a too-long wait 503, both
// with Retry-After, instead of memory growing.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { assertOpenAIError, chatBody, dataOf, postJson, sseReader, startDouble, startProxy } from './harness.mjs';

let double, proxy;
before(async () => {
  double = await startDouble();
  proxy = await startProxy({ LLM_PROXY_MAX_UPSTREAM: '2', LLM_PROXY_QUEUE_SIZE: '1', LLM_PROXY_QUEUE_TIMEOUT: '0.5' },
    { upstream: double });
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
});
