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

// As the README says: .env beside the compose file (compose/.env), read by
// docker compose and podman-compose alike, no --env-file.
test('compose/core.yml validates with docker-compose config', () => {
  const dir = tmp();
  fs.mkdirSync(path.join(dir, 'compose'));
  for (const f of ['core.yml', 'standins.yml']) fs.copyFileSync(path.join(ROOT, 'compose', f), path.join(dir, 'compose', f));
  fs.copyFileSync(path.join(ROOT, '.env.example'), path.join(dir, 'compose/.env'));
  const config = (...files) => spawnSync('docker-compose', [...files.flatMap((f) => ['-f', path.join(dir, 'compose', f)]), 'config'],
    { encoding: 'utf8', cwd: dir });
  const r = config('core.yml');
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
  // The settings of compose/.env reach both services (env_file).
  assert.match(cfg, /SHUTDOWN_GRACE: '10'/);
  const worker = cfg.slice(cfg.indexOf('  memory_worker:'));
  const deps = worker.slice(worker.indexOf('depends_on:'), worker.indexOf('env_file'));
  for (const d of ['llm_proxy', 'redis', 'postgres']) assert.match(deps, new RegExp(`${d}:\\n\\s+condition: service_healthy`));
  // The worker's admin port is published on loopback only (issue 11).
  assert.match(worker, /host_ip: 127\.0\.0\.1\n\s+mode: ingress\n\s+protocol: tcp\n\s+published: 8001\n\s+target: 8001|127\.0\.0\.1:8001:8001/);
  // The stand-ins override only the images of the three public services.
  const s = config('core.yml', 'standins.yml');
  assert.equal(s.status, 0, s.stderr);
  const images = [...s.stdout.matchAll(/^    image: (\S+)$/gm)].map((m) => m[1]).sort();
  assert.deepEqual(images, ['llm-memory/llm_proxy:latest', 'llm-memory/memory_worker:latest',
    'localhost/llm-memory-standin/ollama:latest', 'localhost/llm-memory-standin/ollama:latest',
    'localhost/llm-memory-standin/postgres:latest', 'localhost/llm-memory-standin/redis:latest']);
  assert.equal(s.stdout.replace(/^    image: .*\n/gm, ''), cfg.replace(/^    image: .*\n/gm, ''));
  // Without the password the file refuses to render.
  fs.writeFileSync(path.join(dir, 'compose/.env'), fs.readFileSync(path.join(ROOT, '.env.example'), 'utf8').replace(/^POSTGRES_PASSWORD=.*$/m, ''));
  const bad = spawnSync('docker-compose', ['-f', path.join(dir, 'compose/core.yml'), 'config', '-q'], { encoding: 'utf8', cwd: dir });
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

// `systemd-analyze security --offline=yes` exposure score of a unit file.
function exposure(unitPath, root) {
  const r = spawnSync('systemd-analyze', ['security', '--offline=yes', ...(root ? [`--root=${root}`] : []), unitPath],
    { encoding: 'utf8' });
  const m = (r.stdout + r.stderr).match(/Overall exposure level for \S+: ([\d.]+) (\S+)/);
  assert.ok(m, r.stdout + r.stderr);
  return { score: Number(m[1]), verdict: m[2] };
}

// A packager's path: DESTDIR install of the default prefix, then the installed
// units verified against the installed binaries (systemd's own units copied
// into the staging root so the dependencies resolve) and scored.
test('cmake --install into a staging root: files laid out, units verify and score 2.0 or lower', () => {
  const stage = tmp();
  const prefix = execFileSync('cmake', ['-N', '-L', BUILD], { encoding: 'utf8' }).match(/^CMAKE_INSTALL_PREFIX:PATH=(.*)$/m)[1];
  execFileSync('cmake', ['--install', BUILD], { stdio: 'ignore', env: { ...process.env, DESTDIR: stage } });
  const at = (f) => path.join(stage, prefix, f);
  for (const f of ['bin/llm_proxy', 'bin/memory_worker', 'lib/systemd/system/llm_proxy.service',
    'lib/systemd/system/memory_worker.service', 'etc/llm-memory/llm_proxy.env.example',
    'etc/llm-memory/memory_worker.env.example']) {
    assert.ok(fs.existsSync(at(f)), f);
  }
  fs.mkdirSync(path.join(stage, 'usr/lib/systemd'), { recursive: true });
  fs.cpSync('/usr/lib/systemd/system', path.join(stage, 'usr/lib/systemd/system'), { recursive: true, verbatimSymlinks: true });
  const units = ['llm_proxy', 'memory_worker'].map((u) => at(`lib/systemd/system/${u}.service`));
  for (const u of units) assert.match(fs.readFileSync(u, 'utf8'), new RegExp(`^ExecStart=${prefix}/bin/`, 'm'));
  const verify = () => spawnSync('systemd-analyze', ['verify', `--root=${stage}`, ...units], { encoding: 'utf8' });
  const ok = verify();
  assert.equal(ok.status, 0, ok.stderr + ok.stdout);
  for (const u of units) {
    const { score, verdict } = exposure(u, stage);
    console.log(`${path.basename(u)}: systemd-analyze security exposure ${score} ${verdict}`);
    assert.ok(score <= 2.0, `${path.basename(u)} exposure ${score} ${verdict} (must be 2.0 or lower)`);
  }
  // Both checks can fail: without its binary a unit does not verify, and
  // without the hardening block a unit scores far above 2.0.
  fs.renameSync(at('bin/llm_proxy'), at('bin/llm_proxy.moved'));
  assert.notEqual(verify().status, 0);
  const bare = path.join(stage, 'bare.service');
  fs.writeFileSync(bare, fs.readFileSync(units[0], 'utf8').replace(/# Hardening[\s\S]*?\n\[Install\]/, '[Install]'));
  assert.ok(exposure(bare).score > 2.0);
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
