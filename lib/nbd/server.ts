// The NBD server: a listening socket (Unix by default, TCP on request) whose
// connections all share one engine.
import fs from 'node:fs'
import net from 'node:net'
import type { Engine } from '../engine/engine.js'
import { checkSocketPath, errnoCode } from '../errors.js'
import { BufferPool } from './buffer-pool.js'
import { NbdConnection, type Log } from './connection.js'
import type { ExportDescription } from './negotiation.js'
import { enlargeSocketBuffers } from '../../native-bindings/socket-buffers.js'

/** Largest read or write payload a client may send (as nbdkit's default). */
const MAX_PAYLOAD = 32 * 1024 * 1024

export type Listen = { readonly socket: string } | { readonly port: number; readonly host: string }

export const exportFor = (engine: Engine, name: string, description: string): ExportDescription => ({
  name,
  description,
  size: engine.size,
  minimumBlock: engine.sectorSize,
  preferredBlock: Math.max(4096, engine.sectorSize),
  maximumPayload: MAX_PAYLOAD,
})

/** The URI an NBD client (qemu, libnbd) connects with. */
export const nbdUri = (listen: Listen): string =>
  'socket' in listen
    ? `nbd+unix:///?socket=${listen.socket}`
    : `nbd://${listen.host.includes(':') ? `[${listen.host}]` : listen.host}:${listen.port}/`

/**
 * Kernel buffer per direction of a Unix-socket connection. Linux's default
 * (net.core.wmem_default) holds a fraction of a 1 MiB reply, so large
 * replies trickle out in pieces; a buffer that holds several whole replies
 * let both large and small requests go faster
 * (bench/results/design-figures.md). The kernel
 * caps the request at net.core.wmem_max and rmem_max.
 */
const UNIX_SOCKET_BUFFER = 4 << 20

export class NbdServer {
  readonly #server: net.Server
  readonly #connections = new Set<NbdConnection>()
  readonly #log: Log
  /** Payload buffers, shared by every connection. */
  readonly #pool = new BufferPool()
  #socketPath: string | undefined
  /** Connections accepted since start. */
  accepted = 0

  constructor(engine: Engine, exp: ExportDescription, log: Log) {
    this.#log = log
    // Paused: the connection makes its own socket over the handle (see
    // NbdConnection), and nothing may be read before it does.
    this.#server = net.createServer({ pauseOnConnect: true }, socket => {
      this.accepted++
      // TCP tunes its own buffers (setting them would turn that off).
      if (this.#socketPath !== undefined) enlargeSocketBuffers(socket, UNIX_SOCKET_BUFFER)
      const c = new NbdConnection(socket, engine, exp, log, this.#pool)
      this.#connections.add(c)
      void c.closed.then(() => this.#connections.delete(c))
    })
  }

  get connections(): number {
    return this.#connections.size
  }

  /** Listens; returns where, with the port filled in for TCP port 0. */
  async listen(listen: Listen): Promise<Listen> {
    if ('socket' in listen) {
      checkSocketPath(listen.socket)
      removeStaleSocket(listen.socket)
      await this.#listen(() => this.#server.listen(listen.socket))
      this.#socketPath = listen.socket
      fs.chmodSync(listen.socket, 0o600)
      return listen
    }
    await this.#listen(() => this.#server.listen(listen.port, listen.host))
    const address = this.#server.address() as net.AddressInfo
    return { port: address.port, host: listen.host }
  }

  #listen(start: () => void): Promise<void> {
    return new Promise((resolve, reject) => {
      this.#server.once('error', reject)
      this.#server.once('listening', () => {
        this.#server.off('error', reject)
        resolve()
      })
      start()
    })
  }

  /**
   * Stops listening and closes every connection: gracefully (requests in
   * flight are answered first) or at once with `force`.
   */
  async close({ force = false } = {}): Promise<void> {
    const stopped = new Promise<void>(resolve => this.#server.close(() => resolve()))
    const open = [...this.#connections]
    for (const c of open) {
      if (force) c.destroy()
      else c.shutdown()
    }
    await Promise.all(open.map(c => c.closed))
    await stopped
    if (this.#socketPath) {
      fs.rmSync(this.#socketPath, { force: true })
      this.#socketPath = undefined
    }
    this.#log('NBD server closed')
  }
}

/**
 * A socket file left by a process that died would make listen() fail with
 * EADDRINUSE; only a socket is removed, never another kind of file.
 */
const removeStaleSocket = (path: string): void => {
  try {
    if (fs.lstatSync(path).isSocket()) fs.unlinkSync(path)
  } catch (e) {
    if (errnoCode(e) !== 'ENOENT') throw e
  }
}
