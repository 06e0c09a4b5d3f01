// /ws/chat under attack (issue #9): one regression test per attack, written
// from the description and seen failing on the code before the fix.
// Real clients: the npm `ws` package and raw sockets for what a correct
// client never sends. Memory bounds are read from the proxy's VmHWM (peak
// RSS) on a proxy started for the test, and are asserted only without the
// sanitizers (ASan keeps freed memory in its quarantine).
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import { once } from 'node:events';
import { after, before, describe, test } from 'node:test';
import WebSocket from 'ws';
import { startDouble, startProxy } from './harness.mjs';

const SANITIZED = Boolean(process.env.ASAN_OPTIONS);

let double, proxy;
before(async () => {
  double = await startDouble();
  proxy = await startProxy({ WS_MAX_INFLIGHT: '2' }, { upstream: double });
});
after(async () => {
  await proxy.stop();
  await double.stop();
});

const wsUrl = (p, q = '') => `${p.url.replace('http', 'ws')}/ws/chat${q}`;
const chat = (id, content, extra = {}) => ({ type: 'chat', id, model: 'qwen3:8b', messages: [{ role: 'user', content }], ...extra });

// kB from /proc/<pid>/status.
const procKb = (p, field) => Number(fs.readFileSync(`/proc/${p.proc.pid}/status`, 'utf8').match(new RegExp(`${field}:\\s+(\\d+)`))[1]);

// Resolves when the proxy's log matches re (an event, never a sleep).
async function waitLog(p, re) {
  while (!re.test(p.logs.text)) await once(p.proc.stderr, 'data');
}

// A `ws` client whose next() rejects once the connection is gone, so a
// crashed server fails the test instead of hanging it.
async function connect(p, opts = {}, q = '') {
  const ws = new WebSocket(wsUrl(p, q), opts);
  const queue = [];
  const waiters = [];
  let closed = null;
  ws.on('message', (data) => {
    const m = JSON.parse(data.toString());
    const w = waiters.shift();
    if (w) w.resolve(m); else queue.push(m);
  });
  ws.closed = new Promise((resolve) => ws.on('close', (code) => {
    closed = code;
    while (waiters.length) waiters.shift().reject(new Error(`connection closed (${code})`));
    resolve({ code });
  }));
  ws.on('error', () => {});
  await once(ws, 'open');
  ws.next = () => {
    if (queue.length) return Promise.resolve(queue.shift());
    if (closed !== null) return Promise.reject(new Error(`connection closed (${closed})`));
    return new Promise((resolve, reject) => waiters.push({ resolve, reject }));
  };
  ws.sendJson = (o) => ws.send(JSON.stringify(o));
  return ws;
}

// Raw handshake; everything received afterwards accumulates in sock.buf.
async function rawSocket(p, extraHeaders = '') {
  const sock = net.connect(p.port, '127.0.0.1');
  await once(sock, 'connect');
  sock.setNoDelay(true);
  sock.buf = Buffer.alloc(0);
  sock.closedFlag = false;
  const waiters = [];
  const wake = () => { while (waiters.length) waiters.shift()(); };
  sock.on('data', (d) => { sock.buf = Buffer.concat([sock.buf, d]); wake(); });
  sock.on('close', () => { sock.closedFlag = true; wake(); });
  sock.on('error', () => {});
  sock.waitFor = async (pred) => {
    for (;;) {
      if (pred(sock.buf)) return true;
      if (sock.closedFlag) return false;
      await new Promise((r) => waiters.push(r));
    }
  };
  const key = crypto.randomBytes(16).toString('base64');
  sock.write(`GET /ws/chat HTTP/1.1\r\nHost: 127.0.0.1:${p.port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\n${extraHeaders}\r\n`);
  await sock.waitFor((b) => b.includes('\r\n\r\n'));
  const i = sock.buf.indexOf('\r\n\r\n');
  sock.head = sock.buf.slice(0, i).toString();
  sock.buf = sock.buf.slice(i + 4);
  return sock;
}

// A masked client frame; len16/len64 force a longer length encoding.
function frame(opcode, payload, { fin = true, lenForm = 'min' } = {}) {
  const p = Buffer.from(payload);
  let head;
  if (lenForm === 'min' && p.length < 126) head = Buffer.from([(fin ? 0x80 : 0) | opcode, 0x80 | p.length]);
  else if (lenForm === '64') {
    head = Buffer.alloc(10);
    head[0] = (fin ? 0x80 : 0) | opcode;
    head[1] = 0x80 | 127;
    head.writeBigUInt64BE(BigInt(p.length), 2);
  } else {
    head = Buffer.alloc(4);
    head[0] = (fin ? 0x80 : 0) | opcode;
    head[1] = 0x80 | 126;
    head.writeUInt16BE(p.length, 2);
  }
  const key = crypto.randomBytes(4);
  const body = Buffer.from(p.map((b, i) => b ^ key[i % 4]));
  return Buffer.concat([head, key, body]);
}

// The complete server frames at the start of buf.
function parseFrames(buf) {
  const out = [];
  let off = 0;
  while (buf.length - off >= 2) {
    let len = buf[off + 1] & 0x7f;
    let h = 2;
    if (len === 126) { if (buf.length - off < 4) break; len = buf.readUInt16BE(off + 2); h = 4; }
    else if (len === 127) { if (buf.length - off < 10) break; len = Number(buf.readBigUInt64BE(off + 2)); h = 10; }
    if (buf.length - off < h + len) break;
    out.push({ op: buf[off] & 0x0f, payload: buf.slice(off + h, off + h + len) });
    off += h + len;
  }
  return out;
}

// The status code of the server's close frame; null if the TCP connection
// ended without one.
async function closeCode(sock) {
  let code = null;
  await sock.waitFor((b) => {
    const c = parseFrames(b).find((f) => f.op === 0x8);
    if (c) code = c.payload.length >= 2 ? c.payload.readUInt16BE(0) : 1005;
    return Boolean(c);
  });
  return code;
}

describe('1. header injection into the upstream', () => {
  test('ids with CR/LF, controls, spaces, non-ASCII or over 128 bytes get an error, never an upstream request', async () => {
    const ws = await connect(proxy);
    const before = (await double.stats()).requests['/api/chat'] || 0;
    const smuggle = 'a\r\nContent-Length: 0\r\n\r\nPOST /api/pull HTTP/1.1\r\nHost: x\r\nX-Pad: ';
    for (const id of [smuggle, 'a\nb', 'a\rb', 'a\u0000b', 'a b', 'a\tb', 'é', 'x'.repeat(129), '']) {
      ws.sendJson(chat(id, 'hi'));
      const m = await ws.next();
      assert.equal(m.type, 'error', `id ${JSON.stringify(id)} was accepted`);
      // A raw NUL is refused by the JSON parser already.
      const codes = id.includes('\u0000') ? ['invalid_id', 'invalid_json'] : ['invalid_id'];
      assert.ok(codes.includes(m.error.code), m.error.code);
      ws.sendJson({ type: 'cancel', id });
      assert.ok(codes.includes((await ws.next()).error.code));
    }
    const good = `${'k'.repeat(100)}!~{}"'\\`.padEnd(128, 'z');
    ws.sendJson(chat(good, 'fine'));
    let m;
    do m = await ws.next(); while (m.type === 'chunk');
    assert.equal(m.type, 'done');
    assert.equal(m.id, good);
    const last = await double.last('/api/chat');
    assert.ok(last.request_id.endsWith(`-${good}`), 'the whole id reaches X-Request-Id, not truncated');
    assert.equal((await double.stats()).requests['/api/chat'], before + 1, 'only the valid request reached the upstream');
    ws.close();
  });
});

describe('2. a burst of frames with immediate replies', () => {
  test('~8 KB of small frames in one TCP write: every one answered, the process survives', async () => {
    const sock = await rawSocket(proxy);
    const texts = (b) => parseFrames(b).filter((f) => f.op === 0x1).length;
    // Small frames straddling wslay's 4 KB read boundaries, each answered at once.
    const bad = frame(0x1, '{not json');
    let expect = Math.ceil(8192 / bad.length);
    sock.write(Buffer.concat(Array.from({ length: expect }, () => bad)));
    assert.ok(await sock.waitFor((b) => texts(b) >= expect), `connection lost after ${texts(sock.buf)} of ${expect} replies`);
    // Then a mix: gated chats in flight, duplicates, over WS_MAX_INFLIGHT,
    // unknown cancels, pings.
    const frames = [];
    frames.push(frame(0x1, JSON.stringify(chat('g1', 'gated @gate', { think: false }))));
    frames.push(frame(0x1, JSON.stringify(chat('g2', 'gated @gate', { think: false }))));
    expect += 2; // their first chunks
    for (let i = 0; i < 100; i++) {
      frames.push(bad);
      frames.push(frame(0x1, JSON.stringify(chat('g1', 'duplicate'))));
      frames.push(frame(0x1, JSON.stringify(chat(`o${i}`, 'over WS_MAX_INFLIGHT'))));
      frames.push(frame(0x1, JSON.stringify({ type: 'cancel', id: `u${i}` })));
      frames.push(frame(0x9, 'p'));
      expect += 4;
    }
    sock.write(Buffer.concat(frames));
    assert.ok(await sock.waitFor((b) => texts(b) >= expect), `connection lost after ${texts(sock.buf)} of ${expect} replies`);
    assert.equal(proxy.proc.exitCode, null);
    assert.equal(proxy.proc.signalCode, null);
    sock.write(frame(0x1, JSON.stringify({ type: 'cancel', id: 'g1' })));
    sock.write(frame(0x1, JSON.stringify({ type: 'cancel', id: 'g2' })));
    assert.ok(await sock.waitFor((b) => parseFrames(b).filter((f) => f.op === 0x1 && f.payload.includes('"cancelled"')).length === 2));
    sock.destroy();
  });
});

describe('3. cancel under backpressure', () => {
  test('stream without reading, cancel, then read: done(cancelled), the connection stays usable', async () => {
    const ws = await connect(proxy);
    const stallsBefore = (await double.stats()).stalls;
    ws._socket.pause();
    ws.sendJson(chat('big', '@words=40000 @pad=1000', { think: false }));
    while ((await double.stats()).stalls === stallsBefore);
    ws.sendJson({ type: 'cancel', id: 'big' });
    ws._socket.resume();
    let m;
    do m = await ws.next(); while (m.type === 'chunk');
    assert.equal(m.type, 'done');
    assert.equal(m.finish_reason, 'cancelled');
    ws.sendJson(chat('after', 'still alive'));
    do m = await ws.next(); while (m.type === 'chunk');
    assert.equal(m.type, 'done');
    assert.equal(m.id, 'after');
    ws.close();
    await ws.closed;
  });
});

describe('4. bounded memory per connection', () => {
  test('a client that floods pings and never reads: reading stops, then 1008; RSS bounded', async (t) => {
    const p = await startProxy({ WS_SEND_TIMEOUT: '1' }, { upstream: double });
    try {
      const sock = await rawSocket(p);
      sock.pause(); // never read
      const base = procKb(p, 'VmRSS');
      const chunk = Buffer.concat(Array.from({ length: 8192 }, () => frame(0x9, '')));
      const timedOut = waitLog(p, /ws_send_timeout/).then(() => true);
      let sent = 0;
      let blocked = false;
      while (sent < 64 * 1024 * 1024 && !sock.closedFlag) {
        sent += chunk.length;
        if (!sock.write(chunk)) {
          blocked = await Promise.race([once(sock, 'drain').then(() => false), timedOut]);
          if (blocked) break;
        }
      }
      const growth = procKb(p, 'VmHWM') - base;
      t.diagnostic(`peak RSS growth ${growth} kB after ${sent} bytes of pings`);
      if (!SANITIZED) assert.ok(growth < 16 * 1024, `llm_proxy grew by ${growth} kB for ${sent} bytes of pings`);
      assert.ok(blocked, 'the proxy never stopped reading');
      // Read it all, then find the close frame behind the pongs (parsing
      // once: the buffer holds ~1 MiB of 2-byte frames).
      sock.resume();
      await sock.waitFor(() => false);
      const close = parseFrames(sock.buf).find((f) => f.op === 0x8);
      assert.ok(close, 'a close frame after the queued pongs');
      assert.equal(close.payload.readUInt16BE(0), 1008);
      sock.destroy();
    } finally {
      await p.stop();
    }
  });

  test('a 1 MiB message in 1-byte continuation frames costs memory in proportion to its payload', async (t) => {
    const p = await startProxy({}, { upstream: double });
    try {
      const sock = await rawSocket(p);
      const base = procKb(p, 'VmRSS');
      const head = '{"type":"cancel","id":"frag","pad":"';
      const n = 1024 * 1024 - 64;
      const parts = [frame(0x1, head, { fin: false })];
      const one = frame(0x0, 'x', { fin: false });
      for (let i = 0; i < n; i++) parts.push(one);
      parts.push(frame(0x0, '"}'));
      const all = Buffer.concat(parts);
      for (let off = 0; off < all.length; off += 1 << 20) {
        if (!sock.write(all.slice(off, off + (1 << 20)))) await once(sock, 'drain');
      }
      assert.ok(await sock.waitFor((b) => b.includes('unknown_id')), 'the reassembled message was answered');
      const growth = procKb(p, 'VmHWM') - base;
      t.diagnostic(`peak RSS growth ${growth} kB for a 1 MiB message in 1-byte frames`);
      if (!SANITIZED) assert.ok(growth < 12 * 1024, `llm_proxy grew by ${growth} kB for a 1 MiB fragmented message`);
      // Fragments above WS_MAX_MESSAGE_BYTES in total still close with 1009.
      const over = [frame(0x1, head, { fin: false })];
      const kb = frame(0x0, 'x'.repeat(1024), { fin: false });
      for (let i = 0; i < 1100; i++) over.push(kb);
      sock.write(Buffer.concat(over));
      assert.equal(await closeCode(sock), 1009);
      sock.destroy();
    } finally {
      await p.stop();
    }
  });
});

describe('5. Origin and the API key over WebSocket', () => {
  test('a foreign Origin gets 403 and no 101; loopback and no Origin upgrade', async () => {
    let sock = await rawSocket(proxy, 'Origin: https://evil.example\r\n');
    assert.match(sock.head, /^HTTP\/1\.1 403/);
    sock.destroy();
    sock = await rawSocket(proxy, `Origin: http://localhost:${proxy.port}\r\n`);
    assert.match(sock.head, /^HTTP\/1\.1 101/);
    sock.destroy();
    sock = await rawSocket(proxy, 'Origin: http://127.0.0.1:5173\r\n');
    assert.match(sock.head, /^HTTP\/1\.1 101/);
    sock.destroy();
    const ws = new WebSocket(wsUrl(proxy), { origin: 'https://evil.example' });
    ws.on('error', () => {});
    assert.equal((await once(ws, 'unexpected-response'))[1].statusCode, 403);
    ws.terminate();
  });

  test('the key check is the HTTP one: `Bearer  KEY` (two spaces) and ?api_key= both upgrade', async () => {
    const p = await startProxy({ LLM_PROXY_API_KEY: 'sk-ws' }, { upstream: double });
    try {
      const a = await connect(p, { headers: { authorization: 'Bearer  sk-ws' } });
      a.close();
      const b = await connect(p, {}, '?api_key=sk-ws');
      b.close();
      const c = new WebSocket(wsUrl(p), { headers: { authorization: 'Bearer sk-nope' } });
      c.on('error', () => {});
      assert.equal((await once(c, 'unexpected-response'))[1].statusCode, 401);
      c.terminate();
    } finally {
      await p.stop();
    }
  });
});

describe('6. smaller', () => {
  test('a session hibernates again after a fragmented message', async (t) => {
    const p = await startProxy({}, { upstream: double });
    const socks = [];
    try {
      const n = 300;
      // Warm up allocator arenas with one connection first.
      socks.push(await rawSocket(p));
      const base = procKb(p, 'VmRSS');
      const msg = JSON.stringify({ type: 'cancel', id: 'z' });
      for (let i = 0; i < n; i++) {
        const s = await rawSocket(p);
        s.write(Buffer.concat([frame(0x1, msg.slice(0, 5), { fin: false }), frame(0x0, msg.slice(5))]));
        socks.push(s);
      }
      for (const s of socks.slice(1)) assert.ok(await s.waitFor((b) => b.includes('unknown_id')));
      const per = ((procKb(p, 'VmRSS') - base) * 1024) / n;
      t.diagnostic(`${Math.round(per)} bytes per idle connection after a fragmented message`);
      if (!SANITIZED) assert.ok(per < 8 * 1024, `${Math.round(per)} bytes per idle connection after a fragmented message`);
    } finally {
      for (const s of socks) s.destroy();
      await p.stop();
    }
  });

  test('frame-level protocol errors are answered with a 1002 close frame', async () => {
    const cases = {
      'control frame over 125 bytes': frame(0x9, 'x'.repeat(126)),
      'bad frame right behind a message that gets a reply': Buffer.concat([frame(0x1, '{not json'), frame(0x9, 'x'.repeat(126))]),
      'non-minimal 16-bit length': frame(0x1, '{"a":1}', { lenForm: '16' }),
      'non-minimal 64-bit length': frame(0x1, '{"a":1}', { lenForm: '64' }),
      '64-bit length with the top bit set': (() => {
        const f = frame(0x1, '', { lenForm: '64' });
        f[2] = 0x80;
        return f;
      })(),
    };
    for (const [name, bytes] of Object.entries(cases)) {
      const sock = await rawSocket(proxy);
      sock.write(bytes);
      assert.equal(await closeCode(sock), 1002, name);
      sock.destroy();
    }
  });
});

describe('7. WebSocket messages and the request memory budget', () => {
  test('a message being received is held in LLM_PROXY_MAX_BODY_MEMORY: over it, close 1013, nothing past the limit', async () => {
    const p = await startProxy({ LLM_PROXY_MAX_BODY_MEMORY: '4MiB', WS_MAX_MESSAGE_BYTES: '1MiB' }, { upstream: double });
    const gauge = async () => Number((await (await fetch(`${p.url}/metrics`)).text())
      .match(/^llm_proxy_body_memory_bytes (\d+)/m)[1]);
    const socks = [];
    try {
      let accepted = 0, refused = 0;
      for (let i = 0; i < 8; i++) {
        const sock = await rawSocket(p);
        assert.match(sock.head, /^HTTP\/1\.1 101/);
        socks.push(sock);
        const before = await gauge();
        // 900 KiB of a message that never ends (no final frame).
        sock.write(frame(0x1, `{"type":"chat","id":"${i}","x":"${'x'.repeat(900 * 1024)}`, { fin: false, lenForm: '64' }));
        let code = null;
        for (;;) { // until it is counted or refused
          const c = parseFrames(sock.buf).find((f) => f.op === 0x8);
          if (c) { code = c.payload.readUInt16BE(0); break; }
          if ((await gauge()) >= before + 1000 * 1024) break; // its final 1 MiB buffer
        }
        if (code === null) accepted++;
        else { assert.equal(code, 1013); refused++; }
        assert.ok((await gauge()) <= 4 * 1024 * 1024, 'never past the budget');
      }
      assert.ok(accepted >= 1 && refused >= 4, `accepted ${accepted}, refused ${refused}`);
      for (const s of socks) s.destroy();
      while ((await gauge()) > 256 * 1024); // released with the connections
      const ws = await connect(p);
      ws.sendJson(chat('after', 'hello'));
      for (;;) {
        const m = await ws.next();
        if (m.type === 'done' || m.type === 'error') { assert.equal(m.type, 'done'); break; }
      }
      ws.close();
    } finally {
      for (const s of socks) s.destroy();
      await p.stop();
    }
  });
});
