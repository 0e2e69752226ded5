// Large payload buffers (write data gathered from the socket, read replies),
// reused instead of allocated per request: a fresh megabyte costs page
// faults on every request, and a steady workload should keep a steady RSS.
// Small buffers are left to Node's own allocator, which pools them already.

/** Buffers smaller than this are not pooled. */
const MIN_POOLED = 64 * 1024

const capacityFor = (n: number): number => 2 ** Math.ceil(Math.log2(n))

export class BufferPool {
  readonly #free = new Map<number, Buffer[]>()
  /** The buffers handed out, so that nothing else is ever taken back. */
  readonly #lent = new WeakSet<Buffer>()
  readonly #maxPooledBytes: number
  #pooledBytes = 0

  constructor(maxPooledBytes = 64 * 1024 * 1024) {
    this.#maxPooledBytes = maxPooledBytes
  }

  /** Bytes kept for reuse now. */
  get pooledBytes(): number {
    return this.#pooledBytes
  }

  /** A buffer of exactly `n` bytes, contents undefined. */
  acquire(n: number): Buffer {
    if (n < MIN_POOLED) return Buffer.allocUnsafe(n)
    const capacity = capacityFor(n)
    const whole = this.#free.get(capacity)?.pop()
    if (whole) this.#pooledBytes -= capacity
    const buf = (whole ?? Buffer.allocUnsafeSlow(capacity)).subarray(0, n)
    this.#lent.add(buf)
    return buf
  }

  /** Takes back a buffer from `acquire` once nothing uses it; others are ignored. */
  release(buf: Buffer): void {
    if (!this.#lent.delete(buf)) return
    const capacity = buf.buffer.byteLength
    if (this.#pooledBytes + capacity > this.#maxPooledBytes) return
    const list = this.#free.get(capacity) ?? []
    list.push(Buffer.from(buf.buffer, 0, capacity))
    this.#free.set(capacity, list)
    this.#pooledBytes += capacity
  }
}
