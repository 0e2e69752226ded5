// A running rowr device: devices, engine, NBD server, control socket and,
// on request, a kernel block device; started in that order and stopped in
// reverse.
import { attach, checkAttachable, detach, deviceBusy, type Attachment } from '../attach/attachment.js'
import { makeAutoRw, removeAutoRw } from '../devices/auto-rw.js'
import { GGateFrontEnd } from '../ggate/front-end.js'
import { platform } from '../../native-bindings/libc.js'
import { BlockDevice } from '../devices/block-device.js'
import { openDevicePair } from '../devices/device-pair.js'
import { RowrDevice } from '../engine/rowr-device.js'
import { RowrError } from '../errors.js'
import { NbdServer, exportFor, nbdUri, type Listen } from '../nbd/server.js'
import { ControlServer, type ControlReply, type ControlRequest } from './control.js'
import { claimName } from './stale.js'
import { release, statePaths, writeState, type DeviceState } from './run-state.js'
import { Teardown } from './teardown.js'

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
  /** Where NBD listens; a Unix socket in the run directory by default. */
  readonly listen?: Listen
  readonly log: (message: string) => void
}

/** RO's size, for an automatic RW of exactly that size. */
const sizeOf = (ro: string): number => {
  const device = BlockDevice.open(ro, { writable: false })
  try {
    return device.size
  } finally {
    device.close()
  }
}

export class RowrDaemon {
  readonly state: DeviceState
  readonly warnings: readonly string[]
  readonly #engine: RowrDevice
  readonly #server: NbdServer
  readonly #teardown: Teardown
  readonly #provider: GGateFrontEnd | undefined
  #stopping: Promise<void> | undefined
  #markDone!: () => void
  /** Resolves once the device has been stopped (by destroy or a signal). */
  readonly done = new Promise<void>(resolve => (this.#markDone = resolve))

  private constructor(
    state: DeviceState,
    warnings: readonly string[],
    engine: RowrDevice,
    server: NbdServer,
    teardown: Teardown,
    provider: GGateFrontEnd | undefined,
  ) {
    this.state = state
    this.warnings = warnings
    this.#engine = engine
    this.#server = server
    this.#teardown = teardown
    this.#provider = provider
  }

  static async start(o: DaemonOptions): Promise<RowrDaemon> {
    const teardown = new Teardown(o.log)
    const paths = statePaths(o.name)
    await claimName(o.name, o.log)
    teardown.add('run state', () => release(o.name))
    try {
      const rwAuto = o.rw === 'auto'
      const base = { name: o.name, pid: process.pid, ro: o.ro, rw: o.rw, rwAuto, created: new Date().toISOString() }
      const starting = { phase: 'starting' as const, mediasize: 0, sectorsize: 0, device: null, nbd: '', attachment: null }
      // With RW 'auto' the state says 'auto' until the device exists, then
      // names it, so that cleanup after a crash knows what to remove.
      writeState({ ...base, ...starting })
      if (rwAuto) {
        const made = await makeAutoRw(o.name, sizeOf(o.ro))
        base.rw = made
        teardown.add('automatic read-write device', () => removeAutoRw(made))
        writeState({ ...base, ...starting })
      }
      const pair = openDevicePair(o.ro, base.rw, { sectorSize: o.sectorSize })
      teardown.add('devices', () => {
        pair.ro.close()
        pair.rw.close()
      })
      const ggate = o.attach && platform() === 'freebsd'
      if (o.attach && !ggate) checkAttachable(pair.sectorSize)
      for (const w of pair.warnings) o.log(`warning: ${w}`)

      const engine = new RowrDevice({ ro: pair.ro, rw: pair.rw, size: pair.mediaSize, sectorSize: pair.sectorSize })
      teardown.add('pending writes', async () => {
        await engine.drain()
        await engine.flush()
      })
      const server = new NbdServer(engine, exportFor(engine, o.name, `geom-rowr ${o.name}: ${o.ro} + ${base.rw}`), o.log)
      const listen = await server.listen(o.listen ?? { socket: paths.nbd })
      teardown.add('NBD server', ({ force }) => server.close({ force }))

      let daemon: RowrDaemon | undefined
      const control = await ControlServer.listen(paths.control, request => {
        if (!daemon) return Promise.resolve({ ok: false, code: 'EBUSY', message: `${o.name} is still starting` })
        return daemon.#control(request)
      })
      teardown.add('control socket', () => control.close())

      let attachment: Attachment | null = null
      let provider: GGateFrontEnd | undefined
      if (ggate) {
        const p = GGateFrontEnd.start({
          engine,
          name: o.name,
          info: `geom-rowr ${o.ro} + ${base.rw}`,
          ...o.ggate,
          onGone: () => void daemon?.stop({ force: true }),
          log: o.log,
        })
        provider = p
        attachment = p.attachment
        teardown.add('GEOM Gate provider', () => p.destroy({ force: true }))
      } else if (o.attach) {
        const a = await attach({ name: o.name, nbdSocket: paths.nbd, mountDir: paths.mount, sectorSize: pair.sectorSize, log: o.log })
        attachment = a
        teardown.add('kernel block device', ({ force }) => detach(a, { force }))
      }
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
      daemon = new RowrDaemon(state, pair.warnings, engine, server, teardown, provider)
      o.log(`${o.name} ready: ${state.device ?? state.nbd}`)
      return daemon
    } catch (e) {
      await teardown.run({ force: true }).catch(() => undefined)
      throw e
    }
  }

  status(): Record<string, unknown> {
    const stats = this.#engine.stats()
    const { attachment: _attachment, phase: _phase, ...state } = this.state
    return {
      ...state,
      writtenBytes: stats.writtenBytes,
      connections: this.#server.connections,
      stats,
      ...(this.#provider ? { ggate: this.#provider.stats() } : {}),
    }
  }

  /**
   * Refuses while the device is in use, unless `force`: then its users get
   * I/O errors from here on. Pending writes are flushed either way.
   */
  async stop({ force }: { force: boolean }): Promise<void> {
    if (!force && !this.#stopping) await this.#checkIdle()
    this.#stopping ??= this.#teardown.run({ force }).finally(() => this.#markDone())
    return this.#stopping
  }

  async #checkIdle(): Promise<void> {
    // GEOM Gate knows whether its provider is open: DESTROY without force
    // either takes it away or fails EBUSY.
    if (this.#provider) return this.#provider.destroy({ force: false })
    const { name, device } = this.state
    if (device && deviceBusy(device)) {
      throw new RowrError(
        'EBUSY',
        `${name} (${device}) is in use: it is mounted or held open; unmount it (umount ${device}) or use destroy -f`,
      )
    }
    if (!device && this.#server.connections > 0) {
      throw new RowrError(
        'EBUSY',
        `${name} has ${this.#server.connections} NBD client connection(s); disconnect them or use destroy -f`,
      )
    }
  }

  async #control(request: ControlRequest): Promise<ControlReply> {
    if (request.cmd === 'status') return { ok: true, ...this.status() }
    await this.stop({ force: request.force })
    return { ok: true }
  }
}
