// A progress bar on standard error for long jobs, only on a terminal.
const WIDTH = 30
const REDRAW_MS = 100

const mib = (bytes: number): string => (bytes / (1 << 20)).toFixed(1)

export interface Progress {
  update(done: number, total: number): void
  end(): void
}

export const progressBar = (label: string, stream: NodeJS.WriteStream = process.stderr): Progress => {
  if (!stream.isTTY) return { update: () => undefined, end: () => undefined }
  let last = 0
  let drawn = false
  return {
    update(done, total) {
      const now = Date.now()
      if (now - last < REDRAW_MS && done < total) return
      last = now
      drawn = true
      const fraction = total > 0 ? Math.min(1, done / total) : 1
      const filled = Math.round(fraction * WIDTH)
      stream.write(`\r${label} [${'#'.repeat(filled)}${'-'.repeat(WIDTH - filled)}] ${(fraction * 100).toFixed(0).padStart(3)}% ${mib(done)}/${mib(total)} MiB`)
    },
    end() {
      if (drawn) stream.write('\n')
    },
  }
}
