// A progress bar on standard error for long jobs, only on a terminal: the
// share done, bytes, the rate over the last seconds and the time left, and
// the step the job is in when it is not copying (a final sync can take a
// while, and a bar standing at 99% without a word looks hung).
import { human } from '../units.js'

const WIDTH = 30
const REDRAW_MS = 100
/** The rate is measured over roughly this much of the recent past. */
const RATE_WINDOW_MS = 5_000

interface Progress {
  update(done: number, total: number): void
  /** Names what the job does now, e.g. "syncing"; drawn until the next update. */
  step(what: string): void
  end(): void
}

/** Seconds as m:ss, or h:mm:ss past an hour. */
export const clock = (seconds: number): string => {
  const s = Math.max(0, Math.round(seconds))
  const hms = [Math.floor(s / 3600), Math.floor(s / 60) % 60, s % 60]
  const [h, m, sec] = hms as [number, number, number]
  const pad = (n: number): string => String(n).padStart(2, '0')
  return h > 0 ? `${h}:${pad(m)}:${pad(sec)}` : `${m}:${pad(sec)}`
}

interface ProgressOptions {
  readonly stream?: NodeJS.WriteStream
  /** Milliseconds; tests give their own clock. */
  readonly now?: () => number
}

export const progressBar = (label: string, { stream = process.stderr, now = Date.now }: ProgressOptions = {}): Progress => {
  if (!stream.isTTY) return { update: () => undefined, step: () => undefined, end: () => undefined }
  let lastDraw = -Infinity
  let drawn = false
  let done = 0
  let total = 0
  /** (time, done) samples, oldest first, spanning about RATE_WINDOW_MS. */
  const samples: [number, number][] = []

  const rate = (): number | undefined => {
    const first = samples[0]
    const last = samples.at(-1)
    if (!first || !last || last[0] - first[0] < 500) return undefined
    return ((last[1] - first[1]) * 1000) / (last[0] - first[0])
  }

  const draw = (tail: string): void => {
    drawn = true
    const fraction = total > 0 ? Math.min(1, done / total) : 1
    const filled = Math.round(fraction * WIDTH)
    const bar = `${'#'.repeat(filled)}${'-'.repeat(WIDTH - filled)}`
    // Clear to the end of the line: the previous drawing may have been longer.
    stream.write(`\r${label} [${bar}] ${(fraction * 100).toFixed(0).padStart(3)}% ${human(done)}/${human(total)}${tail}\x1b[K`)
  }

  return {
    update(d, t) {
      done = d
      total = t
      const at = now()
      samples.push([at, d])
      while (samples.length > 2 && samples[1]![0] <= at - RATE_WINDOW_MS) samples.shift()
      if (at - lastDraw < REDRAW_MS && d < t) return
      lastDraw = at
      const r = rate()
      const eta = r && r > 0 && d < t ? ` ETA ${clock((t - d) / r)}` : ''
      draw(r === undefined ? '' : ` ${human(r)}/s${eta}`)
    },
    step(what) {
      lastDraw = now()
      draw(` ${what}...`)
    },
    end() {
      if (drawn) stream.write('\n')
    },
  }
}
