#!/usr/bin/env bash
# Issue 9's evidence: today's injector hazard tests (native/test/test_inject_safety.c, with today's
# purpose-built targets) run against the injector as it was before the safety work (commit
# 6b09007, one inject.c) and against today's. The old report is a prefix of today's, so a shim maps
# it; fields the old injector did not have read as "unknown" (same_file -1) or 0.
# Usage: scripts/native-before-after.sh [BASE_COMMIT] [test names, comma-separated]
set -euo pipefail
cd "$(dirname "$0")/.."
base=${1:-6b09007}
only=${2:-}
work=$(mktemp -d /tmp/nf-before-XXXXXX)
trap 'rm -rf "$work"' EXIT
make -s -C native >/dev/null
git archive "$base" native/inject native/include | tar -x -C "$work"
cat > "$work/shim.c" <<'C'
/* today's nf_inject over the old one: the old report is the first part of today's */
#include <string.h>
#include "nightfuse/inject.h"
int nf_inject_old(int32_t, const char*, const char*, const char*, int32_t, int32_t, void*);
int nf_inject(int32_t pid, const char* lib, const char* entry, const char* arg, int32_t safe_wait, int32_t timeout, nf_inject_report* r) {
  memset(r, 0, sizeof *r);
  int rc = nf_inject_old(pid, lib, entry, arg, safe_wait, timeout, r);
  r->same_file = -1;
  return rc;
}
C
CFLAGS="-O2 -g -pthread"
gcc $CFLAGS -c -I"$work/native/include" -Dnf_inject=nf_inject_old -Dnf_inject_report_size=nf_inject_report_size_old \
  -Dnf_inject_check_elf=nf_inject_check_elf_old -o "$work/old_inject.o" "$work/native/inject/inject.c"
gcc $CFLAGS -c -Inative/include -Inative/test -o "$work/shim.o" "$work/shim.c"
gcc $CFLAGS -Inative/include -Inative/test -o "$work/test_inject_safety_before" native/test/test_inject_safety.c "$work/shim.o" "$work/old_inject.o" -ldl
run() {
  local label=$1 bin=$2
  echo "== $label"
  local rc=0
  timeout "${NF_BEFORE_TIMEOUT:-120}" "$bin" native/build $only > "$work/out" 2>&1 || rc=$?
  grep -E '^(not ok|[0-9]+ passed)' "$work/out" || true
  if [ "$rc" = 124 ]; then echo "(killed after ${NF_BEFORE_TIMEOUT:-120} s: a target left it hanging; last line: $(tail -n 1 "$work/out"))"; fi
}
run "before ($base)" "$work/test_inject_safety_before"
run "after ($(git rev-parse --short HEAD))" native/build/test/test_inject_safety
