// What a daemon that dies must leave its successor: the sectors it marked
// written since the map was last made durable. The map reaches its file only
// on FLUSH, but the kernel device of a dead daemon stays mounted and has been
// told those writes completed; their data is on RW (the write reached the
// kernel before the reply), only their map bits would be lost. So each newly
// marked range is appended to a log in the run directory before the reply,
// and a daemon taking the device over marks them again first.
//
// Two files alternate: a commit starts a new one and removes the old one once
// the map holds everything in it, or once the map is emptied (revert, the
// end of a commit into RO) and what the old one held is forgotten. The log
// matters only while this boot's page cache stands (a kernel device waiting
// for a daemon means it does), so it is never synced; a crash of the machine
// makes it moot.
import fs from 'node:fs'
import path from 'node:path'
import type { BlockIo } from '../devices/block-device.js'
import type { MapJournal } from '../engine/engine.js'

const RECORD_BYTES = 16
const PREFIX = 'marked-since-flush.'

const logPath = (dir: string, generation: number): string => path.join(dir, `${PREFIX}${generation}`)

const generations = (dir: string): number[] =>
  fs
    .readdirSync(dir)
    .filter(f => f.startsWith(PREFIX) && /^\d+$/.test(f.slice(PREFIX.length)))
    .map(f => Number(f.slice(PREFIX.length)))
    .sort((a, b) => a - b)

/** The ranges a dead daemon's logs in `dir` hold, as [first sector, count]. */
export const readTakeoverLog = (dir: string): [number, number][] => {
  const out: [number, number][] = []
  for (const g of generations(dir)) {
    const b = fs.readFileSync(logPath(dir, g))
    // A record cut short by the crash was never acknowledged to anyone.
    for (let at = 0; at + RECORD_BYTES <= b.length; at += RECORD_BYTES) {
      out.push([Number(b.readBigUInt64LE(at)), Number(b.readBigUInt64LE(at + 8))])
    }
  }
  return out
}

export const removeTakeoverLog = (dir: string): void => {
  for (const g of generations(dir)) fs.rmSync(logPath(dir, g), { force: true })
}

/** A MapJournal that logs every newly marked range before passing it on. */
export class TakeoverLog implements MapJournal {
  readonly #dir: string
  readonly #inner: MapJournal
  #generation: number
  #fd: number
  readonly #record = Buffer.alloc(RECORD_BYTES)

  /** Starts after the logs already in `dir`, which stay until the first commit covers them. */
  constructor(dir: string, inner: MapJournal) {
    this.#dir = dir
    this.#inner = inner
    this.#generation = (generations(dir).at(-1) ?? -1) + 1
    this.#fd = fs.openSync(logPath(dir, this.#generation), 'a', 0o600)
  }

  marked(start: number, count: number): void {
    this.#record.writeBigUInt64LE(BigInt(start), 0)
    this.#record.writeBigUInt64LE(BigInt(count), 8)
    fs.writeSync(this.#fd, this.#record)
    this.#inner.marked(start, count)
  }

  /** Copies need no log: one a dead daemon did not make durable reads from RO again, as it did. */
  copied(start: number, count: number): void {
    this.#inner.copied(start, count)
  }

  get recordsCopies(): boolean {
    return this.#inner.recordsCopies
  }

  commit(syncRw: () => Promise<void>): Promise<void> {
    return this.#covering(() => this.#inner.commit(syncRw))
  }

  /** Revert: the ranges logged so far are forgotten with the map, or a successor would mark them again. */
  clear(): Promise<void> {
    return this.#covering(() => this.#inner.clear())
  }

  startCommit(): Promise<void> {
    return this.#inner.startCommit()
  }

  finishCommit(ro: BlockIo): Promise<void> {
    return this.#covering(() => this.#inner.finishCommit(ro))
  }

  /** Runs `work`, which settles every range logged so far; then removes their logs. */
  async #covering(work: () => Promise<void>): Promise<void> {
    // Ranges marked from here on may miss the work: they go to a new file.
    const covered = this.#generation
    fs.closeSync(this.#fd)
    this.#generation++
    this.#fd = fs.openSync(logPath(this.#dir, this.#generation), 'a', 0o600)
    await work()
    for (const g of generations(this.#dir)) if (g <= covered) fs.rmSync(logPath(this.#dir, g), { force: true })
  }

  close(): void {
    fs.closeSync(this.#fd)
  }
}
