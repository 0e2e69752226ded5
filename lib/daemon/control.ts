// The control socket between the CLI and a running daemon: one request and
// one reply per connection, each a 4-byte big-endian length and JSON.
import fs from 'node:fs'
import net from 'node:net'
import { RowrError, checkSocketPath, errnoCode } from '../errors.js'
import { failureMessage } from '../failure-message.js'

export type ControlRequest =
  | { readonly cmd: 'status' }
  | { readonly cmd: 'destroy'; readonly force: boolean }
  | { readonly cmd: 'diff' }
  | { readonly cmd: 'revert'; readonly force: boolean }
  /** dryRun: every check, and the ranges it would write, without writing. */
  | { readonly cmd: 'commit'; readonly force: boolean; readonly dryRun: boolean }
  | { readonly cmd: 'export'; readonly file: string }
  /** Clears the statistics and the error counts: the device is ok again. */
  | { readonly cmd: 'reset' }
  /** Stops the running job at its next safe point. */
  | { readonly cmd: 'cancel' }
  | HydrateRequest

/** Starts (or resumes) or pauses hydration, and changes its settings (lib/daemon/device-hydration.ts). */
export interface HydrateRequest {
  readonly cmd: 'hydrate'
  readonly action: 'start' | 'pause'
  /** Bytes per second; 0: no limit. */
  readonly rate?: number
  /** Above 0, at most 1. */
  readonly share?: number
  readonly copyOnRead?: boolean
}

const isHydrateRequest = (v: object): boolean => {
  const r = v as Partial<Record<keyof HydrateRequest, unknown>>
  return (
    (r.action === 'start' || r.action === 'pause') &&
    (r.rate === undefined || (Number.isSafeInteger(r.rate) && (r.rate as number) >= 0)) &&
    (r.share === undefined || (typeof r.share === 'number' && r.share > 0 && r.share <= 1)) &&
    (r.copyOnRead === undefined || typeof r.copyOnRead === 'boolean')
  )
}

export type ControlReply =
  | { readonly ok: true; readonly [key: string]: unknown }
  | { readonly ok: false; readonly code: string; readonly message: string }

/** A message larger than this is refused: nothing legitimate comes close. */
const MAX_MESSAGE = 1 << 20

const frame = (value: unknown): Buffer => {
  const body = Buffer.from(JSON.stringify(value), 'utf8')
  const header = Buffer.allocUnsafe(4)
  header.writeUInt32BE(body.length, 0)
  return Buffer.concat([header, body])
}

/** Reads one framed JSON message from a socket. */
const readMessage = (socket: net.Socket): Promise<unknown> =>
  new Promise((resolve, reject) => {
    const chunks: Buffer[] = []
    let length = 0
    const onData = (chunk: Buffer): void => {
      chunks.push(chunk)
      length += chunk.length
      if (length < 4) return
      const all = Buffer.concat(chunks)
      const size = all.readUInt32BE(0)
      if (size > MAX_MESSAGE) {
        cleanup()
        reject(new Error(`control message of ${size} bytes is too large`))
        return
      }
      if (all.length < 4 + size) return
      cleanup()
      try {
        resolve(JSON.parse(all.toString('utf8', 4, 4 + size)))
      } catch (e) {
        reject(e)
      }
    }
    const onEnd = (): void => {
      cleanup()
      reject(new Error('control connection closed before a whole message arrived'))
    }
    const onError = (e: Error): void => {
      cleanup()
      reject(e)
    }
    const cleanup = (): void => {
      socket.off('data', onData)
      socket.off('end', onEnd)
      socket.off('error', onError)
    }
    socket.on('data', onData)
    socket.on('end', onEnd)
    socket.on('error', onError)
  })

const isRequest = (v: unknown): v is ControlRequest => {
  if (typeof v !== 'object' || v === null || !('cmd' in v)) return false
  switch (v.cmd) {
    case 'status':
    case 'diff':
    case 'cancel':
    case 'reset':
      return true
    case 'commit':
      return 'force' in v && typeof v.force === 'boolean' && 'dryRun' in v && typeof v.dryRun === 'boolean'
    case 'destroy':
    case 'revert':
      return 'force' in v && typeof v.force === 'boolean'
    case 'export':
      return 'file' in v && typeof v.file === 'string' && v.file.startsWith('/')
    case 'hydrate':
      return isHydrateRequest(v)
    default:
      return false
  }
}

export type ControlHandler = (request: ControlRequest) => Promise<ControlReply>

export class ControlServer {
  readonly #server: net.Server
  readonly #path: string

  private constructor(server: net.Server, path: string) {
    this.#server = server
    this.#path = path
  }

  static async listen(path: string, handler: ControlHandler): Promise<ControlServer> {
    checkSocketPath(path)
    const server = net.createServer(socket => {
      socket.on('error', () => socket.destroy())
      readMessage(socket)
        .then(async request => {
          const reply: ControlReply = isRequest(request)
            ? await handler(request).catch(
                (e: Error): ControlReply => ({ ok: false, code: errnoCode(e) ?? 'EFAIL', message: failureMessage(e) }),
              )
            : { ok: false, code: 'EINVAL', message: 'malformed control request' }
          socket.end(frame(reply))
        })
        .catch(() => socket.destroy())
    })
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject)
      server.listen(path, () => {
        server.off('error', reject)
        resolve()
      })
    })
    fs.chmodSync(path, 0o600)
    return new ControlServer(server, path)
  }

  /**
   * Stops accepting and removes the socket file. A connection already open
   * (the destroy request being answered) still gets its reply.
   */
  close(): void {
    this.#server.close()
    fs.rmSync(this.#path, { force: true })
  }
}

/** Sends one request to a daemon; rejects with EDAEMON if nobody answers. */
/** `timeoutMs` null: wait as long as the job takes (commit, export). */
export const callControl = (path: string, request: ControlRequest, timeoutMs: number | null = 120_000): Promise<ControlReply> =>
  new Promise((resolve, reject) => {
    const socket = net.connect(path)
    const timer =
      timeoutMs === null
        ? undefined
        : setTimeout(() => {
            socket.destroy()
            reject(new RowrError('EDAEMON', `the daemon at ${path} did not answer within ${timeoutMs / 1000} s`))
          }, timeoutMs)
    socket.once('error', e => {
      clearTimeout(timer)
      reject(new RowrError('EDAEMON', `cannot reach the daemon at ${path}: ${e.message}`, { cause: e }))
    })
    socket.once('connect', () => {
      socket.write(frame(request))
      readMessage(socket)
        .then(reply => resolve(reply as ControlReply))
        .catch(e => reject(new RowrError('EDAEMON', `bad answer from the daemon at ${path}: ${(e as Error).message}`)))
        .finally(() => {
          clearTimeout(timer)
          socket.destroy()
        })
    })
  })
