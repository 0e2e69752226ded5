// Daemon logs: where they go, which are kept, and their size cap.
import fs from 'node:fs'
import path from 'node:path'
import t from 'tap'
import { KEPT_LOGS, cappedLogWriter, logDir, openDaemonLog, removeDaemonLog } from '../lib/daemon/daemon-log.js'
import { makeImage, rowr, shortDir, waitUntil } from './fixtures/helpers.js'

const withEnv = async (env: Record<string, string | undefined>, f: () => unknown): Promise<void> => {
  const saved = Object.fromEntries(Object.keys(env).map(k => [k, process.env[k]]))
  const set = (e: Record<string, string | undefined>) => {
    for (const [k, v] of Object.entries(e)) {
      if (v === undefined) delete process.env[k]
      else process.env[k] = v
    }
  }
  set(env)
  try {
    await f()
  } finally {
    set(saved)
  }
}

t.test('the log directory: GEOM_ROWR_LOGDIR, else beside a given run directory, else /var/log as root, else per user', async t => {
  await withEnv({ GEOM_ROWR_LOGDIR: '/x/logs', GEOM_ROWR_RUNDIR: '/x/run' }, () => t.equal(logDir(), '/x/logs'))
  await withEnv({ GEOM_ROWR_LOGDIR: undefined, GEOM_ROWR_RUNDIR: '/x/run' }, () => t.equal(logDir(), '/x/run'))
  await withEnv({ GEOM_ROWR_LOGDIR: undefined, GEOM_ROWR_RUNDIR: undefined, XDG_STATE_HOME: '/x/state' }, () =>
    t.equal(logDir(), process.getuid?.() === 0 ? '/var/log/geom-rowr' : '/x/state/geom-rowr'),
  )
})

t.test('a kept log is set aside when NAME starts again; only the newest kept logs stay', async t => {
  const dir = t.testdir()
  await withEnv({ GEOM_ROWR_LOGDIR: dir }, () => {
    for (let i = 0; i < KEPT_LOGS + 5; i++) {
      const { fd, path: p } = openDaemonLog('r0')
      fs.writeSync(fd, `run ${i}\n`)
      fs.closeSync(fd)
      // Distinct times, as daemons that ran one after another have.
      const when = new Date(Date.UTC(2026, 0, 1, 0, 0, i))
      fs.utimesSync(p, when, when)
    }
    const files = fs.readdirSync(dir).sort()
    t.equal(files.length, KEPT_LOGS + 1, 'the current log and the newest kept ones')
    t.equal(fs.readFileSync(path.join(dir, 'r0.log'), 'utf8'), `run ${KEPT_LOGS + 4}\n`)
    t.ok(files.includes('r0.2026-01-01T00-00-23.000Z.log'), 'named by the time it was last written')
    t.notOk(files.includes('r0.2026-01-01T00-00-03.000Z.log'), 'the oldest are dropped')
    removeDaemonLog('r0')
    t.notOk(fs.existsSync(path.join(dir, 'r0.log')))
  })
})

t.test('a log past its cap starts over, saying so', async t => {
  const file = path.join(t.testdir(), 'x.log')
  const fd = fs.openSync(file, 'a')
  const write = cappedLogWriter(fd, 200)
  for (let i = 0; i < 20; i++) write(`line ${i} ${'.'.repeat(20)}\n`)
  fs.closeSync(fd)
  const text = fs.readFileSync(file, 'utf8')
  t.ok(text.length <= 200, `${text.length} bytes`)
  t.match(text, /the log reached 200 bytes and started over\n/)
  t.match(text, /line 19/, 'the newest lines are there')
})

t.test('a destroyed device takes its log with it; a refused or crashed one keeps it and says where', async t => {
  const dir = shortDir(t)
  const run = path.join(dir, 'run')
  const logs = path.join(dir, 'logs')
  const ro = makeImage(path.join(dir, 'ro.img'), 1 << 20)
  const rw = makeImage(path.join(dir, 'rw.img'), 1 << 20, 'zero')
  const small = makeImage(path.join(dir, 'small.img'), 1 << 19, 'zero')
  const cli = async (...args: string[]) => {
    process.env.GEOM_ROWR_LOGDIR = logs
    try {
      return await rowr(run, args)
    } finally {
      delete process.env.GEOM_ROWR_LOGDIR
    }
  }
  t.teardown(() => cli('destroy', '-f', 'l0', 'l1'))

  t.equal((await cli('create', '--no-attach', 'l0', ro, rw)).code, 0)
  t.ok(fs.existsSync(path.join(logs, 'l0.log')), 'the running daemon logs')
  t.notOk(fs.existsSync(path.join(run, 'l0.log')), 'not in the run directory')
  t.equal((await cli('destroy', 'l0')).code, 0)
  t.ok(await waitUntil(() => !fs.existsSync(path.join(logs, 'l0.log'))), 'destroyed: its log is gone')

  const refused = await cli('create', '--no-attach', 'l1', ro, small)
  t.equal(refused.code, 1)
  t.match(refused.stderr, `(the daemon's log: ${path.join(logs, 'l1.log')})`)
  t.match(fs.readFileSync(path.join(logs, 'l1.log'), 'utf8'), /could not start/, 'a refused start keeps its log')

  t.equal((await cli('create', '--no-attach', 'l1', ro, rw)).code, 0)
  const pid = JSON.parse(fs.readFileSync(path.join(run, 'l1/state.json'), 'utf8')).pid as number
  process.kill(pid, 'SIGKILL')
  await waitUntil(() => !fs.existsSync(`/proc/${pid}`))
  const listed = await cli('list')
  t.match(listed.stderr, `its log is ${path.join(logs, 'l1.log')}`, 'cleanup after a crash names the log')
  t.ok(
    fs.readdirSync(logs).some(f => /^l1\..*Z\.log$/.test(f)),
    "the refused run's log was set aside when l1 started again",
  )
})
