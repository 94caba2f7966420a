/**
 * deploy/: every Kubernetes manifest against Kubernetes' own schemas (strict:
 * unknown fields too), the kustomize build of each overlay where kubectl is
 * installed, the rules the manifests must keep (launcher: only SYS_PTRACE, an
 * in-memory IPC root, probes; only launchers reach engine and control), the
 * compose file, the systemd units (`systemd-analyze verify` where installed),
 * and that every NIGHTFUSE_* variable they set is a real flag.
 */
import t from 'tap';
import { execFileSync, spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { parseAllDocuments, parse as parseYaml } from 'yaml';
import { parseFuncConfig } from '../common/func-config.js';
import { envName } from '../common/flags.js';
import { parsePolicy } from '../common/policy.js';
import { GATEWAY_FLAGS } from '../gateway/main.js';
import { LAUNCHER_FLAGS } from '../launcher/main.js';
import { ROOT } from './helpers.js';
import { type K8sObject, validateObject } from './k8s-schema.js';

const DEPLOY = join(ROOT, 'deploy');
const K8S = join(DEPLOY, 'kubernetes');
/** Where the image puts the package (deploy/Dockerfile). */
const IMAGE_ROOT = '/opt/nightfuse/';
const FLAGS: Record<'gateway' | 'launcher', Set<string>> = {
  gateway: new Set(Object.keys(GATEWAY_FLAGS).map(envName)),
  launcher: new Set(Object.keys(LAUNCHER_FLAGS).map(envName)),
};

function walk(dir: string): string[] {
  return readdirSync(dir).flatMap((n) => {
    const p = join(dir, n);
    return statSync(p).isDirectory() ? walk(p) : [p];
  });
}

function yamlDocs(text: string, where: string): unknown[] {
  return parseAllDocuments(text).map((d, i) => {
    if (d.errors.length > 0) throw new Error(`${where} document ${i}: ${d.errors.map((e) => e.message).join('; ')}`);
    return d.toJS();
  });
}

const manifestFiles = walk(K8S).filter((p) => /\.ya?ml$/.test(p) && !/kustomization\.ya?ml$/.test(p) && !p.endsWith('merge-policy.yaml'));
const rawObjects = (): { file: string; obj: K8sObject }[] =>
  manifestFiles.flatMap((f) => yamlDocs(readFileSync(f, 'utf8'), relative(ROOT, f)).map((obj) => ({ file: relative(ROOT, f), obj: obj as K8sObject })));

type Pod = { containers: Container[]; volumes?: Volume[]; hostNetwork?: boolean; hostPID?: boolean; hostIPC?: boolean; securityContext?: Record<string, unknown> };
type Container = {
  name: string; args?: string[]; env?: { name: string; value?: string; valueFrom?: unknown }[]; ports?: { name?: string; containerPort: number }[];
  securityContext?: { privileged?: boolean; allowPrivilegeEscalation?: boolean; capabilities?: { add?: string[]; drop?: string[] } };
  volumeMounts?: { name: string; mountPath: string }[]; resources?: { requests?: object; limits?: object };
  livenessProbe?: Probe; readinessProbe?: Probe; startupProbe?: Probe;
};
type Probe = { httpGet?: { path: string; port: string | number } };
type Volume = { name: string; emptyDir?: { medium?: string }; configMap?: { name: string }; secret?: { secretName: string } };

const podOf = (o: K8sObject): Pod | undefined => (o.spec as { template?: { spec: Pod } } | undefined)?.template?.spec;
const labelsOf = (o: K8sObject): Record<string, string> => (o.spec as { template?: { metadata?: { labels?: Record<string, string> } } }).template?.metadata?.labels ?? {};
const find = (objs: K8sObject[], kind: string, name: string) => objs.find((o) => o.kind === kind && o.metadata?.name === name);
const envOf = (c: Container) => new Map((c.env ?? []).map((e) => [e.name, e.value]));
const matches = (sel: Record<string, string>, labels: Record<string, string>) => Object.entries(sel).every(([k, v]) => labels[k] === v);

/** The rules every rendering of the manifests keeps (raw base, or kustomize output). */
function checkRules(t: Tap.Test, objs: K8sObject[], rendered: boolean): void {
  const gw = find(objs, 'Deployment', 'nightfuse-gateway');
  const ds = find(objs, 'DaemonSet', 'nightfuse-launcher');
  t.ok(gw && ds, 'a gateway Deployment and a launcher DaemonSet');
  if (!gw || !ds) return;
  t.ok(find(objs, 'Namespace', 'nightfuse'), 'the Namespace');

  for (const [o, role] of [[gw, 'gateway'], [ds, 'launcher']] as const) {
    const pod = podOf(o)!;
    const c = pod.containers[0];
    t.same(c.args, [role], `${role}: the image's entry point runs "${role}"`);
    t.notOk(pod.hostNetwork || pod.hostPID || pod.hostIPC, `${role}: no host namespaces`);
    t.notOk(c.securityContext?.privileged, `${role}: not privileged`);
    t.equal(c.securityContext?.allowPrivilegeEscalation, false, `${role}: no privilege escalation`);
    t.equal(pod.securityContext?.runAsNonRoot, true, `${role}: not root`);
    t.ok(c.resources?.requests && c.resources?.limits, `${role}: resources`);
    for (const name of envOf(c).keys()) if (name.startsWith('NIGHTFUSE_')) t.ok(FLAGS[role].has(name), `${role}: ${name} is a ${role} flag`);
    const ports = new Map((c.ports ?? []).map((p) => [p.name, p.containerPort]));
    for (const kind of ['livenessProbe', 'readinessProbe', 'startupProbe'] as const) {
      const p = c[kind]?.httpGet;
      t.ok(p && ports.has(String(p.port)), `${role}: ${kind} on a declared port`);
    }
    t.equal(c.livenessProbe?.httpGet?.path, '/healthz', `${role}: liveness is /healthz`);
    t.equal(c.readinessProbe?.httpGet?.path, '/readyz', `${role}: readiness is /readyz`);
    if (rendered) {
      for (const v of pod.volumes ?? []) {
        if (v.configMap) t.ok(find(objs, 'ConfigMap', v.configMap.name), `${role}: ConfigMap ${v.configMap.name} exists`);
        if (v.secret) t.ok(find(objs, 'Secret', v.secret.secretName), `${role}: Secret ${v.secret.secretName} exists`);
      }
    }
  }

  const gwc = podOf(gw)!.containers[0];
  t.same(gwc.securityContext?.capabilities, { drop: ['ALL'] }, 'gateway: no capability at all');
  const lc = podOf(ds)!.containers[0];
  t.same(lc.securityContext?.capabilities, { drop: ['ALL'], add: ['SYS_PTRACE'] }, 'launcher: SYS_PTRACE and nothing else');
  const ipcRoot = envOf(lc).get('NIGHTFUSE_ROOT_PATH_FOR_IPC') ?? '/dev/shm/faas_ipc';
  const mount = (lc.volumeMounts ?? []).find((m) => ipcRoot.startsWith(m.mountPath.replace(/\/?$/, '/')));
  const vol = podOf(ds)!.volumes?.find((v) => v.name === mount?.name);
  t.equal(vol?.emptyDir?.medium, 'Memory', `launcher: the IPC root ${ipcRoot} is below an in-memory emptyDir`);
  t.not(mount?.mountPath.replace(/\/$/, ''), ipcRoot.replace(/\/$/, ''), 'launcher: the IPC root is a subdirectory (it is recreated at start)');
  t.ok((lc.env ?? []).some((e) => e.name === 'NIGHTFUSE_NODE_NAME' && JSON.stringify(e.valueFrom).includes('spec.nodeName')), 'launcher: node id from the node name (downward API)');

  // Services select the gateway; engine and control reach it even before it is ready.
  const gwLabels = labelsOf(gw);
  const services = objs.filter((o) => o.kind === 'Service');
  for (const s of services) t.ok(matches((s.spec as { selector: Record<string, string> }).selector, gwLabels), `Service ${s.metadata?.name} selects the gateway`);
  const portsOf = (s: K8sObject) => ((s.spec as { ports: { port: number }[] }).ports).map((p) => p.port).sort((a, b) => a - b);
  t.same(services.flatMap(portsOf).sort((a, b) => a - b), [8080, 10007, 10008, 50051], 'HTTP, gRPC, engine and control are served');
  const cluster = services.find((s) => portsOf(s).includes(10007));
  t.equal((cluster?.spec as { publishNotReadyAddresses?: boolean })?.publishNotReadyAddresses, true, 'launchers reach a gateway that is not ready yet');

  // NetworkPolicy: engine and control only from launcher pods.
  const policies = objs.filter((o) => o.kind === 'NetworkPolicy');
  const forGw = policies.find((p) => matches((p.spec as { podSelector: { matchLabels: Record<string, string> } }).podSelector.matchLabels, gwLabels));
  t.ok(forGw, 'a NetworkPolicy covers the gateway');
  type Rule = { from?: { podSelector?: { matchLabels: Record<string, string> } }[]; ports?: { port: number }[] };
  for (const port of [10007, 10008]) {
    const rules = ((forGw?.spec as { ingress?: Rule[] })?.ingress ?? []).filter((r) => !r.ports || r.ports.some((p) => p.port === port));
    t.ok(rules.length > 0, `port ${port} is reachable by someone`);
    for (const r of rules) {
      t.ok(r.from && r.from.length > 0 && r.from.every((f) => f.podSelector && matches(f.podSelector.matchLabels, labelsOf(ds))), `port ${port}: only launcher pods`);
    }
  }
}

t.test('every Kubernetes manifest passes Kubernetes’ schemas, strictly', async (t) => {
  const objs = rawObjects();
  t.ok(objs.length >= 7, `${objs.length} objects in ${manifestFiles.length} files`);
  for (const { file, obj } of objs) t.same(await validateObject(obj), [], `${file}: ${obj.kind} ${obj.metadata?.name}`);
});

t.test('the validator refuses broken manifests', async (t) => {
  const ds = rawObjects().find((x) => x.obj.kind === 'DaemonSet')!.obj;
  const broken = (edit: (c: Container, pod: Pod, o: K8sObject) => void): K8sObject => {
    const o = structuredClone(ds);
    edit(podOf(o)!.containers[0], podOf(o)!, o);
    return o;
  };
  const cases: [string, K8sObject, RegExp][] = [
    ['a misspelt field', broken((c) => { const sc = c.securityContext as Record<string, unknown>; sc.capabilites = sc.capabilities; delete sc.capabilities; }), /unknown field \/spec\/template\/spec\/containers\/0\/securityContext\/capabilites/],
    ['a wrong type', broken((c) => { (c.securityContext!.capabilities as Record<string, unknown>).add = 'SYS_PTRACE'; }), /capabilities\/add must be array/],
    ['a missing required field', broken((c) => { delete (c as Partial<Container>).name; }), /must have required property name/],
    ['a port that is no number', broken((c) => { (c.ports![0] as Record<string, unknown>).containerPort = 'probe'; }), /containerPort must be integer/],
    ['an unknown top-level field', broken((_c, _p, o) => { o.spce = {}; }), /unknown field \/spce/],
    ['an unknown kind', { apiVersion: 'apps/v1', kind: 'DeamonSet', metadata: { name: 'x' } }, /is not a Kubernetes kind/],
  ];
  for (const [what, o, re] of cases) t.match((await validateObject(o)).join('\n'), re, what);
  t.same(await validateObject(ds), [], 'the unbroken one passes');
});

t.test('the raw base keeps the rules', async (t) => {
  checkRules(t, rawObjects().map((x) => x.obj), false);
});

t.test('kustomization files name what exists', async (t) => {
  for (const k of walk(K8S).filter((p) => p.endsWith('kustomization.yaml'))) {
    const dir = join(k, '..');
    const doc = parseYaml(readFileSync(k, 'utf8')) as Record<string, unknown>;
    const known = ['apiVersion', 'kind', 'namespace', 'labels', 'resources', 'images', 'configMapGenerator', 'secretGenerator'];
    t.same(Object.keys(doc).filter((x) => !known.includes(x)), [], `${relative(ROOT, k)}: known fields only`);
    for (const r of (doc.resources as string[]) ?? []) t.ok(existsSync(join(dir, r)), `${relative(ROOT, k)}: resource ${r} exists`);
    const ignored = existsSync(join(dir, '.gitignore')) ? readFileSync(join(dir, '.gitignore'), 'utf8').split('\n') : [];
    for (const g of [...((doc.configMapGenerator as { files: string[] }[]) ?? []), ...((doc.secretGenerator as { files: string[] }[]) ?? [])]) {
      for (const f of g.files) t.ok(existsSync(join(dir, f)) || ignored.includes(f), `${relative(ROOT, k)}: ${f} exists (or is a generated secret, kept out of git)`);
    }
  }
});

t.test('the examples overlay: its func_config and policy load, its libraries are in the image', async (t) => {
  const dir = join(K8S, 'overlays', 'examples');
  const cfg = parseFuncConfig(readFileSync(join(dir, 'func_config.json')), '/etc/nightfuse');
  const ours = parseFuncConfig(readFileSync(join(ROOT, 'examples', 'func_config.json')), join(ROOT, 'examples'));
  t.same(cfg.entries.map((e) => [e.funcName, e.funcId]), ours.entries.map((e) => [e.funcName, e.funcId]), 'the same functions and ids as examples/func_config.json');
  for (const e of cfg.entries) {
    t.ok(e.library?.startsWith(IMAGE_ROOT), `${e.funcName}: library inside the image`);
    t.ok(e.library && existsSync(join(ROOT, e.library.slice(IMAGE_ROOT.length))), `${e.funcName}: ${e.library} is built here too`);
  }
  t.doesNotThrow(() => parsePolicy(readFileSync(join(dir, 'merge-policy.yaml'), 'utf8'), 'merge-policy.yaml'), 'the policy is valid');
});

const kubectl = spawnSync('kubectl', ['version', '--client'], { encoding: 'utf8' });
t.test('kustomize build of the examples overlay', { skip: kubectl.status === 0 ? false : 'kubectl is not installed: the kustomize build is not checked (the raw manifests are)' }, async (t) => {
  const tmp = mkdtempSync(join(tmpdir(), 'nf-kustomize-'));
  t.teardown(() => rmSync(tmp, { recursive: true, force: true }));
  cpSync(K8S, join(tmp, 'kubernetes'), { recursive: true });
  const overlay = join(tmp, 'kubernetes', 'overlays', 'examples');
  writeFileSync(join(overlay, 'admin-token'), 'a'.repeat(64) + '\n');
  writeFileSync(join(overlay, 'cluster-token'), 'c'.repeat(64) + '\n');
  const out = execFileSync('kubectl', ['kustomize', overlay], { encoding: 'utf8' });
  const objs = yamlDocs(out, 'kustomize output') as K8sObject[];
  // kustomize wraps long base64 values over lines; the API server's decoder (Go's) skips newlines, the schema's format check does not.
  for (const o of objs) if (o.kind === 'Secret' && o.data) for (const [k, v] of Object.entries(o.data as Record<string, string>)) (o.data as Record<string, string>)[k] = v.replace(/\s+/g, '');
  for (const o of objs) t.same(await validateObject(o), [], `rendered ${o.kind} ${o.metadata?.name}`);
  for (const o of objs) if (o.kind !== 'Namespace') t.equal(o.metadata?.namespace, 'nightfuse', `${o.kind} ${o.metadata?.name} in the nightfuse namespace`);
  checkRules(t, objs, true);
  const cm = objs.find((o) => o.kind === 'ConfigMap' && o.metadata?.name?.startsWith('nightfuse-config'));
  t.ok(cm && parseFuncConfig((cm.data as Record<string, string>)['func_config.json'], '/etc/nightfuse'), 'the ConfigMap carries func_config.json');
});

t.test('compose.yaml: a gateway and two launchers, each its own container', async (t) => {
  const doc = parseYaml(readFileSync(join(DEPLOY, 'compose.yaml'), 'utf8'), { merge: true }) as {
    services: Record<string, { command: string[]; environment: Record<string, string>; cap_add?: string[]; cap_drop?: string[]; privileged?: boolean; ipc?: string; network_mode?: string; pid?: string; secrets?: string[] }>;
    secrets: Record<string, { file: string }>;
  };
  const launchers = Object.entries(doc.services).filter(([, s]) => s.command[0] === 'launcher');
  const gateways = Object.entries(doc.services).filter(([, s]) => s.command[0] === 'gateway');
  t.equal(gateways.length, 1, 'one gateway');
  t.equal(launchers.length, 2, 'two launchers');
  const ids = new Set<string>();
  for (const [name, s] of Object.entries(doc.services)) {
    const role = s.command[0] as 'gateway' | 'launcher';
    t.notOk(s.privileged || s.ipc || s.network_mode || s.pid, `${name}: nothing shared with the host or another container`);
    t.same(s.cap_drop, ['ALL'], `${name}: drops every capability`);
    t.same(s.cap_add ?? [], role === 'launcher' ? ['SYS_PTRACE'] : [], `${name}: adds ${role === 'launcher' ? 'SYS_PTRACE only' : 'none'}`);
    for (const k of Object.keys(s.environment)) t.ok(FLAGS[role].has(k), `${name}: ${k} is a ${role} flag`);
    for (const sec of s.secrets ?? []) t.ok(doc.secrets[sec], `${name}: secret ${sec} is declared`);
    if (role === 'launcher') ids.add(s.environment.NIGHTFUSE_NODE_ID);
  }
  t.equal(ids.size, 2, 'the launchers have distinct node ids');
});

const systemdAnalyze = spawnSync('systemd-analyze', ['--version'], { encoding: 'utf8' });
const units = ['nightfuse-gateway.service', 'nightfuse-launcher.service'];
/** `Key=value` lines of a unit (later lines of a repeated key appended). */
function unitKeys(text: string): Map<string, string[]> {
  const m = new Map<string, string[]>();
  for (const line of text.split('\n')) {
    const x = /^([A-Za-z]+)=(.*)$/.exec(line.trim());
    if (x) m.set(x[1], [...(m.get(x[1]) ?? []), x[2]]);
  }
  return m;
}

t.test('systemd units: hardening', async (t) => {
  for (const u of units) {
    const k = unitKeys(readFileSync(join(DEPLOY, 'systemd', u), 'utf8'));
    const role = u.includes('launcher') ? 'launcher' : 'gateway';
    t.same(k.get('NoNewPrivileges'), ['yes'], `${u}: NoNewPrivileges`);
    t.same(k.get('ProtectSystem'), ['strict'], `${u}: ProtectSystem=strict`);
    t.same(k.get('CapabilityBoundingSet'), [role === 'launcher' ? 'CAP_SYS_PTRACE' : ''], `${u}: capabilities ${role === 'launcher' ? 'CAP_SYS_PTRACE only' : 'none'}`);
    t.same(k.get('AmbientCapabilities'), [''], `${u}: no ambient capability (workers inherit those)`);
    t.match(k.get('ExecStart')?.[0] ?? '', new RegExp(`nightfuse\\.js ${role}$`), `${u}: runs ${role}, settings from the environment`);
    const nodeFlags = /^#!\/usr\/bin\/env -S node (.*)$/m.exec(readFileSync(join(ROOT, 'bin', 'nightfuse.js'), 'utf8'))?.[1];
    t.equal(k.get('ExecStart')?.[0], `/usr/bin/node ${nodeFlags} /opt/nightfuse/bin/nightfuse.js ${role}`, `${u}: node's flags as bin/nightfuse.js starts it with`);
    for (const e of k.get('Environment') ?? []) {
      const name = e.split('=')[0];
      t.ok(FLAGS[role].has(name), `${u}: ${name} is a ${role} flag`);
    }
    if (role === 'launcher') {
      const rd = k.get('RuntimeDirectory')?.[0];
      t.ok(rd, `${u}: RuntimeDirectory`);
      const ipc = (k.get('Environment') ?? []).find((e) => e.startsWith('NIGHTFUSE_ROOT_PATH_FOR_IPC='))?.split('=')[1];
      t.ok(ipc?.startsWith(`/run/${rd}/`), `${u}: the IPC root ${ipc} is below /run/${rd} (tmpfs)`);
      t.ok((k.get('SystemCallFilter') ?? []).some((f) => f.split(/\s+/).includes('ptrace')), `${u}: the syscall filter allows ptrace`);
    }
  }
});

t.test('systemd units: systemd-analyze verify', { skip: systemdAnalyze.status === 0 ? false : 'systemd-analyze is not installed: the units are not verified by systemd' }, async (t) => {
  const r = spawnSync('systemd-analyze', ['verify', ...units.map((u) => `./${u}`)], { cwd: join(DEPLOY, 'systemd'), encoding: 'utf8' });
  // verify exits 0 on unknown keys and bad values (it only warns): any diagnostic is a failure.
  t.equal(r.status, 0, 'exit status 0');
  t.equal(`${r.stdout}${r.stderr}`.trim(), '', 'no diagnostics');
});
