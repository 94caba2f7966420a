#!/usr/bin/env node
// The compiled CLI (npm install builds dist/ with tsc).
import '../dist/cli/nightfuse.js';
