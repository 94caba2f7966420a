/**
 * Validates Kubernetes objects against Kubernetes' own OpenAPI schemas, as
 * the `kubernetes-models` packages compile them, and strictly: a field the
 * schema does not know is an error too (the API server's strict field
 * validation; a typo such as `capabilites` would otherwise pass the schema
 * and be dropped silently by the server).
 *
 * Unknown fields are found by watching the compiled validator: it reads every
 * property its schema knows, so an own property it never read is unknown.
 * Where it enumerates an object's keys (maps such as labels, or objects that
 * keep unknown fields) every key is allowed.
 */

export interface K8sObject {
  apiVersion: string;
  kind: string;
  metadata?: { name?: string; namespace?: string; labels?: Record<string, string>; [k: string]: unknown };
  [k: string]: unknown;
}

interface Watched {
  path: string;
  own: string[];
  read: Set<string>;
  enumerated: boolean;
}

function watch(value: unknown, path: string, all: Watched[]): unknown {
  if (!value || typeof value !== 'object') return value;
  const w: Watched = { path, own: Array.isArray(value) ? [] : Object.keys(value), read: new Set(), enumerated: false };
  all.push(w);
  const inner = Array.isArray(value)
    ? value.map((x, i) => watch(x, `${path}/${i}`, all))
    : Object.fromEntries(Object.entries(value).map(([k, x]) => [k, watch(x, `${path}/${k}`, all)]));
  return new Proxy(inner, {
    get(t, k, r) {
      if (typeof k === 'string') w.read.add(k);
      return Reflect.get(t, k, r);
    },
    has(t, k) {
      if (typeof k === 'string') w.read.add(k);
      return Reflect.has(t, k);
    },
    getOwnPropertyDescriptor(t, k) {
      if (typeof k === 'string') w.read.add(k);
      return Reflect.getOwnPropertyDescriptor(t, k);
    },
    ownKeys(t) {
      w.enumerated = true;
      return Reflect.ownKeys(t);
    },
  });
}

/** `apps/v1` + `DaemonSet` -> kubernetes-models/apps/v1/DaemonSet; `v1` + `Service` -> kubernetes-models/v1/Service. */
function modelPath(apiVersion: string, kind: string): string {
  return `kubernetes-models/${apiVersion}/${kind}`;
}

/** Errors of one object, each naming the object and the JSON path; [] when valid. */
export async function validateObject(obj: K8sObject): Promise<string[]> {
  const name = `${obj?.kind ?? '?'} ${obj?.metadata?.name ?? '?'}`;
  if (!obj || typeof obj.apiVersion !== 'string' || typeof obj.kind !== 'string') return [`${name}: no apiVersion/kind`];
  let model: { prototype: { validate(): void } } | undefined;
  try {
    const mod = (await import(modelPath(obj.apiVersion, obj.kind))) as Record<string, { prototype: { validate(): void } }>;
    model = mod[obj.kind];
  } catch {
    /* unknown below */
  }
  if (!model) return [`${name}: ${obj.apiVersion} ${obj.kind} is not a Kubernetes kind`];
  const watched: Watched[] = [];
  const proxy = watch(obj, '', watched);
  try {
    model.prototype.validate.call(proxy);
  } catch (err) {
    return [`${name}: ${(err as Error).message}`];
  }
  const errors: string[] = [];
  for (const w of watched) {
    if (w.enumerated) continue;
    for (const k of w.own) if (!w.read.has(k)) errors.push(`${name}: unknown field ${w.path}/${k}`);
  }
  return errors;
}
