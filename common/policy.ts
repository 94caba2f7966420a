/**
 * The merge policy (--merge_policy_file, JSON or YAML): which callee may be
 * merged into which caller, when, and how. Validated against a JSON schema;
 * every error names the field (and the rule, for rules).
 *
 *   defaults:            what applies to a pair no rule matches
 *     mode: auto          auto | always | never
 *     isolation: thread   inline | stack | thread
 *     instances: 1        callee instances per caller worker
 *     minCallsPerSec: 50  auto: merge when the edge's call rate is at least this…
 *     minIpcShare: 0.2    …and at least this share of the caller's time is spent waiting on this edge's IPC…
 *     sustainSec: 5       …continuously for this long
 *     unmergeBelowCallsPerSec: 5   auto: unmerge when the rate stays below this for sustainSec (hysteresis)
 *     cooldownSec: 30     after an unmerge (and after a fault), the pair is held back this long
 *   limits:
 *     maxCalleesPerWorker: 4
 *     maxExtraMemoryMiB: 256      estimated: callee library size + stacks per instance
 *   trustGroups:         name -> function names; functions merge only within one group
 *     web: [Foo, Bar]              (functions in no group form the group "default")
 *   rules:               first match wins; caller/callee are exact names or globs (* ?)
 *     - caller: Foo
 *       callee: "Ba*"
 *       mode: always
 *       isolation: inline
 */
import { readFileSync } from 'node:fs';
import { Ajv, type ErrorObject } from 'ajv';
import { parse as parseYaml } from 'yaml';
import type { Isolation } from '../proto/merge-wire.js';

export type MergeMode = 'auto' | 'always' | 'never';

export interface PairSettings {
  mode: MergeMode;
  isolation: Isolation;
  instances: number;
  minCallsPerSec: number;
  minIpcShare: number;
  sustainSec: number;
  unmergeBelowCallsPerSec: number;
  cooldownSec: number;
}

export interface PolicyRule extends Partial<PairSettings> {
  caller: string;
  callee: string;
}

export interface PolicyDoc {
  defaults?: Partial<PairSettings>;
  limits?: { maxCalleesPerWorker?: number; maxExtraMemoryMiB?: number };
  trustGroups?: Record<string, string[]>;
  rules?: PolicyRule[];
}

/** Conservative by default: merge only clearly hot edges, in their own thread. */
export const DEFAULT_SETTINGS: PairSettings = {
  mode: 'auto',
  isolation: 'thread',
  instances: 1,
  minCallsPerSec: 50,
  minIpcShare: 0.2,
  sustainSec: 5,
  unmergeBelowCallsPerSec: 5,
  cooldownSec: 30,
};

export const DEFAULT_LIMITS = { maxCalleesPerWorker: 4, maxExtraMemoryMiB: 256 };

const settingsProps = {
  mode: { enum: ['auto', 'always', 'never'] },
  isolation: { enum: ['inline', 'stack', 'thread'] },
  instances: { type: 'integer', minimum: 1, maximum: 16 },
  minCallsPerSec: { type: 'number', minimum: 0 },
  minIpcShare: { type: 'number', minimum: 0, maximum: 1 },
  sustainSec: { type: 'number', minimum: 0, maximum: 3600 },
  unmergeBelowCallsPerSec: { type: 'number', minimum: 0 },
  cooldownSec: { type: 'number', minimum: 0, maximum: 86400 },
};

/** The policy document's JSON schema (also published in the admin API's OpenAPI document). */
export const POLICY_SCHEMA = {
  type: 'object',
  additionalProperties: false,
  properties: {
    defaults: { type: 'object', additionalProperties: false, properties: settingsProps },
    limits: {
      type: 'object',
      additionalProperties: false,
      properties: {
        maxCalleesPerWorker: { type: 'integer', minimum: 0, maximum: 16 },
        maxExtraMemoryMiB: { type: 'number', minimum: 0 },
      },
    },
    trustGroups: {
      type: 'object',
      additionalProperties: { type: 'array', items: { type: 'string', minLength: 1 }, uniqueItems: true },
    },
    rules: {
      type: 'array',
      items: {
        type: 'object',
        additionalProperties: false,
        required: ['caller', 'callee'],
        properties: { caller: { type: 'string', minLength: 1 }, callee: { type: 'string', minLength: 1 }, ...settingsProps },
      },
    },
  },
} as const;

const ajv = new Ajv({ allErrors: true });
const validateDoc = ajv.compile(POLICY_SCHEMA);

export class PolicyError extends Error {
  override name = 'PolicyError';
  constructor(readonly errors: string[], source: string) {
    super(`invalid merge policy ${source}:\n  ${errors.join('\n  ')}`);
  }
}

/** "/rules/2/isolation" -> "rules[2] (Foo -> Ba*): isolation" */
function describeError(e: ErrorObject, doc: PolicyDoc): string {
  const parts = e.instancePath.split('/').filter(Boolean);
  let where = '';
  for (let i = 0; i < parts.length; i++) {
    const p = parts[i];
    if (/^\d+$/.test(p)) {
      where += `[${p}]`;
      if (parts[i - 1] === 'rules') {
        const r = doc.rules?.[Number(p)];
        if (r && typeof r === 'object') where += ` (${String(r.caller)} -> ${String(r.callee)})`;
      }
    } else where += where ? `.${p}` : p;
  }
  if (e.keyword === 'additionalProperties') {
    return `${where || 'top level'}: unknown field "${(e.params as { additionalProperty: string }).additionalProperty}"`;
  }
  if (e.keyword === 'required') return `${where || 'top level'}: missing field "${(e.params as { missingProperty: string }).missingProperty}"`;
  if (e.keyword === 'enum') return `${where}: must be one of ${(e.params as { allowedValues: string[] }).allowedValues.join(', ')}`;
  return `${where || 'top level'}: ${e.message}`;
}

export class Policy {
  readonly settings: PairSettings;
  readonly limits: typeof DEFAULT_LIMITS;
  private readonly groupOf = new Map<string, string>();
  private readonly rules: { caller: RegExp; callee: RegExp; rule: PolicyRule }[];

  constructor(readonly doc: PolicyDoc, readonly text: string) {
    this.settings = { ...DEFAULT_SETTINGS, ...doc.defaults };
    this.limits = { ...DEFAULT_LIMITS, ...doc.limits };
    for (const [g, fns] of Object.entries(doc.trustGroups ?? {})) for (const f of fns) this.groupOf.set(f, g);
    this.rules = (doc.rules ?? []).map((rule) => ({ caller: glob(rule.caller), callee: glob(rule.callee), rule }));
  }

  trustGroup(fn: string): string {
    return this.groupOf.get(fn) ?? 'default';
  }

  /** The settings for a pair and why (which rule, or the defaults). */
  forPair(caller: string, callee: string): { settings: PairSettings; source: string; sameGroup: boolean } {
    const sameGroup = this.trustGroup(caller) === this.trustGroup(callee);
    for (const [i, r] of this.rules.entries()) {
      if (r.caller.test(caller) && r.callee.test(callee)) {
        const { caller: _c, callee: _e, ...over } = r.rule;
        return { settings: { ...this.settings, ...over }, source: `rules[${i}] (${r.rule.caller} -> ${r.rule.callee})`, sameGroup };
      }
    }
    return { settings: this.settings, source: 'defaults', sameGroup };
  }
}

function glob(p: string): RegExp {
  return new RegExp(`^${p.replace(/[.+^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '.*').replace(/\?/g, '.')}$`);
}

/** Parses JSON or YAML text and validates it; throws PolicyError listing every problem. */
export function parsePolicy(text: string, source = '(text)'): Policy {
  let doc: unknown;
  try {
    doc = text.trim() === '' ? {} : parseYaml(text); // YAML is a superset of JSON
  } catch (err) {
    throw new PolicyError([`not valid JSON or YAML: ${(err as Error).message.split('\n')[0]}`], source);
  }
  if (doc === null || doc === undefined) doc = {};
  if (!validateDoc(doc)) {
    throw new PolicyError((validateDoc.errors ?? []).map((e) => describeError(e, doc as PolicyDoc)), source);
  }
  const d = doc as PolicyDoc;
  const errors: string[] = [];
  const seen = new Map<string, string>();
  for (const [g, fns] of Object.entries(d.trustGroups ?? {})) {
    for (const f of fns) {
      if (seen.has(f)) errors.push(`trustGroups.${g}: "${f}" is also in trust group "${seen.get(f)}"`);
      seen.set(f, g);
    }
  }
  for (const [i, r] of (d.rules ?? []).entries()) {
    const s = { ...DEFAULT_SETTINGS, ...d.defaults, ...r };
    if (s.unmergeBelowCallsPerSec > s.minCallsPerSec && s.mode === 'auto') {
      errors.push(`rules[${i}] (${r.caller} -> ${r.callee}): unmergeBelowCallsPerSec (${s.unmergeBelowCallsPerSec}) must not exceed minCallsPerSec (${s.minCallsPerSec})`);
    }
  }
  const ds = { ...DEFAULT_SETTINGS, ...d.defaults };
  if (ds.unmergeBelowCallsPerSec > ds.minCallsPerSec) {
    errors.push(`defaults: unmergeBelowCallsPerSec (${ds.unmergeBelowCallsPerSec}) must not exceed minCallsPerSec (${ds.minCallsPerSec})`);
  }
  if (errors.length) throw new PolicyError(errors, source);
  return new Policy(d, text);
}

export function loadPolicy(path: string): Policy {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw new PolicyError([`cannot read the file: ${(err as Error).message}`], path);
  }
  return parsePolicy(text, path);
}

export const DEFAULT_POLICY = new Policy({}, '');
