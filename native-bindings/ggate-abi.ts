// FreeBSD GEOM Gate (geom_gate interface version 3): the control structs and
// ioctl numbers, as listed in docs/ggate-abi.md (from FreeBSD's
// sys/geom/gate/g_gate.h and sys/sys/ioccom.h). Layouts are LP64 with
// natural alignment, which koffi reproduces from the field list; a test
// compares them with the C compiler's and with the spec's table.
import { createRequire } from 'node:module'

const require = createRequire(import.meta.url)

export const G_GATE_VERSION = 3
export const G_GATE_NAME_MAX = 255
export const G_GATE_INFOSIZE = 2048

export const GGateFlag = {
  READONLY: 0x0001,
  WRITEONLY: 0x0002,
} as const

/** What G_GATE_CMD_MODIFY changes (g_gate.h's GG_MODIFY_*). */
export const GGateModify = {
  MEDIASIZE: 0x01,
  INFO: 0x02,
  READPROV: 0x04,
  READOFFSET: 0x08,
} as const

export const GGateUnit = {
  /** The kernel picks the unit; the provider is ggate<unit>. */
  AUTO: -1,
  /** The provider is named exactly gctl_name. */
  NAME_GIVEN: -2,
} as const

/** bio commands passed to userspace (sys/bio.h). */
export const BioCmd = {
  READ: 1,
  WRITE: 2,
  DELETE: 3,
  GETATTR: 4,
  FLUSH: 5,
  SPEEDUP: 10,
} as const

/**
 * FreeBSD's errno values (sys/sys/errno.h) for what crosses the ABI:
 * gctl_error after START and the error handed to DONE. 1..34 agree with
 * Linux's; EAGAIN, EOPNOTSUPP and ECANCELED do not.
 */
export const FreeBsdErrno = {
  EPERM: 1,
  ENOENT: 2,
  EINTR: 4,
  EIO: 5,
  ENXIO: 6,
  ENOMEM: 12,
  EACCES: 13,
  EBUSY: 16,
  EEXIST: 17,
  EINVAL: 22,
  ENFILE: 23,
  ENOTTY: 25,
  ENOSPC: 28,
  EROFS: 30,
  EAGAIN: 35,
  EOPNOTSUPP: 45,
  ECANCELED: 85,
} as const

/** The fields of each struct, in order, with C types koffi understands. */
export const GGATE_STRUCTS = {
  g_gate_ctl_create: [
    ['gctl_version', 'uint32_t'],
    ['gctl_mediasize', 'int64_t'],
    ['gctl_sectorsize', 'uint32_t'],
    ['gctl_flags', 'uint32_t'],
    ['gctl_maxcount', 'uint32_t'],
    ['gctl_timeout', 'uint32_t'],
    ['gctl_name', `char[${G_GATE_NAME_MAX}]`],
    ['gctl_info', `char[${G_GATE_INFOSIZE}]`],
    ['gctl_readprov', `char[${G_GATE_NAME_MAX}]`],
    ['gctl_readoffset', 'int64_t'],
    ['gctl_unit', 'int32_t'],
  ],
  g_gate_ctl_modify: [
    ['gctl_version', 'uint32_t'],
    ['gctl_unit', 'int32_t'],
    ['gctl_modify', 'uint32_t'],
    ['gctl_mediasize', 'int64_t'],
    ['gctl_info', `char[${G_GATE_INFOSIZE}]`],
    ['gctl_readprov', `char[${G_GATE_NAME_MAX}]`],
    ['gctl_readoffset', 'int64_t'],
  ],
  g_gate_ctl_destroy: [
    ['gctl_version', 'uint32_t'],
    ['gctl_unit', 'int32_t'],
    ['gctl_force', 'int32_t'],
    ['gctl_name', `char[${G_GATE_NAME_MAX}]`],
  ],
  g_gate_ctl_cancel: [
    ['gctl_version', 'uint32_t'],
    ['gctl_unit', 'int32_t'],
    ['gctl_seq', 'uint64_t'],
    ['gctl_name', `char[${G_GATE_NAME_MAX}]`],
  ],
  g_gate_ctl_io: [
    ['gctl_version', 'uint32_t'],
    ['gctl_unit', 'int32_t'],
    ['gctl_seq', 'uint64_t'],
    ['gctl_cmd', 'uint32_t'],
    ['gctl_offset', 'int64_t'],
    ['gctl_length', 'int64_t'],
    ['gctl_data', 'void *'],
    ['gctl_error', 'int32_t'],
  ],
} as const satisfies Record<string, readonly (readonly [string, string])[]>

export type GGateStructName = keyof typeof GGATE_STRUCTS

/** The command number of each ioctl and the struct it carries. */
const GGATE_COMMANDS = {
  CREATE: [0, 'g_gate_ctl_create'],
  MODIFY: [1, 'g_gate_ctl_modify'],
  DESTROY: [2, 'g_gate_ctl_destroy'],
  CANCEL: [3, 'g_gate_ctl_cancel'],
  START: [4, 'g_gate_ctl_io'],
  DONE: [5, 'g_gate_ctl_io'],
} as const satisfies Record<string, readonly [number, GGateStructName]>

/** G_GATE_CMD_* ioctls use group 'm'. */
const G_GATE_IOCTL_GROUP = 'm'.charCodeAt(0)

/**
 * FreeBSD's _IOWR(group, n, T): IOC_INOUT (0xC0000000) with the parameter
 * length in bits 16..28. The direction bits differ from Linux's.
 */
export const freebsdIowr = (group: number, n: number, size: number): number =>
  (0xc0000000 | ((size & 0x1fff) << 16) | (group << 8) | n) >>> 0

interface KoffiStructs {
  struct(name: string, fields: Record<string, unknown>): unknown
  array(type: string, length: number): unknown
  sizeof(type: unknown): number
  offsetof(type: unknown, field: string): number
}

/** A koffi type for a field's C type, char[N] arrays included. */
const fieldType = (koffi: KoffiStructs, type: string): unknown => {
  const array = /^(\w+)\[(\d+)\]$/.exec(type)
  return array ? koffi.array(array[1]!, Number(array[2])) : type
}

interface GGateAbi {
  readonly sizeof: (name: GGateStructName) => number
  readonly offsetof: (name: GGateStructName, field: string) => number
  /** ioctl request numbers by command. */
  readonly ioctl: Readonly<Record<keyof typeof GGATE_COMMANDS, number>>
}

let abi: GGateAbi | undefined

export const ggateAbi = (): GGateAbi => {
  if (abi) return abi
  const koffi = require('koffi') as KoffiStructs
  const types = {} as Record<GGateStructName, unknown>
  for (const [name, fields] of Object.entries(GGATE_STRUCTS) as [GGateStructName, readonly (readonly [string, string])[]][]) {
    types[name] = koffi.struct(name, Object.fromEntries(fields.map(([f, t]) => [f, fieldType(koffi, t)])))
  }
  const sizeof = (name: GGateStructName): number => koffi.sizeof(types[name])
  const ioctl = {} as Record<keyof typeof GGATE_COMMANDS, number>
  for (const [command, [n, struct]] of Object.entries(GGATE_COMMANDS) as [
    keyof typeof GGATE_COMMANDS,
    readonly [number, GGateStructName],
  ][]) {
    ioctl[command] = freebsdIowr(G_GATE_IOCTL_GROUP, n, sizeof(struct))
  }
  abi = { sizeof, offsetof: (name, field) => koffi.offsetof(types[name], field), ioctl }
  return abi
}
