#!/usr/bin/env -S node --max-semi-space-size=2 --initial-heap-size=64
// The compiled CLI (npm install builds dist/ with tsc). A 2 MiB young generation (V8 grows it to 16 MiB
// under load by default): measured, RSS after load drops by ~40 MB with no loss of throughput. A 64 MiB
// initial heap: V8 otherwise sizes its limit to the small live heap (~15 MB), and the backing stores of
// large bodies then start a major GC every ~23 ms; measured, 64 KiB bodies +45 % req/s (BENCHMARKS.md).
// Start it as `bin/nightfuse.js`, not `node bin/nightfuse.js`, or these flags are not applied.
import '../dist/cli/nightfuse.js';
