// Running the system tools that attach and detach kernel devices.
import { execFile } from 'node:child_process'
import { errnoCode } from './errors.js'

export class CommandError extends Error {
  readonly code: string
  readonly command: string
  readonly stderr: string
  constructor(command: string, code: string, stderr: string) {
    super(`${command} failed: ${stderr.trim() || code}`)
    this.code = code
    this.command = command
    this.stderr = stderr
  }
}

interface CommandResult {
  readonly stdout: string
  readonly stderr: string
}

export const runCommand = (file: string, args: readonly string[], timeoutMs = 60_000): Promise<CommandResult> =>
  new Promise((resolve, reject) => {
    execFile(file, args, { timeout: timeoutMs, encoding: 'utf8' }, (err, stdout, stderr) => {
      if (!err) {
        resolve({ stdout, stderr })
        return
      }
      const code = errnoCode(err) === 'ENOENT' ? 'ENOENT' : `exit ${String((err as { code?: unknown }).code ?? 'signal')}`
      reject(new CommandError([file, ...args].join(' '), code, stderr || err.message))
    })
  })

export const sleep = (ms: number): Promise<void> => new Promise(resolve => setTimeout(resolve, ms))

/** Polls `check` until it returns true or `timeoutMs` passes. */
export const waitFor = async (check: () => boolean, timeoutMs: number, intervalMs = 50): Promise<boolean> => {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    if (check()) return true
    if (Date.now() >= deadline) return false
    await sleep(intervalMs)
  }
}
