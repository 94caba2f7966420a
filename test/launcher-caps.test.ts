// Function code must not inherit the launcher's CAP_SYS_PTRACE. Some
// container runtimes (podman, for non-root users) grant an added capability
// as ambient, which exec hands to every child. The launcher clears its
// ambient set at start: it keeps the capability, its workers get none.
import t from 'tap';
import { spawn } from 'node:child_process';
import { readFileSync, rmSync } from 'node:fs';
import { CLI, FIXTURE_CONFIG, stopProcess, waitFor } from './helpers.js';
import { startGatewayProcess } from './adversary.js';

const caps = (pid: number) => {
  const s = readFileSync(`/proc/${pid}/status`, 'utf8');
  const get = (k: string) => BigInt(`0x${new RegExp(`${k}:\\s+([0-9a-f]+)`).exec(s)![1]}`);
  return { eff: get('CapEff'), amb: get('CapAmb') };
};
const CAP_SYS_PTRACE = 1n << 19n;

const childrenOf = (pid: number): number[] => {
  try {
    return readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number);
  } catch {
    return [];
  }
};

t.test('a non-root launcher with an ambient CAP_SYS_PTRACE keeps it; its workers have none', async (t) => {
  const gw = await startGatewayProcess();
  t.teardown(() => gw.stop());
  const root = `/dev/shm/nightfuse-test-caps-${process.pid}`;
  t.teardown(() => rmSync(root, { recursive: true, force: true }));
  // As podman starts a non-root container given --cap-add=SYS_PTRACE.
  const ln = spawn('setpriv', ['--reuid=10001', '--regid=10001', '--clear-groups', '--inh-caps=+sys_ptrace', '--ambient-caps=+sys_ptrace',
    process.execPath, CLI, 'launcher', '--gateway_addr=127.0.0.1', `--gateway_port=${gw.engine}`, '--control_port=0', '--node_id=3',
    `--root_path_for_ipc=${root}`, `--func_config_file=${FIXTURE_CONFIG}`], { stdio: ['ignore', 'pipe', 'pipe'] });
  t.teardown(() => stopProcess(ln));
  let out = '';
  ln.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  let err = '';
  ln.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  await waitFor(() => /launcher ready/.test(out), 30000, `launcher ready (stderr: ${err.slice(-500)})`);
  const launcherPid = ln.pid!;
  const launcher = caps(launcherPid);
  t.ok(launcher.eff & CAP_SYS_PTRACE, 'the launcher still holds CAP_SYS_PTRACE (it must trace its workers)');
  t.equal(launcher.amb, 0n, 'its ambient set is empty');
  const workers = childrenOf(launcherPid);
  t.ok(workers.length >= 4, `workers running (${workers.length})`);
  for (const w of workers) t.equal(caps(w).eff, 0n, `worker ${w} has no capabilities`);
});
