// LLM_PROXY_WORKERS: several event-loop threads on one port (SO_REUSEPORT).
// Proves that two workers really serve (each thread's CPU time, the worker
// field of the access log, the per-worker metric), that metrics are summed,
// that the connection cap holds across workers, that SIGTERM drains the
// streams of every worker, and that one worker still works.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { once } from 'node:events';
import { after, before, test } from 'node:test';
import WebSocket from 'ws';
import { chatBody, dataOf, freePort, openChatStream, postJson, sseReader, startDouble, startProxy } from './harness.mjs';

let double;
before(async () => { double = await startDouble(); });
after(async () => { await double.stop(); });

// One request on a connection of its own (no keep-alive pool).
function request(port, method, p, body, headers = {}) {
  return new Promise((resolve, reject) => {
    const data = body === undefined ? undefined : JSON.stringify(body);
    const req = http.request({
      host: '127.0.0.1', port, method, path: p, agent: false,
      headers: { ...(data ? { 'content-type': 'application/json' } : {}), ...headers },
    }, (res) => {
      let text = '';
      res.on('data', (d) => { text += d; });
      res.on('end', () => resolve({ status: res.statusCode, text }));
    });
    req.on('error', reject);
    req.end(data);
  });
}

async function metricsText(p) {
  return (await request(p.port, 'GET', '/metrics')).text;
}

function metric(text, name, labels = '') {
  const esc = (name + labels).replace(/[{}"\\]/g, (c) => `\\${c}`);
  const m = text.match(new RegExp(`^${esc} (\\d+)`, 'm'));
  return m ? Number(m[1]) : 0;
}

// The worker that served request id rid, from its access log line.
function workerOf(p, rid) {
  const m = p.logs.text.match(new RegExp(`worker=(\\d+) event=http_request req_id=${rid} `));
  return m ? Number(m[1]) : null;
}

// utime + stime (clock ticks) of each llm_proxy worker thread, by name.
function threadTimes(pid) {
  const out = {};
  for (const tid of fs.readdirSync(`/proc/${pid}/task`)) {
    const comm = fs.readFileSync(`/proc/${pid}/task/${tid}/comm`, 'utf8').trim();
    if (!comm.startsWith('llm_proxy:w')) continue;
    const stat = fs.readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    out[comm] = Number(f[11]) + Number(f[12]);
  }
  return out;
}

test('two workers: both threads serve, on one port from LLM_PROXY_PORT_FILE; metrics are summed', async () => {
  const portFile = path.join(os.tmpdir(), `llm_proxy_workers_${process.pid}.port`);
  const p = await startProxy({ LLM_PROXY_WORKERS: '2', LLM_PROXY_PORT_FILE: portFile }, { upstream: double });
  try {
    assert.equal(Number(fs.readFileSync(portFile, 'utf8')), p.port);
    assert.match(p.logs.text, /event=listening msg="[^"]*workers=2 /);
    // 40 chat completions, each on a connection of its own: the kernel
    // spreads the connections over both listening sockets.
    const n = 40;
    const results = await Promise.all(Array.from({ length: n }, (_, i) =>
      request(p.port, 'POST', '/v1/chat/completions', chatBody(`spread ${i}`), { 'x-request-id': `spread-${i}` })));
    for (const r of results) assert.equal(r.status, 200, r.text);
    // (Each thread names itself when it starts: after it served, it has.)
    assert.deepEqual(Object.keys(threadTimes(p.proc.pid)).sort(), ['llm_proxy:w0', 'llm_proxy:w1']);
    const byWorker = [0, 0];
    for (let i = 0; i < n; i++) byWorker[workerOf(p, `spread-${i}`)]++;
    assert.ok(byWorker[0] > 0 && byWorker[1] > 0, `requests per worker: ${byWorker}`);
    // One registry: the counters of both workers add up.
    const m = await metricsText(p);
    assert.equal(metric(m, 'llm_proxy_workers'), 2);
    assert.equal(metric(m, 'llm_proxy_http_requests_total', '{route="chat_completions",method="POST",status="200"}'), n);
    assert.equal(metric(m, 'llm_proxy_http_request_duration_seconds_count', '{route="chat_completions"}'), n);
    const w0 = metric(m, 'llm_proxy_worker_requests_total', '{worker="0"}');
    const w1 = metric(m, 'llm_proxy_worker_requests_total', '{worker="1"}');
    assert.ok(w0 >= byWorker[0] && w1 >= byWorker[1], `worker metric ${w0}/${w1}, log ${byWorker}`);
    assert.equal(metric(m, 'llm_proxy_upstream_requests_total', `{host="${double.url}",route="chat_completions",status="200"}`), n);
    // Load on 32 keep-alive connections at once: both threads burn CPU.
    const before = threadTimes(p.proc.pid);
    await Promise.all(Array.from({ length: 32 }, async () => {
      const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
      for (let i = 0; i < 60; i++) {
        await new Promise((resolve, reject) => {
          http.get({ host: '127.0.0.1', port: p.port, path: '/health', agent }, (res) => {
            res.resume();
            res.on('end', resolve);
          }).on('error', reject);
        });
      }
      agent.destroy();
    }));
    const afterT = threadTimes(p.proc.pid);
    for (const w of ['llm_proxy:w0', 'llm_proxy:w1'])
      assert.ok(afterT[w] > before[w], `${w} did no work: ${JSON.stringify([before, afterT])}`);
  } finally {
    await p.stop();
    fs.rmSync(portFile, { force: true });
  }
});

function rawConnect(port) {
  const sock = net.connect(port, '127.0.0.1');
  sock.data = '';
  sock.on('error', () => {});
  sock.on('data', (d) => { sock.data += d.toString(); });
  return once(sock, 'connect').then(() => sock);
}

async function roundTrip(sock, rid) {
  sock.data = '';
  sock.write(`GET /health HTTP/1.1\r\nHost: x\r\nX-Request-Id: ${rid}\r\n\r\n`);
  while (!sock.data.includes('"ok"')) await once(sock, 'data');
}

test('LLM_PROXY_MAX_CONNECTIONS holds across workers: 2 + 2 held, the fifth waits', async () => {
  const p = await startProxy({ LLM_PROXY_WORKERS: '2', LLM_PROXY_MAX_CONNECTIONS: '4' }, { upstream: double });
  const all = [];
  try {
    // Two held connections on each worker (ones landing on a full side are
    // closed again; the round trip tells which worker accepted each).
    const held = [[], []];
    for (let i = 0; held[0].length + held[1].length < 4; i++) {
      assert.ok(i < 200, 'connections never spread over both workers');
      const s = await rawConnect(p.port);
      all.push(s);
      await roundTrip(s, `held-${i}`);
      // The access line is written once the reply is out.
      while (workerOf(p, `held-${i}`) === null) await once(p.proc.stderr, 'data');
      const w = workerOf(p, `held-${i}`);
      if (held[w].length < 2) {
        held[w].push(s);
      } else {
        s.destroy();
        await once(s, 'close');
      }
    }
    // Three more: whichever worker the kernel gives them to, none is served.
    const extra = await Promise.all([0, 1, 2].map(() => rawConnect(p.port)));
    all.push(...extra);
    extra.forEach((s, i) => s.write(`GET /health HTTP/1.1\r\nHost: x\r\nX-Request-Id: extra-${i}\r\n\r\n`));
    // A round trip through each worker: each has had its chance to serve them.
    await roundTrip(held[0][0], 'probe-0');
    await roundTrip(held[1][0], 'probe-1');
    assert.deepEqual(extra.map((s) => s.data), ['', '', ''], 'connections over the cap must wait');
    assert.match(p.logs.text, /event=connection_cap/);
    // One place frees: exactly one waiting connection is served.
    held[0][1].destroy();
    await new Promise((resolve) => {
      const check = () => (extra.some((s) => s.data.includes('"ok"')) ? resolve() : setTimeout(check, 10));
      check();
    });
    await roundTrip(held[0][0], 'probe-2');
    await roundTrip(held[1][0], 'probe-3');
    assert.equal(extra.filter((s) => s.data.includes('"ok"')).length, 1, 'one place, one connection served');
  } finally {
    for (const s of all) s.destroy();
    await p.stop();
  }
});

test('a burst of connections at the cap: never more of them served than the cap', async () => {
  const d = await startDouble();
  const p = await startProxy({ LLM_PROXY_WORKERS: '2', LLM_PROXY_MAX_CONNECTIONS: '2' }, { upstream: d });
  const socks = [];
  try {
    // 24 connections at once, each asking for a gated stream: both workers
    // accept at the same time; whatever the race, two streams run.
    socks.push(...await Promise.all(Array.from({ length: 24 }, () => rawConnect(p.port))));
    const body = JSON.stringify(chatBody('burst @gate', { stream: true, think: false }));
    for (const s of socks) {
      s.write(`POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`);
    }
    const answered = () => socks.filter((s) => s.data.startsWith('HTTP/1.1 200')).length;
    while (answered() < 2) await Promise.race(socks.map((s) => once(s, 'data')));
    // Ask the double many times: the streams running never pass the cap,
    // and no third client is answered.
    for (let i = 0; i < 50; i++) assert.equal((await d.stats()).active_streams, 2);
    assert.equal(answered(), 2);
  } finally {
    for (const s of socks) s.destroy();
    await p.stop();
    await d.stop();
  }
});

test('SIGTERM with two workers: the streams of both finish, then exit 0', async () => {
  const p = await startProxy({ LLM_PROXY_WORKERS: '2', SHUTDOWN_GRACE: '20' }, { upstream: double });
  // 12 gated streams, each on its own connection (all on one worker: 1 in 2048).
  const streams = [];
  for (let i = 0; i < 12; i++) {
    const res = await openChatStream(p, chatBody('a b @gate', { think: false }));
    assert.equal(res.status, 200);
    const s = sseReader(res);
    assert.ok(dataOf(await s.next()), 'first chunk');
    streams.push(s);
  }
  const ws = new WebSocket(`${p.url.replace('http', 'ws')}/ws/chat`);
  await once(ws, 'open');
  const wsClosed = once(ws, 'close');
  const m = await metricsText(p);
  assert.equal(metric(m, 'llm_proxy_http_requests_in_flight'), 12);
  assert.equal(metric(m, 'llm_proxy_websocket_connections'), 1);
  const exited = p.exited();
  p.proc.kill('SIGTERM');
  while (!p.logs.text.includes('event=shutdown')) await once(p.proc.stderr, 'data');
  assert.match(p.logs.text, /event=shutdown msg="2 worker\(s\) draining/);
  // Every worker now refuses new work.
  for (let i = 0; i < 6; i++) assert.equal((await request(p.port, 'GET', '/ready')).status, 503);
  const ends = Promise.all(streams.map(async (s) => (await s.all()).map(dataOf).at(-1)));
  for (let i = 0; i < 4; i++) await double.release();
  assert.deepEqual(await ends, Array(12).fill('[DONE]'));
  assert.equal((await wsClosed)[0], 1001);
  assert.equal(await exited, 0);
  // Both workers had streams to drain.
  const served = [...p.logs.text.matchAll(/worker=(\d+) event=http_request [^\n]*route=chat_completions/g)].map((x) => x[1]);
  assert.deepEqual([...new Set(served)].sort(), ['0', '1'], p.logs.text.slice(-3000));
});

test('LLM_PROXY_WORKERS=1 still serves HTTP and WebSocket, and stops cleanly', async () => {
  const p = await startProxy({ LLM_PROXY_WORKERS: '1' }, { upstream: double });
  try {
    assert.match(p.logs.text, /workers=1 /);
    const r = await postJson(`${p.url}/v1/chat/completions`, chatBody('one worker'));
    assert.equal(r.status, 200, r.text);
    assert.deepEqual(Object.keys(threadTimes(p.proc.pid)), ['llm_proxy:w0']);
    const ws = new WebSocket(`${p.url.replace('http', 'ws')}/ws/chat`);
    await once(ws, 'open');
    const m = await metricsText(p);
    assert.equal(metric(m, 'llm_proxy_workers'), 1);
    assert.equal(metric(m, 'llm_proxy_websocket_connections'), 1);
    assert.ok(metric(m, 'llm_proxy_worker_requests_total', '{worker="0"}') >= 1);
    assert.ok(!m.includes('worker="1"'));
    ws.close();
    await once(ws, 'close');
  } finally {
    await p.stop();
  }
});

test('the default is one worker per CPU available (sched_getaffinity)', async () => {
  const p = await startProxy({ LLM_PROXY_WORKERS: undefined }, { upstream: double });
  try {
    const cpus = os.availableParallelism ? os.availableParallelism() : os.cpus().length;
    assert.match(p.logs.text, new RegExp(`workers=${cpus} `));
    assert.equal(metric(await metricsText(p), 'llm_proxy_workers'), cpus);
  } finally {
    await p.stop();
  }
});

test('SO_REUSEPORT never shares a port by accident: a port in use, by llm_proxy or anyone, is refused', async () => {
  const port = await freePort();
  const a = await startProxy({ LLM_PROXY_WORKERS: '2', LLM_PROXY_PORT: String(port) }, { upstream: double });
  try {
    // A second llm_proxy (same user, SO_REUSEPORT too) must not join a's port.
    await assert.rejects(startProxy({ LLM_PROXY_WORKERS: '2', LLM_PROXY_PORT: String(port) }, { upstream: double }),
      /exited with 1[^]*startup_failed[^]*cannot listen/);
    assert.equal((await request(port, 'GET', '/health')).status, 200);
  } finally {
    await a.stop();
  }
  // Any other listener on the port (no SO_REUSEPORT): refused as well.
  const other = net.createServer();
  await new Promise((resolve) => other.listen(port, '127.0.0.1', resolve));
  try {
    await assert.rejects(startProxy({ LLM_PROXY_WORKERS: '2', LLM_PROXY_PORT: String(port) }, { upstream: double }),
      /exited with 1[^]*cannot listen/);
  } finally {
    other.close();
  }
});
