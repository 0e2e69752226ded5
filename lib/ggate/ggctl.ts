// /dev/ggctl, the GEOM Gate control device: CREATE, DESTROY and the two
// halves of the request loop (START, DONE), as typed calls over the structs
// of native-bindings/ggate-abi.ts. Synchronous: START blocks, so the request
// loop calls it only from worker threads of its own (start-loop.ts).
import { endianness } from 'node:os'
import { errnoName } from '../../native-bindings/errno.js'
import {
  FreeBsdErrno,
  G_GATE_INFOSIZE,
  G_GATE_NAME_MAX,
  G_GATE_VERSION,
  GGateModify,
  GGateUnit,
  ggateAbi,
  type GGateStructName,
} from '../../native-bindings/ggate-abi.js'
import { O_CLOEXEC, O_RDWR, libc } from '../../native-bindings/libc.js'

export const GGCTL_PATH = '/dev/ggctl'

/** A failed ggctl ioctl, with the errno it failed with. */
export class GGateError extends Error {
  readonly errno: number
  readonly code: string
  constructor(what: string, errno: number) {
    const code = errnoName(errno)
    super(`${what} failed: ${code}`)
    this.errno = errno
    this.code = code
  }
}

// FreeBSD on amd64 and arm64, the targets the spec describes, is little-endian.
if (endianness() !== 'LE') throw new Error('the GEOM Gate ABI here is written for little-endian machines')

/** A zeroed struct with its version set, and typed field access by name. */
class Struct {
  readonly bytes: Buffer
  readonly #name: GGateStructName
  constructor(name: GGateStructName) {
    this.#name = name
    this.bytes = Buffer.alloc(ggateAbi().sizeof(name))
    this.setU32('gctl_version', G_GATE_VERSION)
  }
  #at(field: string): number {
    return ggateAbi().offsetof(this.#name, field)
  }
  setU32(field: string, value: number): void {
    this.bytes.writeUInt32LE(value >>> 0, this.#at(field))
  }
  setI32(field: string, value: number): void {
    this.bytes.writeInt32LE(value, this.#at(field))
  }
  setI64(field: string, value: number | bigint): void {
    this.bytes.writeBigInt64LE(BigInt(value), this.#at(field))
  }
  setString(field: string, value: string, max: number): void {
    const encoded = Buffer.from(value)
    if (encoded.length >= max) throw new RangeError(`${field} "${value}" is longer than ${max - 1} bytes`)
    encoded.copy(this.bytes, this.#at(field))
  }
  u32(field: string): number {
    return this.bytes.readUInt32LE(this.#at(field))
  }
  i32(field: string): number {
    return this.bytes.readInt32LE(this.#at(field))
  }
  i64(field: string): number {
    return Number(this.bytes.readBigInt64LE(this.#at(field)))
  }
}

/** The longest prefix of `text` whose UTF-8 fits in `max` bytes, cut between characters. */
export const fitBytes = (text: string, max: number): string => {
  const bytes = Buffer.from(text)
  if (bytes.length <= max) return text
  let end = max
  // Back over continuation bytes (10xxxxxx) to the start of the cut character.
  while (end > 0 && (bytes[end]! & 0xc0) === 0x80) end--
  return bytes.subarray(0, end).toString()
}

interface CreateRequest {
  readonly name: string
  readonly mediaSize: number
  readonly sectorSize: number
  readonly info: string
}

/** What START handed over: a bio to serve, or why there is none. */
type Started =
  | { readonly kind: 'bio'; readonly cmd: number; readonly offset: number; readonly length: number }
  /** A WRITE larger than the buffer waits for a START with `needed` bytes. */
  | { readonly kind: 'grow'; readonly needed: number }
  /** The provider is being destroyed. */
  | { readonly kind: 'cancelled' }

export class GGateControl {
  readonly fd: number
  #closed = false

  private constructor(fd: number) {
    this.fd = fd
  }

  static open(): GGateControl {
    const c = libc()
    const fd = c.open(GGCTL_PATH, O_RDWR | O_CLOEXEC)
    if (fd < 0) throw new GGateError(`open ${GGCTL_PATH}`, c.errno())
    return new GGateControl(fd)
  }

  /** The descriptor another thread opened (the request loop's workers). */
  static shared(fd: number): GGateControl {
    return new GGateControl(fd)
  }

  #ioctl(command: keyof ReturnType<typeof ggateAbi>['ioctl'], s: Struct, what: string): void {
    const c = libc()
    if (c.ioctl(this.fd, ggateAbi().ioctl[command], s.bytes) !== 0) throw new GGateError(what, c.errno())
  }

  /** CREATE with the name given, so that the provider is exactly NAME; returns the unit. */
  create(r: CreateRequest): number {
    const s = new Struct('g_gate_ctl_create')
    s.setI64('gctl_mediasize', r.mediaSize)
    s.setU32('gctl_sectorsize', r.sectorSize)
    s.setU32('gctl_flags', 0)
    // No queue limit and no timeout: a slow RW device must not fail bios.
    s.setU32('gctl_maxcount', 0)
    s.setU32('gctl_timeout', 0)
    s.setString('gctl_name', r.name, G_GATE_NAME_MAX)
    s.setString('gctl_info', fitBytes(r.info, G_GATE_INFOSIZE - 1), G_GATE_INFOSIZE)
    s.setI32('gctl_unit', GGateUnit.NAME_GIVEN)
    this.#ioctl('CREATE', s, `G_GATE_CMD_CREATE of ${r.name}`)
    return s.i32('gctl_unit')
  }

  /** DESTROY by name; without force it fails EBUSY while the provider is open. */
  destroy(name: string, { force }: { force: boolean }): void {
    const s = new Struct('g_gate_ctl_destroy')
    s.setI32('gctl_unit', GGateUnit.NAME_GIVEN)
    s.setI32('gctl_force', force ? 1 : 0)
    s.setString('gctl_name', name, G_GATE_NAME_MAX)
    this.#ioctl('DESTROY', s, `G_GATE_CMD_DESTROY of ${name}`)
  }

  /**
   * CANCEL by name, every seq: the bios a dead daemon took and never
   * finished go back to the queue for the next START. Returns the unit.
   */
  cancel(name: string): number {
    const s = new Struct('g_gate_ctl_cancel')
    s.setI32('gctl_unit', GGateUnit.NAME_GIVEN)
    s.setString('gctl_name', name, G_GATE_NAME_MAX)
    this.#ioctl('CANCEL', s, `G_GATE_CMD_CANCEL of ${name}`)
    return s.i32('gctl_unit')
  }

  /**
   * MODIFY with READPROV and READOFFSET, as hastd's enable_direct_reads:
   * the kernel sends the unit's reads straight to provider `readProvider`
   * at `readOffset`, and one that fails to the daemon as before. The
   * caller checks the offset (checkReadOffset): g_gate.c fails a bad one
   * with GEOM's topology lock still held.
   */
  directReads(unit: number, readProvider: string, readOffset: number): void {
    const s = new Struct('g_gate_ctl_modify')
    s.setI32('gctl_unit', unit)
    s.setU32('gctl_modify', GGateModify.READPROV | GGateModify.READOFFSET)
    s.setString('gctl_readprov', readProvider, G_GATE_NAME_MAX)
    s.setI64('gctl_readoffset', readOffset)
    this.#ioctl('MODIFY', s, `G_GATE_CMD_MODIFY of unit ${unit} (read provider ${readProvider})`)
  }

  close(): void {
    if (this.#closed) return
    this.#closed = true
    libc().close(this.fd)
  }
}

/**
 * g_gate_modify's checks of a read offset, made before MODIFY: a multiple
 * of the sector size, and the provider's whole media past it on the read
 * provider. Null when they pass, else why not.
 */
export const checkReadOffset = (offset: number, sectorSize: number, mediaSize: number, readProviderSize: number): string | null => {
  if (offset < 0 || offset % sectorSize !== 0) return `read offset ${offset} is not a multiple of the ${sectorSize}-byte sector size`
  if (mediaSize + offset > readProviderSize)
    return `the read provider's ${readProviderSize} bytes do not hold ${mediaSize} bytes from offset ${offset}`
  return null
}

/**
 * One thread's START/DONE struct: reused for every bio, with the data
 * buffer (shared with the JavaScript thread) it points to.
 */
export class GGateIo {
  readonly #control: GGateControl
  readonly #io = new Struct('g_gate_ctl_io')
  #data: Buffer

  constructor(control: GGateControl, unit: number, data: Buffer) {
    this.#control = control
    this.#io.setI32('gctl_unit', unit)
    this.#data = data
    this.useBuffer(data)
  }

  get data(): Buffer {
    return this.#data
  }

  /** Points later STARTs and DONEs at another buffer. */
  useBuffer(data: Buffer): void {
    this.#data = data
    this.#io.setI64('gctl_data', libc().address(data))
  }

  #call(command: 'START' | 'DONE'): number {
    const c = libc()
    return c.ioctl(this.#control.fd, ggateAbi().ioctl[command], this.#io.bytes) === 0 ? 0 : c.errno()
  }

  /**
   * Blocks until the kernel hands over a bio, or says why not. A signal
   * that ends the sleep reads as 'cancelled' too (g_gate.c sets ECANCELED
   * whenever msleep fails): the calling thread blocks signals.
   */
  start(): Started {
    // gctl_error is not cleared by a successful START: clear it first.
    this.#io.setI32('gctl_error', 0)
    this.#io.setI64('gctl_length', this.#data.length)
    const errno = this.#call('START')
    if (errno !== 0) throw new GGateError('G_GATE_CMD_START', errno)
    const error = this.#io.i32('gctl_error')
    if (error === FreeBsdErrno.ENOMEM) return { kind: 'grow', needed: this.#io.i64('gctl_length') }
    if (error === FreeBsdErrno.ECANCELED) return { kind: 'cancelled' }
    if (error !== 0) throw new GGateError('G_GATE_CMD_START', error)
    return {
      kind: 'bio',
      cmd: this.#io.u32('gctl_cmd'),
      offset: this.#io.i64('gctl_offset'),
      length: this.#io.i64('gctl_length'),
    }
  }

  /**
   * Completes the bio START handed over (its seq, cmd, offset and length are
   * still in the struct) with a FreeBSD errno; false once the provider is gone.
   */
  done(error: number): boolean {
    this.#io.setI32('gctl_error', error)
    const errno = this.#call('DONE')
    if (errno === FreeBsdErrno.ENOENT) return false
    if (errno !== 0) throw new GGateError('G_GATE_CMD_DONE', errno)
    return true
  }
}
