// A full RW is visible: RW a sparse file on a small tmpfs, a device larger
// than the tmpfs can hold. create warns; a write that does not fit fails
// ENOSPC to the NBD client; status shows the device degraded, naming RW and
// the errno, until reset clears it.
import fs from 'node:fs'
import path from 'node:path'
import t from 'tap'
import { makeImage, requires, rowr, run } from '../fixtures/helpers.js'
import { Cmd, connectGo, Errno, request } from '../fixtures/nbd-client.js'

const KiB = 1024
const MiB = 1024 * KiB
const TMPFS = MiB
const SIZE = 4 * MiB

t.test('a write that fills RW fails ENOSPC, status shows it degraded, reset clears it', async t => {
  if (!requires(t, { root: true })) return
  const dir = fs.mkdtempSync('/tmp/rowr-full-')
  const runDir = path.join(dir, 'run')
  const small = path.join(dir, 'small')
  fs.mkdirSync(small)
  const g = (...args: string[]) => rowr(runDir, args)
  let mounted = false
  t.teardown(async () => {
    await g('destroy', '-f', 'full0')
    if (mounted) await run('umount', [small])
    fs.rmSync(dir, { recursive: true, force: true })
  })
  const m = await run('mount', ['-t', 'tmpfs', '-o', `size=${TMPFS}`, 'tmpfs', small])
  t.equal(m.code, 0, `mount tmpfs: ${m.stderr}`)
  mounted = m.code === 0
  const ro = makeImage(path.join(dir, 'ro.img'), SIZE)
  const rw = makeImage(path.join(small, 'rw.img'), SIZE, 'zero')

  const created = await g('create', '--no-attach', 'full0', ro, rw)
  t.equal(created.code, 0, created.stderr)
  t.match(
    created.stderr,
    new RegExp(
      `warning: ${rw} is a sparse file with 0 bytes allocated: the device can need ${SIZE} bytes more \\(4\\.0 MiB\\), but its file system has ${TMPFS} bytes \\(1\\.0 MiB\\) free`,
    ),
    'create says RW cannot hold the device, and how much is missing',
  )
  t.match(created.stderr, `Free at least ${SIZE - TMPFS} bytes`)

  const status = async () => JSON.parse((await g('status', '--json', 'full0')).stdout)
  const fresh = await status()
  t.equal(fresh.health, 'ok')
  t.same(fresh.errors, { rwWrite: 0, rwRead: 0, roRead: 0, last: null })
  t.equal(fresh.rwAllocated, 0, 'RW allocates nothing yet')
  t.match((await g('status', 'full0')).stdout, /\n {2}state: +ok\n/)

  const { r } = await connectGo(path.join(runDir, 'full0', 'nbd.sock'))
  r.socket.write(Buffer.concat([request(Cmd.WRITE, 1, 0, 64 * KiB), Buffer.alloc(64 * KiB, 1)]))
  t.same(await r.simpleReply(), { error: 0, cookie: 1 }, 'a write that fits succeeds')
  r.socket.write(Buffer.concat([request(Cmd.WRITE, 2, MiB, 2 * MiB), Buffer.alloc(2 * MiB, 2)]))
  t.same(await r.simpleReply(), { error: Errno.ENOSPC, cookie: 2 }, 'the NBD client gets ENOSPC')

  const full = await status()
  t.equal(full.health, 'degraded')
  t.match(full.errors, { rwRead: 0, roRead: 0, last: { errno: 'ENOSPC', device: 'rw', op: 'write' } })
  t.ok(full.errors.rwWrite >= 1, 'the failed write is counted')
  t.ok(full.errors.last.offset >= MiB && full.errors.last.offset < 3 * MiB, 'at an offset inside the failed write')
  t.ok(Number.isFinite(Date.parse(full.errors.last.at)), 'at an ISO time')
  t.ok(full.rwAllocated > 64 * KiB && full.rwAllocated <= TMPFS, `RW's real allocation: ${full.rwAllocated}`)
  const text = (await g('status', 'full0')).stdout
  t.match(
    text,
    /\n {2}state: +degraded: rw write ENOSPC at offset \d+ \(\d{4}-\d\d-\d\dT[^)]+\); \d+ I\/O error\(s\) since the last reset; geom-rowr reset full0 clears it\n/,
  )
  t.match(text, /\n {2}rw allocated: +\d+ \(/)
  const log = fs.readFileSync(path.join(runDir, 'full0.log'), 'utf8')
  t.match(log, /write at byte \d+ failed: ENOSPC.*full0 is degraded/, 'the daemon logged it')

  const reset = await g('reset', 'full0')
  t.equal(reset.code, 0, reset.stderr)
  t.match(reset.stdout, /^full0: statistics and error counts cleared \(it was degraded: rw write ENOSPC .*\); state: ok\n$/)
  const cleared = await status()
  t.equal(cleared.health, 'ok', 'reset makes it ok again')
  t.same(cleared.errors, { rwWrite: 0, rwRead: 0, roRead: 0, last: null })
  t.equal(cleared.stats.writes, 0, 'and clears the statistics')
  t.equal(cleared.writtenBytes, 64 * KiB, 'what was written stays')
  t.match((await g('status', 'full0')).stdout, /\n {2}state: +ok\n/)
  r.socket.destroy()
})

t.test('reset names a device that does not exist', async t => {
  const dir = fs.mkdtempSync('/tmp/rowr-full-')
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  const r = await rowr(path.join(dir, 'run'), ['reset', 'nosuch0'])
  t.equal(r.code, 1)
  t.match(r.stderr, "no device named nosuch0; 'geom-rowr list' shows the devices")
  const usage = await rowr(path.join(dir, 'run'), ['reset'])
  t.equal(usage.code, 2, 'NAME is required')
})
