#!/usr/bin/env node
// Runs the compiled CLI (npm install builds dist/).
import { main } from '../dist/cli/main.js';

await main(process.argv);
