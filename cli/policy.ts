/**
 * `nightfuse policy check|apply|show`. check validates a policy file locally
 * and, given a func_config.json, warns about the functions it names that the
 * config does not have and about rules that can never apply.
 */
import { readFileSync } from 'node:fs';
import { stringify } from 'yaml';
import { loadFuncConfig } from '../common/func-config.js';
import { parsePolicy, PolicyError, type Policy } from '../common/policy.js';
import { AdminClient, refusal, type GatewayOptions } from './admin-api.js';
import { CliError, EXIT } from './exit.js';

const isGlob = (p: string) => /[*?]/.test(p);

/** What in `policy` does not fit the functions of a func_config (warnings: the policy is still valid). */
export function policyWarnings(policy: Policy, functions: readonly string[], configName: string): string[] {
  const known = new Set(functions);
  const out: string[] = [];
  for (const [g, fns] of Object.entries(policy.doc.trustGroups ?? {})) {
    for (const f of fns) if (!known.has(f)) out.push(`trustGroups.${g}: "${f}" is not a function in ${configName}`);
  }
  const rules = policy.doc.rules ?? [];
  const applied = new Set<number>();
  for (const a of functions) {
    for (const b of functions) {
      if (a === b) continue;
      const m = /^rules\[(\d+)\]/.exec(policy.forPair(a, b).source);
      if (m) applied.add(Number(m[1]));
    }
  }
  for (const [i, r] of rules.entries()) {
    const where = `rules[${i}] (${r.caller} -> ${r.callee})`;
    const missing = [r.caller, r.callee].filter((n) => !isGlob(n) && !known.has(n));
    if (missing.length) out.push(`${where}: ${missing.map((n) => `"${n}"`).join(' and ')} ${missing.length > 1 ? 'are not functions' : 'is not a function'} in ${configName}`);
    else if (!applied.has(i)) out.push(`${where}: applies to no pair of functions in ${configName} (no match, or an earlier rule matches first)`);
  }
  return out;
}

export function runPolicyCheck(file: string, o: { json?: boolean; func_config_file?: string }): number {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new CliError(`cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  let policy: Policy;
  try {
    policy = parsePolicy(text, file);
  } catch (err) {
    const errors = err instanceof PolicyError ? err.errors : [(err as Error).message];
    if (o.json) process.stdout.write(JSON.stringify({ ok: false, errors }) + '\n');
    else process.stdout.write(`${file}: invalid\n  ${errors.join('\n  ')}\n`);
    return EXIT.FAILED;
  }
  let warnings: string[] = [];
  if (o.func_config_file) {
    const config = loadFuncConfig(o.func_config_file);
    warnings = policyWarnings(policy, config.entries.map((e) => e.funcName), o.func_config_file);
  }
  if (o.json) {
    process.stdout.write(JSON.stringify({ ok: true, warnings }) + '\n');
  } else {
    for (const w of warnings) process.stderr.write(`warning: ${w}\n`);
    process.stdout.write(`${file}: valid (${policy.doc.rules?.length ?? 0} rules, ${Object.keys(policy.doc.trustGroups ?? {}).length} trust groups${warnings.length ? `, ${warnings.length} warning(s)` : ''})\n`);
  }
  return EXIT.OK;
}

export async function runPolicyApply(file: string, o: GatewayOptions & { json?: boolean }): Promise<number> {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new CliError(`cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  const r = await AdminClient.from(o).call('PUT', '/policy', text);
  if (o.json) process.stdout.write(JSON.stringify(r.data, null, 1) + '\n');
  if (r.status !== 200) throw refusal(`policy from ${file}`, r);
  if (!o.json) process.stdout.write(`policy from ${file} is in force\n`);
  return EXIT.OK;
}

export async function runPolicyShow(o: GatewayOptions & { json?: boolean; effective?: boolean }): Promise<number> {
  const p = await AdminClient.from(o).get('/policy');
  if (o.json) {
    process.stdout.write(JSON.stringify(p, null, 1) + '\n');
    return EXIT.OK;
  }
  const head = `# source: ${p.source}, in force since ${p.loadedAt}` +
    `${p.lastError ? `\n# last reload refused: ${p.lastError}` : ''}\n`;
  const body = o.effective || !p.text?.trim()
    ? `# effective settings${p.text?.trim() ? '' : ' (no policy text: built-in defaults)'}\n${stringify(p.effective)}`
    : p.text.endsWith('\n') ? p.text : `${p.text}\n`;
  process.stdout.write(head + body);
  return EXIT.OK;
}
