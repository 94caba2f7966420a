/**
 * The admin API's OpenAPI 3.1 document, built from the router's own route
 * table and the schemas the router validates with (served at
 * /admin/v1/openapi.json; a copy is kept in docs/openapi.json and a test
 * checks that the two agree).
 */
import { SCHEMAS } from './admin-schemas.js';
import type { Route } from './admin-router.js';

const STATUS_TEXT: Record<number, string> = {
  400: 'invalid request: the error names the field', 401: 'missing or wrong admin token', 403: 'the admin API is disabled (no token configured)',
  404: 'no such route or function', 405: 'method not allowed on this path (see Allow)', 408: 'the request body did not arrive in time',
  413: 'the request body is over the limit',
};

/** Answers every route can give besides its own (router-level checks). */
export function commonResponses(r: Route): number[] {
  const codes = [404, 405];
  if (!r.public) codes.push(401, 403);
  if (r.params || r.query || r.body) codes.push(400);
  if (r.body) codes.push(408, 413);
  return codes;
}

const schemaRef = (name: string) => ({ $ref: `#/components/schemas/${name}` });

export function openApiDocument(routes: Route[], prefix: string, version: string): Record<string, unknown> {
  const paths: Record<string, Record<string, unknown>> = {};
  for (const r of routes) {
    const responses: Record<string, unknown> = {};
    for (const code of commonResponses(r)) {
      responses[code] = { description: STATUS_TEXT[code], content: { 'application/json': { schema: schemaRef('Error') } } };
    }
    for (const [code, spec] of Object.entries(r.responses)) {
      responses[code] = {
        description: spec.description,
        content: { [spec.mediaType ?? 'application/json']: spec.schema ? { schema: schemaRef(spec.schema) } : {} },
      };
    }
    const parameters = [
      ...Object.entries(r.params ?? {}).map(([name, schema]) => ({ name, in: 'path', required: true, schema: schemaRef(schema) })),
      ...Object.entries(r.query ?? {}).map(([name, q]) => ({ name, in: 'query', required: false, description: q.description, schema: schemaRef(q.schema) })),
    ];
    const op: Record<string, unknown> = {
      operationId: r.operationId, summary: r.summary, responses,
      ...(parameters.length ? { parameters } : {}),
      ...(r.public ? { security: [] } : {}),
    };
    if (r.body) {
      op.requestBody = {
        required: true,
        content: Object.fromEntries(r.body.mediaTypes.map((t) => [t, { schema: schemaRef(r.body!.schema), example: r.body!.example }])),
      };
    }
    (paths[prefix + r.path] ??= {})[r.method.toLowerCase()] = op;
  }
  return {
    openapi: '3.1.0',
    info: {
      title: 'Nightfuse admin API', version,
      description: 'The gateway\'s admin API on its HTTP port: the cluster view, merging by hand, the merge policy, and a live stream ' +
        '(server-sent events) for the console at /ui/. Every request needs `Authorization: Bearer <token>` (--admin_token or ' +
        'NIGHTFUSE_ADMIN_TOKEN) except this document. Request bodies are limited to 1 MiB and must arrive within 10 s.',
      license: { name: 'MIT' },
    },
    components: {
      schemas: SCHEMAS,
      securitySchemes: { bearer: { type: 'http', scheme: 'bearer', description: 'the admin token' } },
    },
    security: [{ bearer: [] }],
    paths,
  };
}
