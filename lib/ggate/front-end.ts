// The FreeBSD front end: a GEOM Gate provider /dev/NAME whose bios the
// engine serves. Request → (kernel) → START on a worker → here → engine →
// DONE on the same worker.
import fs from 'node:fs'
import { Worker } from 'node:worker_threads'
import { BioCmd, FreeBsdErrno } from '../../native-bindings/ggate-abi.js'
import { libc } from '../../native-bindings/libc.js'
import { providerPath } from '../../native-bindings/platform.js'
import type { BlockDevice } from '../devices/block-device.js'
import { geomProviders, providerName } from '../devices/geom-users.js'
import type { Engine } from '../engine/engine.js'
import { RowrError, ioFailure } from '../errors.js'
import { type GGateControl, GGateError, checkReadOffset } from './ggctl.js'
import { openControl, providerBusy, type GGateAttachment } from './provider.js'
import type { LoopMessage, StartLoopData } from './start-loop.js'

interface Bio {
  readonly cmd: number
  readonly offset: number
  readonly length: number
  /** READ's and WRITE's data (length bytes); empty for the others. */
  readonly data: Buffer
}

/**
 * Serves one bio: the errno DONE reports (0: success), at once for a READ
 * the engine answers at once, else once the engine is done.
 */
export const serveBio = (engine: Engine, bio: Bio): number | Promise<number> => {
  if (bio.cmd !== BioCmd.READ) return serveOther(engine, bio)
  const read = engine.read(bio.data, bio.offset)
  return read === true ? 0 : read.then(succeeded, bioErrno)
}

const succeeded = (): number => 0

const serveOther = async (engine: Engine, bio: Bio): Promise<number> => {
  try {
    switch (bio.cmd) {
      case BioCmd.WRITE:
        await engine.write(bio.offset, bio.data)
        return 0
      case BioCmd.DELETE:
        await engine.zero(bio.offset, bio.length)
        return 0
      case BioCmd.FLUSH:
        await engine.flush()
        return 0
      case BioCmd.SPEEDUP:
        // A hint to hurry deletes along; the engine has no backlog to speed up.
        return 0
      default:
        return FreeBsdErrno.EOPNOTSUPP
    }
  } catch (e) {
    return bioErrno(e)
  }
}

/**
 * The errno DONE reports for a failure. GEOM re-issues a bio that fails
 * ENOMEM (g_io_deliver) forever: memory short in the daemon is an I/O error
 * to the kernel.
 */
const bioErrno = (e: unknown): number => {
  const failure = ioFailure(e)
  return FreeBsdErrno[failure === 'ENOMEM' ? 'EIO' : failure]
}

interface GGateOptions {
  readonly engine: Engine
  readonly name: string
  /** Shown by `geom gate list` / ggatel. */
  readonly info: string
  /** Threads sitting in START: how many bios the kernel can hand over at once. */
  readonly workers?: number
  /** The first START buffer per worker; it grows when a bio needs more. */
  readonly startBuffer?: number
  /**
   * Whether the provider outlives a daemon that exits without destroying it
   * (the device keeps a map: a new daemon takes it over).
   */
  readonly keepOnExit: boolean
  /** Called when the provider went away without destroy() (destroyed from outside). */
  readonly onGone: () => void
  readonly log: (message: string) => void
}

export interface GGateStats {
  readonly unit: number
  readonly workers: number
  readonly bios: Record<'read' | 'write' | 'delete' | 'flush' | 'speedup' | 'other', number>
  readonly failed: number
  readonly bufferGrows: number
  /** The most bios served at once: how many STARTs were outstanding to good effect. */
  readonly peakInFlight: number
  /** The provider the kernel sends reads to directly (after hydration), or null. */
  readonly readProvider: string | null
}

const NO_DATA = Buffer.alloc(0)
const DEFAULT_WORKERS = 4
const DEFAULT_START_BUFFER = 128 * 1024

const BIO_NAMES: Record<number, keyof GGateStats['bios']> = {
  [BioCmd.READ]: 'read',
  [BioCmd.WRITE]: 'write',
  [BioCmd.DELETE]: 'delete',
  [BioCmd.FLUSH]: 'flush',
  [BioCmd.SPEEDUP]: 'speedup',
}

export class GGateFrontEnd {
  readonly attachment: GGateAttachment
  readonly unit: number
  readonly #control: GGateControl
  readonly #engine: Engine
  readonly #workers = new Set<Worker>()
  readonly #bios = { read: 0, write: 0, delete: 0, flush: 0, speedup: 0, other: 0 }
  #failed = 0
  #bufferGrows = 0
  #inFlight = 0
  #peakInFlight = 0
  #destroyed = false
  #readProvider: string | null = null
  readonly #onExit: (code: number) => void
  #fatal: unknown
  readonly #onFatal = (e: unknown): void => {
    this.#fatal = e
  }
  #markClosed!: () => void
  /** Resolves once every worker has left the request loop. */
  readonly closed = new Promise<void>(resolve => (this.#markClosed = resolve))

  private constructor(control: GGateControl, unit: number, o: GGateOptions) {
    this.#control = control
    this.unit = unit
    this.#engine = o.engine
    this.attachment = { kind: 'ggate', device: providerPath(o.name), name: o.name }
    // Node waits for its worker threads as it exits, and one asleep in START
    // never returns: after an uncaught error the daemon would hang with the
    // provider up. A forced DESTROY wakes them (ECANCELED). A provider kept
    // for a new daemon is left as it is, and the process ends at once
    // instead: the kernel ends the STARTs of a process that exits, and keeps
    // the bios they took for the next daemon's CANCEL.
    this.#onExit = code => {
      if (o.keepOnExit) {
        // Node reports an uncaught error after 'exit', which _exit cuts short.
        if (this.#fatal !== undefined) o.log(`uncaught: ${this.#fatal instanceof Error ? this.#fatal.stack : String(this.#fatal)}`)
        o.log(`exiting: ${o.name} is left for a new daemon to take over (geom-rowr create with the same devices and map)`)
        libc().exitNow(code)
      }
      try {
        control.destroy(o.name, { force: true })
      } catch {
        // Gone already; on the way out nothing else could be done anyway.
      }
    }
    process.on('exit', this.#onExit)
    process.on('uncaughtExceptionMonitor', this.#onFatal)
    const workers = o.workers ?? DEFAULT_WORKERS
    const data: StartLoopData = { fd: control.fd, unit, bufferSize: o.startBuffer ?? DEFAULT_START_BUFFER }
    for (let i = 0; i < workers; i++) {
      const worker = new Worker(new URL('./start-loop.js', import.meta.url), { workerData: data })
      this.#workers.add(worker)
      worker.on('message', (m: LoopMessage) => this.#onMessage(worker, m))
      worker.on('error', e => o.log(`GEOM Gate request loop failed: ${e.message}`))
      worker.on('exit', () => {
        this.#workers.delete(worker)
        if (this.#workers.size > 0) return
        this.#markClosed()
        if (!this.#destroyed) {
          o.log(`provider ${o.name} went away (destroyed outside geom-rowr?)`)
          o.onGone()
        }
      })
    }
  }

  /** Creates provider NAME with the engine's geometry and starts serving it. */
  static start(o: GGateOptions): GGateFrontEnd {
    const { name, engine } = o
    // GEOM Gate checks only its own names; md0, ada0 and friends are ours to avoid.
    if (fs.existsSync(`/dev/${name}`)) {
      throw new RowrError('EINUSE', `/dev/${name} already exists (another GEOM provider has that name); choose another NAME`)
    }
    const control = openControl()
    let unit: number
    try {
      unit = control.create({ name, mediaSize: engine.size, sectorSize: engine.sectorSize, info: o.info })
    } catch (e) {
      control.close()
      if (e instanceof GGateError && e.errno === FreeBsdErrno.EEXIST) {
        throw new RowrError(
          'EINUSE',
          `a GEOM Gate provider named ${name} already exists: choose another NAME. If it is a geom-rowr device, geom-rowr list shows it; ` +
            'one whose daemon died is taken over by create with the same devices and map',
        )
      }
      throw new RowrError('EATTACH', `cannot create GEOM Gate provider ${name}: ${(e as Error).message}`, { cause: e })
    }
    return new GGateFrontEnd(control, unit, o)
  }

  /**
   * Serves provider NAME, left by a daemon that died, as hastd's init_ggate
   * and ggatel's rescue do: CANCEL by name puts the bios that daemon took
   * and never finished back in the queue and returns the unit. Its users
   * never see the change. The provider must have the engine's geometry.
   */
  static takeOver(o: GGateOptions): GGateFrontEnd {
    const { name, engine } = o
    const found = geomProviders().get(name)
    if (found?.className !== 'GATE') {
      throw new RowrError(
        'EATTACH',
        `GEOM Gate provider ${name} is gone: nothing is left to take over; create ${name} again after geom-rowr destroy ${name}`,
      )
    }
    if (found.mediaSize !== engine.size || found.sectorSize !== engine.sectorSize) {
      throw new RowrError(
        'EATTACH',
        `provider ${name} has ${found.mediaSize} bytes in ${found.sectorSize}-byte sectors, the devices now give ${engine.size} in ${engine.sectorSize}-byte sectors; ` +
          `create ${name} again with the devices and --sector-size it had, or give up on it: geom-rowr destroy -f ${name}`,
      )
    }
    const control = openControl()
    let unit: number
    try {
      unit = control.cancel(name)
    } catch (e) {
      control.close()
      throw new RowrError(
        'EATTACH',
        `cannot take over GEOM Gate provider ${name}: ${(e as Error).message}; it still waits; try again, or give up on it: geom-rowr destroy -f ${name}`,
        { cause: e },
      )
    }
    return new GGateFrontEnd(control, unit, o)
  }

  #onMessage(worker: Worker, m: LoopMessage): void {
    if (m.type === 'grown') {
      this.#bufferGrows++
      return
    }
    if (m.type === 'finished') return
    this.#bios[BIO_NAMES[m.cmd] ?? 'other']++
    const carriesData = m.cmd === BioCmd.READ || m.cmd === BioCmd.WRITE
    const data = carriesData ? Buffer.from(m.data, 0, m.length) : NO_DATA
    this.#peakInFlight = Math.max(this.#peakInFlight, ++this.#inFlight)
    const served = serveBio(this.#engine, { cmd: m.cmd, offset: m.offset, length: m.length, data })
    if (typeof served === 'number') this.#done(worker, served)
    else void served.then(error => this.#done(worker, error))
  }

  /** Hands the bio's errno to the worker that took it, for its DONE. */
  #done(worker: Worker, error: number): void {
    this.#inFlight--
    if (error !== 0) this.#failed++
    worker.postMessage(error)
  }

  /**
   * DESTROY by name. Without force it refuses while the provider is open
   * (mounted); with force, its pending bios fail and its users get errors.
   */
  async destroy({ force }: { force: boolean }): Promise<void> {
    const { name, device } = this.attachment
    if (!this.#destroyed) {
      try {
        this.#control.destroy(name, { force })
      } catch (e) {
        if (!(e instanceof GGateError)) throw e
        if (e.errno === FreeBsdErrno.EBUSY)
          throw providerBusy(
            name,
            device,
            `unmount it (umount ${device}) first; destroy -f stops it even so, and a file system on it then loses what it has not written yet`,
          )
        // ENXIO: it is gone already.
        if (e.errno !== FreeBsdErrno.ENXIO) throw e
      }
      this.#destroyed = true
      process.off('exit', this.#onExit)
      process.off('uncaughtExceptionMonitor', this.#onFatal)
    }
    await this.closed
    this.#control.close()
  }

  stats(): GGateStats {
    return {
      unit: this.unit,
      workers: this.#workers.size,
      bios: { ...this.#bios },
      failed: this.#failed,
      bufferGrows: this.#bufferGrows,
      peakInFlight: this.#peakInFlight,
      readProvider: this.#readProvider,
    }
  }

  /**
   * Once every sector is on RW (hydrated, RO released), and RW is a GEOM
   * provider (an md, a disk; never a file): reads stay in the kernel, sent
   * to RW at offset 0 (MODIFY, as hastd's enable_direct_reads); one that
   * fails there comes to the daemon as before (g_gate_done). Returns the
   * read provider, or null when RW is not a provider.
   */
  enableDirectReads(rw: BlockDevice): string | null {
    const provider = rw.identity.kind === 'disk' ? providerName(rw.path) : undefined
    if (provider === undefined) return null
    const wrong = checkReadOffset(0, this.#engine.sectorSize, this.#engine.size, rw.size)
    if (wrong) throw new RowrError('EATTACH', `cannot send reads of ${this.attachment.name} to ${provider}: ${wrong}`)
    this.#control.directReads(this.unit, provider, 0)
    this.#readProvider = provider
    return provider
  }

  /** Clears the counters (geom-rowr reset); bios in flight stay counted as in flight. */
  resetStats(): void {
    for (const k of Object.keys(this.#bios) as (keyof GGateStats['bios'])[]) this.#bios[k] = 0
    this.#failed = 0
    this.#bufferGrows = 0
    this.#peakInFlight = this.#inFlight
  }
}
