/**
 * Gives a burst's memory back once the burst is over. Under load glibc's heap
 * grows with the backing stores of Node's Buffers (frames, bodies, socket
 * reads) and keeps its size afterwards: glibc returns only the free top of
 * the heap, and a few live chunks pin the rest (measured: the one-process
 * stack at 110 MiB RSS after load, 39.5 MiB of it `[heap]`; malloc_trim(0)
 * brought it to 75 MiB). So once per second, off the call path, the trimmer
 * reads the call counters the hot path keeps anyway, and trims once when they
 * stopped moving: a process that serves nothing for a second stops holding
 * the peak of the last burst. Nothing runs per call. The GC and the trim
 * block the event loop for tens of milliseconds (measured in the one process
 * after load: GC 23-28 ms, trim 0.5-16 ms, on a loaded 2-vCPU VM), so a call
 * that arrives right then waits that long; they run only when the process's
 * private memory grew by TRIM_GROWTH_MIB since the last trim, i.e. after a
 * burst, not after every pause of a trickle of calls.
 *
 * Work is what the registered counters say: calls, and for the gateway the
 * connections it accepts (a flood of connections that make no call is work too).
 *
 * One timer per process, whatever registers (in `nightfuse up`'s one process
 * the gateway and the node agent both do).
 */
import { readFileSync } from 'node:fs';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { mallocTrim } from './libc.js';

let gc: (() => void) | undefined;

/**
 * A full GC first: the backing stores of the burst's dead Buffers are glibc's
 * until V8 collects their objects, and an idle process allocates nothing, so
 * no GC would come on its own for seconds (measured: a trim without it
 * released 4.6 of 39.7 MiB of heap in one run). `gc` from a context created
 * after --expose-gc is set, so nothing global is exposed.
 */
export function fullGc(): void {
  if (!gc) {
    setFlagsFromString('--expose-gc');
    gc = runInNewContext('gc') as () => void;
    setFlagsFromString('--no-expose-gc');
  }
  gc();
}

export const IDLE_TRIM_INTERVAL_MS = 1000;
export const TRIM_GROWTH_MIB = 16;

/** Resident minus file-backed-and-shared pages (statm), MiB: the memory a trim can give back. */
function privateMiB(): number {
  const f = readFileSync('/proc/self/statm', 'latin1').split(' ');
  return ((Number(f[1]) - Number(f[2])) * 4096) / 1048576;
}
let floor = 0; // privateMiB() right after the last trim

const sources = new Set<() => number>();
let timer: NodeJS.Timeout | undefined;
let last = -1;
let busy = true; // the first quiet second after the start trims what loading the modules left
let trims = 0;

function activity(): number {
  let n = 0;
  for (const s of sources) n += s();
  return n;
}

let trimDue = false; // a GC ran; the trim follows at the next quiet tick

function tick(): void {
  const now = activity();
  if (now !== last) {
    last = now;
    busy = true;
    return;
  }
  if (trimDue) {
    // A second after the GC: V8 frees the backing stores of the Buffers it
    // collected on its sweeper threads after gc() returns, so a trim right
    // after it found most of them still allocated (measured: 41-68 MiB of 114-126
    // left in a test process, against 10 MiB with the trim 500 ms later), and
    // the floor taken then was so high that no later trim came.
    trimDue = false;
    mallocTrim(0);
    trims++;
    floor = privateMiB();
    return;
  }
  if (!busy) return;
  busy = false;
  if (privateMiB() - floor < TRIM_GROWTH_MIB) return;
  fullGc();
  trimDue = true;
}

/**
 * Counts `calls` (any counter that moves with work done) towards the process's
 * activity; the returned function stops counting it.
 */
export function trimWhenIdle(calls: () => number): () => void {
  sources.add(calls);
  if (!timer) {
    last = activity();
    timer = setInterval(tick, IDLE_TRIM_INTERVAL_MS);
    timer.unref();
  }
  return () => {
    sources.delete(calls);
    if (sources.size === 0 && timer) {
      clearInterval(timer);
      timer = undefined;
    }
  };
}

/** How many times this process trimmed. */
export function idleTrims(): number {
  return trims;
}
