// What the GEOM Gate front end answers the kernel for each engine failure,
// and the provider info cut to its field.
import t from 'tap'
import { serveBio } from '../lib/ggate/front-end.js'
import { fitBytes } from '../lib/ggate/ggctl.js'
import { Engine } from '../lib/engine/engine.js'
import { BioCmd, FreeBsdErrno } from '../native-bindings/ggate-abi.js'
import { MemoryDevice } from './fixtures/memory-device.js'

const failing = (code: string): Engine =>
  ({
    write: () => Promise.reject(Object.assign(new Error(`write failed: ${code}`), { code })),
  }) as unknown as Engine

const write = { cmd: BioCmd.WRITE, offset: 0, length: 512, data: Buffer.alloc(512) }

t.test('an engine failure becomes the errno GEOM acts on; ENOMEM, which GEOM retries forever, becomes EIO', async t => {
  t.equal(await serveBio(failing('ENOMEM'), write), FreeBsdErrno.EIO)
  t.equal(await serveBio(failing('ENOSPC'), write), FreeBsdErrno.ENOSPC)
  t.equal(await serveBio(failing('EROFS'), write), FreeBsdErrno.EPERM)
  t.equal(await serveBio(failing('EBADF'), write), FreeBsdErrno.EIO)
})

t.test('a READ the engine answers at once is answered at once; any other when the engine is done', async t => {
  const size = 8192
  const engineOver = (ro: MemoryDevice) => new Engine({ ro, rw: new MemoryDevice('/rw', size), size, sectorSize: 512 })
  const bio = () => ({ cmd: BioCmd.READ, offset: 512, length: 1024, data: Buffer.alloc(1024) })
  const cached = bio()
  t.equal(
    serveBio(engineOver(new MemoryDevice('/ro', size, { fill: (_p, into) => into.fill(9), readNowShare: 1 })), cached),
    0,
    'DONE can go at once',
  )
  t.same(cached.data, Buffer.alloc(1024, 9))
  const cold = bio()
  const later = serveBio(engineOver(new MemoryDevice('/ro', size, { fill: (_p, into) => into.fill(8), readNowShare: 0 })), cold)
  t.type(later, Promise, 'a read the devices cannot answer at once waits')
  t.equal(await later, 0)
  t.same(cold.data, Buffer.alloc(1024, 8))
  const broken = new MemoryDevice('/ro', size)
  broken.failing.read = 'EIO'
  t.equal(await serveBio(engineOver(broken), bio()), FreeBsdErrno.EIO, 'a failed read is an errno, not a throw')
})

t.test('the provider info is cut to its field by UTF-8 bytes, between characters', async t => {
  t.equal(fitBytes('short', 2047), 'short')
  for (const char of ['é', '€', '𝄞']) {
    const long = char.repeat(2000)
    const cut = fitBytes(long, 2047)
    t.ok(Buffer.byteLength(cut) <= 2047, `${char}: ${Buffer.byteLength(cut)} bytes fit`)
    t.ok(Buffer.byteLength(cut) > 2047 - Buffer.byteLength(char), `${char}: nothing more than the cut character is lost`)
    t.ok(long.startsWith(cut), `${char}: a prefix of whole characters`)
  }
})
