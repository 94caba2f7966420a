/** A gateway in this process with engines played by raw TCP peers speaking Nightcore's gateway protocol. */
import net from 'node:net';
import { pino } from 'pino';
import type { FuncConfig } from '../common/func-config.js';
import { startGateway, type RunningGateway } from '../gateway/main.js';
import { encodeEngineHandshake, encodeGatewayMessage, GatewayFrameReader, type GatewayMessage, MessageType } from '../proto/wire.js';

export interface GatewayTestOptions {
  maxRunningRequests: number;
  lbPerFnRoundRobin: boolean;
  lbPickLeastLoad: boolean;
  callTimeoutMs: number;
  maxBodyBytes: number;
}

/** Every port 0 (read back from `ports`), control plane off. */
export function inProcessGateway(config: FuncConfig, opts: Partial<GatewayTestOptions> = {}): Promise<RunningGateway> {
  return startGateway({
    config, listenAddr: '127.0.0.1', httpPort: 0, grpcPort: 0, engineConnPort: 0, controlPort: -1,
    maxRunningRequests: opts.maxRunningRequests ?? 0, lbPerFnRoundRobin: opts.lbPerFnRoundRobin ?? false,
    lbPickLeastLoad: opts.lbPickLeastLoad ?? false, maxBodyBytes: opts.maxBodyBytes ?? 1 << 20, callTimeoutMs: opts.callTimeoutMs ?? 10000,
    log: pino({ level: 'silent' }),
  });
}

/** A fake engine: connects, handshakes, records DISPATCHes; answers with `respond` unless held. */
export class RawEngine {
  readonly socket: net.Socket;
  readonly received: GatewayMessage[] = [];
  private readonly reader = new GatewayFrameReader();
  hold = false;
  constructor(port: number, readonly nodeId: number, connId = 0, private readonly respond = (m: GatewayMessage) => Buffer.concat([Buffer.from(`n${nodeId}:`), m.payload])) {
    this.socket = net.connect(port, '127.0.0.1');
    this.socket.write(encodeEngineHandshake(nodeId, connId));
    this.socket.on('data', (d) => {
      for (const m of this.reader.feed(d)) {
        this.received.push(m);
        if (!this.hold) this.complete(m);
      }
    });
    this.socket.on('error', () => {});
  }
  complete(m: GatewayMessage, via: net.Socket = this.socket): void {
    via.write(encodeGatewayMessage({ type: MessageType.FUNC_CALL_COMPLETE, fullCallId: m.fullCallId, value: 42, payload: this.respond(m) }));
  }
  fail(m: GatewayMessage): void {
    this.socket.write(encodeGatewayMessage({ type: MessageType.FUNC_CALL_FAILED, fullCallId: m.fullCallId, value: 0, payload: Buffer.alloc(0) }));
  }
  close(): void {
    this.socket.destroy();
  }
}
