// Running fio's nbd engine and reading its JSON results.
import { execFile } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'

export interface FioJob {
  readonly rw: string
  readonly bs: string
  readonly iodepth: number
  /** Seconds; without it the job runs over `size` once. */
  readonly runtime?: number
  readonly size?: string
  readonly offset?: string
  readonly numjobs?: number
  /** Extra fio options. */
  readonly extra?: readonly string[]
}

interface FioResult {
  readonly iops: number
  readonly bytesPerSecond: number
  /** Completion latency percentiles in microseconds. */
  readonly p99us: number
  readonly p50us: number
}

interface FioJson {
  jobs: {
    jobname: string
    read: FioSide
    write: FioSide
  }[]
}
interface FioSide {
  iops: number
  bw_bytes: number
  io_bytes: number
  clat_ns?: { percentile?: Record<string, number> }
}

const jobArgs = (name: string, uri: string, job: FioJob): string[] => [
  `--name=${name}`,
  '--ioengine=nbd',
  `--uri=${uri}`,
  `--rw=${job.rw}`,
  `--bs=${job.bs}`,
  `--iodepth=${job.iodepth}`,
  ...(job.runtime ? [`--runtime=${job.runtime}`, '--time_based'] : []),
  `--size=${job.size ?? '100%'}`,
  ...(job.offset ? [`--offset=${job.offset}`] : []),
  ...(job.numjobs ? [`--numjobs=${job.numjobs}`, '--group_reporting'] : []),
  ...(job.extra ?? []),
]

const summarize = (side: FioSide): FioResult => {
  const pct = side.clat_ns?.percentile ?? {}
  return {
    iops: side.iops,
    bytesPerSecond: side.bw_bytes,
    p99us: (pct['99.000000'] ?? 0) / 1000,
    p50us: (pct['50.000000'] ?? 0) / 1000,
  }
}

/**
 * Runs fio with one or more jobs (each its own NBD connection) and returns
 * each job's read and write results by name.
 */
export const runFio = async (
  jobs: readonly { name: string; uri: string; job: FioJob }[],
): Promise<Map<string, { read: FioResult; write: FioResult }>> => {
  const out = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'fio-')), 'out.json')
  const args = ['--output-format=json', `--output=${out}`, ...jobs.flatMap(j => jobArgs(j.name, j.uri, j.job))]
  await new Promise<void>((resolve, reject) =>
    execFile('fio', args, { maxBuffer: 64 << 20 }, (err, _stdout, stderr) =>
      err ? reject(new Error(`fio ${args.join(' ')}: ${stderr || err.message}`)) : resolve(),
    ),
  )
  const json = JSON.parse(fs.readFileSync(out, 'utf8')) as FioJson
  fs.rmSync(path.dirname(out), { recursive: true, force: true })
  const results = new Map<string, { read: FioResult; write: FioResult }>()
  for (const j of json.jobs) results.set(j.jobname, { read: summarize(j.read), write: summarize(j.write) })
  return results
}
