/**
 * The console's static files at /ui/ on the gateway's HTTP port: the page and
 * its bundle as built by scripts/build-console.ts into dist/console (no CDN,
 * works offline). Only files found there at first request are served, from
 * memory, by exact name.
 *
 * Caching: index.html is revalidated on every load (no-cache + ETag); assets
 * carry a content hash in their name and are immutable, so a rebuilt console
 * is picked up at once and an unchanged one costs a 304. Every answer has a
 * strict Content-Security-Policy: scripts, styles and connections from this
 * origin only, nothing inline, no framing.
 */
import { createHash } from 'node:crypto';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import type http from 'node:http';
import { extname, join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { PACKAGE_ROOT } from '../common/paths.js';

export const CONSOLE_PREFIX = '/ui';
export const CONSOLE_DIR = join(PACKAGE_ROOT, 'dist', 'console');

export const CONTENT_SECURITY_POLICY = [
  "default-src 'none'", "script-src 'self'", "style-src 'self'", "img-src 'self' data:", "connect-src 'self'",
  "font-src 'self'", "base-uri 'none'", "form-action 'none'", "frame-ancestors 'none'",
].join('; ');

const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8', '.js': 'text/javascript; charset=utf-8', '.css': 'text/css; charset=utf-8',
  '.map': 'application/json; charset=utf-8', '.svg': 'image/svg+xml', '.txt': 'text/plain; charset=utf-8', '.json': 'application/json; charset=utf-8',
};

const SECURITY_HEADERS = {
  'Content-Security-Policy': CONTENT_SECURITY_POLICY, 'X-Content-Type-Options': 'nosniff', 'Referrer-Policy': 'no-referrer',
  'X-Frame-Options': 'DENY', 'Cross-Origin-Opener-Policy': 'same-origin', 'Cross-Origin-Resource-Policy': 'same-origin',
};

interface Asset {
  body: Buffer;
  gzip?: Buffer;
  type: string;
  etag: string;
  immutable: boolean;
}

/** esbuild names bundles name-HASH.ext (8 characters of A-Z0-9). */
const HASHED = /-[A-Z0-9]{8}\.[a-z]+(\.map)?$/;

export class ConsoleServer {
  private files: Map<string, Asset> | undefined;

  constructor(private readonly dir = CONSOLE_DIR) {}

  private load(): Map<string, Asset> {
    if (this.files) return this.files;
    const files = new Map<string, Asset>();
    const add = (urlPath: string, file: string) => {
      const type = TYPES[extname(file)];
      if (!type) return;
      const body = readFileSync(file);
      const etag = `"${createHash('sha256').update(body).digest('base64url').slice(0, 22)}"`;
      files.set(urlPath, { body, type, etag, immutable: HASHED.test(urlPath) });
    };
    if (existsSync(join(this.dir, 'index.html'))) {
      add('/', join(this.dir, 'index.html'));
      const assets = join(this.dir, 'assets');
      if (existsSync(assets)) for (const f of readdirSync(assets)) add(`/assets/${f}`, join(assets, f));
    }
    this.files = files;
    return files;
  }

  /** The route hook: true when the path is the console's. */
  handle = (req: http.IncomingMessage, res: http.ServerResponse, path: string): boolean => {
    if (path !== CONSOLE_PREFIX && !path.startsWith(CONSOLE_PREFIX + '/')) return false;
    req.resume();
    const method = req.method ?? '';
    if (method !== 'GET' && method !== 'HEAD') {
      this.plain(res, 405, `${method.slice(0, 20)} is not allowed here\n`, { Allow: 'GET, HEAD' });
      return true;
    }
    if (path === CONSOLE_PREFIX) {
      res.writeHead(301, { Location: `${CONSOLE_PREFIX}/`, 'Content-Length': '0', ...SECURITY_HEADERS });
      res.end();
      return true;
    }
    let rest = path.slice(CONSOLE_PREFIX.length);
    if (rest === '/index.html') rest = '/';
    const files = this.load();
    if (files.size === 0) {
      this.plain(res, 503, 'the console is not built: run `npm run build` (esbuild bundles console/ into dist/console)\n');
      return true;
    }
    const a = files.get(rest);
    if (!a) {
      this.plain(res, 404, 'not found\n');
      return true;
    }
    const cache = a.immutable ? 'public, max-age=31536000, immutable' : 'no-cache';
    if (req.headers['if-none-match'] === a.etag) {
      res.writeHead(304, { ETag: a.etag, 'Cache-Control': cache, ...SECURITY_HEADERS });
      res.end();
      return true;
    }
    const gzip = /\bgzip\b/.test(String(req.headers['accept-encoding'] ?? '')) && a.body.length > 1024;
    if (gzip) a.gzip ??= gzipSync(a.body);
    const body = gzip ? a.gzip! : a.body;
    res.writeHead(200, {
      'Content-Type': a.type, 'Content-Length': String(body.length), ETag: a.etag, 'Cache-Control': cache, Vary: 'Accept-Encoding',
      ...(gzip ? { 'Content-Encoding': 'gzip' } : {}), ...SECURITY_HEADERS,
    });
    res.end(method === 'HEAD' ? undefined : body);
    return true;
  };

  private plain(res: http.ServerResponse, status: number, text: string, extra: Record<string, string> = {}): void {
    const b = Buffer.from(text);
    res.writeHead(status, { 'Content-Type': 'text/plain; charset=utf-8', 'Content-Length': String(b.length), 'Cache-Control': 'no-store', ...SECURITY_HEADERS, ...extra });
    res.end(b);
  }
}
