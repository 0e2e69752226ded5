// A read-write device whose writes really are slow: a FUSE file (nbdfuse)
// over nbdkit's memory plugin with a 20 ms delay on every write. The first
// small write runs inline and stalls the event loop; the guard must notice
// and send the next ones to the thread pool, where the event loop goes on.
import { spawn } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'
import t from 'tap'
import { BlockDevice } from '../../lib/devices/block-device.js'
import { requires, run, waitUntil } from '../fixtures/helpers.js'

const NEEDS = { root: true, fuse: true, tools: ['nbdkit', 'nbdfuse', 'fusermount3'] }

t.test('a stalled inline write sends the next writes to the thread pool', async t => {
  if (!requires(t, NEEDS)) return
  const dir = fs.mkdtempSync('/tmp/rowr-slow-')
  const socket = path.join(dir, 'nbd.sock')
  const mountpoint = path.join(dir, 'fuse')
  const disk = path.join(mountpoint, 'disk')
  fs.mkdirSync(mountpoint)
  const nbdkit = spawn('nbdkit', ['--foreground', '--unix', socket, '--filter=delay', 'memory', '1M', 'wdelay=20ms'], {
    stdio: 'ignore',
  })
  let nbdfuse: ReturnType<typeof spawn> | undefined
  let device: BlockDevice | undefined
  t.teardown(async () => {
    device?.close()
    if (nbdfuse) {
      await run('fusermount3', ['-u', mountpoint])
      if (nbdfuse.exitCode === null) await new Promise(resolve => nbdfuse!.once('exit', resolve))
    }
    nbdkit.kill('SIGTERM')
    if (nbdkit.exitCode === null) await new Promise(resolve => nbdkit.once('exit', resolve))
    fs.rmSync(dir, { recursive: true, force: true })
  })
  t.ok(await waitUntil(() => fs.existsSync(socket)), 'nbdkit listens')
  nbdfuse = spawn('nbdfuse', [disk, '--unix', socket], { stdio: 'ignore' })
  t.ok(await waitUntil(() => fs.existsSync(disk)), 'nbdfuse exposes the disk as a file')

  device = BlockDevice.open(disk, { writable: true })
  const guard = device.inlineWrites!
  t.ok(guard, 'a regular file: small writes may run inline')

  const first = process.hrtime.bigint()
  await device.write(Buffer.alloc(4096, 1), 0, 4096, 0)
  t.ok(process.hrtime.bigint() - first >= 15_000_000n, 'the first write waited for the device')
  t.equal(guard.inline, 1, 'it ran inline')
  t.equal(guard.stalls, 1, 'and was seen to stall')

  let loopRan = false
  setTimeout(() => (loopRan = true), 0)
  await device.write(Buffer.alloc(4096, 2), 0, 4096, 4096)
  t.equal(guard.inline, 1, 'the next write went to the thread pool')
  t.ok(loopRan, 'and the event loop ran while it waited')

  const back = Buffer.alloc(8192)
  await device.read(back, 0, 8192, 0)
  t.same(back, Buffer.concat([Buffer.alloc(4096, 1), Buffer.alloc(4096, 2)]), 'both writes landed')
})
