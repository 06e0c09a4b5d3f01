// llm_proxy HTTP edge, driven with raw sockets (what real clients and
// attackers put on the wire): request smuggling through conflicting
// Content-Length headers, HTTP/1.0 streams, Expect: 100-continue, early 413,
// chunk extensions.
import assert from 'node:assert/strict';
import net from 'node:net';
import { once } from 'node:events';
import { after, before, test } from 'node:test';
import { chatBody, startDouble, startProxy } from './harness.mjs';

let double, proxy;
before(async () => {
  double = await startDouble();
  proxy = await startProxy({ MAX_BODY_BYTES: '64KiB', LLM_PROXY_REQUEST_READ_TIMEOUT: '3', LLM_PROXY_IDLE_TIMEOUT: '3' }, { upstream: double });
});
after(async () => {
  await proxy.stop();
  await double.stop();
});

// A raw connection that records everything it receives and when it closed.
async function raw(port) {
  const sock = net.connect(port, '127.0.0.1');
  sock.buf = Buffer.alloc(0);
  sock.gone = false;
  sock.on('error', () => {});
  sock.on('data', (d) => { sock.buf = Buffer.concat([sock.buf, d]); sock.emit('more'); });
  sock.on('close', () => { sock.gone = true; sock.emit('more'); });
  await once(sock, 'connect');
  // Resolves once pred(text) holds or the connection closed.
  sock.until = async (pred) => {
    while (!pred(sock.buf.toString('latin1')) && !sock.gone) await once(sock, 'more');
    return sock.buf.toString('latin1');
  };
  return sock;
}

const statusLines = (text) => text.match(/^HTTP\/1\.[01] \d{3}[^\r\n]*/gm) || [];

// One complete response at the start of text: {status, headers, body, rest}.
function parseResponse(text) {
  const end = text.indexOf('\r\n\r\n');
  if (end < 0) return null;
  const [statusLine, ...lines] = text.slice(0, end).split('\r\n');
  const headers = {};
  for (const l of lines) {
    const i = l.indexOf(':');
    headers[l.slice(0, i).trim().toLowerCase()] = l.slice(i + 1).trim();
  }
  const status = Number(statusLine.split(' ')[1]);
  let body = text.slice(end + 4);
  if (headers['content-length'] !== undefined) body = body.slice(0, Number(headers['content-length']));
  return { status, headers, body };
}

test('conflicting Content-Length headers: one 400, connection closed, the smuggled request never runs', async () => {
  const before = (await double.stats()).requests['/api/chat'] || 0;
  const body = JSON.stringify(chatBody('smuggle'));
  const smuggled = 'GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n';
  const sock = await raw(proxy.port);
  sock.write('POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n' +
    `Content-Length: ${body.length}\r\nContent-Length: ${body.length + smuggled.length}\r\n\r\n${body}${smuggled}`);
  const text = await sock.until(() => false); // until the server closes
  const lines = statusLines(text);
  assert.equal(lines.length, 1, `exactly one response, got: ${text}`);
  const res = parseResponse(text);
  assert.equal(res.status, 400);
  assert.equal(res.headers.connection, 'close');
  assert.equal(JSON.parse(res.body).error.code, 'conflicting_content_length');
  assert.equal((await double.stats()).requests['/api/chat'] || 0, before, 'no chat may reach the upstream');
});

test('the same shape with the larger length first: still one 400 and close', async () => {
  const body = JSON.stringify(chatBody('smuggle2'));
  const sock = await raw(proxy.port);
  sock.write('POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n' +
    `Content-Length: ${body.length + 10}\r\nContent-Length: ${body.length}\r\n\r\n${body}0123456789`);
  const text = await sock.until(() => false);
  assert.equal(statusLines(text).length, 1, text);
  assert.equal(parseResponse(text).status, 400);
});

test('Content-Length together with Transfer-Encoding is refused (400, close)', async () => {
  const sock = await raw(proxy.port);
  sock.write('POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n' +
    'Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n');
  const text = await sock.until(() => false);
  assert.equal(statusLines(text).length, 1, text);
  assert.equal(parseResponse(text).status, 400);
});

test('a GET with a body is refused, not read as a second request', async () => {
  const sock = await raw(proxy.port);
  const inner = 'GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n';
  sock.write(`GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: ${inner.length}\r\n\r\n${inner}`);
  const text = await sock.until(() => false);
  assert.equal(statusLines(text).length, 1, text);
  assert.equal(parseResponse(text).status, 400);
});

test('identical duplicate Content-Length values are accepted', async () => {
  const body = JSON.stringify(chatBody('dup same'));
  const sock = await raw(proxy.port);
  sock.write('POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n' +
    `Content-Length: ${body.length}\r\nContent-Length: ${body.length}\r\nConnection: close\r\n\r\n${body}`);
  const res = parseResponse(await sock.until(() => false));
  assert.equal(res.status, 200, res.body);
});

test('HTTP/1.0 keep-alive client: a stream is close-delimited (Connection: close, no Content-Length)', async () => {
  const body = JSON.stringify(chatBody('old client', { stream: true }));
  const sock = await raw(proxy.port);
  sock.write('POST /v1/chat/completions HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n' +
    `Content-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n${body}`);
  const text = await sock.until(() => false);
  assert.ok(sock.gone);
  const head = text.slice(0, text.indexOf('\r\n\r\n')).toLowerCase();
  assert.match(head, /^http\/1\.[01] 200/);
  assert.doesNotMatch(head, /content-length/);
  assert.doesNotMatch(head, /transfer-encoding/);
  assert.match(head, /\r\nconnection: close/);
  const payload = text.slice(text.indexOf('\r\n\r\n') + 4);
  assert.match(payload, /^data: \{/);
  assert.match(payload, /data: \[DONE\]\n\n$/);
});

test('HTTP/1.0 keep-alive client: a JSON reply keeps its Content-Length and the connection', async () => {
  const sock = await raw(proxy.port);
  sock.write('GET /health HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\r\n');
  const text = await sock.until((t) => /\r\n\r\n[\s\S]*"ok"/.test(t));
  const res = parseResponse(text);
  assert.equal(res.status, 200);
  assert.ok(res.headers['content-length']);
  sock.destroy();
});

test('Expect: 100-continue within the limit: 100 Continue, then the answer', async () => {
  const body = JSON.stringify(chatBody('expect'));
  const sock = await raw(proxy.port);
  sock.write('POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n' +
    `Expect: 100-continue\r\nContent-Length: ${body.length}\r\n\r\n`);
  const first = await sock.until((t) => t.includes('\r\n\r\n'));
  assert.match(first, /^HTTP\/1\.1 100 Continue\r\n\r\n/);
  sock.write(body);
  const text = await sock.until((t) => /Echo: expect/.test(t));
  assert.match(text, /HTTP\/1\.1 200 OK/);
  sock.destroy();
});

test('Expect: 100-continue over MAX_BODY_BYTES: an immediate 413 JSON, no body needed', async () => {
  const sock = await raw(proxy.port);
  sock.write('POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n' +
    'Expect: 100-continue\r\nContent-Length: 10000000\r\n\r\n');
  const text = await sock.until((t) => parseResponse(t) !== null && /\}\n/.test(t));
  const res = parseResponse(text);
  assert.ok(res, `no answer before the connection closed: ${text}`);
  assert.equal(res.status, 413);
  assert.equal(JSON.parse(res.body).error.code, 'request_too_large');
  sock.destroy();
});

test('Content-Length over MAX_BODY_BYTES without Expect: an immediate 413 before the body', async () => {
  const sock = await raw(proxy.port);
  sock.write('POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n' +
    'Content-Length: 10000000\r\n\r\n{"model":');
  const text = await sock.until((t) => parseResponse(t) !== null && /\}\n/.test(t));
  const res = parseResponse(text);
  assert.ok(res, `no answer before the connection closed: ${text}`);
  assert.equal(res.status, 413);
  assert.equal(JSON.parse(res.body).error.code, 'request_too_large');
  sock.destroy();
});

test('chunk extensions are accepted and ignored', async () => {
  const body = JSON.stringify(chatBody('chunked ext'));
  const a = body.slice(0, 10), b = body.slice(10);
  const sock = await raw(proxy.port);
  sock.write('POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n' +
    'Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n' +
    `${a.length.toString(16)};ext=1\r\n${a}\r\n${b.length.toString(16)} ; name="v"\r\n${b}\r\n0;last\r\n\r\n`);
  const res = parseResponse(await sock.until(() => false));
  assert.equal(res.status, 200, res.body);
  assert.equal(JSON.parse(res.body).choices[0].message.content, 'Echo: chunked ext');
});

test('chunk extensions on a pipelined keep-alive connection; ";" in bodies is left alone', async () => {
  const b1 = JSON.stringify(chatBody('semi;colons; in a chunked body'));
  const b2 = JSON.stringify(chatBody('and; in a sized one'));
  const sock = await raw(proxy.port);
  const cut = 7;
  sock.write('POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n' +
    'Transfer-Encoding: chunked\r\n\r\n' +
    `${cut.toString(16)};a=";"\r\n${b1.slice(0, cut)}\r\n${(b1.length - cut).toString(16)};b\r\n${b1.slice(cut)}\r\n0\r\nX-Trailer: t;1\r\n\r\n` +
    'POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\n' +
    `Content-Length: ${b2.length}\r\n\r\n${b2}`);
  const text = await sock.until(() => false);
  assert.equal(statusLines(text).length, 2, text);
  assert.match(text, /Echo: semi;colons; in a chunked body/);
  assert.match(text, /Echo: and; in a sized one/);
});

test('a chunk-size line without end (evhttp would buffer it all) closes the connection', async () => {
  const sock = await raw(proxy.port);
  sock.write('POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n' +
    'Transfer-Encoding: chunked\r\n\r\n5;');
  const junk = 'a'.repeat(64 * 1024);
  while (!sock.gone) {
    // The server may close while a write is pending: EPIPE rejects once().
    if (!sock.write(junk)) await Promise.race([once(sock, 'drain'), once(sock, 'close')]).catch(() => {});
    await new Promise((r) => setImmediate(r));
  }
  assert.match(proxy.logs.text, /chunk_line_too_long/);
});
