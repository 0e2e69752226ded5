// kern.geom.confxml read into providers and their users. The fixture has
// the line layout and indentation of sys/geom/geom_dump.c (g_conf_class,
// g_conf_geom, g_conf_consumer, g_conf_provider) and what a live system
// shows: a GPT disk with a mounted UFS partition and a swap partition, a
// read-only vnode md with geom_uzip on it mounted read-only (as a Live ISO
// has it), a swap md, a GEOM Gate provider whose info is printed unescaped
// as g_gate.c does, one being destroyed (<wither/>), a label with escaped
// UTF-8, and the DEV geom geom_dev.c puts on every provider.
import fs from 'node:fs'
import path from 'node:path'
import t from 'tap'
import { repoRoot } from './fixtures/helpers.js'
import { parseGeomMesh } from '../lib/devices/geom-mesh.js'
import { kernelUses, providerName, providerUses } from '../lib/devices/geom-users.js'

const liveSystem = fs.readFileSync(path.join(repoRoot, 'test/fixtures/confxml/live-system.xml'), 'utf8')

t.test('providers with their classes, sizes, access counts and consumers', async t => {
  const mesh = parseGeomMesh(liveSystem)
  t.same(
    [...mesh.keys()].sort(),
    ['ada0', 'ada0p1', 'ada0p2', 'ada0p3', 'ggate3', 'gpt/Données', 'md0', 'md0.uzip', 'md1', 'rowr0'],
    'every provider, names unescaped from &#xNN; bytes as UTF-8',
  )
  const p2 = mesh.get('ada0p2')!
  t.match(p2, { className: 'PART', geom: 'ada0', mode: { r: 1, w: 1, e: 1 }, mediaSize: 32212254720, sectorSize: 512 })
  t.same(
    p2.consumers.map(c => `${c.className} ${c.geom} r${c.mode.r}w${c.mode.w}e${c.mode.e}`).sort(),
    ['DEV ada0p2 r0w0e0', 'LABEL ada0p2 r0w0e0', 'VFS ffs.ada0p2 r1w1e1'],
    'its consumers: the mount, the label class and /dev/ada0p2, found through their provider refs',
  )
  t.match(
    mesh.get('rowr0'),
    { className: 'GATE', geom: 'rowr0', mediaSize: 4294967296 },
    'a GATE provider, past an unescaped <info> with < and &',
  )
  t.same(
    mesh.get('ada0p1')!.consumers.map(c => c.className),
    ['DEV'],
  )
})

t.test('users: mounts (read-only ones too), classes on top, swap, opens of /dev', async t => {
  const mesh = parseGeomMesh(liveSystem)
  const uses = (name: string) => ({ all: providerUses(mesh.get(name)!), kernel: kernelUses(mesh.get(name)!) })
  t.same(uses('ada0p2'), { all: ['mounted (ffs.ada0p2)'], kernel: ['mounted (ffs.ada0p2)'] })
  t.same(
    uses('md0.uzip'),
    { all: ['mounted read-only (cd9660.md0.uzip)'], kernel: ['mounted read-only (cd9660.md0.uzip)'] },
    'a read-only mount takes no exclusive count (g_vfs_open: r1w0e0), yet it is a use',
  )
  t.same(uses('md0'), {
    all: ['used by GEOM class UZIP (md0.uzip, r1w0e0)', 'held open through /dev/md0 (r1w0e0)'],
    kernel: ['used by GEOM class UZIP (md0.uzip, r1w0e0)'],
  })
  t.same(uses('md1'), { all: ['held open through /dev/md1 (r1w1e0)'], kernel: [] }, 'an open of /dev/md1 is not held by the kernel')
  t.same(uses('ada0p3').kernel, ['used by GEOM class SWAP (swap, r1w1e0)'])
  t.same(uses('ada0').kernel, ['used by GEOM class PART (ada0, r2w2e3)'], 'the partitions in use show on the disk')
  t.same(uses('ada0p1'), { all: [], kernel: [] }, 'nothing uses the boot partition')
})

t.test('a provider name from a device path', async t => {
  t.equal(providerName('/dev/ada0p2'), 'ada0p2')
  t.equal(providerName('/dev/gpt/rootfs'), 'gpt/rootfs')
  t.equal(providerName('/dev/'), undefined)
  t.equal(providerName('/srv/base.img'), undefined)
})

t.test('text that is not kern.geom.confxml is refused with where and why', async t => {
  t.throws(() => parseGeomMesh(''), { name: 'GeomMeshError' })
  t.throws(() => parseGeomMesh('<?xml version="1.0"?>\n<mesh>\n</mesh>\n'), { message: /does not start with <mesh>/ })
  const cut = liveSystem.slice(0, liveSystem.indexOf('  <class id="0xfffff80003000005">'))
  t.throws(() => parseGeomMesh(cut), { message: /ends before <\/mesh>/ }, 'cut short')
  t.throws(() => parseGeomMesh(liveSystem.replace('<mode>r1w1e0</mode>', '<mode>rw</mode>')), {
    message: /line \d+: "rw" is not an access mode/,
  })
  t.throws(() => parseGeomMesh(liveSystem.replace('\t  <name>md1</name>\n', '')), { message: /a provider without <name>/ })
  t.throws(() => parseGeomMesh(liveSystem.replace('  <class id="0xfffff80003000002">', '  <klass>')), {
    message: /line 29: unexpected "<klass>"/,
  })
  t.same([...parseGeomMesh('<mesh>\n</mesh>\n').keys()], [], 'an empty mesh')
})
