// bench/ws_bench.mjs: WebSocket capacity of llm_proxy (not a test).
//  1. 10,000 idle connections at once: RSS and bytes per connection (target < 100 MB).
//  2. 1,000 connections streaming at once: every frame arrives.
import fs from 'node:fs';
import WebSocket from '../tests/node_modules/ws/wrapper.mjs';
import { startDouble, startProxy } from '../tests/integration/harness.mjs';

const IDLE = Number(process.env.IDLE || 10000);
const STREAMS = Number(process.env.STREAMS || 1000);
const WORDS = 40;

const rss = (pid) => Number(fs.readFileSync(`/proc/${pid}/status`, 'utf8').match(/VmRSS:\s+(\d+)/)[1]) * 1024;
const mb = (b) => (b / 1048576).toFixed(1);

function open(url) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { perMessageDeflate: false });
    ws.once('open', () => resolve(ws));
    ws.once('error', reject);
  });
}

const double = await startDouble();
// The upstream cap (default 64 + a queue of 256) would refuse most of the 1,000
// simultaneous streams: this measures the WebSocket side, so lift it.
const proxy = await startProxy({ WS_PING_INTERVAL: '600', LLM_PROXY_MAX_UPSTREAM: '2048' }, { upstream: double });
const url = `${proxy.url.replace('http', 'ws')}/ws/chat`;
try {
  const base = rss(proxy.proc.pid);
  const conns = [];
  for (let i = 0; i < IDLE; i += 500) {
    const batch = [];
    for (let k = i; k < Math.min(IDLE, i + 500); k++) batch.push(open(url));
    conns.push(...(await Promise.all(batch)));
  }
  const idle = rss(proxy.proc.pid);
  console.log(`idle connections: ${conns.length}, llm_proxy RSS ${mb(idle)} MB (baseline ${mb(base)} MB), ` +
    `${Math.round((idle - base) / conns.length)} bytes per connection; target < 100 MB: ${idle < 100 * 1048576 ? 'met' : 'NOT met'}`);

  // Streaming on the first STREAMS connections at once.
  const t0 = Date.now();
  const results = await Promise.all(conns.slice(0, STREAMS).map((ws, i) => new Promise((resolve) => {
    let chunks = 0;
    ws.on('message', (d) => {
      const m = JSON.parse(d);
      if (m.type === 'chunk' && m.chunk.choices[0]?.delta.content) chunks++;
      if (m.type === 'done' || m.type === 'error') resolve({ chunks, ok: m.type === 'done' });
    });
    ws.send(JSON.stringify({ type: 'chat', id: `s${i}`, model: 'qwen3:8b', think: false,
      messages: [{ role: 'user', content: `@words=${WORDS}` }] }));
  })));
  const lost = results.reduce((n, r) => n + (r.ok ? WORDS - r.chunks : WORDS), 0);
  console.log(`streaming at once: ${results.length} connections x ${WORDS} content frames in ${Date.now() - t0} ms; ` +
    `lost frames: ${lost}; llm_proxy RSS ${mb(rss(proxy.proc.pid))} MB`);
  for (const ws of conns) ws.terminate();
} finally {
  await proxy.stop().catch(() => {});
  await double.stop();
}
