// Test harness: starts the real binaries (the Ollama double, llm_proxy) on
// free loopback ports and offers small HTTP/SSE helpers. Readiness is awaited
// from each process's own "listening" log line, never by sleeping.
import { fileURLToPath } from 'node:url';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import path from 'node:path';

export const BIN_DIR = process.env.BIN_DIR || path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../build/bin');

function waitForLine(proc, regex, what, timeoutMs = 10000) {
  return new Promise((resolve, reject) => {
    let buf = '';
    const timer = setTimeout(() => reject(new Error(`${what} did not start: ${buf}`)), timeoutMs);
    const onData = (d) => {
      buf += d.toString();
      const m = buf.match(regex);
      if (m) {
        clearTimeout(timer);
        resolve(m);
      }
    };
    proc.stderr.on('data', onData);
    proc.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`${what} exited with ${code}: ${buf}`));
    });
  });
}

// Every process a test starts is killed when the test process exits, even
// after a timeout or a failed assertion, so nothing is left running.
const children = new Set();
process.on('exit', () => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
});
function track(proc) {
  children.add(proc);
  proc.once('exit', () => children.delete(proc));
  return proc;
}

function collect(proc) {
  const out = { text: '' };
  proc.stderr.on('data', (d) => { out.text += d.toString(); });
  return out;
}

// Stops a process and requires a clean exit: under the sanitizers a leak or
// an error report makes the exit status non-zero, and that fails the test.
async function stopProc(proc, logs, signal = 'SIGTERM') {
  let code = proc.exitCode;
  if (code === null && proc.signalCode === null) {
    proc.kill(signal);
    [code] = await once(proc, 'exit');
  }
  if (code !== 0) {
    throw new Error(`${path.basename(proc.spawnfile)} exited with ${code ?? proc.signalCode}:\n${logs.text.slice(-4000)}`);
  }
  return code;
}

export async function startDouble(args = []) {
  const proc = track(spawn(path.join(BIN_DIR, 'ollama_double'), ['--port', '0', ...args], {
    stdio: ['ignore', 'ignore', 'pipe'],
  }));
  const logs = collect(proc);
  const m = await waitForLine(proc, /listening on [^:]+:(\d+)/, 'ollama_double');
  const port = Number(m[1]);
  const url = `http://127.0.0.1:${port}`;
  return {
    proc, port, url,
    stop: () => stopProc(proc, logs),
    last: async (p) => (await fetch(`${url}/_double/last?path=${encodeURIComponent(p)}`)).json(),
    stats: async () => (await fetch(`${url}/_double/stats`)).json(),
    release: async () => (await fetch(`${url}/_double/release`, { method: 'POST' })).json(),
    // Resolves when the double has seen `n` client disconnects in total.
    waitDisconnects: async (n) => {
      const res = await fetch(`${url}/_double/wait?disconnects=${n}`);
      return { status: res.status, ...(await res.json()) };
    },
  };
}

export async function startProxy(env = {}, { upstream } = {}) {
  const proc = track(spawn(path.join(BIN_DIR, 'llm_proxy'), [], {
    stdio: ['ignore', 'ignore', 'pipe'],
    env: {
      PATH: process.env.PATH,
      LLM_PROXY_HOST: '127.0.0.1',
      LLM_PROXY_PORT: '0',
      OLLAMA_URL_INTERNAL: upstream ? upstream.url : 'http://127.0.0.1:9',
      LOG_LEVEL: 'info',
      // The whole suite runs with two event-loop threads whatever the
      // machine's CPU count (a test that needs one says LLM_PROXY_WORKERS: '1';
      // undefined leaves the proxy's own default).
      LLM_PROXY_WORKERS: process.env.TEST_PROXY_WORKERS || '2',
      ...env,
    },
  }));
  const logs = collect(proc);
  const m = await waitForLine(proc, /event"?[=:]"?listening.*?port=(\d+)/, 'llm_proxy');
  const port = Number(m[1]);
  return {
    proc, port, logs,
    url: `http://127.0.0.1:${port}`,
    stop: (signal) => stopProc(proc, logs, signal),
    exited: () => once(proc, 'exit').then(([code]) => code),
  };
}

export async function postJson(url, body, headers = {}) {
  const res = await fetch(url, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });
  const text = await res.text();
  let json = null;
  try { json = JSON.parse(text); } catch { /* not JSON */ }
  return { status: res.status, headers: res.headers, text, json };
}

// Reads an SSE response event by event. next() resolves with the next event
// text (without the trailing blank line) or null at the end of the stream.
export function sseReader(res) {
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buf = '';
  return {
    async next() {
      for (;;) {
        const i = buf.indexOf('\n\n');
        if (i >= 0) {
          const ev = buf.slice(0, i);
          buf = buf.slice(i + 2);
          return ev;
        }
        const { value, done } = await reader.read();
        if (done) return buf.length ? (() => { const r = buf; buf = ''; return r; })() : null;
        buf += decoder.decode(value, { stream: true });
      }
    },
    async all() {
      const events = [];
      for (let ev; (ev = await this.next()) !== null;) events.push(ev);
      return events;
    },
    cancel: () => reader.cancel(),
  };
}

// POSTs a streaming chat request to base (a started proxy); resolves with the
// fetch Response.
export function openChatStream(base, body, signal) {
  return fetch(`${base.url}/v1/chat/completions`, {
    method: 'POST', signal, headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ stream: true, ...body }),
  });
}

export function dataOf(ev) {
  if (!ev.startsWith('data: ')) return null;
  const payload = ev.slice(6);
  return payload === '[DONE]' ? '[DONE]' : JSON.parse(payload);
}

export function chatBody(content, extra = {}) {
  return { model: 'qwen3:8b', messages: [{ role: 'user', content }], ...extra };
}

export function assertOpenAIError(res, status, { type, code, param } = {}) {
  assert.equal(res.status, status, `status ${res.status}: ${res.text}`);
  assert.match(res.headers.get('content-type') || '', /^application\/json/);
  const e = res.json && res.json.error;
  assert.ok(e, `no error envelope: ${res.text}`);
  assert.deepEqual(Object.keys(e).sort(), ['code', 'message', 'param', 'type']);
  assert.equal(typeof e.message, 'string');
  assert.ok(e.message.length > 0);
  if (type) assert.equal(e.type, type);
  if (code !== undefined) assert.equal(e.code, code);
  if (param !== undefined) assert.equal(e.param, param);
  return e;
}

export async function startWorker(env = {}) {
  const proc = track(spawn(path.join(BIN_DIR, 'memory_worker'), [], {
    stdio: ['ignore', 'ignore', 'pipe'],
    env: {
      PATH: process.env.PATH,
      MEMORY_WORKER_HOST: '127.0.0.1',
      MEMORY_WORKER_PORT: '0',
      LOG_LEVEL: 'info',
      // The whole suite runs with two event-loop threads whatever the
      // machine's CPU count (a test that needs one says LLM_PROXY_WORKERS: '1';
      // undefined leaves the proxy's own default).
      LLM_PROXY_WORKERS: process.env.TEST_PROXY_WORKERS || '2',
      ...env,
    },
  }));
  const logs = collect(proc);
  const m = await waitForLine(proc, /event"?[=:]"?listening.*?port=(\d+)/, 'memory_worker', 30000);
  const url = `http://127.0.0.1:${Number(m[1])}`;
  return {
    proc, logs, url,
    stop: (signal) => stopProc(proc, logs, signal),
    exited: () => once(proc, 'exit').then(([code, signal]) => code ?? signal),
    // Runs one full pass now and returns its counts.
    pass: async () => {
      const res = await fetch(`${url}/v1/process`, { method: 'POST' });
      return { status: res.status, ...(await res.json()) };
    },
  };
}

export async function freePort() {
  const net = await import('node:net');
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

// The environment every worker test starts from: its services, llm_proxy at
// proxyUrl, the double's models, passes only when a test asks (no poll, no
// background concurrency), fast retries. extra overrides or adds.
export function workerTestEnv(svc, proxyUrl, extra = {}) {
  return {
    LLM_PROXY_URL: proxyUrl,
    REDIS_URL: svc.redisUrl,
    DATABASE_URL: svc.databaseUrl,
    SUMMARY_MODEL: 'qwen3:8b',
    EMBEDDING_MODEL: 'bge-m3',
    POLL_INTERVAL: '3600',
    WORKER_CONCURRENCY: '0',
    RETRY_BASE: '0.05',
    RETRY_MAX: '0.1',
    ...extra,
  };
}
