// geom-rowr reset: clear a running device's statistics and I/O error
// counts, as gunion's reset clears its statistics. A degraded device is ok
// again; what it has written stays.
import { callControl } from '../daemon/control.js'
import { statePaths } from '../daemon/run-state.js'
import { RowrError } from '../errors.js'
import { healthLine } from '../engine/io-errors.js'
import { runningStatus } from './running-device.js'

interface ResetArgs {
  readonly name: string
}

export const reset = async ({ name }: ResetArgs): Promise<void> => {
  await runningStatus(name)
  const reply = await callControl(statePaths(name).control, { cmd: 'reset' })
  if (!reply.ok) throw new RowrError(reply.code === 'EBUSY' ? 'EBUSY' : 'EDAEMON', reply.message)
  const { cleared } = reply
  const was = cleared.last === null ? 'it was ok' : `it was ${healthLine(cleared)}`
  process.stdout.write(`${name}: statistics and error counts cleared (${was}); state: ok\n`)
}
