// Shared by the worker outage tests: a crash-looping Ollama answers 500 to
// every summary. The double fails a request whose text carries @status=500,
// so the messages carry it; "Ollama is healthy again" is the directive
// removed from the stored chunks (the double then answers normally).
import assert from 'node:assert/strict';

export function pushFailing(svc, user, n) {
  const msgs = [];
  for (let i = 0; i < n; i++) {
    msgs.push(JSON.stringify({ role: 'user', content: `message ${i} @status=500`, room_id: `room${i}` }));
  }
  svc.redis('RPUSH', `user:${user}:messages`, ...msgs);
}

export function healUpstream(svc, user) {
  svc.sql(`UPDATE memory_chunks SET messages = replace(messages::text, ' @status=500', '')::jsonb WHERE user_id = '${user}'`);
}

export const tick = (ms = 50) => new Promise((r) => setTimeout(r, ms));

export async function until(what, fn, tries = 2000) {
  for (let i = 0; i < tries; i++) {
    if (await fn()) return;
    await tick();
  }
  assert.fail(`timed out waiting for ${what}`);
}

export function chunkStates(svc, user) {
  return svc.sql(`SELECT state, attempts FROM memory_chunks WHERE user_id = '${user}' ORDER BY id`)
    .split('\n').filter(Boolean).map((l) => { const [state, attempts] = l.split('\t'); return { state, attempts: Number(attempts) }; });
}
