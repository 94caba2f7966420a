/**
 * A small closed-loop HTTP/1.1 load generator: C keep-alive connections, each
 * sending the next request when the previous response is complete, for D
 * seconds after a warm-up. Runs as its own process (so it does not share an
 * event loop with what it measures) and prints one JSON line:
 * { requests, errors, seconds, rps, p50_us, p90_us, p99_us }.
 *
 * usage: node loadgen.js <port> <path> <body> <connections> <seconds> [warmupSeconds]
 */
import net from 'node:net';

export interface LoadResult {
  requests: number;
  errors: number;
  seconds: number;
  rps: number;
  p50_us: number;
  p90_us: number;
  p99_us: number;
}

export function percentile(sorted: Float64Array | number[], p: number): number {
  if (sorted.length === 0) return NaN;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i];
}

async function run(port: number, path: string, body: string, conns: number, seconds: number, warmup: number): Promise<LoadResult> {
  const req = Buffer.from(`POST ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`);
  const lat: number[] = [];
  let errors = 0;
  let measuring = false;
  let stopping = false;
  const start = Date.now();
  const client = () => new Promise<void>((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    s.setNoDelay(true);
    let buf = Buffer.alloc(0);
    let sent = 0n;
    const send = () => {
      if (stopping) {
        s.destroy();
        resolve();
        return;
      }
      sent = process.hrtime.bigint();
      s.write(req);
    };
    s.on('connect', send);
    s.on('data', (d) => {
      buf = buf.length ? Buffer.concat([buf, d]) : d;
      for (;;) {
        const end = buf.indexOf('\r\n\r\n');
        if (end < 0) return;
        const head = buf.subarray(0, end).toString('latin1');
        const m = /content-length:\s*(\d+)/i.exec(head);
        const len = m ? Number(m[1]) : 0;
        if (buf.length < end + 4 + len) return;
        const ok = head.startsWith('HTTP/1.1 200');
        buf = buf.subarray(end + 4 + len);
        if (measuring) {
          if (ok) lat.push(Number(process.hrtime.bigint() - sent) / 1000);
          else errors++;
        }
        send();
      }
    });
    s.on('error', () => {
      errors++;
      resolve();
    });
  });
  setTimeout(() => (measuring = true), warmup * 1000);
  let measuredFrom = 0;
  setTimeout(() => (measuredFrom = Date.now()), warmup * 1000);
  setTimeout(() => (stopping = true), (warmup + seconds) * 1000);
  await Promise.all(Array.from({ length: conns }, client));
  const secs = (Date.now() - (measuredFrom || start)) / 1000;
  const sorted = Float64Array.from(lat).sort();
  return {
    requests: lat.length, errors, seconds: secs, rps: lat.length / secs,
    p50_us: percentile(sorted, 50), p90_us: percentile(sorted, 90), p99_us: percentile(sorted, 99),
  };
}

if (process.argv[1] && import.meta.url.endsWith(process.argv[1].split('/').pop()!)) {
  const [port, path, body, conns, seconds, warmup] = process.argv.slice(2);
  run(Number(port), path, body, Number(conns), Number(seconds), Number(warmup ?? 1)).then((r) => {
    process.stdout.write(JSON.stringify(r) + '\n');
  });
}
