// What create and serve share: their messages on the terminal and their map options.
import path from 'node:path'
import { describeAutoRw } from '../devices/auto-rw.js'
import type { HydrationSettings } from '../daemon/device-hydration.js'

type Log = (message: string) => void

/** Timestamped log lines on stderr, for create -v and serve -v. */
export const stderrLog =
  (name: string, enabled: boolean): Log =>
  message => {
    if (enabled) process.stderr.write(`${new Date().toISOString()} geom-rowr[${name}]: ${message}\n`)
  }

export const warn = (message: string): void => {
  process.stderr.write(`geom-rowr: ${message}\n`)
}

/** What the user should know once a device is up: warnings, and where an automatic RW went. */
export const announce = (
  state: { rw: string; rwAuto: boolean; mediasize: number; map: string | null },
  warnings: readonly string[],
): void => {
  for (const w of warnings) warn(`warning: ${w}`)
  if (state.rwAuto) warn(`read-write device: ${describeAutoRw(state.rw, state.mediasize, state.map !== null)}`)
}

/** The map options of create and serve, as the daemon takes them. */
export interface MapArgs {
  readonly map?: string
  readonly 'map-on-rw': boolean
  readonly force: boolean
  readonly 'discard-map': boolean
}

export const mapOptions = (a: MapArgs): { map?: string; mapOnRw: boolean; force: boolean; discardMap: boolean } => ({
  ...(a.map !== undefined ? { map: path.resolve(a.map) } : {}),
  mapOnRw: a['map-on-rw'],
  force: a.force,
  discardMap: a['discard-map'],
})

/** The hydration options of create and serve, checked by the command line. */
export interface HydrationArgs {
  readonly hydrate: boolean
  /** Bytes per second, 0: no limit. */
  readonly 'hydrate-rate': number
  /** Percent. */
  readonly 'hydrate-share': number
  readonly 'copy-on-read': boolean
}

export const hydrationOptions = (a: HydrationArgs): { hydration: HydrationSettings } => ({
  hydration: { start: a.hydrate, rate: a['hydrate-rate'], share: a['hydrate-share'] / 100, copyOnRead: a['copy-on-read'] },
})
