#!/usr/bin/env node
import { main } from '../lib/cli/main.js'

const status = await main(process.argv.slice(2))
process.exitCode = status
