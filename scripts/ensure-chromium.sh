#!/usr/bin/env bash
# Makes sure Debian's chromium is installed for the console's browser tests
# (test/console.test.ts drives it with playwright-core). Idempotent; safe to
# run concurrently (apt's own lock serialises installs). Needs root for apt.
set -euo pipefail
BIN=${CHROMIUM_PATH:-/usr/bin/chromium}
if [ -x "$BIN" ]; then exit 0; fi
if [ "$(id -u)" -ne 0 ]; then
  echo "ensure-chromium: $BIN is missing and we are not root; install it with: apt-get install -y chromium" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt_get() { apt-get -o DPkg::Lock::Timeout=300 "$@"; }
if ! apt-cache policy chromium 2>/dev/null | grep -q 'Candidate: [0-9]'; then
  apt_get update -qq
fi
apt_get install -y -qq --no-install-recommends chromium >/dev/null || { apt_get update -qq && apt_get install -y -qq --no-install-recommends chromium >/dev/null; }
[ -x "$BIN" ] || { echo "ensure-chromium: installed chromium but $BIN is still missing" >&2; exit 1; }
echo "ensure-chromium: $("$BIN" --version 2>/dev/null || echo chromium) at $BIN"
