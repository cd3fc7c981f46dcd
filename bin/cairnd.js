#!/usr/bin/env node
// Runs the compiled daemon (npm install builds dist/).
import { main } from '../dist/daemon/main.js';

await main(process.argv);
