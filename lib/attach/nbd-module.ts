// The kernel's nbd driver, through nbd-client. Used only where /sys/module/nbd
// exists; the machines this project is tested on have no nbd module, so this
// path has not been run there.
import fs from 'node:fs'
import { RowrError } from '../errors.js'
import type { AttachOptions } from './attachment.js'
import { runCommand } from '../run-command.js'

export interface NbdModuleAttachment {
  readonly kind: 'nbd'
  readonly device: string
}

/** The first /dev/nbdN that no client holds (no pid file in sysfs). */
const freeNbdDevice = (): string | undefined => {
  const devices = fs
    .readdirSync('/sys/block')
    .filter(d => /^nbd\d+$/.test(d))
    .sort((a, b) => Number(a.slice(3)) - Number(b.slice(3)))
  const free = devices.find(d => !fs.existsSync(`/sys/block/${d}/pid`))
  return free && `/dev/${free}`
}

export const attachNbdModule = async ({ name, nbdSocket, sectorSize, log }: AttachOptions): Promise<NbdModuleAttachment> => {
  const device = freeNbdDevice()
  if (!device) {
    throw new RowrError('EATTACH', 'every /dev/nbdN is in use; load the nbd module with more devices (modprobe nbd nbds_max=32)')
  }
  try {
    await runCommand('nbd-client', ['-unix', nbdSocket, device, '-block-size', String(sectorSize), '-name', name])
  } catch (e) {
    throw new RowrError('EATTACH', `nbd-client could not attach ${device}: ${(e as Error).message}`, { cause: e })
  }
  log(`attached ${device} with nbd-client`)
  return { kind: 'nbd', device }
}

export const detachNbdModule = async ({ device }: NbdModuleAttachment): Promise<void> => {
  await runCommand('nbd-client', ['-d', device])
}
