/**
 * What `nightfuse up` prints once the stack is ready: where the token is
 * kept, the console link, and what to try, derived from the config and
 * policy in use: the entry function (the first HTTP function no explicit rule names as
 * a callee) and a pair the policy may merge, caller -> callee, preferring an
 * explicit rule whose caller is the entry.
 */
import { relative } from 'node:path';
import type { FuncConfig } from '../common/func-config.js';
import type { Policy } from '../common/policy.js';

export interface DemoHints {
  entry?: string;
  pair?: { caller: string; callee: string; isolation: string; rule: string };
}

export function demoHints(config: FuncConfig, policy: Policy): DemoHints {
  const http = config.entries.filter((e) => !e.isGrpc).map((e) => e.funcName);
  const names = config.entries.map((e) => e.funcName);
  const mergeable: NonNullable<DemoHints['pair']>[] = [];
  for (const caller of names) {
    for (const callee of names) {
      if (caller === callee) continue;
      const p = policy.forPair(caller, callee);
      if (!p.source.startsWith('rules[') || !p.sameGroup || p.settings.mode === 'never') continue;
      mergeable.push({ caller, callee, isolation: p.settings.isolation, rule: p.source });
    }
  }
  const callees = new Set(mergeable.map((p) => p.callee));
  const entry = http.find((f) => !callees.has(f)) ?? http[0];
  const pair = mergeable.find((p) => p.caller === entry) ?? mergeable[0];
  return { entry, pair };
}

export interface UpHintInput {
  config: FuncConfig;
  policy: Policy;
  policyFile: string;
  /** the gateway's base URL */
  http: string;
  token: string;
  tokenNote: string;
}

/** The block after the ready line (one string, written at once). */
export function upHints(o: UpHintInput): string {
  const { entry, pair } = demoHints(o.config, o.policy);
  const lines = [
    '',
    `Admin token: ${o.tokenNote}`,
    `Console:     ${o.http}/ui/#token=${o.token}`,
    '',
    'Try it:',
    `  export NIGHTFUSE_GATEWAY=${o.http} NIGHTFUSE_ADMIN_TOKEN=${o.token}`,
  ];
  if (entry) lines.push(`  curl -X POST -d Hello $NIGHTFUSE_GATEWAY/function/${entry}`);
  lines.push('  curl -s $NIGHTFUSE_GATEWAY/metrics | grep nightfuse_edge_ipc_calls_total', '  npx nightfuse status');
  if (pair) {
    lines.push(
      '',
      `Watch a merge happen (${shortPath(o.policyFile) || 'built-in policy'}, ${pair.rule}: ${pair.callee} may be merged into ${pair.caller}'s workers once the edge is hot):`,
      ...[
        [`npx nightfuse load ${pair.caller} -d 20`, 'latency per second, the merge event, the latency after'],
        ['npx nightfuse events --follow', 'in another terminal: the decision log with its reasons'],
        ['npx nightfuse edges --watch', `localCalls of ${pair.caller} -> ${pair.callee} grow: no more IPC`],
      ].map(([cmd, why], _i, all) => `  ${cmd.padEnd(Math.max(...all.map((x) => x[0].length)))}   # ${why}`),
    );
  } else if (entry) {
    lines.push('', `No policy rule names a pair of these functions to merge; \`npx nightfuse load ${entry}\` puts ${entry} under load.`);
  }
  lines.push('Stop with Ctrl-C.', '');
  return lines.join('\n') + '\n';
}

/** A path relative to the working directory when it lies below it. */
function shortPath(p: string): string {
  if (!p) return p;
  const r = relative(process.cwd(), p);
  return r && !r.startsWith('..') ? r : p;
}
