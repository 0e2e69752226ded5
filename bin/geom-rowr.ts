#!/usr/bin/env -S node --min-semi-space-size=16 --max-semi-space-size=16
// The flags above are DAEMON_NODE_FLAGS (lib/runtime-tuning.ts), for serve
// and create -v, which run the device in this process.
// First, before anything can start libuv's thread pool:
import '../lib/runtime-tuning.js'
import { main } from '../lib/cli/main.js'

const status = await main(process.argv.slice(2))
process.exitCode = status
