// llm_proxy across several Ollama hosts (issue 14): three doubles on
// loopback behind one proxy. Model-aware routing, least-in-flight spread,
// passive health, active probe and recovery, failover before the first
// byte, /ready and per-host metrics. Every wait is on an event (a log line,
// a metric, a double's counter) with a bounded deadline; no sleeps.
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { test } from 'node:test';
import WebSocket from 'ws';
import { chatBody, dataOf, openChatStream, postJson, sseReader, startDouble, startProxy } from './harness.mjs';

// Resolves when the proxy's log text satisfies pred (checked on every new
// stderr piece), or fails after ms.
function waitLog(p, pred, what, ms = 8000) {
  return new Promise((resolve, reject) => {
    const check = () => {
      if (!pred(p.logs.text)) return false;
      clearTimeout(timer);
      p.proc.stderr.off('data', onData);
      resolve();
      return true;
    };
    const onData = () => setImmediate(check);
    const timer = setTimeout(() => {
      p.proc.stderr.off('data', onData);
      reject(new Error(`timed out waiting for ${what}:\n${p.logs.text.slice(-3000)}`));
    }, ms);
    p.proc.stderr.on('data', onData);
    check();
  });
}

const count = (text, re) => (text.match(new RegExp(re, 'g')) || []).length;
const esc = (s) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

// Both model lists of every host fetched at least once.
const refreshed = (p, doubles) => waitLog(p, (t) => doubles.every((d) =>
  count(t, `event=upstream_models msg="host=${esc(d.url)} path=/api/tags`) > 0 &&
  count(t, `event=upstream_models msg="host=${esc(d.url)} path=/api/ps`) > 0), 'the first model refresh');

async function chats(d) {
  return (await d.stats()).requests['/api/chat'] || 0;
}

async function metrics(p) {
  return (await fetch(`${p.url}/metrics`)).text();
}

function metric(text, name, labels = {}) {
  for (const line of text.split('\n')) {
    if (!line.startsWith(`${name}{`) && !line.startsWith(`${name} `)) continue;
    if (Object.entries(labels).every(([k, v]) => line.includes(`${k}="${v}"`))) return Number(line.split(' ').at(-1));
  }
  return undefined;
}

async function startHosts(argsList, env = {}) {
  const doubles = await Promise.all(argsList.map((a) => startDouble(a)));
  const p = await startProxy({ OLLAMA_URL_INTERNAL: doubles.map((d) => d.url).join(','), ...env });
  return {
    doubles, p,
    stop: async () => {
      await p.stop();
      for (const d of doubles) if (d.proc.exitCode === null && d.proc.signalCode === null) await d.stop();
    },
  };
}

test('routing: a model goes to the only host that has it; a model no host has is 404', async () => {
  const { doubles: [a, b, c], p, stop } = await startHosts([
    ['--models', 'qwen3:8b'], ['--models', 'llama3.2:latest'], ['--models', 'bge-m3:latest']]);
  try {
    await refreshed(p, [a, b, c]);
    for (let i = 0; i < 6; i++) {
      const r = await postJson(`${p.url}/v1/chat/completions`, { model: 'llama3.2', messages: [{ role: 'user', content: 'hi' }] });
      assert.equal(r.status, 200, r.text);
    }
    assert.deepEqual([await chats(a), await chats(b), await chats(c)], [0, 6, 0]);
    const e = await postJson(`${p.url}/v1/embeddings`, { model: 'bge-m3', input: ['one', 'two'] });
    assert.equal(e.status, 200, e.text);
    assert.equal((await c.stats()).requests['/api/embed'], 1);
    const missing = await postJson(`${p.url}/v1/chat/completions`, chatBody('hi', { model: 'nosuch:1b' }));
    assert.equal(missing.status, 404, missing.text);
    assert.equal(missing.json.error.code, 'model_not_found');
    // /v1/models: the union of the three hosts.
    const models = (await (await fetch(`${p.url}/v1/models`)).json()).data.map((m) => m.id).sort();
    assert.deepEqual(models, ['bge-m3:latest', 'llama3.2:latest', 'qwen3:8b']);
  } finally {
    await stop();
  }
});

test('routing: the host where the model is loaded is preferred', async () => {
  const { doubles: [a, b, c], p, stop } = await startHosts([[], ['--loaded', 'qwen3:8b'], []]);
  try {
    await refreshed(p, [a, b, c]);
    for (let i = 0; i < 9; i++) {
      const r = await postJson(`${p.url}/v1/chat/completions`, chatBody('hi'));
      assert.equal(r.status, 200, r.text);
    }
    assert.deepEqual([await chats(a), await chats(b), await chats(c)], [0, 9, 0]);
  } finally {
    await stop();
  }
});

test('least in flight: 60 concurrent requests over 3 equal hosts, each within 20% of even', async () => {
  const { doubles, p, stop } = await startHosts([[], [], []]);
  try {
    await refreshed(p, doubles);
    const all = await Promise.all(Array.from({ length: 60 }, () =>
      postJson(`${p.url}/v1/chat/completions`, chatBody('spread @slow=200')).then((r) => r.status)));
    assert.deepEqual([...new Set(all)], [200]);
    const counts = await Promise.all(doubles.map(chats));
    for (const n of counts) assert.ok(n >= 16 && n <= 24, `uneven spread: ${counts}`);
    const m = await metrics(p);
    for (const d of doubles) {
      assert.equal(metric(m, 'llm_proxy_upstream_requests_total', { host: d.url, route: 'chat_completions', status: '200' }), counts[doubles.indexOf(d)]);
      assert.equal(metric(m, 'llm_proxy_upstream_in_flight', { host: d.url }), 0);
      assert.equal(metric(m, 'llm_proxy_upstream_healthy', { host: d.url }), 1);
    }
  } finally {
    await stop();
  }
});

test('a host killed mid-load: its stream ends with a clean error, later requests are all served', async () => {
  const { doubles: [a, b, c], p, stop } = await startHosts([[], [], []], { UPSTREAM_FAIL_THRESHOLD: '2' });
  try {
    await refreshed(p, [a, b, c]);
    // One gated stream per host (fewest in flight spreads them).
    const streams = [];
    for (let i = 0; i < 3; i++) {
      const s = sseReader(await openChatStream(p, chatBody('hold @gate', { think: false })));
      assert.ok(dataOf(await s.next()), 'first chunk');
      streams.push(s);
    }
    assert.deepEqual([(await a.stats()).active_streams, (await b.stats()).active_streams, (await c.stats()).active_streams], [1, 1, 1]);
    b.proc.kill('SIGKILL');
    await once(b.proc, 'exit');
    const results = await Promise.all(Array.from({ length: 12 }, () => postJson(`${p.url}/v1/chat/completions`, chatBody('after the crash'))));
    for (const r of results) assert.equal(r.status, 200, r.text);
    // Each release lets one more line of every gated stream through.
    for (let i = 0; i < 4; i++) await Promise.all([a.release(), c.release()]);
    const ends = await Promise.all(streams.map(async (s) => (await s.all()).map(dataOf).at(-1)));
    const done = ends.filter((e) => e === '[DONE]').length;
    const errors = ends.filter((e) => e && e.error);
    assert.equal(done, 2, JSON.stringify(ends));
    assert.equal(errors.length, 1, JSON.stringify(ends));
    assert.equal(errors[0].error.type, 'server_error');
    await waitLog(p, (t) => t.includes(`event=upstream_down msg="host=${b.url} `), 'the killed host marked down');
    const m = await metrics(p);
    assert.equal(metric(m, 'llm_proxy_upstream_healthy', { host: b.url }), 0);
    assert.ok(metric(m, 'llm_proxy_upstream_failovers_total') >= 1);
    const ready = await fetch(`${p.url}/ready`);
    assert.equal(ready.status, 200);
    const body = await ready.json();
    assert.deepEqual(body.hosts.map((h) => h.url), [a.url, b.url, c.url]);
    assert.equal(body.hosts[0].state, 'healthy');
    assert.equal(body.hosts[2].state, 'healthy');
    assert.notEqual(body.hosts[1].state, 'healthy');
    assert.equal(body.hosts[1].reachable, false);
  } finally {
    await stop();
  }
});

test('a host that hangs: its requests fail over, it is marked down, probed, and recovers', async () => {
  const { doubles: [a, b], p, stop } = await startHosts([[], []], {
    UPSTREAM_FAIL_THRESHOLD: '1', CHAT_TIMEOUT: '0.5', CONNECT_TIMEOUT: '0.3',
    UPSTREAM_BACKOFF_MIN: '0.05', UPSTREAM_BACKOFF_MAX: '0.2', READY_CACHE_TTL: '0',
  });
  try {
    await refreshed(p, [a, b]);
    await fetch(`${b.url}/_double/fault?mode=hang`, { method: 'POST' });
    const results = await Promise.all(Array.from({ length: 4 }, () => postJson(`${p.url}/v1/chat/completions`, chatBody('during the hang'))));
    for (const r of results) assert.equal(r.status, 200, r.text);
    await waitLog(p, (t) => t.includes(`event=upstream_down msg="host=${b.url} `), 'the hung host marked down');
    const ready = await (await fetch(`${p.url}/ready`)).json();
    assert.equal(ready.status, 'ready');
    assert.notEqual(ready.hosts[1].state, 'healthy');
    assert.equal(ready.hosts[0].state, 'healthy');
    // While down, new work goes to the healthy host only.
    const before = await chats(b);
    for (let i = 0; i < 4; i++) assert.equal((await postJson(`${p.url}/v1/chat/completions`, chatBody('x'))).status, 200);
    assert.equal(await chats(b), before);
    // /v1/models asks only the healthy hosts (a hung one would stall it).
    const tagsBefore = (await b.stats()).requests['/api/tags'];
    const list = await fetch(`${p.url}/v1/models`);
    assert.equal(list.status, 200);
    assert.ok((await list.json()).data.length > 0);
    assert.equal((await b.stats()).requests['/api/tags'], tagsBefore);
    // Recovery: the probe sees /api/version again, the models are refreshed at once.
    const refreshes = count(p.logs.text, `event=upstream_models msg="host=${esc(b.url)} path=/api/tags`);
    await fetch(`${b.url}/_double/fault?mode=none`, { method: 'POST' });
    await waitLog(p, (t) => t.includes(`event=upstream_up msg="host=${b.url} `) &&
      count(t, `event=upstream_models msg="host=${esc(b.url)} path=/api/tags`) > refreshes, 'recovery and refresh');
    assert.equal(metric(await metrics(p), 'llm_proxy_upstream_healthy', { host: b.url }), 1);
    await Promise.all(Array.from({ length: 8 }, () => postJson(`${p.url}/v1/chat/completions`, chatBody('again @slow=100'))));
    assert.ok(await chats(b) > before, 'the recovered host takes work again');
  } finally {
    await stop();
  }
});

test('Ollama "server busy" 503 fails over to another host, streams and embeddings too', async () => {
  const { doubles: [a, b], p, stop } = await startHosts([[], []], { UPSTREAM_FAIL_THRESHOLD: '100' });
  try {
    await refreshed(p, [a, b]);
    await fetch(`${a.url}/_double/fault?mode=busy`, { method: 'POST' });
    for (let i = 0; i < 6; i++) {
      const r = await postJson(`${p.url}/v1/chat/completions`, chatBody('busy'));
      assert.equal(r.status, 200, r.text);
      const s = await sseReader(await openChatStream(p, chatBody('busy stream', { think: false }))).all();
      assert.equal(dataOf(s.at(-1)), '[DONE]');
      const e = await postJson(`${p.url}/v1/embeddings`, { model: 'bge-m3', input: 'busy' });
      assert.equal(e.status, 200, e.text);
    }
    const m = await metrics(p);
    const busy = metric(m, 'llm_proxy_upstream_requests_total', { host: a.url, route: 'chat_completions', status: '503' });
    assert.ok(busy >= 1, m);
    assert.ok(metric(m, 'llm_proxy_upstream_failovers_total') >= busy);
    // Both hosts busy: the client gets the 503 (one retry, not a loop).
    await fetch(`${b.url}/_double/fault?mode=busy`, { method: 'POST' });
    const r = await postJson(`${p.url}/v1/chat/completions`, chatBody('all busy'));
    assert.equal(r.status, 503, r.text);
  } finally {
    await stop();
  }
});

test('/ready is 503 with every host listed when none answers', async () => {
  const p = await startProxy({ OLLAMA_URL_INTERNAL: 'http://127.0.0.1:9, http://127.0.0.1:10', CONNECT_TIMEOUT: '0.5' });
  try {
    const r = await fetch(`${p.url}/ready`);
    assert.equal(r.status, 503);
    const body = await r.json();
    assert.equal(body.status, 'not_ready');
    assert.deepEqual(body.hosts.map((h) => [h.url, h.reachable]), [['http://127.0.0.1:9', false], ['http://127.0.0.1:10', false]]);
  } finally {
    await p.stop();
  }
});

test('OLLAMA_URL_INTERNAL: a bad item stops the proxy with exit status 2', async () => {
  await assert.rejects(startProxy({ OLLAMA_URL_INTERNAL: 'http://127.0.0.1:9,ftp://x' }), /exited with 2/);
  await assert.rejects(startProxy({ OLLAMA_URL_INTERNAL: 'http://127.0.0.1:9,http://127.0.0.1:9' }), /exited with 2/);
});

test('hostile /api/tags and /api/ps replies are bounded and validated', async () => {
  const { doubles: [a, b], p, stop } = await startHosts([[], []], { UPSTREAM_REFRESH_INTERVAL: '0.1' });
  try {
    await fetch(`${a.url}/_double/fault?mode=hostile`, { method: 'POST' });
    await waitLog(p, (t) => t.includes(`event=upstream_bad_reply msg="host=${a.url} path=/api/ps`), 'the bad /api/ps reply');
    await waitLog(p, (t) => new RegExp(`event=upstream_models msg="host=${esc(a.url)} path=/api/tags count=(\\d+)`).test(t.split(`path=/api/tags count=5`).at(-1)), 'the hostile list');
    const n = [...p.logs.text.matchAll(new RegExp(`host=${esc(a.url)} path=/api/tags count=(\\d+)`, 'g'))].map((m) => Number(m[1])).at(-1);
    assert.ok(n > 0 && n <= 2048, `kept ${n} names`);
    const before = await chats(a);
    for (let i = 0; i < 4; i++) assert.equal((await postJson(`${p.url}/v1/chat/completions`, chatBody('hi'))).status, 200);
    assert.equal(await chats(a), before, 'qwen3:8b is not in the hostile list: the other host serves it');
    const models = await (await fetch(`${p.url}/v1/models`)).json();
    assert.ok(models.data.length <= 2048 + 5, `${models.data.length} models`);
    assert.ok(models.data.every((m) => !/[\n]/.test(m.id)));
  } finally {
    await stop();
  }
});

test('WebSocket chat fails over like SSE: a busy host is invisible to the client', async () => {
  const { doubles: [a, b], p, stop } = await startHosts([[], []], { UPSTREAM_FAIL_THRESHOLD: '100' });
  try {
    await refreshed(p, [a, b]);
    await fetch(`${a.url}/_double/fault?mode=busy`, { method: 'POST' });
    const ws = new WebSocket(`${p.url.replace('http', 'ws')}/ws/chat`);
    await once(ws, 'open');
    const msgs = [];
    const finished = new Promise((resolve) => ws.on('message', (d) => {
      const m = JSON.parse(d.toString());
      msgs.push(m);
      if (msgs.filter((x) => x.type === 'done' || x.type === 'error').length === 4) resolve();
    }));
    for (let i = 0; i < 4; i++) ws.send(JSON.stringify({ type: 'chat', id: `c${i}`, model: 'qwen3:8b', messages: [{ role: 'user', content: 'ws busy' }] }));
    await finished;
    assert.equal(msgs.filter((m) => m.type === 'error').length, 0, JSON.stringify(msgs.filter((m) => m.type === 'error')));
    assert.equal(msgs.filter((m) => m.type === 'done').length, 4);
    assert.ok((await a.stats()).requests['/api/chat'] >= 1, 'the busy host was tried');
    assert.ok(metric(await metrics(p), 'llm_proxy_upstream_failovers_total') >= 1);
    ws.close();
    await once(ws, 'close');
  } finally {
    await stop();
  }
});

test('a down host is probed with exponential backoff up to UPSTREAM_BACKOFF_MAX', async () => {
  const good = await startDouble();
  const dead = 'http://127.0.0.1:9';
  const p = await startProxy({
    OLLAMA_URL_INTERNAL: `${good.url},${dead}`, UPSTREAM_FAIL_THRESHOLD: '1',
    UPSTREAM_BACKOFF_MIN: '0.05', UPSTREAM_BACKOFF_MAX: '0.2',
  });
  try {
    const probes = (t) => [...t.matchAll(new RegExp(`event=upstream_probe_failed msg="host=${esc(dead)} .*?retry_in=([0-9.]+)s`, 'g'))].map((m) => Number(m[1]));
    await waitLog(p, (t) => probes(t).length >= 4, 'four failed probes');
    assert.deepEqual(probes(p.logs.text).slice(0, 4), [0.1, 0.2, 0.2, 0.2]);
    assert.equal((await postJson(`${p.url}/v1/chat/completions`, chatBody('still served'))).status, 200);
    const m = await metrics(p);
    assert.equal(metric(m, 'llm_proxy_upstream_healthy', { host: dead }), 0);
    assert.equal(metric(m, 'llm_proxy_upstream_healthy', { host: good.url }), 1);
  } finally {
    await p.stop();
    await good.stop();
  }
});

test('LLM_PROXY_MAX_UPSTREAM applies per host: two hosts with one slot each hold two streams', async () => {
  // Slots are per host and per worker: one worker makes the count exact.
  const { doubles: [a, b], p, stop } = await startHosts([[], []], { LLM_PROXY_MAX_UPSTREAM: '1', LLM_PROXY_QUEUE_SIZE: '0', LLM_PROXY_WORKERS: '1' });
  try {
    await refreshed(p, [a, b]);
    const held = [];
    for (let i = 0; i < 2; i++) {
      const res = await openChatStream(p, chatBody('hold @gate', { think: false }));
      assert.equal(res.status, 200);
      const s = sseReader(res);
      assert.ok(dataOf(await s.next()));
      held.push(s);
    }
    assert.deepEqual([(await a.stats()).active_streams, (await b.stats()).active_streams], [1, 1]);
    const third = await postJson(`${p.url}/v1/chat/completions`, chatBody('no slot left'));
    assert.equal(third.status, 429, third.text);
    for (const s of held) await s.cancel();
  } finally {
    await stop();
  }
});
