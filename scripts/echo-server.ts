/** Baseline for the benchmark: a plain node:http echo server. Prints its port. */
import http from 'node:http';

const server = http.createServer((req, res) => {
  const chunks: Buffer[] = [];
  req.on('data', (c: Buffer) => chunks.push(c));
  req.on('end', () => {
    const body = Buffer.concat(chunks);
    res.writeHead(200, { 'Content-Type': 'text/plain', 'Content-Length': body.length });
    res.end(body);
  });
});
server.keepAliveTimeout = 120_000;
server.listen(0, '127.0.0.1', () => {
  process.stdout.write(`echo ready port=${(server.address() as import('node:net').AddressInfo).port}\n`);
});
process.on('SIGTERM', () => process.exit(0));
