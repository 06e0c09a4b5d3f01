// Deployment artefacts: the compose file validates, the systemd units pass
// systemd-analyze verify and are hardened, each Dockerfile's runtime stage
// installs every library its binary links, cmake --install lays out the
// files, and the --healthcheck modes work (containers have no curl).
import { fileURLToPath } from 'node:url';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { BIN_DIR, startProxy } from './harness.mjs';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const BUILD = path.dirname(BIN_DIR);
const tmp = () => fs.mkdtempSync(path.join(os.tmpdir(), 'deploy-'));

test('compose/core.yml validates with docker-compose config', () => {
  const dir = tmp();
  fs.mkdirSync(path.join(dir, 'compose'));
  fs.copyFileSync(path.join(ROOT, 'compose/core.yml'), path.join(dir, 'compose/core.yml'));
  fs.copyFileSync(path.join(ROOT, '.env.example'), path.join(dir, '.env'));
  const r = spawnSync('docker-compose', ['--env-file', path.join(dir, '.env'), '-f', path.join(dir, 'compose/core.yml'), 'config'],
    { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  const cfg = r.stdout;
  for (const s of ['ollama', 'ollama-pull', 'redis', 'postgres', 'llm_proxy', 'memory_worker']) {
    assert.match(cfg, new RegExp(`^  ${s}:$`, 'm'), `service ${s}`);
  }
  assert.match(cfg, /appendonly/);
  assert.match(cfg, /pg_isready/);
  assert.match(cfg, /llm_proxy --healthcheck|llm_proxy\n\s+- --healthcheck/);
  assert.match(cfg, /OLLAMA_URL_INTERNAL: http:\/\/ollama:11434/);
  assert.match(cfg, /LLM_PROXY_URL: http:\/\/llm_proxy:8000/);
  const worker = cfg.slice(cfg.indexOf('  memory_worker:'));
  const deps = worker.slice(worker.indexOf('depends_on:'), worker.indexOf('env_file'));
  for (const d of ['llm_proxy', 'redis', 'postgres']) assert.match(deps, new RegExp(`${d}:\\n\\s+condition: service_healthy`));
  // Without the password the file refuses to render.
  fs.writeFileSync(path.join(dir, '.env'), fs.readFileSync(path.join(ROOT, '.env.example'), 'utf8').replace(/^POSTGRES_PASSWORD=.*$/m, ''));
  const bad = spawnSync('docker-compose', ['--env-file', path.join(dir, '.env'), '-f', path.join(dir, 'compose/core.yml'), 'config', '-q'], { encoding: 'utf8' });
  assert.notEqual(bad.status, 0);
});

test('systemd units verify and are hardened', () => {
  const dir = tmp();
  for (const unit of ['llm_proxy', 'memory_worker']) {
    const text = fs.readFileSync(path.join(BUILD, 'systemd', `${unit}.service`), 'utf8');
    for (const d of ['DynamicUser=yes', 'NoNewPrivileges=yes', 'ProtectSystem=strict', 'ProtectHome=yes',
      'PrivateTmp=yes', 'RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX', 'CapabilityBoundingSet=\n',
      'Restart=on-failure', 'EnvironmentFile=-', `ExecStart=/usr/local/bin/${unit}`]) {
      assert.ok(text.includes(d), `${unit}: ${d.trim()}`);
    }
    // Verify against the built binary (the installed path does not exist here).
    fs.writeFileSync(path.join(dir, `${unit}.service`), text.replace(/^ExecStart=.*$/m, `ExecStart=${path.join(BIN_DIR, unit)}`));
  }
  const r = spawnSync('systemd-analyze', ['verify', path.join(dir, 'llm_proxy.service'), path.join(dir, 'memory_worker.service')],
    { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr + r.stdout);
});

// Packages that provide the shared libraries a binary links directly.
function neededPackages(binary) {
  const needed = execFileSync('readelf', ['-d', binary], { encoding: 'utf8' })
    .split('\n').map((l) => l.match(/\(NEEDED\).*\[(.+)\]/)).filter(Boolean).map((m) => m[1]);
  const ldd = execFileSync('ldd', [binary], { encoding: 'utf8' });
  const pkgs = new Map();
  for (const lib of needed) {
    const m = ldd.match(new RegExp(`${lib.replace(/[.+]/g, '\\$&')} => (\\S+)`));
    assert.ok(m, `${lib} not resolved`);
    const real = fs.realpathSync(m[1]);
    const owner = spawnSync('dpkg', ['-S', real], { encoding: 'utf8' });
    const out = owner.status === 0 ? owner.stdout : execFileSync('dpkg', ['-S', m[1]], { encoding: 'utf8' });
    pkgs.set(lib, out.split(':')[0].trim());
  }
  return pkgs;
}

// Packages the last stage of a Dockerfile installs.
function runtimePackages(dockerfile) {
  const last = dockerfile.slice(dockerfile.lastIndexOf('\nFROM '));
  const joined = last.replace(/\\\n/g, ' ');
  const pkgs = new Set();
  for (const m of joined.matchAll(/apt-get install ([^&\n]+)/g)) {
    for (const w of m[1].split(/\s+/)) if (w && !w.startsWith('-')) pkgs.add(w);
  }
  return pkgs;
}

function missingRuntimeLibraries(binary, dockerfileText) {
  const have = runtimePackages(dockerfileText);
  // libc6 is in debian:bookworm-slim; sanitizer runtimes only appear in the
  // ASan+UBSan test build, never in an image.
  const base = new Set(['libc6', 'libasan8', 'libubsan1', 'liblsan0']);
  return [...neededPackages(binary)].filter(([, pkg]) => !have.has(pkg) && !base.has(pkg)).map(([lib, pkg]) => `${lib} (${pkg})`);
}

for (const bin of ['llm_proxy', 'memory_worker']) {
  test(`${bin}/Dockerfile runtime stage installs every library ${bin} links`, () => {
    const text = fs.readFileSync(path.join(ROOT, bin, 'Dockerfile'), 'utf8');
    assert.deepEqual(missingRuntimeLibraries(path.join(BIN_DIR, bin), text), []);
    assert.match(text, /^FROM debian:bookworm AS build$/m);
    assert.match(text, /^FROM debian:bookworm-slim$/m);
    assert.match(text, /^USER \d+/m);
    assert.match(text, /^STOPSIGNAL SIGTERM$/m);
    assert.match(text, /^EXPOSE 80\d\d$/m);
    // The check itself can fail: drop one library package and it must notice.
    const broken = text.replace(/ libjansson4/, '');
    assert.deepEqual(missingRuntimeLibraries(path.join(BIN_DIR, bin), broken), ['libjansson.so.4 (libjansson4)']);
  });
}

test('cmake --install lays out binaries, units and the example environment', () => {
  const prefix = tmp();
  execFileSync('cmake', ['--install', BUILD, '--prefix', prefix], { stdio: 'ignore' });
  for (const f of ['bin/llm_proxy', 'bin/memory_worker', 'lib/systemd/system/llm_proxy.service',
    'lib/systemd/system/memory_worker.service', 'etc/llm-memory/llm_proxy.env.example',
    'etc/llm-memory/memory_worker.env.example']) {
    assert.ok(fs.existsSync(path.join(prefix, f)), f);
  }
});

test('--healthcheck exits 0 against a live service and 1 otherwise', async () => {
  const p = await startProxy();
  try {
    const ok = spawnSync(path.join(BIN_DIR, 'llm_proxy'), ['--healthcheck'],
      { env: { LLM_PROXY_HOST: '127.0.0.1', LLM_PROXY_PORT: String(p.port) } });
    assert.equal(ok.status, 0);
  } finally {
    await p.stop();
  }
  const down = spawnSync(path.join(BIN_DIR, 'llm_proxy'), ['--healthcheck'], { env: { LLM_PROXY_PORT: '1' } });
  assert.equal(down.status, 1);
  const wdown = spawnSync(path.join(BIN_DIR, 'memory_worker'), ['--healthcheck'], { env: { MEMORY_WORKER_PORT: '1' } });
  assert.equal(wdown.status, 1);
});

test('.env.example documents every setting both services list in --help', () => {
  const documented = new Set([...fs.readFileSync(path.join(ROOT, '.env.example'), 'utf8')
    .matchAll(/^#?([A-Z][A-Z0-9_]+)=/gm)].map((m) => m[1]));
  for (const bin of ['llm_proxy', 'memory_worker']) {
    const help = execFileSync(path.join(BIN_DIR, bin), ['--help'], { encoding: 'utf8' });
    const vars = [...help.split('Environment:')[1].matchAll(/^ {2}([A-Z][A-Z0-9_]+) /gm)].map((m) => m[1]);
    assert.ok(vars.length > 10, `${bin} --help lists its variables`);
    for (const v of vars) assert.ok(documented.has(v), `${v} (${bin}) is missing from .env.example`);
  }
});
