/**
 * TypeScript binding of the native injector (native/build/libnightfuse_inject.so)
 * through koffi. nf_inject() runs with koffi's async call on libuv's pool, off
 * the event loop; inside, attach -> inject -> detach happens on a tracer thread
 * of its own that exits before the call returns, so no tracee is ever left
 * attached to a pool thread.
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
  /** world stopped: the chosen thread, from its interrupt to its detach (µs); no other thread is ever stopped */
  stoppedUs: number;
  totalUs: number;
  dlopenUs: number;
  /** seizing and stopping the chosen thread (µs) */
  attachUs: number;
  /** the remote entry call (µs) */
  entryUs: number;
  /** dlopen handle in the target, as hex */
  handle: string;
  /** what hands each remote call back: 5 (SIGTRAP, an int3 in libc) or 11 (SIGSEGV, address 0); 0 from an older injector */
  trapSignal: number;
  /** signals sent to the thread during the calls and delivered after */
  signalsHeld: number;
  /** threads created during the injection, detached at once */
  clonesDetached: number;
  /** true: the target mapped this very file; false: another of that path (stale copy, other mount namespace); undefined: unknown */
  sameFile: boolean | undefined;
  /** a call outlived its timeout and was left to finish; the thread restores itself when it returns */
  leftRunning: boolean;
  /** the target could not be left as healthy as before (see error) */
  damaged: boolean;
  /** the process was group-stopped (SIGSTOP...) meanwhile and is left stopped */
  groupStop: boolean;
  /** tid of a thread found holding the dynamic loader's lock (nothing was taken while it did), 0 if none */
  loaderBusy: number;
}

const ERROR_LEN = 512;

const BASE_FIELDS = {
  ok: 'int32', threads_seen: 'int32', thread_used: 'int32', safe_point: 'int32', syscall_nr: 'int32',
  attempts: 'int32', entry_result: 'int32', target_exited: 'int32', stopped_us: 'double', total_us: 'double',
  dlopen_us: 'double', attach_us: 'double', entry_us: 'double', handle: 'uint64', error: koffi.array('char', ERROR_LEN, 'String'),
};
/** The current layout: the first one's fields, then these appended (so an older library reports a prefix). */
const REPORT = koffi.struct('nf_inject_report', {
  ...BASE_FIELDS,
  trap_signal: 'int32', signals_held: 'int32', clones_detached: 'int32', same_file: 'int32', left_running: 'int32',
  damaged: 'int32', group_stop: 'int32', loader_busy: 'int32',
});
const REPORT_V1 = koffi.struct('nf_inject_report_v1', BASE_FIELDS);

interface RawReport {
  ok: number; threads_seen: number; thread_used: number; safe_point: number; syscall_nr: number; attempts: number;
  entry_result: number; target_exited: number; stopped_us: number; total_us: number; dlopen_us: number;
  attach_us: number; entry_us: number;
  handle: bigint | number; error: string;
  trap_signal?: number; signals_held?: number; clones_detached?: number; same_file?: number; left_running?: number;
  damaged?: number; group_stop?: number; loader_busy?: number;
}

export type InjectFn = (pid: number, library: string, opts?: InjectOptions) => Promise<InjectReport>;

const loaded = new Map<string, InjectFn>();

/**
 * The injector of `path` (default: ours). Another build's library is accepted
 * when its report is our layout or its older prefix (for side-by-side benchmarks).
 */
export function loadInjector(path = INJECTOR_LIBRARY): InjectFn {
  const have = loaded.get(path);
  if (have) return have;
  if (!existsSync(path)) throw new Error(`${path} is missing: build native/ first (npm run build)`);
  const lib = koffi.load(path);
  const size = lib.func('int nf_inject_report_size(void)')() as number;
  const type = [REPORT, REPORT_V1].find((t) => koffi.sizeof(t) === size);
  if (!type) throw new Error(`nf_inject_report layout mismatch: ${path} says ${size} bytes, the binding knows ${koffi.sizeof(REPORT)} (or ${koffi.sizeof(REPORT_V1)})`);
  const native: KoffiFunction = lib.func('nf_inject', 'int', ['int32_t', 'const char *', 'const char *', 'const char *', 'int32_t', 'int32_t', koffi.out(koffi.pointer(type))]);
  const fn: InjectFn = (pid, library, opts = {}) => {
    const report = {} as RawReport;
    const entry = opts.entry ?? '';
    return new Promise((resolve, reject) => {
      native.async(pid, library, entry, opts.arg ?? '', opts.safeWaitMs ?? 50, opts.timeoutMs ?? 5000, report, (err: unknown) => {
        if (err) return reject(err);
        resolve(toReport(report, pid, library, entry));
      });
    });
  };
  loaded.set(path, fn);
  return fn;
}

function toReport(r: RawReport, pid: number, library: string, entry: string): InjectReport {
  return {
    ok: r.ok === 1,
    error: r.error ?? '',
    pid,
    library,
    entry,
    threadsSeen: r.threads_seen,
    threadUsed: r.thread_used,
    safePoint: r.safe_point === 1,
    syscall: r.syscall_nr,
    attempts: r.attempts,
    entryResult: r.entry_result,
    targetExited: r.target_exited === 1,
    stoppedUs: r.stopped_us,
    totalUs: r.total_us,
    dlopenUs: r.dlopen_us,
    attachUs: r.attach_us,
    entryUs: r.entry_us,
    handle: `0x${BigInt(r.handle ?? 0).toString(16)}`,
    trapSignal: r.trap_signal ?? 0,
    signalsHeld: r.signals_held ?? 0,
    clonesDetached: r.clones_detached ?? 0,
    sameFile: r.same_file === undefined || r.same_file < 0 ? undefined : r.same_file === 1,
    leftRunning: r.left_running === 1,
    damaged: r.damaged === 1,
    groupStop: r.group_stop === 1,
    loaderBusy: r.loader_busy ?? 0,
  };
}

/** Injects `library` into process `pid`; never throws for target-side failures (see report.ok/error). */
export function inject(pid: number, library: string, opts: InjectOptions = {}): Promise<InjectReport> {
  return loadInjector()(pid, library, opts);
}
