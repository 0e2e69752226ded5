// A running rowr device: devices, engine, NBD server, control socket and,
// on request, a kernel block device; started in that order and stopped in
// reverse.
import fs from 'node:fs'
import { attach, checkAttachable, detach, nbdModuleLoaded, type Attachment } from '../attach/attachment.js'
import { deviceBusy } from '../devices/device-busy.js'
import { reconnectNbdModule } from '../attach/nbd-module.js'
import { TakeoverLog, readTakeoverLog } from '../persist/takeover-log.js'
import { makeAutoRw, removeAutoRw } from '../devices/auto-rw.js'
import { GGateFrontEnd } from '../ggate/front-end.js'
import { providerOpenBy } from '../ggate/provider.js'
import type { SectorStates } from '../engine/sector-states.js'
import type { MapFile } from '../persist/map-file.js'
import { commit, exportImage, planCommit, revert, type JobContext } from '../lifecycle/jobs.js'
import { mapOnRwBytes } from '../persist/map-store.js'
import { platform } from '../../native-bindings/platform.js'
import { BlockDevice } from '../devices/block-device.js'
import type { Engine } from '../engine/engine.js'
import { RowrError, isRowrError } from '../errors.js'
import { NbdServer, exportFor, nbdUri, type Listen } from '../nbd/server.js'
import { ControlServer } from './control.js'
import { dispatch, type ControlHandlers, type DeviceStatus, type JobProgress } from './control-protocol.js'
import { IoErrorLog } from './error-log.js'
import { allocatedBytes, rwSpaceWarning } from '../devices/rw-space.js'
import type { DeviceClaims } from './claims.js'
import { assemble } from './assembly.js'
import { claimName, type Waiting } from './stale.js'
import { release, statePaths, writeState, type DeviceState } from './run-state.js'
import { Teardown } from './teardown.js'
import { DeviceHydration, type HydrationSettings } from './device-hydration.js'
import { DEFAULT_SHARE } from '../engine/hydration.js'
import { resizeHint } from '../devices/device-pair.js'

export interface DaemonOptions {
  readonly name: string
  /** Absolute paths; `rw` may be 'auto'. */
  readonly ro: string
  readonly rw: string
  readonly sectorSize?: number
  /** Make a kernel block device: a GEOM Gate provider on FreeBSD, NBD attached on Linux. */
  readonly attach: boolean
  /** Threads sitting in GEOM Gate's START, and their first buffer size (tests). */
  readonly ggate?: { readonly workers?: number; readonly startBuffer?: number }
  /** Keep the sector map in this file (resuming from it if it holds one). */
  readonly map?: string
  /** Keep the sector map in RW's tail instead. */
  readonly mapOnRw?: boolean
  /** Accept a map whose fingerprints do not match (the user vouches for the devices). */
  readonly force?: boolean
  /** Start over: a new, empty map, and RW taken as empty, whatever they held (--discard-map). */
  readonly discardMap?: boolean
  /** Where NBD listens; a Unix socket in the run directory by default. */
  readonly listen?: Listen
  /** Hydration and copy-on-read; neither by default. */
  readonly hydration?: HydrationSettings
  readonly log: (message: string) => void
}

/** What differs between `o` and the devices a waiting kernel device was made of, or null. */
const differsFrom = (o: DaemonOptions, s: Waiting['state']): string | null => {
  const map = o.mapOnRw ? 'rw' : (o.map ?? null)
  const differences = [
    ...(o.attach ? [] : ['--no-attach']),
    ...(o.ro === s.ro ? [] : [`RO ${o.ro}, not ${s.ro}`]),
    ...((o.rw === 'auto' ? s.rwAuto : !s.rwAuto && o.rw === s.rw) ? [] : [`RW ${o.rw}, not ${s.rwAuto ? 'auto' : s.rw}`]),
    ...(map === s.map ? [] : [`map ${map ?? '(none)'}, not ${s.map}`]),
    ...(o.sectorSize === undefined || o.sectorSize === s.sectorsize ? [] : [`sector size ${o.sectorSize}, not ${s.sectorsize}`]),
  ]
  return differences.length ? differences.join('; ') : null
}

/** The size an automatic RW needs: RO's, and with --map-on-rw room for the map past it. */
const autoRwSize = (o: DaemonOptions): number => {
  const device = BlockDevice.open(o.ro, { writable: false })
  try {
    // A file RW has 512-byte sectors: the device's are RO's, unless given.
    return o.mapOnRw ? mapOnRwBytes(device.size, o.sectorSize ?? device.sectorSize) : device.size
  } finally {
    device.close()
  }
}

/**
 * The geometry of a device whose RO is given as none: its map's. Only a map
 * file can say it (a map in RW's tail starts where the device's size puts
 * it), and only a fully hydrated map is resumed so (MapFile.open).
 */
/** What status needs to show the device's health, and reset to clear it. */
interface Health {
  readonly rw: BlockDevice
  readonly errorLog: IoErrorLog
}

/** A lifecycle job in progress; `step` names what it does past the copying (its final sync). */
type RunningJob = JobProgress & { done: number; total: number; step: string | undefined; readonly abort: AbortController }

export class RowrDaemon {
  readonly state: DeviceState
  readonly warnings: readonly string[]
  readonly #claims: DeviceClaims
  readonly #engine: Engine
  readonly #server: NbdServer
  readonly #teardown: Teardown
  readonly #provider: GGateFrontEnd | undefined
  readonly #mapFile: MapFile | undefined
  readonly #log: (message: string) => void
  readonly #health: Health
  readonly #hydration: DeviceHydration
  #job: RunningJob | undefined
  #stopping: Promise<void> | undefined
  #markDone!: () => void
  /** Resolves once the device has been stopped (by destroy or a signal). */
  readonly done = new Promise<void>(resolve => (this.#markDone = resolve))

  private constructor(
    state: DeviceState,
    warnings: readonly string[],
    claims: DeviceClaims,
    engine: Engine,
    server: NbdServer,
    teardown: Teardown,
    provider: GGateFrontEnd | undefined,
    mapFile: MapFile | undefined,
    log: (message: string) => void,
    health: Health,
    hydration: DeviceHydration,
  ) {
    this.state = state
    this.warnings = warnings
    this.#claims = claims
    this.#engine = engine
    this.#server = server
    this.#teardown = teardown
    this.#provider = provider
    this.#mapFile = mapFile
    this.#log = log
    this.#health = health
    this.#hydration = hydration
  }

  static async start(o: DaemonOptions): Promise<RowrDaemon> {
    const teardown = new Teardown(o.log)
    const paths = statePaths(o.name)
    // A device whose daemon died and that waits for a new one is taken over:
    // until this daemon serves it, a failed start leaves its state as it was.
    const waiting = await claimName(o.name, o.log, s => differsFrom(o, s))
    let serving = false
    /** Until set, teardown is a failed start's: it takes back what the start made. */
    let started = false
    teardown.add('run state', () => (waiting && !serving ? writeState(waiting) : release(o.name)))
    if (waiting) {
      o.log(`taking over ${waiting.attachment.device} from daemon pid ${waiting.pid}, which is gone`)
      // Its sockets are left over, with nobody listening.
      for (const p of [paths.nbd, paths.control]) fs.rmSync(p, { force: true })
    }
    try {
      const rwAuto = o.rw === 'auto'
      const persistent = o.map !== undefined || o.mapOnRw === true
      const base = {
        name: o.name,
        pid: process.pid,
        ro: o.ro,
        rw: o.rw,
        rwAuto,
        map: o.mapOnRw ? 'rw' : (o.map ?? null),
        created: new Date().toISOString(),
      }
      // The kernel device a waiting state names stays named, so that a crash
      // of this daemon while it starts leaves the device waiting still.
      const starting = {
        phase: 'starting' as const,
        mediasize: 0,
        sectorsize: 0,
        device: null,
        nbd: '',
        attachment: waiting?.attachment ?? null,
      }
      // With RW 'auto' the state says 'auto' until the device exists, then
      // names it, so that cleanup after a crash knows what to remove.
      writeState({ ...base, ...starting })
      if (rwAuto) {
        // With a map, RW holds the data the map describes: it is kept, once the device started.
        const auto = await makeAutoRw(o.name, autoRwSize(o), { persistent, discard: o.discardMap })
        base.rw = auto.path
        if (!persistent || auto.made) {
          teardown.add('automatic read-write device', () => (!persistent || !started ? removeAutoRw(auto.path) : undefined))
        }
        writeState({ ...base, ...starting })
      }
      // Added before the engine's flush, so that it runs after it (teardown runs in reverse).
      const errorLog = new IoErrorLog(o.name, o.log)
      teardown.add('error log', () => errorLog.close())
      const ggate = o.attach && platform() === 'freebsd'
      // Only a kernel nbd device (nbd-module.ts) or a GEOM Gate provider
      // outlives its daemon: then what was marked since the last flush is
      // logged for a successor, and a successor takes a dead daemon's log
      // over first.
      let recovered = 0
      const takeoverLog = (mapFile: MapFile, map: SectorStates): TakeoverLog => {
        if (waiting) {
          for (const [first, count] of readTakeoverLog(paths.dir)) {
            if (first + count > map.sectors) continue
            if (map.markWritten(first, count) > 0) mapFile.marked(first, count)
            recovered += count
          }
          o.log(`marked again ${recovered} sectors that daemon pid ${waiting.pid} wrote after its last flush`)
        }
        const log = new TakeoverLog(paths.dir, mapFile)
        teardown.add('takeover log', () => log.close())
        return log
      }
      const assembly = await assemble(
        {
          ro: o.ro,
          rw: base.rw,
          sectorSize: o.sectorSize,
          rwMadeToFit: rwAuto,
          claimant: { name: o.name },
          map: o.mapOnRw ? 'rw' : o.map !== undefined ? { file: o.map } : null,
          force: o.force ?? false,
          discardMap: o.discardMap ?? false,
          ...(ggate || (o.attach && nbdModuleLoaded()) ? { journal: takeoverLog } : {}),
        },
        teardown,
      )
      const { engine, pair, claims, mapFile } = assembly
      if (o.attach && !ggate) checkAttachable(pair.sectorSize)
      const warnings = [...assembly.warnings]
      const space = rwSpaceWarning(pair.rw, pair.mediaSize)
      if (space) warnings.push(space)
      for (const w of warnings) o.log(`warning: ${w}`)
      if (assembly.resumed) o.log(`resumed ${assembly.resumed}: ${engine.stats().writtenBytes} bytes written earlier`)
      engine.errors.onError = e => errorLog.report(e)
      if (recovered > 0) await engine.flush()
      const server = new NbdServer(engine, exportFor(engine, o.name, `geom-rowr ${o.name}: ${o.ro} + ${base.rw}`), o.log)
      const listen = await server.listen(o.listen ?? { socket: paths.nbd })
      teardown.add('NBD server', ({ force }) => server.close({ force }))

      let daemon: RowrDaemon | undefined
      const control = await ControlServer.listen(paths.control, request => {
        if (!daemon) return Promise.resolve({ ok: false, code: 'EBUSY', message: `${o.name} is still starting` })
        return dispatch(daemon.#handlers, request)
      })
      teardown.add('control socket', () => control.close())

      let attachment: Attachment | null = null
      let provider: GGateFrontEnd | undefined
      if (ggate) {
        const options = {
          engine,
          name: o.name,
          info: `geom-rowr ${o.ro} + ${base.rw}`,
          ...o.ggate,
          keepOnExit: persistent,
          onGone: () => void daemon?.stop({ force: true }),
          log: o.log,
        }
        const p = waiting?.attachment.kind === 'ggate' ? GGateFrontEnd.takeOver(options) : GGateFrontEnd.start(options)
        serving = true
        provider = p
        attachment = p.attachment
        teardown.add('GEOM Gate provider', () => p.destroy({ force: true }))
      } else if (o.attach) {
        const options = { name: o.name, nbdSocket: paths.nbd, mountDir: paths.mount, sectorSize: pair.sectorSize, persistent, log: o.log }
        const a =
          waiting?.attachment.kind === 'nbd'
            ? await reconnectNbdModule(waiting.attachment, { ...options, mediaSize: pair.mediaSize })
            : await attach(options)
        serving = true
        attachment = a
        teardown.add('kernel block device', ({ force }) => detach(a, { force }))
      }
      /** With RO gone, a GEOM Gate provider over a RW that is a provider itself reads it in the kernel. */
      const directReads = (): void => {
        try {
          const to = provider?.enableDirectReads(pair.rw)
          if (to) o.log(`direct reads: the kernel reads ${o.name} from ${to} itself (G_GATE_CMD_MODIFY)`)
        } catch (e) {
          o.log(`warning: direct reads not enabled, reads still go through the daemon: ${(e as Error).message}`)
        }
      }
      const needed = mapOnRwBytes(pair.mediaSize, pair.sectorSize)
      const hydration = new DeviceHydration(engine, o.hydration ?? { start: false, rate: 0, share: DEFAULT_SHARE, copyOnRead: false }, {
        name: o.name,
        cannotCopy: engine.canCopy
          ? null
          : `its map in ${pair.rw.path}'s tail is format 2, and RW has no room for the pages format 3 adds (${needed} bytes in all): ${resizeHint(pair.rw.path, needed)}`,
        roReleased: () => {
          pair.ro.close()
          claims.releaseRo()
          directReads()
        },
        log: o.log,
      })
      // Added after the engine's flush, so that it runs before it: the copy ends first; started once the
      // front end is up, which a copy that finds every sector on RW already tells to read RW directly.
      teardown.add('hydration', () => hydration.stop())
      const state: DeviceState = {
        ...base,
        phase: 'ready',
        mediasize: pair.mediaSize,
        sectorsize: pair.sectorSize,
        device: attachment?.device ?? null,
        nbd: nbdUri(listen),
        attachment,
      }
      writeState(state)
      daemon = new RowrDaemon(
        state,
        warnings,
        claims,
        engine,
        server,
        teardown,
        provider,
        mapFile,
        o.log,
        { rw: pair.rw, errorLog },
        hydration,
      )
      assembly.started()
      started = true
      o.log(`${o.name} ready: ${state.device ?? state.nbd}`)
      return daemon
    } catch (e) {
      await teardown.run({ force: true }).catch(() => undefined)
      throw e
    }
  }

  status(): DeviceStatus {
    const stats = this.#engine.stats()
    const { attachment: _attachment, phase: _phase, ...state } = this.state
    return {
      ...state,
      health: this.#engine.errors.health,
      errors: this.#engine.errors.counts(),
      rwAllocated: allocatedBytes(this.#health.rw),
      writtenBytes: stats.writtenBytes,
      ...this.#hydration.status(),
      connections: this.#server.connections,
      stats,
      ...(this.#provider ? { ggate: this.#provider.stats() } : {}),
      ...(this.#mapFile ? { mapUuid: this.#mapFile.uuid } : {}),
      ...(this.#job ? { job: { name: this.#job.name, done: this.#job.done, total: this.#job.total, step: this.#job.step } } : {}),
    }
  }

  /**
   * Refuses while the device is in use, unless `force`: then its users get
   * I/O errors from here on. Pending writes are flushed either way.
   */
  async stop({ force }: { force: boolean }): Promise<void> {
    if (!force && !this.#stopping) await this.#checkIdle()
    this.#job?.abort.abort()
    this.#stopping ??= this.#teardown.run({ force }).finally(() => this.#markDone())
    return this.#stopping
  }

  /**
   * A signal stops the device only while its kernel device is not open. An
   * open one may hold the root file system (init sends SIGTERM to every
   * process at shutdown), so it is flushed and kept serving; destroy -f
   * still forces. Resolves to whether the device is stopping.
   */
  async signalled(signal: NodeJS.Signals): Promise<boolean> {
    if (this.state.device && !this.#stopping) {
      try {
        await this.#checkIdle()
      } catch (e) {
        if (!(isRowrError(e) && e.code === 'EBUSY')) throw e
        const { name, device } = this.state
        try {
          await this.#engine.flush()
          this.#log(
            `${signal}: ${device} is open (mounted?), so ${name} keeps serving it; written data is flushed; geom-rowr destroy -f ${name} stops it anyway`,
          )
        } catch (flushError) {
          this.#log(`${signal}: ${device} is open, so ${name} keeps serving it, but the flush failed: ${(flushError as Error).message}`)
        }
        return false
      }
    }
    this.#log(`${signal}: stopping`)
    this.stop({ force: true }).catch(e => this.#log(`stopping failed: ${(e as Error).message}`))
    return true
  }

  /** Why the device counts as in use (mounted, held open, NBD clients), or null. */
  async #inUse(): Promise<string | null> {
    const { name, device } = this.state
    if (device && (await deviceBusy(device))) {
      return `${name} (${device}) is in use: it is mounted or held open; unmount it (umount ${device})`
    }
    if (!device && this.#server.connections > 0) {
      return `${name} has ${this.#server.connections} NBD client connection(s); disconnect them`
    }
    return null
  }

  async #checkIdle(): Promise<void> {
    // GEOM Gate knows whether its provider is open: DESTROY without force
    // either takes it away or fails EBUSY.
    if (this.#provider) return this.#provider.destroy({ force: false })
    const busy = await this.#inUse()
    if (busy)
      throw new RowrError(
        'EBUSY',
        `${busy} first; destroy -f stops it even so, and a file system on it then loses what it has not written yet`,
      )
  }

  /** Refuses a job that changes what the device shows, or what RO holds, while the device is open. */
  async #checkNotOpen(force: string): Promise<void> {
    const busy = this.#provider ? this.#providerInUse() : await this.#inUse()
    if (busy) throw new RowrError('EBUSY', `${busy}, or use ${force}`)
  }

  /** Who has the GEOM Gate provider open (kern.geom.confxml), or null. */
  #providerInUse(): string | null {
    const { name, device } = this.state
    const uses = providerOpenBy(name)
    return uses.length ? `${name} (${device}) is in use: ${uses.join(', ')}; unmount it (umount ${device}) or close it` : null
  }

  /** Runs one lifecycle job at a time, with its progress visible in status. */
  async #runJob<T>(name: string, job: (ctx: JobContext) => Promise<T>): Promise<T> {
    if (this.#job) throw new RowrError('EBUSY', `${this.state.name} is busy with ${this.#job.name}; wait for it or cancel it`)
    const abort = new AbortController()
    const running: RunningJob = { name, done: 0, total: 0, step: undefined, abort }
    this.#job = running
    try {
      return await job({
        engine: this.#engine,
        ro: this.state.ro,
        claims: this.#claims,
        signal: abort.signal,
        progress: (done, total) => {
          running.done = done
          running.total = total
          running.step = undefined
        },
        step: what => {
          running.step = what
        },
      })
    } finally {
      this.#job = undefined
    }
  }

  readonly #handlers: ControlHandlers = {
    status: async () => this.status(),
    destroy: async ({ force }) => {
      await this.stop({ force })
      return {}
    },
    diff: async () => ({ ranges: this.#engine.writtenRanges() }),
    revert: async ({ force }) => {
      this.#engine.requireRo('revert')
      if (!force) await this.#checkNotOpen("revert -f (its users then see RO's data under their feet)")
      return this.#runJob('revert', revert)
    },
    commit: async ({ force, dryRun }) => {
      this.#engine.requireRo('commit')
      if (!force)
        await this.#checkNotOpen('commit -f (it then commits what the file system has written so far, which may be half an update)')
      return dryRun ? this.#runJob('commit --dry-run', planCommit) : this.#runJob('commit', commit)
    },
    export: ({ file, toDevice }) => this.#runJob('export', ctx => exportImage(ctx, file, { toDevice })),
    reset: async () => {
      const cleared = this.#engine.errors.counts()
      this.#engine.reset()
      this.#provider?.resetStats()
      this.#health.errorLog.reset()
      this.#log(`reset: statistics and error counts cleared (${cleared.rwWrite + cleared.rwRead + cleared.roRead} I/O error(s))`)
      return { cleared }
    },
    cancel: async () => {
      this.#job?.abort.abort()
      return { cancelled: this.#job?.name ?? null }
    },
    hydrate: request => this.#hydration.control(request),
  }
}
