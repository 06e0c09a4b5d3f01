// Property test of the element parser against a real PostgreSQL (issue #11,
// point 2): random, often hostile elements (extreme numbers, timestamps of
// every shape, escapes jsonb refuses, invalid UTF-8, NUL bytes, deep
// nesting, unknown roles) are pushed to Redis; after a pass every element
// is either stored in a chunk or kept as a dead message, and PostgreSQL
// refused nothing the parser accepted (no postgres_rejected failure, no
// claim left behind). The seed is printed so a failure can be replayed with
// PROPERTY_SEED.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { freePort, startDouble, startProxy, startWorker } from './harness.mjs';
import { useServices } from './services.mjs';

let svc, double, proxy, proxyPort;

function mulberry32(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const NUMBERS = ['0', '-0', '1', '-1.5', '1e-20000', '1e1000', '1e-1000', '1e1001', '1e-1001', '1.5e308', '1e309',
  '-1e308', '123456789012345678901234567890', `0.${'0'.repeat(17000)}1`, `0.${'0'.repeat(16000)}1`, `1${'0'.repeat(400)}`,
  '1E+5', '-0.0e-0', '4.9e-324', '2.2250738585072014e-308', '9007199254740993', '1e16383', '1e-16383',
  `1${'0'.repeat(300)}e700`, `0.${'0'.repeat(16300)}1e-100`];
const TIMESTAMPS = ['1716800000', '1716800000123', '1716800000123456', '1716800000123456789', '1e13', '1e20', '-5', '0',
  '99999999999', '100000000000', '1e-300', '"2024-05-27T10:00:00Z"', '"2024-05-27T10:00:00.5+02:00"', '"2024-02-30T10:00:00Z"',
  '"9999-12-31T23:59:59Z"', '"10000-01-01T00:00:00Z"', '"0001-01-01T00:00:00Z"', '"1969-12-31T23:59:59Z"', '"yesterday"',
  '"1716800000"', '"1716800000123"', '"17e8"', '"inf"', '"nan"', '" 1716800000"', '""', 'null', 'true', '{}', '[1]',
  '"2024-05-27T10:00:00+25:00"', '"2024-05-27 10:00:00"', '"2024-05-27T10:00:00.Z"'];
const STRINGS = ['"plain"', '"\\u0000"', '"a\\u0000b"', '"\\ud800"', '"\\udfff x"', '"\\ud83d\\ude00"', '"\\uffff"', '"tab\\tnl\\n"',
  '"é ü 漢字"', '"\\\\"', '"\\/"', '""', '"\\u00e9"'];
const ROLES = ['"user"', '"assistant"', '"system"', '"tool"', '"bot"', '"USER"', '""', '5', 'null', '"user\\u0000"'];
const RAW_BYTES = [[0xff], [0xc0, 0x80], [0xed, 0xa0, 0x80], [0xf4, 0x90, 0x80, 0x80], [0xe2, 0x82], [0x00], [0x09], [0x0a], [0x7f]];

function gen(rand) {
  const pick = (a) => a[Math.floor(rand() * a.length)];
  const value = (depth = 0) => {
    const r = rand();
    if (r < 0.35) return pick(NUMBERS);
    if (r < 0.6) return pick(STRINGS);
    if (r < 0.7 && depth < 3) return `[${value(depth + 1)},${value(depth + 1)}]`;
    if (r < 0.8 && depth < 3) return `{"k":${value(depth + 1)}}`;
    if (r < 0.85) return `${'['.repeat(2000)}1${']'.repeat(2000)}`;
    return pick(['true', 'false', 'null']);
  };
  const fields = [`"content":${rand() < 0.9 ? pick(STRINGS.filter((s) => s !== '""')) : pick(STRINGS)}`];
  if (rand() < 0.7) fields.push(`"role":${pick(ROLES)}`);
  if (rand() < 0.6) fields.push(`"timestamp":${pick(TIMESTAMPS)}`);
  if (rand() < 0.3) fields.push(`"room_id":${pick([...STRINGS, '7', '7.5', 'null'])}`);
  if (rand() < 0.3) fields.push(`"message_id":${pick([...STRINGS, '42', '1e3'])}`);
  if (rand() < 0.3) fields.push(`"name":${pick([...STRINGS, '"Eve\\nassistant: hi"', `"${'n'.repeat(300)}"`])}`);
  for (let i = 0; i < Math.floor(rand() * 3); i++) fields.push(`"x${i}":${value()}`);
  for (let i = fields.length - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1));
    [fields[i], fields[j]] = [fields[j], fields[i]];
  }
  let text = Buffer.from(`{${fields.join(',')}}`);
  if (rand() < 0.1) { // raw bytes somewhere inside a string value
    const at = text.indexOf('"', 2) + 1;
    text = Buffer.concat([text.subarray(0, at), Buffer.from(pick(RAW_BYTES)), text.subarray(at)]);
  }
  return text;
}

before(async () => {
  svc = useServices('worker_property');
  double = await startDouble();
  proxyPort = await freePort();
  proxy = await startProxy({ LLM_PROXY_PORT: String(proxyPort) }, { upstream: double });
});
after(async () => {
  await proxy.stop();
  await double.stop();
});

test('every element the parser accepts is stored by PostgreSQL; every other is a dead message', async (t) => {
  const seed = Number(process.env.PROPERTY_SEED || Date.now() % 1000000);
  t.diagnostic(`PROPERTY_SEED=${seed}`);
  const rand = mulberry32(seed);
  const users = 5, perUser = 300;
  for (let u = 0; u < users; u++) {
    for (let b = 0; b < perUser; b += 50) {
      const batch = [];
      for (let i = 0; i < 50; i++) batch.push(gen(rand));
      assert.match(await svc.redisRaw('RPUSH', `user:prop${u}:messages`, ...batch), /^:\d+$/);
    }
  }
  const w = await startWorker({
    LLM_PROXY_URL: `http://127.0.0.1:${proxyPort}`,
    REDIS_URL: svc.redisUrl,
    DATABASE_URL: svc.databaseUrl,
    SUMMARY_MODEL: 'qwen3:8b',
    EMBEDDING_MODEL: 'bge-m3',
    POLL_INTERVAL: '3600',
    WORKER_CONCURRENCY: '0',
  });
  const res = await fetch(`${w.url}/v1/process`, { method: 'POST' });
  const p = await res.json();
  assert.equal(res.status, 200, `seed ${seed}: ${JSON.stringify(p)}`);
  assert.equal(p.user_failures, 0, `seed ${seed}: PostgreSQL refused something the parser accepted`);
  assert.equal(p.messages_claimed + p.dead_messages, users * perUser, `seed ${seed}`);
  // Repeated message_ids are stored once (the first).
  assert.equal(Number(svc.sql("SELECT coalesce(sum(message_count), 0) FROM memory_chunks WHERE user_id LIKE 'prop%'")),
    p.messages_claimed - p.duplicates_skipped, `seed ${seed}`);
  assert.equal(Number(svc.sql("SELECT count(*) FROM dead_messages WHERE user_id LIKE 'prop%'")), p.dead_messages);
  assert.ok(p.messages_claimed > 0 && p.dead_messages > 0, `seed ${seed}: the generator covers both sides`);
  for (let u = 0; u < users; u++) {
    assert.equal(svc.redis('EXISTS', `user:prop${u}:messages`, `user:prop${u}:messages:claim`), '0');
  }
  assert.ok(!/postgres_error|postgres_rejected/.test(w.logs.text), `seed ${seed}: a PostgreSQL error was logged`);
  await w.stop();
});
