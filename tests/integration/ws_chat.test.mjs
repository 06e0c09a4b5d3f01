// WebSocket chat endpoint /ws/chat, driven by the npm `ws` client (and a raw
// socket for frames a correct client never sends).
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import { once } from 'node:events';
import { after, before, describe, test } from 'node:test';
import WebSocket from 'ws';
import { startDouble, startProxy } from './harness.mjs';

let double, proxy, tight;
before(async () => {
  double = await startDouble();
  proxy = await startProxy({}, { upstream: double });
  tight = await startProxy({ WS_MAX_INFLIGHT: '2', WS_MAX_MESSAGE_BYTES: '2KiB', WS_PING_INTERVAL: '0.3' }, { upstream: double });
});
after(async () => {
  await tight.stop();
  await proxy.stop();
  await double.stop();
});

const wsUrl = (p, q = '') => `${p.url.replace('http', 'ws')}/ws/chat${q}`;

// A client that queues incoming messages for awaiting.
async function connect(p, opts = {}, q = '') {
  const ws = new WebSocket(wsUrl(p, q), opts);
  const queue = [];
  const waiters = [];
  ws.on('message', (data, isBinary) => {
    const m = isBinary ? data : JSON.parse(data.toString());
    const w = waiters.shift();
    if (w) w(m); else queue.push(m);
  });
  ws.closed = new Promise((resolve) => ws.on('close', (code, reason) => resolve({ code, reason: reason.toString() })));
  await once(ws, 'open');
  ws.next = () => (queue.length ? Promise.resolve(queue.shift()) : new Promise((r) => waiters.push(r)));
  ws.sendJson = (o) => ws.send(JSON.stringify(o));
  // Collects messages of id until its done/error.
  ws.collect = async (id) => {
    const out = [];
    for (;;) {
      const m = await ws.next();
      if (m.id !== id) throw new Error(`unexpected message for ${m.id}`);
      out.push(m);
      if (m.type === 'done' || m.type === 'error') return out;
    }
  };
  return ws;
}

const chat = (id, content, extra = {}) => ({ type: 'chat', id, model: 'qwen3:8b', messages: [{ role: 'user', content }], ...extra });

// Raw handshake, then raw frames. Everything received is kept in sock.buf
// (a persistent listener, so nothing is lost between awaits).
async function rawSocket(p) {
  const sock = net.connect(p.port, '127.0.0.1');
  await once(sock, 'connect');
  sock.buf = Buffer.alloc(0);
  sock.closedFlag = false;
  const waiters = [];
  const wake = () => { while (waiters.length) waiters.shift()(); };
  sock.on('data', (d) => { sock.buf = Buffer.concat([sock.buf, d]); wake(); });
  sock.on('close', () => { sock.closedFlag = true; wake(); });
  // Resolves once pred(sock.buf) holds, or with false when the socket closes first.
  sock.waitFor = async (pred) => {
    for (;;) {
      if (pred(sock.buf)) return true;
      if (sock.closedFlag) return false;
      await new Promise((r) => waiters.push(r));
    }
  };
  const key = crypto.randomBytes(16).toString('base64');
  sock.write(`GET /ws/chat HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\n\r\n`);
  await sock.waitFor((b) => b.includes('\r\n\r\n'));
  const i = sock.buf.indexOf('\r\n\r\n');
  const head = sock.buf.slice(0, i).toString();
  assert.match(head, /^HTTP\/1\.1 101/);
  const accept = crypto.createHash('sha1').update(key + '258EAFA5-E914-47DA-95CA-C5AB0DC85B11').digest('base64');
  assert.match(head, new RegExp(`Sec-WebSocket-Accept: ${accept.replace(/[+/]/g, '\\$&')}`, 'i'));
  sock.buf = sock.buf.slice(i + 4);
  return sock;
}

function frame(opcode, payload, { mask = true, fin = true } = {}) {
  const p = Buffer.from(payload);
  const head = [((fin ? 0x80 : 0) | opcode), (mask ? 0x80 : 0) | p.length];
  const key = crypto.randomBytes(4);
  const body = mask ? Buffer.from(p.map((b, i) => b ^ key[i % 4])) : p;
  return Buffer.concat([Buffer.from(head), mask ? key : Buffer.alloc(0), body]);
}

// The status code of the server's close frame (null if the socket closed without one).
async function closeCode(sock) {
  let code = null;
  const find = (buf) => {
    let off = 0;
    while (buf.length - off >= 2) {
      const op = buf[off] & 0x0f;
      const len = buf[off + 1] & 0x7f;
      if (len > 125 || buf.length - off < 2 + len) return false;
      if (op === 0x8) {
        code = buf.readUInt16BE(off + 2);
        return true;
      }
      off += 2 + len;
    }
    return false;
  };
  await sock.waitFor(find);
  return code;
}

describe('handshake', () => {
  test('101 on the HTTP port; plain GET, wrong version and bad key are refused', async () => {
    const ws = await connect(proxy);
    ws.close(1000);
    assert.equal((await ws.closed).code, 1000, 'clean close handshake initiated by the client');
    let r = await fetch(`${proxy.url}/ws/chat`);
    assert.equal(r.status, 400);
    assert.equal((await r.json()).error.code, 'websocket_required');
    // fetch() refuses Upgrade headers: plain node http for these.
    const get = (headers) => new Promise((resolve, reject) => {
      http.get(`${proxy.url}/ws/chat`, { headers }, (res) => { res.resume(); resolve(res); }).on('error', reject);
    });
    let res = await get({ upgrade: 'websocket', connection: 'Upgrade', 'sec-websocket-version': '8', 'sec-websocket-key': 'dGhlIHNhbXBsZSBub25jZQ==' });
    assert.equal(res.statusCode, 426);
    assert.equal(res.headers['sec-websocket-version'], '13');
    res = await get({ upgrade: 'websocket', connection: 'Upgrade', 'sec-websocket-version': '13', 'sec-websocket-key': 'short' });
    assert.equal(res.statusCode, 400);
  });

  test('raw handshake: Connection token list, accept hash; frames right behind it are processed', async () => {
    const sock = await rawSocket(proxy);
    sock.write(frame(0x9, 'hi')); // ping
    await sock.waitFor((b) => b.length >= 4);
    assert.equal(sock.buf[0] & 0x0f, 0xA, 'pong');
    assert.equal(sock.buf.slice(2, 4).toString(), 'hi');
    sock.destroy();
  });

  test('with LLM_PROXY_API_KEY the upgrade needs the key (header or api_key), never logged', async () => {
    const keyed = await startProxy({ LLM_PROXY_API_KEY: 'sk-ws-key' }, { upstream: double });
    try {
      const bad = new WebSocket(wsUrl(keyed));
      bad.on('error', () => {});
      const [, res] = await once(bad, 'unexpected-response');
      assert.equal(res.statusCode, 401);
      bad.terminate();
      const wrong = new WebSocket(wsUrl(keyed, '?api_key=nope'));
      wrong.on('error', () => {});
      assert.equal((await once(wrong, 'unexpected-response'))[1].statusCode, 401);
      wrong.terminate();
      const a = await connect(keyed, { headers: { authorization: 'Bearer sk-ws-key' } });
      a.close();
      const b = await connect(keyed, {}, '?api_key=sk-ws-key');
      b.sendJson(chat('k', 'keyed'));
      assert.equal((await b.collect('k')).at(-1).type, 'done');
      b.close();
      await b.closed;
    } finally {
      await keyed.stop();
    }
    assert.ok(!keyed.logs.text.includes('sk-ws-key'));
  });
});

describe('protocol', () => {
  test('chat: chunks exactly as on SSE, then done with finish_reason and usage', async () => {
    const ws = await connect(proxy);
    ws.sendJson(chat('r1', 'hello socket', { stream_options: { include_usage: true } }));
    const msgs = await ws.collect('r1');
    const chunks = msgs.filter((m) => m.type === 'chunk').map((m) => m.chunk);
    assert.equal(chunks[0].choices[0].delta.role, 'assistant');
    for (const c of chunks) assert.equal(c.object, 'chat.completion.chunk');
    const text = chunks.map((c) => c.choices[0]?.delta.content || '').join('');
    assert.equal(text, 'Echo: hello socket');
    assert.equal(chunks.at(-2).choices[0].finish_reason, 'stop');
    assert.deepEqual(chunks.at(-1).choices, []);
    const done = msgs.at(-1);
    assert.equal(done.type, 'done');
    assert.equal(done.finish_reason, 'stop');
    assert.ok(done.usage.total_tokens > 0);
    assert.equal((await double.last('/api/chat')).body.stream, true);
    ws.close();
  });

  test('several requests interleave by id; limits on in-flight and duplicate ids', async () => {
    const ws = await connect(tight);
    ws.sendJson(chat('a', 'alpha one @gate', { think: false }));
    ws.sendJson(chat('b', 'beta two @gate', { think: false }));
    const firsts = [await ws.next(), await ws.next()];
    assert.deepEqual(firsts.map((m) => m.id).sort(), ['a', 'b']);
    ws.sendJson(chat('c', 'over the limit'));
    let m = await ws.next();
    assert.equal(m.type, 'error');
    assert.equal(m.id, 'c');
    assert.equal(m.error.code, 'too_many_requests');
    ws.sendJson(chat('a', 'duplicate'));
    m = await ws.next();
    assert.equal(m.error.code, 'duplicate_id');
    const text = { a: firsts.find((x) => x.id === 'a').chunk.choices[0].delta.content, b: firsts.find((x) => x.id === 'b').chunk.choices[0].delta.content };
    const done = new Set();
    while (done.size < 2) {
      await double.release();
      // Each release lets one more line of every gated stream through.
      for (let k = 0; k < 2 - done.size; k++) {
        m = await ws.next();
        if (m.type === 'done') done.add(m.id);
        else text[m.id] += m.chunk.choices[0]?.delta.content || '';
      }
    }
    assert.equal(text.a, 'Echo: alpha one');
    assert.equal(text.b, 'Echo: beta two');
    ws.close();
  });

  test('cancel: done with finish_reason cancelled, upstream aborted', async () => {
    const before = (await double.stats()).disconnects;
    const ws = await connect(proxy);
    ws.sendJson(chat('x', 'to be cancelled @gate', { think: false }));
    assert.equal((await ws.next()).type, 'chunk');
    ws.sendJson({ type: 'cancel', id: 'x' });
    const m = await ws.next();
    assert.equal(m.type, 'done');
    assert.equal(m.finish_reason, 'cancelled');
    assert.equal((await double.waitDisconnects(before + 1)).status, 200);
    ws.sendJson({ type: 'cancel', id: 'nope' });
    assert.equal((await ws.next()).error.code, 'unknown_id');
    ws.close();
  });

  test('bad JSON and bad requests get error messages; the connection stays', async () => {
    const ws = await connect(proxy);
    ws.send('{not json');
    let m = await ws.next();
    assert.equal(m.type, 'error');
    assert.equal(m.id, null);
    assert.equal(m.error.code, 'invalid_json');
    ws.sendJson({ type: 'chat', id: 'm1', messages: [] });
    m = await ws.next();
    assert.equal(m.id, 'm1');
    assert.equal(m.error.param, 'model');
    ws.sendJson({ type: 'dance', id: 'm2' });
    assert.equal((await ws.next()).error.code, 'invalid_type');
    ws.sendJson(chat('m3', 'still here'));
    assert.equal((await ws.collect('m3')).at(-1).type, 'done');
    ws.close();
  });

  test('fragmented message with a ping between the fragments', async () => {
    const ws = await connect(proxy);
    const text = JSON.stringify(chat('f', 'in pieces'));
    const pong = once(ws, 'pong');
    ws.send(text.slice(0, 10), { fin: false });
    ws.ping('between');
    ws.send(text.slice(10, 30), { fin: false });
    ws.send(text.slice(30), { fin: true });
    assert.equal((await pong)[0].toString(), 'between');
    assert.equal((await ws.collect('f')).at(-1).type, 'done');
    ws.close();
  });
});

test('a message trickling in byte by byte, around idle periods, is assembled', async () => {
  const sock = await rawSocket(proxy);
  sock.setNoDelay(true);
  const bytes = frame(0x1, JSON.stringify({ type: 'cancel', id: 'trickle' }));
  for (const b of bytes) {
    sock.write(Buffer.from([b]));
    await new Promise((r) => setImmediate(r));
  }
  assert.ok(await sock.waitFor((b) => b.includes('unknown_id')));
  sock.destroy();
});

describe('close codes', () => {
  test('binary frame → 1003', async () => {
    const ws = await connect(proxy);
    ws.send(Buffer.from([1, 2, 3]), { binary: true });
    assert.equal((await ws.closed).code, 1003);
  });

  test('invalid UTF-8 → 1007', async () => {
    const sock = await rawSocket(proxy);
    sock.write(frame(0x1, Buffer.from([0x7b, 0xff, 0xfe, 0x7d])));
    assert.equal(await closeCode(sock), 1007);
    sock.destroy();
  });

  test('message over WS_MAX_MESSAGE_BYTES → 1009', async () => {
    const ws = await connect(tight);
    ws.send(JSON.stringify(chat('big', 'x'.repeat(4096))));
    assert.equal((await ws.closed).code, 1009);
  });

  test('unmasked client frame → 1002; reserved opcode → 1002', async () => {
    let sock = await rawSocket(proxy);
    sock.write(frame(0x1, '{"type":"cancel","id":"z"}', { mask: false }));
    assert.equal(await closeCode(sock), 1002);
    sock.destroy();
    sock = await rawSocket(proxy);
    sock.write(frame(0x3, 'x'));
    assert.equal(await closeCode(sock), 1002);
    sock.destroy();
  });
});

describe('liveness', () => {
  test('idle connections are pinged; one that never answers is closed', async () => {
    const ws = await connect(tight);
    await once(ws, 'ping'); // ws answers with a pong by itself
    const sock = await rawSocket(tight); // never answers pings
    await sock.waitFor((b) => b.length >= 2);
    assert.equal(sock.buf[0] & 0x0f, 0x9, 'ping');
    assert.equal(await sock.waitFor(() => false), false, 'closed by the server');
    assert.equal(ws.readyState, WebSocket.OPEN, 'the answering client stays');
    ws.close();
  });

  test('a dropped connection aborts its upstream transfers', async () => {
    const before = (await double.stats()).disconnects;
    const ws = await connect(proxy);
    ws.sendJson(chat('d1', 'drop me @gate', { think: false }));
    ws.sendJson(chat('d2', 'drop me too @gate', { think: false }));
    await ws.next();
    await ws.next();
    ws.terminate();
    assert.equal((await double.waitDisconnects(before + 2)).status, 200);
  });

  test('a slow reader does not grow memory: the upstream is paused, nothing is lost', async () => {
    const ws = await connect(proxy);
    const rssOf = () => Number(fs.readFileSync(`/proc/${proxy.proc.pid}/status`, 'utf8').match(/VmRSS:\s+(\d+)/)[1]);
    const rssBefore = rssOf();
    const stallsBefore = (await double.stats()).stalls;
    ws._socket.pause(); // stop reading
    const words = 40000;
    // ~40 MB in all: far more than every socket buffer on the way can hold,
    // so the double must block at some point whatever the TCP autotuning.
    ws.sendJson(chat('slow', `@words=${words} @pad=1000`, { think: false }));
    // The double blocks on its writes once llm_proxy stops reading from it
    // (without backpressure it never would, and this loop would time out).
    while ((await double.stats()).stalls === stallsBefore);
    // Under ASan freed memory sits in the quarantine, so RSS says nothing there.
    if (!process.env.ASAN_OPTIONS) {
      const growth = rssOf() - rssBefore;
      assert.ok(growth < 64 * 1024, `llm_proxy grew by ${growth} kB while a slow client holds a large stream`);
    }
    ws._socket.resume();
    let count = 0;
    for (;;) {
      const m = await ws.next();
      if (m.type === 'done') break;
      assert.equal(m.type, 'chunk');
      if (m.chunk.choices[0]?.delta.content) count++;
    }
    assert.equal(count, words, 'every line arrived');
    ws.close();
  });
});

test('SIGTERM: sessions finish their requests, then close with 1001', async () => {
  const p = await startProxy({ SHUTDOWN_GRACE: '20' }, { upstream: double });
  const ws = await connect(p);
  ws.sendJson(chat('s', 'finishing @gate', { think: false }));
  await ws.next();
  const exited = p.exited();
  p.proc.kill('SIGTERM');
  while (!p.logs.text.includes('event=shutdown')) await once(p.proc.stderr, 'data');
  ws.sendJson(chat('late', 'too late'));
  const late = await ws.next();
  assert.equal(late.error.code, 'shutting_down');
  for (;;) {
    await double.release();
    const m = await ws.next();
    if (m.type === 'done') break;
  }
  assert.equal((await ws.closed).code, 1001);
  assert.equal(await exited, 0);
});
