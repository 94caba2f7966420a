#!/usr/bin/env python3
"""Issue 10's evidence that the fixed checks can fail: each mutant breaks the code one
check guards, in a scratch clone, and runs that check's test file; the mutant must make it
fail. Then the clone is reset and the same file must pass.

Usage: scripts/mutants.py [SCRATCH_DIR [NAMES]]   (default /tmp/nf-mutants, cloned from this
repo with `npm ci` once; NAMES: comma-separated mutants, default all). Prints one line per mutant and exits non-zero if a mutant survived.
"""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRATCH = sys.argv[1] if len(sys.argv) > 1 else '/tmp/nf-mutants'

# name, file, old text, new text, test file, what the check guards. A file may be several,
# joined by '|' with as many old/new texts (one mutant can need two edits).
MUTANTS = [
    ('ubsan-recover', 'native/Makefile|test/native.test.ts', "-fno-sanitize-recover=all |UBSAN_OPTIONS: 'halt_on_error=1:", "|UBSAN_OPTIONS: '",
     'test/native.test.ts', 'UBSan reports are fatal (the canary must die): neither -fno-sanitize-recover nor halt_on_error'),
    ('http-400', 'gateway/http-frontend.ts', 'return rawAnswer(400, `malformed HTTP request', 'return rawAnswer(200, `malformed HTTP request',
     'test/stack.test.ts', 'bad HTTP is answered 400'),
    ('wire-no-close', 'gateway/engine-server.ts',
     "    if (socket.writable && reason !== 'timeout' && reason !== 'too_many_pending') socket.end(encodeAuthFrame({ kind: 'refuse', reason: message }));\n    socket.destroySoon();\n    setTimeout(() => socket.destroy(), 1000).unref();\n  }",
     "    void encodeAuthFrame;\n  }", 'test/stack.test.ts', 'malformed wire messages: the gateway (not our backstop) closes'),
    ('inject-sync', 'launcher/injector.ts',
     "      native.async(pid, library, entry, opts.arg ?? '', opts.safeWaitMs ?? 50, opts.timeoutMs ?? 5000, report, (err: unknown) => {\n        if (err) return reject(err);\n        resolve(toReport(report, pid, library, entry));\n      });",
     "      native(pid, library, entry, opts.arg ?? '', opts.safeWaitMs ?? 50, opts.timeoutMs ?? 5000, report);\n      void reject;\n      resolve(toReport(report, pid, library, entry));",
     'test/merge.test.ts', 'the injection runs off the event loop'),
    ('policy-no-throw', 'common/policy.ts',
     "    throw new PolicyError((validateDoc.errors ?? []).map((e) => describeError(e, doc as PolicyDoc)), source);",
     "    void describeError;",
     'test/policy.test.ts', 'invalid policies are refused, every problem at once'),
    ('config-plain-error', 'common/func-config.ts', 'throw new ConfigError(', 'throw new Error(',
     'test/func-config.test.ts', 'config errors are ConfigError'),
]


def sh(cmd, cwd, timeout=900):
    r = subprocess.run(cmd, cwd=cwd, shell=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout)
    return r.returncode, r.stdout


def build(cwd, native):
    rc, out = sh('make -s -C native >/dev/null && npx tsc -p .' if native else 'npx tsc -p .', cwd)
    if rc != 0:
        raise SystemExit(f'build failed:\n{out[-2000:]}')


def failing(out):
    return [l.strip() for l in out.splitlines() if l.strip().startswith('not ok')][:3]


def main():
    if not os.path.isdir(SCRATCH):
        sh(f'git clone -q {ROOT} {SCRATCH}', '/')
        rc, out = sh('npm ci --no-audit --no-fund', SCRATCH, 1200)
        if rc != 0:
            raise SystemExit(f'npm ci failed in {SCRATCH}:\n{out[-2000:]}')
    survived = 0
    only = sys.argv[2].split(',') if len(sys.argv) > 2 else None
    for name, path, old, new, test, what in MUTANTS:
        if only and name not in only:
            continue
        sh('git checkout -q -- .', SCRATCH)
        edits = list(zip(path.split('|'), old.split('|'), new.split('|')))
        missing = [p for p, o, _ in edits if o not in open(os.path.join(SCRATCH, p)).read()]
        if missing:
            print(f'{name}: the text to mutate is not in {", ".join(missing)} any more: update this script')
            survived += 1
            continue
        for p, o, n in edits:
            full = os.path.join(SCRATCH, p)
            text = open(full).read()
            open(full, 'w').write(text.replace(o, n))
        native = path.startswith('native/')
        if native:
            sh('rm -rf native/build-asan native/build-tsan', SCRATCH)
        build(SCRATCH, native)
        rc, out = sh(f'npx tap {test} --disable-coverage', SCRATCH)
        sh('git checkout -q -- .', SCRATCH)
        if native:
            sh('rm -rf native/build-asan native/build-tsan', SCRATCH)
        build(SCRATCH, native)
        rc2, out2 = sh(f'npx tap {test} --disable-coverage', SCRATCH)
        killed = rc != 0
        survived += 0 if killed and rc2 == 0 else 1
        verdict = 'killed' if killed else 'SURVIVED'
        print(f'{name} ({what}) in {path}: mutant {verdict} by {test}; unmutated: {"passes" if rc2 == 0 else "FAILS"}')
        for l in failing(out):
            print(f'    {l[:200]}')
    sys.exit(1 if survived else 0)


if __name__ == '__main__':
    main()
