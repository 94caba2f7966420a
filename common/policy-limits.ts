/**
 * Policy text is checked against limits before it becomes objects, so that no
 * document can exhaust the gateway (or a launcher): size, nesting depth and
 * node count by a linear pre-scan of the text; then a YAML parse that stops at
 * its first error (an error storm costs one error), checks on the syntax tree
 * (rule count, unique scalar keys in linear time), and alias expansion bounded
 * while objects are built. Each refusal names the limit.
 */
import { readSync, openSync, closeSync, fstatSync } from 'node:fs';
import { Composer, isMap, isScalar, isSeq, Parser, type CST, type Document, type Node } from 'yaml';

type Token = CST.Token;

export const POLICY_LIMITS = {
  /** bytes of policy text (UTF-8); the yaml parser takes ~10 µs a byte cold, so this also bounds the stall */
  maxBytes: 32 * 1024,
  /** nested collections (flow brackets and block indentation together); a real policy needs 4 */
  maxDepth: 16,
  /** entries of any kind (lines with content, flow items, block indicators): bounds the parse */
  maxNodes: 8000,
  /** rules (at most 64 functions: 4096 ordered pairs, which globs cover in a few rules) */
  maxRules: 256,
  /** YAML alias expansion (yaml's maxAliasCount: uses of an anchor times the aliases inside it) */
  maxAliases: 100,
} as const;

export class PolicyLimitError extends Error {
  override name = 'PolicyLimitError';
}

function lineCol(text: string, offset: number): string {
  let line = 1;
  let last = -1;
  for (let i = text.indexOf('\n'); i >= 0 && i < offset; i = text.indexOf('\n', i + 1)) {
    line++;
    last = i;
  }
  return `line ${line}, column ${offset - last}`;
}

const SPACE = 32;
const isBreak = (c: number) => c === 10 || c === 13;
const isBlank = (c: number) => c === SPACE || c === 9 || isBreak(c) || Number.isNaN(c);
/** where a quote opens a quoted scalar rather than sitting inside a plain one */
const tokenStart = (prev: number) => Number.isNaN(prev) || isBlank(prev) || prev === 0x5b || prev === 0x7b || prev === 0x2c || prev === 0x3a;

/**
 * Linear pre-scan: the deepest nesting (flow `[` `{` plus block indentation
 * levels and `- ` / `? ` / `: ` indicators), ignoring quoted strings, comments
 * and block scalars, and a count of entries. Throws PolicyLimitError at the
 * first limit passed, without building anything.
 */
export function prescanPolicy(text: string, limits = POLICY_LIMITS): void {
  const n = text.length;
  const blocks: number[] = []; // columns of open block nodes
  let flow = 0;
  let nodes = 0;
  let blockScalarIndent = -1; // inside a | or > scalar: lines indented deeper than this are text
  let i = 0;
  const deeper = (at: number) => {
    if (blocks.length + flow > limits.maxDepth) {
      throw new PolicyLimitError(`nested deeper than ${limits.maxDepth} levels at ${lineCol(text, at)} (limit: depth)`);
    }
  };
  const counted = () => {
    if (++nodes > limits.maxNodes) throw new PolicyLimitError(`more than ${limits.maxNodes} entries (limit: entries)`);
  };
  /** skips a quoted scalar starting at i (the quote); may span lines */
  const skipQuoted = (): void => {
    const q = text.charCodeAt(i++);
    while (i < n) {
      const c = text.charCodeAt(i++);
      if (q === 0x22 && c === 0x5c) i++; // \" and \\ in double quotes
      else if (c === q) {
        if (q === 0x27 && text.charCodeAt(i) === 0x27) i++; // '' in single quotes
        else return;
      }
    }
  };
  while (i < n) {
    // start of a line
    let col = 0;
    while (text.charCodeAt(i) === SPACE) {
      i++;
      col++;
    }
    let c = text.charCodeAt(i);
    if (i >= n) break;
    counted(); // every line, blank and comment ones too: the parser pays for each
    if (isBreak(c) || c === 0x23 /* # */) {
      while (i < n && !isBreak(text.charCodeAt(i))) i++;
      i++;
      continue;
    }
    if (blockScalarIndent >= 0) {
      if (col > blockScalarIndent) {
        while (i < n && !isBreak(text.charCodeAt(i))) i++;
        i++;
        continue;
      }
      blockScalarIndent = -1;
    }
    const lineIndent = col;
    let atToken = flow === 0; // block context: this position starts a node
    while (i < n && !isBreak(c)) {
      if (atToken) {
        while (blocks.length > 0 && blocks[blocks.length - 1] > col) blocks.pop();
        if (blocks.length === 0 || blocks[blocks.length - 1] < col) {
          blocks.push(col);
          deeper(i);
        }
        counted();
        atToken = false;
        // `- `, `? `, `: ` open a node on the same line
        if ((c === 0x2d || c === 0x3f || c === 0x3a) && isBlank(text.charCodeAt(i + 1))) {
          i++;
          col++;
          while (text.charCodeAt(i) === SPACE) {
            i++;
            col++;
          }
          c = text.charCodeAt(i);
          atToken = !isBreak(c) && i < n;
          continue;
        }
      }
      const prev = text.charCodeAt(i - 1);
      if (c === 0x23 && isBlank(prev)) {
        while (i < n && !isBreak(text.charCodeAt(i))) i++;
        break;
      }
      if (c === 0x22 || c === 0x27) {
        counted(); // a quote anywhere may start a scalar for the parser: 100 KB of quotes is 50,000 of them
        if (tokenStart(prev)) {
          skipQuoted();
          c = text.charCodeAt(i);
          continue;
        }
      }
      if (c === 0x5b || c === 0x7b) {
        flow++;
        counted();
        deeper(i);
      } else if ((c === 0x5d || c === 0x7d) && flow > 0) flow--;
      else if (c === 0x2c && flow > 0) counted();
      else if ((c === 0x3a || c === 0x3f || c === 0x2d) && isBlank(text.charCodeAt(i + 1))) counted(); // `: ` `? ` `- ` each start a node
      else if ((c === 0x26 || c === 0x2a || c === 0x21 || c === 0x60 || c === 0x40) && tokenStart(prev)) counted(); // anchors, aliases, tags, reserved
      else if ((c === 0x7c || c === 0x3e) && flow === 0 && tokenStart(prev)) {
        // `|` or `>`, indicators, then only a comment: the lines below are text
        let j = i + 1;
        while (j < n && '-+0123456789'.includes(text[j])) j++;
        while (text[j] === ' ' || text[j] === '\t') j++;
        if (j >= n || isBreak(text.charCodeAt(j)) || text[j] === '#') blockScalarIndent = lineIndent;
      }
      i++;
      c = text.charCodeAt(i);
    }
    i++;
  }
}

function offsetOf(source: unknown): number {
  if (typeof source === 'number') return source;
  if (Array.isArray(source)) return Number(source[0]) || 0;
  return Number((source as { offset?: number } | undefined)?.offset) || 0;
}

class FirstYamlError extends Error {
  constructor(message: string, readonly offset: number) {
    super(message);
  }
}

/** The parser's own error tokens go straight into a list, one Error object each: stop at the first. */
function* stopAtError(tokens: Generator<Token>): Generator<Token> {
  for (const t of tokens) {
    if (t.type === 'error') throw new FirstYamlError(t.message, t.offset);
    yield t;
  }
}

/** One YAML (or JSON) document, stopping at its first error; throws PolicyLimitError or Error naming what is wrong. */
export function parsePolicyYaml(text: string, limits = POLICY_LIMITS): unknown {
  const composer = new Composer({ version: '1.2', schema: 'core', merge: false, uniqueKeys: false, prettyErrors: false, strict: true });
  // An error storm (thousands of bad tokens) would cost an Error object each: stop at the first.
  // onError is the Composer's own (private in its types) sink; test/policy-limits.test.ts checks it still exists.
  const sink = composer as unknown as { onError: (source: unknown, code: string, message: string, warning?: boolean) => void };
  if (typeof sink.onError !== 'function') throw new Error('yaml Composer has no onError: the policy parser needs updating for this yaml version');
  sink.onError = (source, _code, message, warning) => {
    if (!warning) throw new FirstYamlError(message, offsetOf(source));
  };
  let doc: Document.Parsed | undefined;
  try {
    for (const d of composer.compose(stopAtError(new Parser().parse(text)), true, text.length)) {
      if (doc) throw new FirstYamlError('more than one document', d.range[0]);
      doc = d;
    }
    const first = doc?.errors[0];
    if (first) throw new FirstYamlError(first.message, first.pos[0]);
  } catch (err) {
    if (err instanceof FirstYamlError) throw new Error(`${err.message} at ${lineCol(text, err.offset)}`);
    throw new Error(`${(err as Error).message}`);
  }
  if (!doc) return undefined;
  checkTree(doc, limits, text);
  try {
    return doc.toJS({ maxAliasCount: limits.maxAliases });
  } catch (err) {
    if (/alias/i.test((err as Error).message) && /Excessive/.test((err as Error).message)) {
      throw new PolicyLimitError(`alias expansion over the limit of ${limits.maxAliases} (limit: aliases)`);
    }
    throw err;
  }
}

/** Rule count, scalar and unique keys (in linear time: yaml's own check is quadratic). */
function checkTree(doc: Document.Parsed, limits: typeof POLICY_LIMITS, text: string): void {
  const top = doc.contents;
  if (isMap(top)) {
    const rules = top.get('rules', true);
    if (isSeq(rules) && rules.items.length > limits.maxRules) {
      throw new PolicyLimitError(`rules: ${rules.items.length} rules, over the limit of ${limits.maxRules} (limit: rules)`);
    }
  }
  const stack: unknown[] = [top];
  while (stack.length > 0) {
    const node = stack.pop();
    if (isMap(node)) {
      const seen = new Set<string>();
      for (const pair of node.items) {
        const k = pair.key as Node | null;
        if (k !== null && !isScalar(k)) throw new Error(`keys must be plain strings at ${lineCol(text, k.range?.[0] ?? 0)}`);
        const name = String(k?.value ?? null);
        if (seen.has(name)) throw new Error(`duplicate key "${name.slice(0, 80)}" at ${lineCol(text, k?.range?.[0] ?? 0)}`);
        seen.add(name);
        stack.push(pair.value);
      }
    } else if (isSeq(node)) {
      for (const item of node.items) stack.push(item);
    }
  }
}

/** Reads at most maxBytes + 1 bytes of a file: an over-large file is refused without reading it whole. */
export function readPolicyFile(path: string, limits = POLICY_LIMITS): string {
  const fd = openSync(path, 'r');
  try {
    const st = fstatSync(fd);
    if (st.isFile() && st.size > limits.maxBytes) throw new PolicyLimitError(sizeMessage(st.size, limits));
    const buf = Buffer.alloc(limits.maxBytes + 1);
    let got = 0;
    for (let r; got < buf.length && (r = readSync(fd, buf, got, buf.length - got, null)) > 0;) got += r;
    if (got > limits.maxBytes) throw new PolicyLimitError(sizeMessage(undefined, limits)); // a pipe or device: how much more is unknown
    return buf.subarray(0, got).toString('utf8');
  } finally {
    closeSync(fd);
  }
}

export function sizeMessage(bytes: number | undefined, limits = POLICY_LIMITS): string {
  return `policy text ${bytes === undefined ? 'is' : `of ${bytes} bytes is`} over the limit of ${limits.maxBytes} bytes (limit: size)`;
}
