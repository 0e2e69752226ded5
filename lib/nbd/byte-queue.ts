// Bytes received but not yet parsed. Socket chunks are kept as they arrive
// and copied at most once: a message inside one chunk is a view of it; a
// message spread over several is gathered into one new buffer.

export class ByteQueue {
  #chunks: Buffer[] = []
  /** Bytes of the first chunk already taken. */
  #head = 0
  #length = 0

  get length(): number {
    return this.#length
  }

  push(chunk: Buffer): void {
    if (chunk.length === 0) return
    this.#chunks.push(chunk)
    this.#length += chunk.length
  }

  /**
   * Removes and returns the next `n` bytes; the caller checks `length`
   * first. When they must be gathered, `allocate` provides the buffer.
   */
  take(n: number, allocate: (n: number) => Buffer = Buffer.allocUnsafe): Buffer {
    if (n > this.#length) throw new RangeError(`take(${n}) with ${this.#length} bytes queued`)
    const first = this.#chunks[0]
    if (first && first.length - this.#head >= n) {
      const out = first.subarray(this.#head, this.#head + n)
      this.#advance(n)
      return out
    }
    const out = allocate(n)
    this.takeInto(out, 0, n)
    return out
  }

  /** Removes the next `n` bytes (the caller checks `length`) into `target` at `offset`. */
  takeInto(target: Buffer, offset: number, n: number): void {
    if (n > this.#length) throw new RangeError(`takeInto(${n}) with ${this.#length} bytes queued`)
    let filled = 0
    while (filled < n) {
      const chunk = this.#chunks[0]!
      const copied = chunk.copy(target, offset + filled, this.#head, Math.min(chunk.length, this.#head + n - filled))
      filled += copied
      this.#advance(copied)
    }
  }

  /** Drops the next `n` bytes (the caller checks `length`). */
  skip(n: number): void {
    if (n > this.#length) throw new RangeError(`skip(${n}) with ${this.#length} bytes queued`)
    while (n > 0) {
      const step = Math.min(n, this.#chunks[0]!.length - this.#head)
      this.#advance(step)
      n -= step
    }
  }

  #advance(n: number): void {
    this.#head += n
    this.#length -= n
    if (this.#head === this.#chunks[0]!.length) {
      this.#chunks.shift()
      this.#head = 0
    }
  }

  clear(): void {
    this.#chunks = []
    this.#head = 0
    this.#length = 0
  }
}
