#!/usr/bin/env node
// First, before anything can start libuv's thread pool.
import '../lib/thread-pool.js'
import { main } from '../lib/cli/main.js'

const status = await main(process.argv.slice(2))
process.exitCode = status
