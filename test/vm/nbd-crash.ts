// Surviving a daemon crash on Linux, for real: a Debian 12 kernel under qemu
// runs test/vm/guest/nbd-crash.sh. A device with a map whose daemon is
// SIGKILLed under a mounted ext4 waits; create of the same NAME reconnects it
// (NBD_CMD_RECONFIGURE), the writes issued meanwhile complete, every file is
// intact and e2fsck -fn is clean; destroy -f of a waiting device fails its
// I/O and leaves nothing.
import t from 'tap'
import { shortDir } from '../fixtures/helpers.js'
import { boot, checkResults, requiresGuest, resultsDisk } from '../fixtures/vm.js'

/**
 * Far above a run on an idle 2-core machine; a hung guest fails here. The
 * writes held during the outage may wait for the block layer's 30 s request
 * timer before they are resent on the new connection.
 */
const BOUND_MS = 540_000

t.test('a daemon SIGKILLed under a mounted ext4 is replaced without the file system noticing', async t => {
  if (!requiresGuest(t)) return
  t.setTimeout(BOUND_MS + 60_000)
  const results = resultsDisk(shortDir(t), 'nbd-crash')
  const b = await boot(t, { name: 'nbd-crash', initrd: 'nbd.cpio', append: 'vmtest=nbd-crash', disks: [{ file: results }], boundMs: BOUND_MS })
  const lines = checkResults(t, results, b)
  t.ok(lines.length > 35, `every step reported (${lines.length} lines)`)
})
