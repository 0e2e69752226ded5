// Linux's nbd driver, for real: a Debian 12 kernel under qemu runs
// test/vm/guest/nbd-driver.sh, which attaches over netlink (the path
// geom-rowr takes wherever the nbd module is loaded): the original module's
// procedure on ext4, destroy -f while mounted, and a SIGKILLed daemon of a
// device without a map cleaned up by the next list.
import t from 'tap'
import { shortDir } from '../fixtures/helpers.js'
import { boot, checkResults, requiresGuest, resultsDisk } from '../fixtures/vm.js'

/** Far above a run on an idle 2-core machine; a hung guest fails here. */
const BOUND_MS = 540_000

t.test('the module\'s procedure, destroy -f and a killed daemon, through the nbd driver', async t => {
  if (!requiresGuest(t)) return
  t.setTimeout(BOUND_MS + 60_000)
  const results = resultsDisk(shortDir(t), 'nbd-driver')
  const b = await boot(t, { name: 'nbd-driver', initrd: 'nbd.cpio', append: 'vmtest=nbd-driver', disks: [{ file: results }], boundMs: BOUND_MS })
  const lines = checkResults(t, results, b)
  t.ok(lines.length > 40, `every step reported (${lines.length} lines)`)
})
