// The map's binding to its RW where no extended attribute fits (issue 11),
// as root: a file RW on ramfs (which refuses trusted.* and user.* alike) and
// a disk RW (a loop device). With room past the device's end RW carries a
// stamp there, and another RW is refused; without, create and every resume
// say that the binding cannot be checked, in the output and the daemon's log.
import fs from 'node:fs'
import path from 'node:path'
import t, { type Test } from 'tap'
import { cliRunDir, makeImage, requires, run } from '../fixtures/helpers.js'
import { leftovers } from '../fixtures/kernel.js'

const SIZE = 8 << 20
/** Where the stamp goes: the first 4096-byte boundary at or past the device's end. */
const TAIL = SIZE
const NEEDS = { root: true, tools: ['losetup', 'mount', 'umount', 'qemu-io'] }

const setup = (t: Test) => {
  const loops: string[] = []
  const { dir, runDir, g } = cliRunDir(t, async () => {
    for (const l of loops) await run('losetup', ['-d', l])
    await run('umount', ['-l', ramfs])
    for (const l of leftovers(dir)) {
      if (l.startsWith('loop ')) await run('losetup', ['-d', `/dev/${l.split(' ')[1]}`])
    }
  })
  const ramfs = path.join(dir, 'ramfs')
  fs.mkdirSync(ramfs)
  const loop = async (file: string): Promise<string> => {
    const r = await run('losetup', ['--find', '--show', file])
    t.equal(r.code, 0, r.stderr)
    loops.push(r.stdout.trim())
    return r.stdout.trim()
  }
  const ro = makeImage(path.join(dir, 'ro.img'), SIZE)
  const write = async (uri: string, fill: number): Promise<void> => {
    const r = await run('qemu-io', ['-f', 'raw', uri, '-c', `write -P ${fill} 4096 8192`, '-c', 'flush'])
    t.equal(r.code, 0, r.stderr)
  }
  return { dir, runDir, ramfs, ro, g, loop, write }
}

const unboundWarning = (map: string, rw: string, reason: string): string =>
  `warning: the binding of map ${map} to RW ${rw} cannot be checked: ${rw} ${reason}`

t.test('a file RW on a file system without extended attributes: a stamp in its tail, or a warning', async t => {
  if (!requires(t, NEEDS)) return
  const s = setup(t)
  t.equal((await run('mount', ['-t', 'ramfs', 'ramfs', s.ramfs])).code, 0)
  const exact = makeImage(path.join(s.ramfs, 'exact.rw'), SIZE, 'zero')
  const map = path.join(s.dir, 'exact.map')
  const warning = unboundWarning(
    map,
    exact,
    `is a file on a file system that keeps no extended attributes, and it has no room past the device's end for a stamp ` +
      `(${TAIL + 4096} bytes would give it one: truncate -s ${TAIL + 4096} ${exact}); a resume then cannot tell this RW from another`,
  )
  const created = await s.g('create', '--no-attach', '--map', map, 'x0', s.ro, exact)
  t.equal(created.code, 0, created.stderr)
  t.match(created.stderr, warning, 'create says so')
  t.match(fs.readFileSync(path.join(s.runDir, 'x0.log'), 'utf8'), warning, 'and the daemon logs it')
  t.equal((await s.g('destroy', 'x0')).code, 0)
  const resumed = await s.g('create', '--no-attach', '--map', map, 'x0', s.ro, exact)
  t.equal(resumed.code, 0, resumed.stderr)
  t.match(resumed.stderr, warning, 'and so does every resume')
  t.equal((await s.g('destroy', 'x0')).code, 0)

  const roomy = makeImage(path.join(s.ramfs, 'roomy.rw'), TAIL + 4096, 'zero')
  const other = makeImage(path.join(s.ramfs, 'other.rw'), TAIL + 4096, 'zero')
  const tailMap = path.join(s.dir, 'tail.map')
  const bound = await s.g('create', '--no-attach', '--map', tailMap, 'y0', s.ro, roomy)
  t.equal(bound.code, 0, bound.stderr)
  t.notMatch(bound.stderr, 'cannot be checked', "bound by a stamp past the device's end")
  await s.write(bound.stdout.trim(), 0x2e)
  t.equal((await s.g('destroy', 'y0')).code, 0)
  const refused = await s.g('create', '--no-attach', '--map', tailMap, 'y1', s.ro, other)
  t.equal(refused.code, 1)
  t.match(refused.stderr, `RW ${other} is not the RW this map was made with`)
  t.match(refused.stderr, `it carries no device ID in ${other}'s tail (bytes ${TAIL}-${TAIL + 4095})`)
  const again = await s.g('create', '--no-attach', '--map', tailMap, 'y0', s.ro, roomy)
  t.equal(again.code, 0, again.stderr)
  const r = await run('qemu-io', ['-f', 'raw', again.stdout.trim(), '-c', 'read -P 0x2e 4096 8192'])
  t.notMatch(r.stdout, 'Pattern verification failed', 'its own RW resumes')
})

t.test("a disk RW: a stamp past the device's end where the disk is larger, a warning where it is not", async t => {
  if (!requires(t, NEEDS)) return
  const s = setup(t)
  const exact = await s.loop(makeImage(path.join(s.dir, 'exact.img'), SIZE, 'zero'))
  const map = path.join(s.dir, 'exact.map')
  const created = await s.g('create', '--no-attach', '--map', map, 'd0', s.ro, exact)
  t.equal(created.code, 0, created.stderr)
  t.match(
    created.stderr,
    unboundWarning(
      map,
      exact,
      `is a disk of exactly the device's size: it has no room past the device's end for a stamp (${TAIL + 4096} bytes would give it one; use a larger partition)`,
    ),
  )
  t.equal((await s.g('destroy', 'd0')).code, 0)

  const larger = await s.loop(makeImage(path.join(s.dir, 'larger.img'), SIZE + (1 << 20), 'zero'))
  const other = await s.loop(makeImage(path.join(s.dir, 'other.img'), SIZE + (1 << 20), 'zero'))
  const tailMap = path.join(s.dir, 'tail.map')
  const bound = await s.g('create', '--no-attach', '--map', tailMap, 'd1', s.ro, larger)
  t.equal(bound.code, 0, bound.stderr)
  t.notMatch(bound.stderr, 'cannot be checked')
  await s.write(bound.stdout.trim(), 0x4f)
  t.equal((await s.g('destroy', 'd1')).code, 0)
  const refused = await s.g('create', '--no-attach', '--map', tailMap, 'd2', s.ro, other)
  t.equal(refused.code, 1)
  t.match(refused.stderr, `it carries no device ID in ${other}'s tail (bytes ${TAIL}-${TAIL + 4095})`)
  const noMap = await s.g('create', '--no-attach', 'd2', s.ro, larger)
  t.equal(noMap.code, 1, 'the stamped disk is not taken as empty')
  t.match(noMap.stderr, `${larger} is the RW of another map, device ID`)
  const again = await s.g('create', '--no-attach', '--map', tailMap, 'd1', s.ro, larger)
  t.equal(again.code, 0, again.stderr)
  const r = await run('qemu-io', ['-f', 'raw', again.stdout.trim(), '-c', 'read -P 0x4f 4096 8192'])
  t.notMatch(r.stdout, 'Pattern verification failed', 'its own RW resumes')
})
