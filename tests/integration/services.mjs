// Real Redis and PostgreSQL for the tests, on free loopback ports, in a
// private directory. Used as a ctest fixture:
//   node services.mjs start STATE_DIR   (FIXTURES_SETUP: starts both, writes STATE_DIR/services.json)
//   node services.mjs stop STATE_DIR    (FIXTURES_CLEANUP)
// Test files call useServices(): their own PostgreSQL database and Redis db
// index, so files can run in parallel on the same servers.
import { fileURLToPath } from 'node:url';
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

export const STATE_DIR = process.env.SERVICES_DIR || path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../build/test-services');

function pgBin(name) {
  const base = '/usr/lib/postgresql';
  const versions = fs.existsSync(base) ? fs.readdirSync(base).sort((a, b) => Number(b) - Number(a)) : [];
  for (const v of versions) {
    const p = path.join(base, v, 'bin', name);
    if (fs.existsSync(p)) return p;
  }
  return name;
}

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

const asRoot = process.getuid && process.getuid() === 0;
// initdb and postgres refuse to run as root: use the postgres account then.
function runPg(bin, args, opts = {}) {
  const cmd = asRoot ? ['runuser', ['-u', 'postgres', '--', pgBin(bin), ...args]] : [pgBin(bin), args];
  return execFileSync(cmd[0], cmd[1], { stdio: ['ignore', 'pipe', 'pipe'], ...opts });
}

function startRedis(port, redisDir, persistent) {
  execFileSync('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--daemonize', 'yes',
    '--dir', redisDir, '--pidfile', path.join(redisDir, 'redis.pid'), '--logfile', path.join(redisDir, 'redis.log'),
    '--save', '', '--databases', '64',
    ...(persistent ? ['--appendonly', 'yes', '--appendfsync', 'always'] : ['--appendonly', 'no'])]);
}

async function waitRedis(port) {
  for (let i = 0; ; i++) {
    const r = spawnSync('redis-cli', ['-p', String(port), 'PING'], { encoding: 'utf8' });
    if (r.stdout.trim() === 'PONG') return;
    if (i > 400) throw new Error('redis did not start');
    await new Promise((res) => setTimeout(res, 25));
  }
}

function pgCtlStart(s) {
  // Durable settings when the tests crash PostgreSQL on purpose: with
  // synchronous_commit=off a crash may drop commits already acknowledged.
  const fast = s.persistent ? '' : ' -c fsync=off -c synchronous_commit=off -c full_page_writes=off';
  runPg('pg_ctl', ['-D', s.pgData, '-w', '-l', path.join(s.pgData, 'server.log'), '-o',
    `-p ${s.pgPort} -k ${s.pgData} -c listen_addresses=127.0.0.1 -c max_connections=200${fast}`, 'start']);
}

// Crash-restarts (kill -9, then start again on the same port and data).
export async function restartRedis(s) {
  const pid = Number(fs.readFileSync(path.join(s.redisDir, 'redis.pid'), 'utf8'));
  process.kill(pid, 'SIGKILL');
  while (spawnSync('redis-cli', ['-p', String(s.redisPort), 'PING'], { encoding: 'utf8' }).stdout.trim() === 'PONG');
  startRedis(s.redisPort, s.redisDir, s.persistent);
  await waitRedis(s.redisPort);
}

export function restartPostgres(s) {
  runPg('pg_ctl', ['-D', s.pgData, '-m', 'immediate', '-w', 'stop']);
  pgCtlStart(s);
}

// Services a test process started stop when it exits, whatever happened.
const started = new Set();
process.on('exit', () => {
  for (const d of started) {
    try { stop(d); } catch { /* best effort */ }
  }
});

export async function start(dir, { persistent = false } = {}) {
  if (process.argv[2] !== 'start') started.add(dir); // the ctest fixture outlives its process
  fs.rmSync(dir, { recursive: true, force: true });
  fs.mkdirSync(dir, { recursive: true, mode: 0o755 });
  const redisPort = await freePort();
  const redisDir = path.join(dir, 'redis');
  fs.mkdirSync(redisDir);
  startRedis(redisPort, redisDir, persistent);
  await waitRedis(redisPort);

  const pgPort = await freePort();
  // Under the system temp dir: the postgres account may not be able to
  // reach the build tree (e.g. a checkout below /root).
  const pgData = fs.mkdtempSync(path.join(os.tmpdir(), 'mw-pg-'));
  fs.chmodSync(pgData, 0o700);
  if (asRoot) execFileSync('chown', ['-R', 'postgres:postgres', pgData]);
  runPg('initdb', ['-D', pgData, '-U', 'memory', '-A', 'trust', '--no-sync', '-E', 'UTF8', '--locale=C']);
  const state = { redisPort, redisDir, pgPort, pgData, persistent };
  // pg_ctl -w waits until the server accepts connections.
  pgCtlStart(state);
  fs.writeFileSync(path.join(dir, 'services.json'), JSON.stringify(state));
  return state;
}

export function stop(dir) {
  started.delete(dir);
  const file = path.join(dir, 'services.json');
  if (!fs.existsSync(file)) return;
  const s = JSON.parse(fs.readFileSync(file, 'utf8'));
  spawnSync('redis-cli', ['-p', String(s.redisPort), 'SHUTDOWN', 'NOSAVE']);
  try { runPg('pg_ctl', ['-D', s.pgData, '-m', 'immediate', '-w', 'stop']); } catch { /* already down */ }
  fs.rmSync(s.pgData, { recursive: true, force: true });
  fs.rmSync(dir, { recursive: true, force: true });
}

let dbCounter = 0;
// A private database and Redis db index for one test file.
export function useServices(name) {
  const s = JSON.parse(fs.readFileSync(path.join(STATE_DIR, 'services.json'), 'utf8'));
  const db = `t_${name}_${process.pid}_${dbCounter++}`.toLowerCase().replace(/[^a-z0-9_]/g, '_');
  execFileSync('psql', ['-h', '127.0.0.1', '-p', String(s.pgPort), '-U', 'memory', '-d', 'postgres', '-qAt',
    '-c', `CREATE DATABASE ${db}`]);
  // Redis db index from the name, so parallel files do not collide.
  let h = 0;
  for (const c of name) h = (h * 31 + c.charCodeAt(0)) % 63;
  const redisDb = 1 + h;
  execFileSync('redis-cli', ['-p', String(s.redisPort), '-n', String(redisDb), 'FLUSHDB']);
  return {
    ...s,
    db,
    redisDb,
    redisUrl: `redis://127.0.0.1:${s.redisPort}/${redisDb}`,
    databaseUrl: `postgresql://memory@127.0.0.1:${s.pgPort}/${db}`,
    sql(query) {
      return execFileSync('psql', ['-h', '127.0.0.1', '-p', String(s.pgPort), '-U', 'memory', '-d', db, '-qAt',
        '-F', '\t', '-v', 'ON_ERROR_STOP=1', '-c', query], { encoding: 'utf8' }).trim();
    },
    // One command with binary-safe arguments (Buffers or strings) over RESP;
    // resolves with the raw reply text. For keys and elements redis-cli
    // cannot pass (invalid UTF-8, NUL bytes).
    redisRaw(...args) {
      return new Promise((resolve, reject) => {
        const parts = [Buffer.from(`*2\r\n$6\r\nSELECT\r\n$${String(redisDb).length}\r\n${redisDb}\r\n*${args.length}\r\n`)];
        for (const a of args) {
          const b = Buffer.isBuffer(a) ? a : Buffer.from(String(a));
          parts.push(Buffer.from(`$${b.length}\r\n`), b, Buffer.from('\r\n'));
        }
        const sock = net.connect(s.redisPort, '127.0.0.1');
        let out = '';
        sock.on('data', (d) => {
          out += d.toString('latin1');
          // +OK for SELECT, then one reply line for the command.
          const lines = out.split('\r\n');
          if (lines.length >= 3) { sock.end(); resolve(lines[1]); }
        });
        sock.on('error', reject);
        sock.write(Buffer.concat(parts));
      });
    },
    redis(...args) {
      return execFileSync('redis-cli', ['-p', String(s.redisPort), '-n', String(redisDb), ...args.map(String)],
        { encoding: 'utf8' }).trim();
    },
  };
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const [cmd, dir = STATE_DIR] = process.argv.slice(2);
  if (cmd === 'start') {
    const s = await start(dir);
    console.log(`redis on ${s.redisPort}, postgres on ${s.pgPort}`);
  } else if (cmd === 'stop') {
    stop(dir);
  } else {
    console.error('usage: services.mjs start|stop [DIR]');
    process.exit(2);
  }
}
