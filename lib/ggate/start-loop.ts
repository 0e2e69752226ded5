// One worker thread of the GEOM Gate request loop: it sits in the blocking
// START, hands each bio to the JavaScript thread through a buffer they share,
// and on the answer calls DONE and START again. Blocking here, on a thread of
// its own, keeps the libuv pool free for the engine's file I/O.
import { isMainThread, parentPort, workerData, type MessagePort } from 'node:worker_threads'
import { BioCmd } from '../../native-bindings/ggate-abi.js'
import { libc } from '../../native-bindings/libc.js'
import { GGateControl, GGateIo } from './ggctl.js'

export interface StartLoopData {
  /** A descriptor of /dev/ggctl, opened by the JavaScript thread. */
  readonly fd: number
  readonly unit: number
  /** The first START buffer's size; it grows on demand. */
  readonly bufferSize: number
}

/** From the worker to the JavaScript thread. */
export type LoopMessage =
  | {
      readonly type: 'bio'
      readonly cmd: number
      readonly offset: number
      readonly length: number
      /** Holds WRITE's data; READ's data goes here. */
      readonly data: SharedArrayBuffer
    }
  | { readonly type: 'grown'; readonly size: number }
  /** The provider was destroyed: no more bios will come. */
  | { readonly type: 'finished' }

/** The loop itself; this module runs it when it is a worker's entry point. */
const runStartLoop = (port: MessagePort, { fd, unit, bufferSize }: StartLoopData): void => {
  // A signal ends START's sleep with ECANCELED, as a destroy does (g_gate.c:
  // msleep with PCATCH), and FreeBSD hands a process's signal to any thread
  // that does not block it: this thread leaves them all to the others.
  libc().blockSignals()
  const send = (m: LoopMessage): void => port.postMessage(m)
  let shared = new SharedArrayBuffer(bufferSize)
  const io = new GGateIo(GGateControl.shared(fd), unit, Buffer.from(shared))

  const ensureBuffer = (needed: number): void => {
    if (shared.byteLength >= needed) return
    let size = shared.byteLength
    while (size < needed) size *= 2
    shared = new SharedArrayBuffer(size)
    io.useBuffer(Buffer.from(shared))
    send({ type: 'grown', size })
  }

  const finish = (): void => {
    send({ type: 'finished' })
    port.close()
  }

  const startNext = (): void => {
    for (;;) {
      const started = io.start()
      if (started.kind === 'cancelled') {
        finish()
        return
      }
      if (started.kind === 'grow') {
        ensureBuffer(started.needed)
        continue
      }
      // START reports a READ's length only; DONE copies that many bytes out.
      if (started.cmd === BioCmd.READ) ensureBuffer(started.length)
      send({ type: 'bio', cmd: started.cmd, offset: started.offset, length: started.length, data: shared })
      return
    }
  }

  port.on('message', (error: number) => {
    if (io.done(error)) startNext()
    else finish()
  })
  startNext()
}

if (!isMainThread && parentPort) runStartLoop(parentPort, workerData as StartLoopData)
