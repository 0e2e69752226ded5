// The Linux live boot, booted for real: a Debian 12 kernel under qemu boots
// build/vm/live.iso on a virtual CD-ROM through boot/linux/rowr-live.sh, as
// /init of an initramfs and once under initramfs-tools' own init. The
// booted system runs test/vm/guest/live-boot.sh: it proves its root is
// writable (writes, deletes, geom-rowr status --json from inside) while the
// ISO stays the same; with rowr.hydrate=1, that the image was copied into RAM
// and the medium let go; then changes kept on a second disk with the map on it
// across two boots, rowr.reset=1, and a disk whose map another image made:
// the read-only fallback, then rowr.reset=1 over it.
import fs from 'node:fs'
import path from 'node:path'
import t, { type Test } from 'tap'
import { makeImage, requires, rowr, run, sha256, shortDir } from '../fixtures/helpers.js'
import { boot, checkResults, guestDir, requiresGuest, resultsDisk, type Disk } from '../fixtures/vm.js'

/** Far above a boot on an idle 2-core machine; a hung guest fails at it. */
const BOOT_BOUND_MS = 300_000

const iso = path.join(guestDir, 'live.iso')

/**
 * Boots the ISO with `initrd` and the kernel arguments `append`, the results
 * disk first and `disks` after it; the guest reports its checks for
 * `scenario` (live-boot.sh), at least `minLines` of them.
 */
const liveBoot = async (
  t: Test,
  o: { scenario: string; initrd?: string; append?: string; disks?: readonly Disk[]; minLines: number },
): Promise<string> => {
  t.setTimeout(BOOT_BOUND_MS + 60_000)
  const results = resultsDisk(shortDir(t), o.scenario)
  const b = await boot(t, {
    name: `live-${o.scenario}`,
    initrd: o.initrd ?? 'live.cpio',
    append: `vmtest=${o.scenario} ${o.append ?? ''}`.trim(),
    disks: [{ file: results }, ...(o.disks ?? []), { file: iso, cdrom: true }],
    boundMs: BOOT_BOUND_MS,
  })
  const lines = checkResults(t, results, b)
  t.ok(lines.length >= o.minLines, `every step reported (${lines.length} lines)`)
  return b.console
}

t.test('a live system booted from the ISO through rowr-live.sh', async t => {
  if (!requiresGuest(t) || !requires(t, { tools: ['xorriso'] })) return
  const isoSum = sha256(iso)
  const dir = shortDir(t)
  // Persistent RWs: larger than the image, for the map in their tail.
  const persist = makeImage(path.join(dir, 'persist.img'), 1 << 30, 'zero')
  const keep = { disks: [{ file: persist }], append: 'rowr.rw=/dev/vdb rowr.map=on-rw' }

  await t.test('RW in RAM (rowr.rw=auto): a writable root', t => liveBoot(t, { scenario: 'ram', minLines: 27 }))
  await t.test('rowr.hydrate=1: the image copied into RAM, then the medium released', async t => {
    const console = await liveBoot(t, { scenario: 'hydrate', append: 'rowr.hydrate=1', minLines: 30 })
    t.match(
      console,
      /rowr-live: hydrated: rowr0 no longer needs the system image; \/dev\/sr0 may be removed/,
      'the console says the medium may be removed',
    )
  })
  await t.test('RW on a disk with the map on it, first boot; the medium found by its label', t =>
    liveBoot(t, { scenario: 'persist', ...keep, append: `${keep.append} rowr.media=LABEL=ROWR_LIVE`, minLines: 21 }),
  )
  await t.test("the same disk, second boot, under initramfs-tools (boot=rowr): the first boot's changes are there", t =>
    liveBoot(t, { scenario: 'resume', ...keep, initrd: 'live-itools.cpio', append: `${keep.append} boot=rowr`, minLines: 19 }),
  )
  await t.test('rowr.reset=1 starts clean', t =>
    liveBoot(t, { scenario: 'reset', ...keep, append: `${keep.append} rowr.reset=1`, minLines: 15 }),
  )

  // A disk with changes made on another image of the same size, as a medium
  // upgraded under its persistence disk would leave it: the map it holds
  // names another RO.
  const listing = await run('xorriso', ['-indev', iso, '-find', '/data/system.img', '-exec', 'lsdl', '--'])
  const imageBytes = Number(/^\S+\s+\d+\s+\d+\s+\d+\s+(\d+)\s/m.exec(listing.stdout)?.[1])
  t.ok(imageBytes > 0, `the ISO's system image is ${imageBytes} bytes`)
  const other = makeImage(path.join(dir, 'other.img'), imageBytes)
  const upgraded = makeImage(path.join(dir, 'upgraded.img'), 1 << 30, 'zero')
  for (const args of [
    ['create', '--no-attach', '--map-on-rw', 'stamp', other, upgraded],
    ['destroy', 'stamp'],
  ]) {
    const r = await rowr(path.join(dir, 'run'), args)
    t.equal(r.code, 0, `a map of another image on the disk: ${args[0]}: ${r.stderr}`)
  }
  fs.rmSync(other)
  const afterUpgrade = { disks: [{ file: upgraded }], append: 'rowr.rw=/dev/vdb rowr.map=on-rw' }
  await t.test('changes kept from another image: the image boots read-only, and says how to start over', async t => {
    const console = await liveBoot(t, { scenario: 'readonly', ...afterUpgrade, minLines: 7 })
    t.match(console, /falling back to a READ-ONLY system/, 'the console says it boots read-only')
  })
  await t.test('rowr.reset=1 on that disk: writable again', t =>
    liveBoot(t, { scenario: 'upgrade', ...afterUpgrade, append: `${afterUpgrade.append} rowr.reset=1`, minLines: 13 }),
  )
  t.equal(sha256(iso), isoSum, 'the ISO is unchanged')
})
