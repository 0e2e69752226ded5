// The daemon's I/O error log: the first error of a kind at once, the rest
// at most once an interval, with how many were not logged.
import fs from 'node:fs'
import path from 'node:path'
import t from 'tap'
import { IoErrorLog } from '../lib/daemon/error-log.js'
import type { IoErrorEvent } from '../lib/engine/io-errors.js'
import { allocatedBytes, rwSpaceWarning } from '../lib/devices/rw-space.js'
import { BlockDevice } from '../lib/devices/block-device.js'
import { sleep, waitUntil } from './fixtures/helpers.js'

const INTERVAL = 300

const event = (offset: number, errno = 'ENOSPC', device: 'ro' | 'rw' = 'rw'): IoErrorEvent => ({
  kind: device === 'ro' ? 'roRead' : 'rwWrite',
  errno,
  device,
  op: device === 'ro' ? 'read' : 'write',
  offset,
  at: new Date().toISOString(),
  message: `${device.toUpperCase()} /x: failed at byte ${offset}: ${errno}`,
})

t.test('the first error of a kind is logged at once, the next ones once an interval with their count', async t => {
  const lines: string[] = []
  const log = new IoErrorLog('r0', m => lines.push(m), { intervalMs: INTERVAL })
  t.teardown(() => log.close())
  log.report(event(0))
  t.equal(lines.length, 1, 'at once')
  t.match(
    lines[0],
    /^RW \/x: failed at byte 0: ENOSPC; r0 is degraded \(geom-rowr status r0\) until geom-rowr reset r0; further rw write ENOSPC errors are logged at most once a minute$/,
  )
  for (let i = 1; i <= 5; i++) log.report(event(i * 512))
  t.equal(lines.length, 1, 'the next ones wait')
  log.report(event(0, 'EIO', 'ro'))
  t.equal(lines.length, 2, 'another kind is logged at once')
  t.match(lines[1], /ro read EIO/)
  t.ok(await waitUntil(() => lines.length === 3, INTERVAL * 20), 'one line for the ones held back')
  t.equal(lines[2], '5 more rw write ENOSPC error(s) since the last report; the latest: RW /x: failed at byte 2560: ENOSPC')
  await sleep(INTERVAL + 50)
  log.report(event(4096))
  t.equal(lines.length, 4, 'an interval after the last line, the next is logged at once')
  t.match(lines[3], /^1 more rw write ENOSPC/)
  await sleep(INTERVAL * 2)
  t.equal(lines.length, 4, 'nothing more without new errors')
})

t.test('reset forgets the kinds after logging what was held back', async t => {
  const lines: string[] = []
  const log = new IoErrorLog('r0', m => lines.push(m), { intervalMs: 60_000 })
  t.teardown(() => log.close())
  log.report(event(0))
  log.report(event(512))
  t.equal(lines.length, 1)
  log.reset()
  t.equal(lines.length, 2, 'the held-back count is logged')
  t.match(lines[1], /^1 more rw write ENOSPC/)
  log.report(event(1024))
  t.equal(lines.length, 3, 'the first error after a reset is logged at once')
  t.match(lines[2], /further rw write ENOSPC errors/)
})

t.test("RW's allocation and the warning for a sparse RW its file system cannot hold", async t => {
  const dir = t.testdir()
  const file = path.join(dir, 'rw.img')
  fs.writeFileSync(file, '')
  fs.truncateSync(file, 1 << 20)
  const rw = BlockDevice.open(file, { writable: true })
  t.teardown(() => rw.close())
  t.equal(allocatedBytes(rw), 0, 'a sparse file allocates nothing')
  await rw.write(Buffer.alloc(65536, 1), 0, 65536, 0)
  t.ok(allocatedBytes(rw) >= 65536, 'what is written is allocated')
  t.equal(rwSpaceWarning(rw, 1 << 20), null, 'a file system with room: no warning')
  const free = fs.statfsSync(file)
  const huge = (free.blocks + 1) * free.bsize * 2
  t.match(rwSpaceWarning(rw, huge), new RegExp(`^${file} is a sparse file with \\d+ bytes allocated: the device can need \\d+ bytes more`))
})
