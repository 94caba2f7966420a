/**
 * The admin API's JSON schemas: request bodies, path parameters and every
 * response. One place for each rule: the router validates with these (ajv),
 * and the OpenAPI document (admin-openapi.ts) publishes the same objects.
 * The merge policy's own schema lives with the policy (common/policy.ts).
 */
import { Ajv, type ErrorObject, type ValidateFunction } from 'ajv';
import { POLICY_SCHEMA } from '../common/policy.js';

const ref = (name: string) => ({ $ref: `#/components/schemas/${name}` });
const str = { type: 'string' } as const;
const int = { type: 'integer', minimum: 0 } as const;
const num = { type: 'number' } as const;
const nullableNum = { type: ['number', 'null'] } as const;
const isoTime = { type: 'string', format: 'date-time' } as const;
const obj = (properties: Record<string, unknown>, required = Object.keys(properties), extra: Record<string, unknown> = {}) =>
  ({ type: 'object', properties, required, ...extra });
const arrayOf = (name: string) => ({ type: 'array', items: ref(name) });

export const ISOLATIONS = ['inline', 'stack', 'thread'] as const;

/** Every schema the admin API uses, by name (components.schemas in the OpenAPI document). */
export const SCHEMAS: Record<string, Record<string, unknown>> = {
  FunctionName: {
    type: 'string', minLength: 1, maxLength: 256,
    description: 'a funcName from func_config.json (e.g. Foo, grpc:pkg.Service)',
  },
  Isolation: { enum: [...ISOLATIONS], description: 'inline: the caller\'s thread and stack; stack: own stack; thread: own thread' },
  EventSeq: { type: 'integer', minimum: 0, maximum: Number.MAX_SAFE_INTEGER, description: 'an event seq: only later events' },
  EventLimit: { type: 'integer', minimum: 1, maximum: 500, description: 'at most this many (the newest)' },
  MergeRequest: obj({
    caller: ref('FunctionName'), callee: ref('FunctionName'), isolation: ref('Isolation'),
  }, ['caller', 'callee'], { additionalProperties: false }),
  Error: obj({
    error: { type: 'string', description: 'what was wrong, in one sentence' },
    errors: { type: 'array', items: obj({ field: str, message: str }), description: 'per field, for invalid requests' },
  }, ['error']),
  Function: obj({
    name: str, funcId: int, grpc: { type: 'boolean' }, trustGroup: str, workers: int, calls: int, failures: int, queued: int,
    callsPerSec: nullableNum, failuresPerSec: nullableNum,
  }),
  Node: obj({
    nodeId: int, hostname: str, pid: int, attachedAt: { type: ['string', 'null'] }, lastReport: { type: ['string', 'null'] },
    reportAgeMs: nullableNum, decisions: { type: 'object', additionalProperties: num }, policyError: str,
    controlPlane: { type: 'boolean', description: 'attached to the control plane' },
    engineConnections: { type: 'integer', minimum: 0, description: 'open engine-link connections (calls go over these)' },
    inflight: int,
    health: { enum: ['ok', 'stale', 'draining', 'no-engine-link', 'no-control-plane'], description: 'ok: both links up, not draining, and a report in the last 3 s' },
  }),
  Edge: obj({
    node: int, caller: str, callee: str, calls: int, localCalls: int, failures: int, callsPerSec: num,
    avgRpcUs: nullableNum, avgCalleeUs: nullableNum, inputBytes: int, outputBytes: int,
    path: { enum: ['ipc', 'merged', 'merging', 'unmerging'], description: 'how calls on this edge travel now' },
    isolation: { type: ['string', 'null'] },
    recent: obj({
      windowSec: nullableNum, callsPerSec: nullableNum, ipcCallsPerSec: nullableNum, localCallsPerSec: nullableNum,
      failuresPerSec: nullableNum, avgRpcUs: nullableNum, avgCalleeUs: nullableNum,
    }),
  }),
  Merge: obj({
    node: int, caller: str, callee: str, isolation: str, state: str, workersMerged: int, workersTotal: int, ageSec: int, since: isoTime,
  }),
  Event: obj({
    seq: { type: 'integer', minimum: 1, description: 'increases by one per event the gateway received' },
    node: int, at: isoTime, at_ms: int, kind: str, caller: str, callee: str, isolation: str, reason: str,
    detail: { type: 'object', description: 'the numbers behind the decision (rate, IPC share, latencies, policy rule…)' },
    detail_json: str,
  }),
  PolicySummary: obj({ source: str, lastError: str, loadedAt: isoTime }),
  Status: obj({ functions: arrayOf('Function'), nodes: arrayOf('Node'), merges: arrayOf('Merge'), policy: ref('PolicySummary') }),
  Snapshot: obj({
    at: isoTime, functions: arrayOf('Function'), nodes: arrayOf('Node'), edges: arrayOf('Edge'), merges: arrayOf('Merge'),
    policy: ref('PolicySummary'),
  }),
  FunctionList: arrayOf('Function'),
  NodeList: arrayOf('Node'),
  EdgeList: arrayOf('Edge'),
  MergeList: arrayOf('Merge'),
  EventList: arrayOf('Event'),
  CommandResults: obj({
    ok: { type: 'boolean' },
    error: { type: 'string', description: 'when no node could be asked' },
    results: { type: 'array', items: obj({ node: int, ok: { type: 'boolean' }, error: str, detail: {} }, ['node', 'ok']) },
  }, ['ok', 'results']),
  Policy: obj({
    source: str, loadedAt: isoTime, lastError: str, reloads: obj({ ok: int, refused: int }), text: str,
    effective: obj({ defaults: { type: 'object' }, limits: { type: 'object' }, rules: { type: 'array' }, trustGroups: { type: 'object' } }),
  }),
  PolicyResult: {
    oneOf: [
      obj({ ok: { const: true } }, ['ok']),
      obj({ ok: { const: false }, errors: { type: 'array', items: str, minItems: 1 } }, ['ok', 'errors']),
    ],
  },
  MergePolicy: POLICY_SCHEMA as unknown as Record<string, unknown>,
  OpenApiDocument: obj({ openapi: str, info: { type: 'object' }, paths: { type: 'object' } }, ['openapi', 'info', 'paths']),
};

const ajv = new Ajv({ allErrors: true, strict: false });
ajv.addFormat('date-time', /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$/);
ajv.addSchema({ $id: 'admin', components: { schemas: SCHEMAS } });

const compiled = new Map<string, ValidateFunction>();
/** The validator of one named schema (compiled once). */
export function validator(name: string): ValidateFunction {
  let v = compiled.get(name);
  if (!v) {
    if (!(name in SCHEMAS)) throw new Error(`no admin schema named ${name}`);
    v = ajv.getSchema(`admin#/components/schemas/${name}`)!;
    compiled.set(name, v);
  }
  return v;
}

export interface FieldError {
  field: string;
  message: string;
}

/** Ajv's errors as {field, message}, with `where` ("body", "path") before the field. */
export function fieldErrors(errors: ErrorObject[] | null | undefined, where: string): FieldError[] {
  const out: FieldError[] = [];
  const seen = new Set<string>();
  for (const e of errors ?? []) {
    let field = [where, ...e.instancePath.split('/').filter(Boolean)].join('.');
    let message: string;
    switch (e.keyword) {
      case 'required':
        field += `.${(e.params as { missingProperty: string }).missingProperty}`;
        message = 'is required';
        break;
      case 'additionalProperties':
        field += `.${(e.params as { additionalProperty: string }).additionalProperty}`;
        message = 'is not a known field';
        break;
      case 'enum':
        message = `must be one of ${(e.params as { allowedValues: unknown[] }).allowedValues.join(', ')}`;
        break;
      default:
        message = e.message ?? e.keyword;
    }
    const k = `${field} ${message}`;
    if (!seen.has(k)) out.push({ field, message });
    seen.add(k);
  }
  return out;
}

/** Validates `value` against schema `name`; undefined when valid, else the errors. */
export function check(name: string, value: unknown, where: string): FieldError[] | undefined {
  const v = validator(name);
  return v(value) ? undefined : fieldErrors(v.errors, where);
}
