// Measures llm_proxy's peak RSS growth per byte of request body (VmHWM from
// /proc) for the pathological 400,000-message chat body and a typical one.
// Usage: BIN_DIR=build/bin node bench/body_memory.mjs
import { readFileSync } from 'node:fs';
import { startDouble, startProxy } from '../tests/integration/harness.mjs';

const kb = (n) => `${(n / 1024 / 1024).toFixed(1)} MiB`;
const status = (pid) => {
  const s = readFileSync(`/proc/${pid}/status`, 'utf8');
  const f = (k) => Number(s.match(new RegExp(`${k}:\\s+(\\d+)`))[1]) * 1024;
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
  return { rss: f('VmRSS'), hwm: f('VmHWM'), cpu: (Number(stat[11]) + Number(stat[12])) / 100 };
};

async function measure(name, body) {
  const double = await startDouble();
  const proxy = await startProxy({ MAX_BODY_BYTES: '64MiB', LLM_PROXY_MAX_BODY_MEMORY: '8GiB', CHAT_TIMEOUT: '120' },
    { upstream: double });
  // Warm up (allocator arenas, curl connection) with a small request.
  await fetch(`${proxy.url}/v1/chat/completions`, { method: 'POST', body: JSON.stringify({ model: 'qwen3:8b', messages: [{ role: 'user', content: 'hi' }] }) }).then((r) => r.text());
  const base = status(proxy.proc.pid);
  const res = await fetch(`${proxy.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body });
  const text = await res.text();
  const after = status(proxy.proc.pid);
  const grew = after.hwm - base.rss;
  console.log(`${name}: body ${kb(body.length)}, status ${res.status}, peak RSS growth ${kb(grew)}, ${(grew / body.length).toFixed(2)} bytes of RSS per body byte, CPU ${(after.cpu - base.cpu).toFixed(2)} s`);
  if (res.status !== 200) console.log(text.slice(0, 300));
  await proxy.stop();
  await double.stop();
}

const tiny = Array.from({ length: 400000 }, () => ({ role: 'user', content: 'x' }));
await measure('pathological (400,000 messages)', JSON.stringify({ model: 'qwen3:8b', messages: tiny }));
const para = 'The quick brown fox jumps over the lazy dog. '.repeat(40);
const typical = Array.from({ length: 40 }, (_, i) => ({ role: i % 2 ? 'assistant' : 'user', content: `${i}: ${para}` }));
await measure('typical (40 messages of ~1.8 KB)', JSON.stringify({ model: 'qwen3:8b', messages: [{ role: 'system', content: 'Be brief.' }, ...typical] }));
