// What the benchmark runs against each server.
import { execFileSync } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'
import { runFio, type FioJob } from './fio.js'

export interface BenchContext {
  readonly work: string
  /** Seconds for time-based jobs. */
  readonly runtime: number
  /** Bytes of the base image. */
  readonly size: number
}

export interface Workload {
  readonly name: string
  readonly unit: 'IOPS' | 'MB/s' | 's' | 'ms p99'
  /** Whether a larger number is better. */
  readonly higherIsBetter: boolean
  /** Which base image the server gets. */
  readonly base: 'random' | 'ext4'
  /** Whether the no-copy-on-write reference is run too. */
  readonly withReference: boolean
  /** Whether it writes (memory is touched and freed before it, see the notes). */
  readonly writes: boolean
  run(uri: string, ctx: BenchContext): Promise<number>
}

const single = async (uri: string, job: FioJob, side: 'read' | 'write') => {
  const r = (await runFio([{ name: 'job', uri, job }])).get('job')!
  return r[side]
}

const MB = 1e6

/** p99 latency of 4K reads on one connection while another runs `writer`. */
const readP99WhileWriting = (name: string, writer: Omit<FioJob, 'runtime'>): Workload => ({
  name,
  unit: 'ms p99',
  higherIsBetter: false,
  base: 'random',
  withReference: false,
  writes: true,
  run: async (uri, ctx) => {
    const r = await runFio([
      { name: 'writer', uri, job: { ...writer, runtime: ctx.runtime } },
      { name: 'reader', uri, job: { rw: 'randread', bs: '4k', iodepth: 1, runtime: ctx.runtime } },
    ])
    return r.get('reader')!.read.p99us / 1000
  },
})

export const WORKLOADS: readonly Workload[] = [
  {
    name: 'seq read 1M qd8',
    unit: 'MB/s',
    higherIsBetter: true,
    base: 'random',
    withReference: true,
    writes: false,
    run: async uri => (await single(uri, { rw: 'read', bs: '1M', iodepth: 8 }, 'read')).bytesPerSecond / MB,
  },
  {
    name: 'rand read 4K qd32',
    unit: 'IOPS',
    higherIsBetter: true,
    base: 'random',
    withReference: true,
    writes: false,
    run: async (uri, ctx) => (await single(uri, { rw: 'randread', bs: '4k', iodepth: 32, runtime: ctx.runtime }, 'read')).iops,
  },
  {
    name: 'rand read 4K qd32, 2 connections',
    unit: 'IOPS',
    higherIsBetter: true,
    base: 'random',
    withReference: true,
    writes: false,
    run: async (uri, ctx) => (await single(uri, { rw: 'randread', bs: '4k', iodepth: 32, runtime: ctx.runtime, numjobs: 2 }, 'read')).iops,
  },
  {
    name: 'first write 4K qd32 (one per 64K)',
    unit: 'IOPS',
    higherIsBetter: true,
    base: 'random',
    withReference: true,
    writes: true,
    // rw=write:60k skips 60 KiB after each 4 KiB write: every write lands in
    // a 64 KiB region nothing has written yet.
    run: async uri => (await single(uri, { rw: 'write:60k', bs: '4k', iodepth: 32 }, 'write')).iops,
  },
  {
    name: 'overwrite 4K qd32',
    unit: 'IOPS',
    higherIsBetter: true,
    base: 'random',
    withReference: false,
    writes: true,
    run: async (uri, ctx) => {
      const region = `${Math.min(256, ctx.size / 2 ** 20)}M`
      await single(uri, { rw: 'write', bs: '1M', iodepth: 8, size: region }, 'write')
      return (await single(uri, { rw: 'randwrite', bs: '4k', iodepth: 32, size: region, runtime: ctx.runtime }, 'write')).iops
    },
  },
  {
    name: 'seq write 1M qd8',
    unit: 'MB/s',
    higherIsBetter: true,
    base: 'random',
    withReference: true,
    writes: true,
    run: async uri => (await single(uri, { rw: 'write', bs: '1M', iodepth: 8 }, 'write')).bytesPerSecond / MB,
  },
  readP99WhileWriting('fairness: 4K read p99 while 1M writes stream', { rw: 'write', bs: '1M', iodepth: 8 }),
  // Small writes run on the event loop (lib/devices/inline-writes.ts):
  // reads on another connection must not wait behind them.
  readP99WhileWriting('fairness: 4K read p99 while 4K writes stream', { rw: 'randwrite', bs: '4k', iodepth: 32 }),
  {
    name: 'fairness: cached 4K read p99 while another reads cold data',
    unit: 'ms p99',
    higherIsBetter: false,
    base: 'random',
    withReference: false,
    writes: false,
    run: async (uri, ctx) => {
      const hot = `${Math.min(64, ctx.size / 2 ** 22)}M`
      fs.writeFileSync('/proc/sys/vm/drop_caches', '3')
      await single(uri, { rw: 'read', bs: '1M', iodepth: 8, size: hot }, 'read')
      const r = await runFio([
        { name: 'cold', uri, job: { rw: 'read', bs: '1M', iodepth: 8, offset: '50%', size: '50%', runtime: ctx.runtime } },
        { name: 'hot', uri, job: { rw: 'randread', bs: '4k', iodepth: 1, size: hot, runtime: ctx.runtime } },
      ])
      return r.get('hot')!.read.p99us / 1000
    },
  },
  {
    name: 'ext4: untar many small files, then sync',
    unit: 's',
    higherIsBetter: false,
    base: 'ext4',
    withReference: false,
    writes: true,
    run: async (uri, ctx) => untarOnExt4(uri, ctx),
  },
]

/** A tarball of many small files (this project's node_modules), made once. */
const smallFilesTarball = (work: string): string => {
  const tarball = path.join(work, 'small-files.tar')
  if (!fs.existsSync(tarball)) {
    const root = path.resolve(path.dirname(new URL(import.meta.url).pathname), '../..')
    execFileSync('tar', ['-cf', tarball, '-C', root, 'node_modules'])
  }
  return tarball
}

/** The kernel's view of the export: nbdfuse + a loop device, ext4 mounted on it. */
const untarOnExt4 = async (uri: string, ctx: BenchContext): Promise<number> => {
  const tarball = smallFilesTarball(ctx.work)
  const fuse = fs.mkdtempSync(path.join(ctx.work, 'fuse-'))
  const mnt = fs.mkdtempSync(path.join(ctx.work, 'mnt-'))
  const socket = /socket=([^&]+)/.exec(uri)![1]!
  const { spawn } = await import('node:child_process')
  const nbdfuse = spawn('nbdfuse', [path.join(fuse, 'disk'), '--unix', socket], { stdio: 'ignore' })
  let loop = ''
  try {
    for (let i = 0; i < 300 && !fs.existsSync(path.join(fuse, 'disk')); i++) await new Promise(r => setTimeout(r, 20))
    loop = execFileSync('losetup', ['--find', '--show', '--direct-io=on', path.join(fuse, 'disk')], { encoding: 'utf8' }).trim()
    execFileSync('mount', [loop, mnt])
    const start = process.hrtime.bigint()
    execFileSync('tar', ['-xf', tarball, '-C', mnt])
    execFileSync('sync', ['-f', mnt])
    return Number(process.hrtime.bigint() - start) / 1e9
  } finally {
    execFileSync('umount', [mnt], { stdio: 'ignore' })
    if (loop) execFileSync('losetup', ['-d', loop])
    for (let i = 0; i < 50; i++) {
      try {
        execFileSync('fusermount3', ['-u', fuse], { stdio: 'ignore' })
        break
      } catch {
        await new Promise(r => setTimeout(r, 100))
      }
    }
    await new Promise(resolve => (nbdfuse.exitCode === null ? nbdfuse.once('exit', resolve) : resolve(null)))
    fs.rmSync(fuse, { recursive: true, force: true })
    fs.rmSync(mnt, { recursive: true, force: true })
  }
}
