/**
 * TypeScript binding of the native injector (native/build/libnightfuse_inject.so)
 * through koffi. nf_inject() runs with koffi's async call on libuv's pool, so
 * the whole attach -> inject -> detach happens on one native thread (ptrace
 * requires it) and off the event loop.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import koffi, { type LibraryHandle, type TypeObject } from 'koffi';

type KoffiFunction = ReturnType<LibraryHandle['func']>;
import { NATIVE_BUILD } from '../common/paths.js';

export const INJECTOR_LIBRARY = join(NATIVE_BUILD, 'libnightfuse_inject.so');

export interface InjectOptions {
  /** symbol to call after loading: int entry(const char* arg); omit to only load */
  entry?: string;
  arg?: string;
  /** how long to wait for a thread blocked in a system call (ms); 0: any thread at once; -1: never use running user code */
  safeWaitMs?: number;
  /** bound on each remote call (ms) */
  timeoutMs?: number;
}

export interface InjectReport {
  ok: boolean;
  error: string;
  pid: number;
  library: string;
  entry: string;
  threadsSeen: number;
  threadUsed: number;
  safePoint: boolean;
  syscall: number;
  attempts: number;
  entryResult: number;
  targetExited: boolean;
  /** world stopped, first interrupt to last detach (µs) */
  stoppedUs: number;
  totalUs: number;
  dlopenUs: number;
  /** seizing and stopping every thread (µs) */
  attachUs: number;
  /** the remote entry call (µs) */
  entryUs: number;
  /** dlopen handle in the target, as hex */
  handle: string;
}

const ERROR_LEN = 512;

let binding: {
  inject: KoffiFunction;
  reportType: TypeObject;
} | undefined;

function load() {
  if (binding) return binding;
  if (!existsSync(INJECTOR_LIBRARY)) throw new Error(`${INJECTOR_LIBRARY} is missing: build native/ first (npm run build)`);
  const lib = koffi.load(INJECTOR_LIBRARY);
  const reportType = koffi.struct('nf_inject_report', {
    ok: 'int32', threads_seen: 'int32', thread_used: 'int32', safe_point: 'int32', syscall_nr: 'int32',
    attempts: 'int32', entry_result: 'int32', target_exited: 'int32', stopped_us: 'double', total_us: 'double',
    dlopen_us: 'double', attach_us: 'double', entry_us: 'double', handle: 'uint64', error: koffi.array('char', ERROR_LEN, 'String'),
  });
  const size = lib.func('int nf_inject_report_size(void)')() as number;
  if (size !== koffi.sizeof(reportType)) {
    throw new Error(`nf_inject_report layout mismatch: C says ${size} bytes, the binding ${koffi.sizeof(reportType)}`);
  }
  const inject = lib.func('int nf_inject(int32_t pid, const char *library, const char *entry, const char *arg, int32_t safe_wait_ms, int32_t timeout_ms, _Out_ nf_inject_report *report)');
  binding = { inject, reportType };
  return binding;
}

interface RawReport {
  ok: number; threads_seen: number; thread_used: number; safe_point: number; syscall_nr: number; attempts: number;
  entry_result: number; target_exited: number; stopped_us: number; total_us: number; dlopen_us: number;
  attach_us: number; entry_us: number;
  handle: bigint | number; error: string;
}

/** Injects `library` into process `pid`; never throws for target-side failures (see report.ok/error). */
export function inject(pid: number, library: string, opts: InjectOptions = {}): Promise<InjectReport> {
  const b = load();
  const report = {} as RawReport;
  const entry = opts.entry ?? '';
  return new Promise((resolve, reject) => {
    b.inject.async(pid, library, entry, opts.arg ?? '', opts.safeWaitMs ?? 50, opts.timeoutMs ?? 5000, report, (err: unknown) => {
      if (err) return reject(err);
      resolve({
        ok: report.ok === 1,
        error: report.error ?? '',
        pid,
        library,
        entry,
        threadsSeen: report.threads_seen,
        threadUsed: report.thread_used,
        safePoint: report.safe_point === 1,
        syscall: report.syscall_nr,
        attempts: report.attempts,
        entryResult: report.entry_result,
        targetExited: report.target_exited === 1,
        stoppedUs: report.stopped_us,
        totalUs: report.total_us,
        dlopenUs: report.dlopen_us,
        attachUs: report.attach_us,
        entryUs: report.entry_us,
        handle: `0x${BigInt(report.handle ?? 0).toString(16)}`,
      });
    });
  });
}
