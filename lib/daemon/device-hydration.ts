// A running device's hydration (lib/engine/hydration.ts) as the daemon runs
// it: started by create --hydrate or geom-rowr hydrate, steered by control
// requests, shown in status; once every sector is on RW, RO is released
// (closed) and the log says so.
import type { Engine } from '../engine/engine.js'
import { Hydration } from '../engine/hydration.js'
import { RowrError } from '../errors.js'
import type { HydrateRequest, HydrationReport } from './control-protocol.js'

export interface HydrationSettings {
  /** Start copying at once (create --hydrate). */
  readonly start: boolean
  /** Bytes per second; 0: no limit. */
  readonly rate: number
  /** The share of the time the copy keeps under client load, above 0 and at most 1. */
  readonly share: number
  readonly copyOnRead: boolean
}

interface DeviceHydrationOptions {
  readonly name: string
  /** Why copies cannot be kept (a map of format 2 without room for more pages), with the fix; null when they can. */
  readonly cannotCopy: string | null
  /** Called once the engine has let RO go: closes it, and whatever follows from it. */
  readonly roReleased: () => void
  readonly log: (message: string) => void
}

export class DeviceHydration {
  readonly #engine: Engine
  readonly #hydration: Hydration
  readonly #o: DeviceHydrationOptions

  constructor(engine: Engine, settings: HydrationSettings, o: DeviceHydrationOptions) {
    this.#engine = engine
    this.#o = o
    this.#hydration = new Hydration(engine, { rate: settings.rate, share: settings.share, onEnd: (state, e) => this.#ended(state, e) })
    if (settings.copyOnRead) this.#setCopyOnRead(true)
    if (settings.start || this.#hydration.state === 'done') this.#start()
  }

  #check(what: string): void {
    if (this.#o.cannotCopy) throw new RowrError('EHYDRATE', `${what} on ${this.#o.name} cannot keep what it copies: ${this.#o.cannotCopy}`)
  }

  #start(): void {
    const state = this.#hydration.state
    if (state === 'done' && this.#engine.roBytes === 0) return void this.#release()
    this.#check('hydration')
    if (state !== 'running') this.#o.log(`hydration ${state === 'off' ? 'started' : 'resumed'}`)
    this.#hydration.start()
  }

  #setCopyOnRead(on: boolean): void {
    if (on) this.#check('copy-on-read')
    this.#engine.copyOnRead = on && this.#engine.roHeld
  }

  #ended(state: 'done' | 'failed', e?: Error): void {
    if (state === 'failed') {
      this.#o.log(`hydration failed: ${e?.message}; geom-rowr hydrate --resume ${this.#o.name} retries`)
      return
    }
    void this.#release()
  }

  /** Lets RO go: the engine first (no request may still read it), then its file descriptor. */
  async #release(): Promise<void> {
    if (!this.#engine.roHeld) return
    this.#engine.copyOnRead = false
    if (!(await this.#engine.releaseRo())) return
    this.#o.log(`hydrated: every sector is on RW; RO released (closed): ${this.#o.name} no longer needs it`)
    this.#o.roReleased()
  }

  async control(request: HydrateRequest): Promise<HydrationReport> {
    if (request.rate !== undefined) this.#hydration.setRate(request.rate)
    if (request.share !== undefined) this.#hydration.setShare(request.share)
    if (request.copyOnRead !== undefined) this.#setCopyOnRead(request.copyOnRead)
    if (request.action === 'pause') {
      if (this.#hydration.state === 'running') this.#o.log('hydration paused')
      await this.#hydration.pause()
    } else {
      this.#start()
    }
    return this.status()
  }

  status(): HydrationReport {
    return { hydration: { ...this.#hydration.status(), copyOnRead: this.#engine.copyOnRead }, roHeld: this.#engine.roHeld }
  }

  /** The device stops: the copy ends after its piece, with its progress durable. */
  stop(): Promise<void> {
    return this.#hydration.stop()
  }
}
