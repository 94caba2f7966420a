/** Plain-text tables, and redrawing a view in place for --watch. */

export function table(rows: Record<string, unknown>[], cols: string[]): string {
  if (rows.length === 0) return '(none)\n';
  const cells = [cols, ...rows.map((r) => cols.map((c) => (r[c] === null || r[c] === undefined ? '-' : String(r[c]))))];
  const w = cols.map((_, i) => Math.max(...cells.map((r) => r[i].length)));
  return cells.map((r) => r.map((c, i) => c.padEnd(w[i])).join('  ').trimEnd()).join('\n') + '\n';
}

export interface WatchOptions {
  intervalMs: number;
  /** the view's title, e.g. "nightfuse edges" */
  title: string;
  out?: NodeJS.WriteStream;
  /** resolves when the watch should end (Ctrl-C) */
  until: Promise<void>;
}

/**
 * Renders `frame()` every interval until `until` resolves. On a terminal the
 * previous frame is overwritten in place (cursor up, clear below); otherwise
 * frames follow each other, each under a time-stamped header line. A frame
 * that throws shows its error in place of the table and the watch goes on.
 */
export async function watch(frame: () => Promise<string>, o: WatchOptions): Promise<void> {
  const out = o.out ?? process.stdout;
  const tty = out.isTTY === true;
  let lines = 0;
  let stop = false;
  void o.until.then(() => (stop = true));
  while (!stop) {
    let body: string;
    try {
      body = await frame();
    } catch (err) {
      body = `${(err as Error).message}\n`;
    }
    if (stop) break;
    const text = `Every ${o.intervalMs / 1000} s: ${o.title}    ${new Date().toTimeString().slice(0, 8)}\n\n${body}`;
    if (tty) {
      // Only as many lines as the screen shows can be redrawn; beyond that, clear the screen.
      const clear = lines === 0 ? '' : lines < (out.rows || 24) ? `\x1b[${lines}F\x1b[J` : '\x1b[H\x1b[2J';
      out.write(clear + text);
      lines = text.split('\n').length - 1;
    } else {
      out.write(text + '\n');
    }
    await Promise.race([new Promise((r) => setTimeout(r, o.intervalMs)), o.until]);
  }
}

/** A promise that resolves on the first SIGINT or SIGTERM (and keeps the default exit from happening). */
export function untilInterrupted(): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      process.off('SIGINT', done);
      process.off('SIGTERM', done);
      resolve();
    };
    process.once('SIGINT', done);
    process.once('SIGTERM', done);
  });
}
