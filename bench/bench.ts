// geom-rowr against its peers, side by side in one run: the same fio
// workloads against each server with a fresh overlay, in alternating order,
// several repetitions; medians, spreads and geom-rowr/peer ratios.
//
//   node dist/bench/bench.js [--reps 3] [--runtime 10] [--size-mib 1024]
//        [--only TEXT] [--work DIR] [--long] [--json FILE]
//        [--baseline CHECKOUT]... [--peers NAME,NAME]
//
// --baseline adds geom-rowr built in another checkout (an earlier commit) as
// one more server in the same alternating runs: a change's before/after.
// Given more than once, each is a server of its own, with its own column.
// --peers keeps only the named servers (geom-rowr, nbdkit-cow, qemu-nbd,
// nbdkit-file, baseline).
import { execFileSync } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'
import { parseArgs } from 'node:util'
import { SectorMap } from '../lib/engine/sector-map.js'
import { PEERS, geomRowr, geomRowrBaseline, peakRss, rss, type Peer } from './peers.js'
import { WORKLOADS, type BenchContext, type Workload } from './workloads.js'

const { values: opts } = parseArgs({
  options: {
    reps: { type: 'string', default: '3' },
    runtime: { type: 'string', default: '10' },
    'size-mib': { type: 'string', default: '1024' },
    only: { type: 'string' },
    work: { type: 'string', default: '/var/tmp/geom-rowr-bench' },
    long: { type: 'boolean', default: false },
    json: { type: 'string', default: 'bench/results/latest.json' },
    baseline: { type: 'string', multiple: true },
    peers: { type: 'string' },
  },
})

const reps = Number(opts.reps)
const allPeers: Peer[] = [...PEERS, ...(opts.baseline ?? []).map(geomRowrBaseline)]
const wanted = opts.peers?.split(',').map(n => n.trim())
const chosen: Peer[] = wanted
  ? allPeers.filter(p => wanted.some(n => (n === 'baseline' ? p.kind === 'baseline' : p.name.startsWith(n))))
  : allPeers
if (!chosen.length) throw new Error(`--peers ${opts.peers}: none of ${allPeers.map(p => p.name).join(', ')}`)
const ctx: BenchContext = { work: opts.work!, runtime: Number(opts.runtime), size: Number(opts['size-mib']) * 2 ** 20 }
fs.mkdirSync(ctx.work, { recursive: true })

const log = (m: string): void => void process.stderr.write(`${m}\n`)

/** The base images: random bytes for block workloads, an empty ext4 for the file system one. */
const bases = (): Record<Workload['base'], string> => {
  const random = path.join(ctx.work, 'base-random.img')
  if (!fs.existsSync(random) || fs.statSync(random).size !== ctx.size) {
    log(`making ${random} (${ctx.size} bytes of random data)`)
    execFileSync('sh', ['-c', `head -c ${ctx.size} /dev/urandom > ${random}`])
  }
  const ext4 = path.join(ctx.work, 'base-ext4.img')
  if (!fs.existsSync(ext4) || fs.statSync(ext4).size !== ctx.size) {
    fs.rmSync(ext4, { force: true })
    execFileSync('mkfs.ext4', ['-q', '-F', ext4, `${ctx.size / 2 ** 20}M`])
  }
  return { random, ext4 }
}

/**
 * The bases in the page cache, as the issue's numbers assume: before every
 * workload, since the cold-read one drops the caches.
 */
const cacheBases = (b: Record<Workload['base'], string>): void => {
  for (const f of Object.values(b)) execFileSync('sh', ['-c', `cat ${f} > /dev/null`])
}

/**
 * Memory the VM never touched is slow on first touch; whoever writes first
 * would look slow. Touch and free 2 GiB before each writing run.
 */
const touchMemory = (): void => {
  execFileSync(process.execPath, ['-e', 'Buffer.alloc(2 * 2 ** 30, 1)'])
}

interface Sample {
  workload: string
  peer: string
  rep: number
  value: number
  peakRssBytes?: number
}

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b)
  const m = Math.floor(s.length / 2)
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2
}

const runOne = async (w: Workload, peer: Peer, base: string, rep: number): Promise<Sample> => {
  if (w.writes) touchMemory()
  const running = await peer.start(ctx.work, base)
  try {
    const value = await w.run(running.uri, ctx)
    const sample: Sample = { workload: w.name, peer: peer.name, rep, value, peakRssBytes: peakRss(running.pid) }
    log(`  ${peer.name.padEnd(22)} ${value.toFixed(w.unit === 'IOPS' ? 0 : 2).padStart(10)} ${w.unit}`)
    return sample
  } finally {
    await running.stop()
  }
}

/** RSS of geom-rowr at 10 s and at the end of a 60 s random-write run. */
const rssGrowth = async (base: string): Promise<{ at10s: number; at60s: number }> => {
  const running = await geomRowr.start(ctx.work, base)
  try {
    const { runFio } = await import('./fio.js')
    const fio = runFio([{ name: 'long', uri: running.uri, job: { rw: 'randrw', bs: '64k', iodepth: 32, runtime: 60 } }])
    await new Promise(r => setTimeout(r, 10_000))
    const at10s = rss(running.pid) ?? 0
    await fio
    return { at10s, at60s: rss(running.pid) ?? 0 }
  } finally {
    await running.stop()
  }
}

/** The sector map's memory for a 1 TiB device of 512-byte sectors. */
const mapMemory = (): { written: string; bytes: number }[] => {
  const sectors = 2 ** 40 / 512
  const out: { written: string; bytes: number }[] = []
  for (const [label, bytes] of [
    ['0', 0],
    ['1 GiB', 2 ** 30],
    ['100 GiB', 100 * 2 ** 30],
  ] as const) {
    const m = new SectorMap(sectors)
    // Scattered: 4 KiB writes spread evenly over the whole device.
    const writes = bytes / 4096
    const stride = writes ? Math.floor(sectors / writes) : 0
    for (let i = 0; i < writes; i++) m.setRange(i * stride, 8)
    out.push({ written: label, bytes: m.memoryBytes })
  }
  return out
}

const main = async (): Promise<void> => {
  const b = bases()
  const workloads = WORKLOADS.filter(w => !opts.only || w.name.includes(opts.only))
  const samples: Sample[] = []
  for (const w of workloads) {
    log(`\n${w.name}`)
    cacheBases(b)
    const peers = chosen.filter(p => p.kind !== 'reference' || w.withReference)
    for (let rep = 0; rep < reps; rep++) {
      // Alternate the order so no server always runs first or last.
      const order = rep % 2 === 0 ? peers : [...peers].reverse()
      for (const peer of order) samples.push(await runOne(w, peer, b[w.base], rep))
    }
  }

  const table: Record<string, Record<string, { median: number; min: number; max: number; peakRssMiB: number }>> = {}
  for (const w of workloads) {
    table[w.name] = {}
    for (const peer of chosen) {
      const mine = samples.filter(s => s.workload === w.name && s.peer === peer.name)
      if (!mine.length) continue
      const values = mine.map(s => s.value)
      table[w.name]![peer.name] = {
        median: median(values),
        min: Math.min(...values),
        max: Math.max(...values),
        peakRssMiB: Math.max(...mine.map(s => s.peakRssBytes ?? 0)) / 2 ** 20,
      }
    }
  }

  const lines: string[] = []
  const baselines = chosen.filter(p => p.kind === 'baseline')
  lines.push(
    `\n${'workload'.padEnd(58)} ${chosen.map(p => p.name.padStart(24)).join('')}  vs best cow peer${baselines.map(b => `  vs ${b.name}`.padStart(21)).join('')}`,
  )
  for (const w of workloads) {
    const row = table[w.name]!
    const cells = chosen.map(p => {
      const r = row[p.name]
      if (!r) return '-'.padStart(24)
      const digits = w.unit === 'IOPS' ? 0 : w.unit === 'MB/s' ? 0 : 2
      return `${r.median.toFixed(digits)} (${r.min.toFixed(digits)}-${r.max.toFixed(digits)})`.padStart(24)
    })
    const mine = row['geom-rowr']?.median
    const cow = chosen
      .filter(p => p.kind === 'cow')
      .map(p => row[p.name]?.median)
      .filter((v): v is number => v !== undefined)
    const best = w.higherIsBetter ? Math.max(...cow) : Math.min(...cow)
    const ratio = mine === undefined || !cow.length ? NaN : w.higherIsBetter ? mine / best : best / mine
    const changes = baselines.map(b => {
      const before = row[b.name]?.median
      const change = mine === undefined || !before ? NaN : w.higherIsBetter ? mine / before : before / mine
      return `${change.toFixed(3).padStart(20)}x`
    })
    lines.push(`${`${w.name} [${w.unit}]`.padEnd(58)} ${cells.join('')}  ${ratio.toFixed(2).padStart(14)}x${changes.join('')}`)
  }
  const rowr = (name: string) => table[name]?.['geom-rowr']?.median
  const ref = (name: string) => table[name]?.['nbdkit-file (no cow)']?.median
  const cowFirst = table['first write 4K qd32 (one per 64K)']?.['nbdkit-cow']?.median
  const targets: string[] = []
  const r4k = rowr('rand read 4K qd32')
  const ref4k = ref('rand read 4K qd32')
  if (r4k && ref4k) targets.push(`rand read 4K vs no-cow reference: ${(r4k / ref4k).toFixed(2)}x (target >= 1.0)`)
  const fw = rowr('first write 4K qd32 (one per 64K)')
  if (fw && cowFirst) targets.push(`first write 4K vs nbdkit-cow: ${(fw / cowFirst).toFixed(2)}x (target >= 4.0)`)
  const two = rowr('rand read 4K qd32, 2 connections')
  if (two && r4k) targets.push(`rand read 2 connections vs 1: ${(two / r4k).toFixed(2)}x (target >= 1.0)`)
  for (const f of workloads.filter(w => w.unit === 'ms p99')) {
    const v = rowr(f.name)
    if (v !== undefined) targets.push(`${f.name}: ${v.toFixed(2)} ms (target <= 10)`)
  }
  const peak = Math.max(...samples.filter(s => s.peer === 'geom-rowr').map(s => s.peakRssBytes ?? 0)) / 2 ** 20
  targets.push(`geom-rowr peak RSS over all workloads: ${peak.toFixed(0)} MiB (target <= 256)`)
  let growth: { at10s: number; at60s: number } | undefined
  if (opts.long) {
    growth = await rssGrowth(b.random)
    targets.push(
      `RSS at 10 s and 60 s of random read/write: ${(growth.at10s / 2 ** 20).toFixed(0)} MiB, ${(growth.at60s / 2 ** 20).toFixed(0)} MiB`,
    )
  }
  const map = mapMemory()
  targets.push(`sector map for 1 TiB: ${map.map(m => `${m.written} written: ${(m.bytes / 2 ** 20).toFixed(2)} MiB`).join(', ')}`)
  lines.push('', ...targets.map(s => `- ${s}`))
  process.stdout.write(`${lines.join('\n')}\n`)

  fs.mkdirSync(path.dirname(opts.json!), { recursive: true })
  fs.writeFileSync(
    opts.json!,
    `${JSON.stringify(
      {
        date: new Date().toISOString(),
        machine: { cpus: (await import('node:os')).cpus().length, node: process.version },
        options: { reps, runtime: ctx.runtime, size: ctx.size },
        commit: execFileSync('git', ['rev-parse', '--short', 'HEAD'], { encoding: 'utf8' }).trim(),
        peers: chosen.map(p => ({ name: p.name, kind: p.kind })),
        samples,
        table,
        rssGrowth: growth,
        mapMemory: map,
      },
      null,
      2,
    )}\n`,
  )
  log(`raw results: ${opts.json}`)
}

await main()
