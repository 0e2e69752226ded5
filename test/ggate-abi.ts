// The GEOM Gate ABI: koffi's struct layouts and the computed ioctl numbers
// against the system C compiler's and against the spec's table.
import { execFileSync } from 'node:child_process'
import path from 'node:path'
import t from 'tap'
import {
  BioCmd,
  GGATE_STRUCTS,
  GGateFlag,
  GGateUnit,
  G_GATE_VERSION,
  freebsdIowr,
  ggateAbi,
  type GGateStructName,
} from '../native-bindings/ggate-abi.js'
import { repoRoot, requires } from './fixtures/helpers.js'

/** docs/ggate-abi.md's table (LP64). */
const SPEC = {
  sizes: { g_gate_ctl_create: 2608, g_gate_ctl_modify: 2336, g_gate_ctl_destroy: 268, g_gate_ctl_cancel: 272, g_gate_ctl_io: 56 },
  ioctl: { CREATE: 0xca306d00, MODIFY: 0xc9206d01, DESTROY: 0xc10c6d02, CANCEL: 0xc1106d03, START: 0xc0386d04, DONE: 0xc0386d05 },
  offsets: {
    g_gate_ctl_create: {
      gctl_mediasize: 8,
      gctl_sectorsize: 16,
      gctl_flags: 20,
      gctl_maxcount: 24,
      gctl_timeout: 28,
      gctl_name: 32,
      gctl_info: 287,
      gctl_readprov: 2335,
      gctl_readoffset: 2592,
      gctl_unit: 2600,
    },
    g_gate_ctl_modify: { gctl_unit: 4, gctl_modify: 8, gctl_mediasize: 16, gctl_info: 24, gctl_readprov: 2072, gctl_readoffset: 2328 },
    g_gate_ctl_destroy: { gctl_unit: 4, gctl_force: 8, gctl_name: 12 },
    g_gate_ctl_cancel: { gctl_unit: 4, gctl_seq: 8, gctl_name: 16 },
    g_gate_ctl_io: { gctl_unit: 4, gctl_seq: 8, gctl_cmd: 16, gctl_offset: 24, gctl_length: 32, gctl_data: 40, gctl_error: 48 },
  },
} as const

t.test('koffi layouts and ioctl numbers match the spec table', async t => {
  const abi = ggateAbi()
  for (const [name, size] of Object.entries(SPEC.sizes) as [GGateStructName, number][]) {
    t.equal(abi.sizeof(name), size, `sizeof ${name}`)
    for (const [field, offset] of Object.entries(SPEC.offsets[name])) {
      t.equal(abi.offsetof(name, field), offset, `${name}.${field}`)
    }
  }
  t.same(abi.ioctl, SPEC.ioctl)
  t.equal(freebsdIowr(0x64, 129, 8) & 0x3fffffff, 0x00086481, "the length and group bits of DIOCGMEDIASIZE's shape")
})

t.test('koffi layouts and ioctl numbers match the C compiler', async t => {
  if (!requires(t, { tools: ['cc'] })) return
  const dir = t.testdir()
  const exe = path.join(dir, 'ggate-layout')
  execFileSync('cc', [
    '-std=c99',
    '-Wall',
    '-Werror',
    '-I',
    path.join(repoRoot, 'test/ggsim'),
    '-o',
    exe,
    path.join(repoRoot, 'test/fixtures/ggate-layout.c'),
  ])
  const c = JSON.parse(execFileSync(exe, { encoding: 'utf8' }))
  const abi = ggateAbi()
  for (const [name, fields] of Object.entries(GGATE_STRUCTS) as [GGateStructName, readonly (readonly [string, string])[]][]) {
    t.equal(abi.sizeof(name), c[name].size, `sizeof ${name}`)
    for (const [field] of fields) t.equal(abi.offsetof(name, field), c[name].offsets[field], `${name}.${field}`)
  }
  t.same(abi.ioctl, c.ioctl, 'ioctl numbers')
})

t.test('constants as the spec gives them', async t => {
  t.equal(G_GATE_VERSION, 3)
  t.same(GGateFlag, { READONLY: 1, WRITEONLY: 2 })
  t.same(GGateUnit, { AUTO: -1, NAME_GIVEN: -2 })
  t.same(BioCmd, { READ: 1, WRITE: 2, DELETE: 3, GETATTR: 4, FLUSH: 5, SPEEDUP: 10 })
})
