// geom-rowr destroy: flush and tear down NAME, or clear what a dead daemon left.
import fs from 'node:fs'
import { waitFor } from '../run-command.js'
import { callControl } from '../daemon/control.js'
import { statePaths } from '../daemon/run-state.js'
import { processAlive } from '../processes.js'
import { cleanupStale, heldMessage, probe, waitingMessage } from '../daemon/stale.js'
import { RowrError } from '../errors.js'
import { warn } from './foreground.js'
import { noSuchDevice } from './running-device.js'

interface DestroyArgs {
  readonly name: string
  readonly force: boolean
}

const EXIT_WAIT_MS = 30_000

/** Only a process that is a geom-rowr daemon is ever killed. */
const isRowrDaemon = (pid: number): boolean => {
  try {
    return fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes('geom-rowr')
  } catch {
    return false
  }
}

export const destroy = async ({ name, force }: DestroyArgs): Promise<void> => {
  const l = await probe(name)
  switch (l.kind) {
    case 'absent':
      throw noSuchDevice(name)
    case 'starting':
      throw new RowrError('EBUSY', `${name} is still being created; try again in a moment`)
    case 'stale':
      await cleanupStale(name, l, warn, { force })
      return
    case 'waiting':
      // Giving up loses what the kernel holds for the daemon: only on -f.
      if (!force) throw new RowrError('EBUSY', waitingMessage(l))
      await cleanupStale(
        name,
        { kind: 'stale', state: l.state, reason: `${l.reason}, and destroy -f gave up waiting for a new one` },
        warn,
        { force },
      )
      return
    case 'held':
      // Its users' I/O fails once it is gone: only on -f.
      if (!force) throw new RowrError('EBUSY', heldMessage(l))
      await cleanupStale(name, { kind: 'stale', state: l.state, reason: `${l.reason}, and destroy -f took its open device away` }, warn, {
        force,
      })
      return
    case 'unresponsive': {
      if (!force) {
        throw new RowrError('EBUSY', `the daemon of ${name} (pid ${l.state.pid}) does not answer; use destroy -f to kill it and clean up`)
      }
      if (isRowrDaemon(l.state.pid)) {
        process.kill(l.state.pid, 'SIGKILL')
        await waitFor(() => !processAlive(l.state.pid), EXIT_WAIT_MS)
      }
      await cleanupStale(
        name,
        { kind: 'stale', state: l.state, reason: `its daemon (pid ${l.state.pid}) did not answer and was killed` },
        warn,
        { force },
      )
      return
    }
    case 'running': {
      const reply = await callControl(statePaths(name).control, { cmd: 'destroy', force })
      if (!reply.ok) throw new RowrError(reply.code === 'EBUSY' ? 'EBUSY' : 'EDAEMON', reply.message)
      if (!(await waitFor(() => !processAlive(l.state.pid), EXIT_WAIT_MS))) {
        warn(`the daemon of ${name} (pid ${l.state.pid}) tore the device down but has not exited yet`)
      }
    }
  }
}
