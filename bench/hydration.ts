// Hydration's rate against dd, and under client load (issue 13): one run,
// ratios from medians of --reps repetitions.
//
//   node dist/bench/hydration.js [--size-mib 1024] [--reps 3] [--runtime 10]
//        [--work DIR] [--json FILE]
//
// 1. Idle: the time from `hydrate` until status says done (the copy ends
//    with RW synced) against `dd if=RO of=RW bs=1M conv=fdatasync`, on
//    the same files, with RO's pages cold (dropped first; root only) and warm.
// 2. Under a steady client load (fio, 4K random reads at queue depth 32 over
//    NBD): hydration's rate against its idle rate; the client's p99 against
//    the same load without hydration; and 4K random-write IOPS with
//    hydration against without.
import { execFileSync } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'
import { parseArgs } from 'node:util'
import { callControl } from '../lib/daemon/control.js'
import { statePaths } from '../lib/daemon/run-state.js'
import { runFio, type FioJob } from './fio.js'

const { values: opts } = parseArgs({
  options: {
    'size-mib': { type: 'string', default: '1024' },
    reps: { type: 'string', default: '3' },
    runtime: { type: 'string', default: '10' },
    work: { type: 'string', default: '/var/tmp/geom-rowr-bench-hydration' },
    json: { type: 'string', default: `bench/results/hydration-${new Date().toISOString().slice(0, 10)}.json` },
  },
})

const size = Number(opts['size-mib']) * 2 ** 20
const reps = Number(opts.reps)
const runtime = Number(opts.runtime)
const work = opts.work!
const cli = path.join(path.dirname(new URL(import.meta.url).pathname), '../bin/geom-rowr.js')
const runDir = path.join(work, 'run')
const ro = path.join(work, 'ro.img')
const rw = path.join(work, 'rw.img')
const NAME = 'hbench'
// The run directory of the devices this makes, for the CLI and the control socket alike.
process.env.GEOM_ROWR_RUNDIR = runDir

const log = (m: string): void => void process.stderr.write(`${m}\n`)
const rowr = (...args: string[]): string => execFileSync(process.execPath, [cli, ...args], { encoding: 'utf8' })
const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!
const root = process.getuid?.() === 0

/** RO's pages out of the page cache (root), or into it. */
const roPages = (state: 'cold' | 'warm'): void => {
  if (state === 'warm') {
    execFileSync('sh', ['-c', `cat ${ro} > /dev/null`])
    return
  }
  execFileSync('sync')
  fs.writeFileSync('/proc/sys/vm/drop_caches', '3')
}

const freshRw = (): void => {
  fs.rmSync(rw, { force: true })
  fs.writeFileSync(rw, '')
  fs.truncateSync(rw, size)
}

const seconds = (since: bigint): number => Number(process.hrtime.bigint() - since) / 1e9

const ddSeconds = (): number => {
  freshRw()
  const started = process.hrtime.bigint()
  execFileSync('dd', [`if=${ro}`, `of=${rw}`, 'bs=1M', 'conv=fdatasync,notrunc', 'status=none'])
  return seconds(started)
}

interface Hydration {
  readonly state: string
  readonly remainingBytes: number
}

/** Asked over the control socket: a CLI process per poll would load the machine it measures. */
const hydration = async (): Promise<Hydration> => {
  const reply = await callControl(statePaths(NAME).control, { cmd: 'status' })
  if (!reply.ok) throw new Error(reply.message)
  return reply.hydration as Hydration
}

/** Starts the device over a fresh RW, without hydration; returns its NBD URI. */
const start = (): string => {
  freshRw()
  return rowr('create', '--no-attach', NAME, ro, rw).trim()
}

const stop = (): void => void rowr('destroy', '-f', NAME)

const untilDone = async (): Promise<void> => {
  for (;;) {
    const h = await hydration()
    if (h.state === 'done') return
    if (h.state !== 'running') throw new Error(`hydration ${h.state}`)
    await new Promise(resolve => setTimeout(resolve, 50))
  }
}

/** From the start of the copy (over the control socket, on a device already up) until status says done. */
const hydrateSeconds = async (): Promise<number> => {
  start()
  const started = process.hrtime.bigint()
  const reply = await callControl(statePaths(NAME).control, { cmd: 'hydrate', action: 'start' })
  if (!reply.ok) throw new Error(reply.message)
  await untilDone()
  const s = seconds(started)
  stop()
  return s
}

const READS: FioJob = { rw: 'randread', bs: '4k', iodepth: 32, runtime }
const WRITES: FioJob = { rw: 'randwrite', bs: '4k', iodepth: 32, runtime }

/**
 * A client job for `runtime` seconds, with or without hydration; with it,
 * the bytes copied per second until the copy ended or the job did.
 */
const underLoad = async (job: FioJob, hydrate: boolean): Promise<{ iops: number; p99us: number; hydrationRate: number }> => {
  const uri = start()
  let running = true
  const load = runFio([{ name: 'client', uri, job }]).finally(() => (running = false))
  if (hydrate) rowr('hydrate', NAME)
  const started = process.hrtime.bigint()
  let copied = 0
  let elapsed = 0
  while (hydrate && running) {
    const h = await hydration()
    copied = size - h.remainingBytes
    elapsed = seconds(started)
    if (h.state !== 'running') break
    await new Promise(resolve => setTimeout(resolve, 200))
  }
  const result = (await load).get('client')!
  stop()
  const side = job.rw === 'randread' ? result.read : result.write
  return { iops: side.iops, p99us: side.p99us, hydrationRate: elapsed > 0 ? copied / elapsed : 0 }
}

const main = async (): Promise<void> => {
  fs.mkdirSync(work, { recursive: true })
  if (!fs.existsSync(ro) || fs.statSync(ro).size !== size) {
    log(`making ${ro} (${size} bytes of random data)`)
    execFileSync('sh', ['-c', `head -c ${size} /dev/urandom > ${ro}`])
  }
  const out: Record<string, unknown> = { sizeBytes: size, reps, runtime }
  for (const state of root ? (['cold', 'warm'] as const) : (['warm'] as const)) {
    const dd: number[] = []
    const hydrated: number[] = []
    for (let i = 0; i < reps; i++) {
      roPages(state)
      dd.push(ddSeconds())
      roPages(state)
      hydrated.push(await hydrateSeconds())
    }
    const ratio = median(dd) / median(hydrated)
    out[state] = { ddSeconds: dd, hydrateSeconds: hydrated, hydrationVsDd: ratio }
    log(`${state}: dd ${median(dd).toFixed(2)} s, hydration ${median(hydrated).toFixed(2)} s: ${ratio.toFixed(2)}x dd's rate`)
  }
  const idleRate = size / median((out.warm as { hydrateSeconds: number[] }).hydrateSeconds)
  const reads: { alone: number[]; loaded: number[]; rate: number[] } = { alone: [], loaded: [], rate: [] }
  const writes: { alone: number[]; loaded: number[] } = { alone: [], loaded: [] }
  for (let i = 0; i < reps; i++) {
    roPages('warm')
    reads.alone.push((await underLoad(READS, false)).p99us)
    const r = await underLoad(READS, true)
    reads.loaded.push(r.p99us)
    reads.rate.push(r.hydrationRate)
    writes.alone.push((await underLoad(WRITES, false)).iops)
    writes.loaded.push((await underLoad(WRITES, true)).iops)
  }
  out.underLoad = {
    reads,
    writes,
    hydrationRateVsIdle: median(reads.rate) / idleRate,
    readP99WithVsWithout: median(reads.loaded) / median(reads.alone),
    writeIopsWithVsWithout: median(writes.loaded) / median(writes.alone),
  }
  log(
    `under 4K random reads at QD32: hydration at ${(median(reads.rate) / idleRate).toFixed(2)}x its idle rate, ` +
      `client p99 ${(median(reads.loaded) / median(reads.alone)).toFixed(2)}x; 4K random-write IOPS ${(median(writes.loaded) / median(writes.alone)).toFixed(2)}x`,
  )
  fs.mkdirSync(path.dirname(opts.json!), { recursive: true })
  fs.writeFileSync(opts.json!, `${JSON.stringify(out, null, 2)}\n`)
  log(`written to ${opts.json}`)
}

await main()
