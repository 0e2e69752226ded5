// The kernel's nbd driver, configured by geom-rowr itself over generic
// netlink (nbd-netlink.ts), used wherever /sys/module/nbd exists. The daemon
// connects to its own NBD server, negotiates in user space and hands the
// socket to the kernel, which then speaks NBD transmission on it.
//
// Surviving the daemon: a device with a map is attached with a dead-connection
// timeout, so that when its daemon dies the kernel holds new requests instead
// of failing them, and a new daemon (geom-rowr create of the same NAME)
// replaces the dead socket with NBD_CMD_RECONFIGURE. Requests the dead daemon
// had not answered are not failed either: the request timeout is 0, which in
// Linux (5.7 and later) means the block layer's timer only re-arms, and once
// the socket has been replaced it resends them on the new one.
import fs from 'node:fs'
import { closeFd } from '../../native-bindings/netlink.js'
import { RowrError } from '../errors.js'
import type { AttachOptions } from './attach-options.js'
import { negotiateForKernel } from './nbd-handshake.js'
import { NetlinkRequestError, withNbdNetlink } from './nbd-netlink.js'

export interface NbdModuleAttachment {
  readonly kind: 'nbd'
  readonly device: string
}

/**
 * How long the kernel holds new requests for a device with a map whose
 * daemon died: long enough for someone to notice and run geom-rowr create
 * again. Past it, requests fail with I/O errors (the file system then
 * usually turns itself read-only); geom-rowr destroy -f ends the wait sooner.
 */
const DEAD_CONNECTION_SECONDS = 3600

/** 0: a request without a reply never fails on its own; it waits for a reconnected socket. */
const REQUEST_TIMEOUT_SECONDS = 0

const nbdIndex = (device: string): number => {
  const m = /^\/dev\/nbd(\d+)$/.exec(device)
  if (!m) throw new Error(`${device} is not an nbd device`)
  return Number(m[1])
}

const sysfs = (device: string, file: string): string => `/sys/block/${device.slice('/dev/'.length)}/${file}`

const explain = (e: unknown): string =>
  e instanceof NetlinkRequestError && e.errno === 2
    ? 'the kernel has no nbd netlink family (load the nbd module: modprobe nbd)'
    : (e as Error).message

export const attachNbdModule = async ({ name, nbdSocket, sectorSize, persistent, log }: AttachOptions): Promise<NbdModuleAttachment> => {
  let index: number
  try {
    const s = await negotiateForKernel(nbdSocket, name)
    try {
      index = await withNbdNetlink(nl =>
        nl.connect({
          sizeBytes: s.size,
          blockSizeBytes: sectorSize,
          serverFlags: s.flags,
          timeoutSeconds: REQUEST_TIMEOUT_SECONDS,
          deadConnTimeoutSeconds: persistent ? DEAD_CONNECTION_SECONDS : 0,
          socketFds: [s.fd],
        }),
      )
    } finally {
      closeFd(s.fd)
    }
  } catch (e) {
    throw new RowrError('EATTACH', `could not attach ${name} to the kernel's nbd driver: ${explain(e)}; or use --no-attach for NBD only`, {
      cause: e,
    })
  }
  const device = `/dev/nbd${index}`
  log(
    `attached ${device} over netlink${persistent ? `; it waits up to ${DEAD_CONNECTION_SECONDS} s for a new daemon should this one die` : ''}`,
  )
  return { kind: 'nbd', device }
}

/**
 * Gives `attachment`, whose daemon died, a connection to this daemon's NBD
 * server. The kernel device must show the same size and sector size.
 */
export const reconnectNbdModule = async (
  attachment: NbdModuleAttachment,
  { name, nbdSocket, sectorSize, mediaSize, log }: AttachOptions & { mediaSize: number },
): Promise<NbdModuleAttachment> => {
  const { device } = attachment
  const kernelSize = Number(fs.readFileSync(sysfs(device, 'size'), 'utf8')) * 512
  const kernelSector = Number(fs.readFileSync(sysfs(device, 'queue/logical_block_size'), 'utf8'))
  if (kernelSize !== mediaSize || kernelSector !== sectorSize) {
    throw new RowrError(
      'EATTACH',
      `${device} of ${name} has ${kernelSize} bytes in ${kernelSector}-byte sectors, the devices now give ${mediaSize} in ${sectorSize}-byte sectors; ` +
        `create ${name} again with the devices and --sector-size it had, or give up on it: geom-rowr destroy -f ${name}`,
    )
  }
  try {
    const s = await negotiateForKernel(nbdSocket, name)
    try {
      await withNbdNetlink(nl => nl.reconfigure(nbdIndex(device), s.fd, DEAD_CONNECTION_SECONDS))
    } finally {
      closeFd(s.fd)
    }
  } catch (e) {
    throw new RowrError(
      'EATTACH',
      `could not reconnect ${device} of ${name}: ${explain(e)}; it still waits; try again, or give up on it: geom-rowr destroy -f ${name}`,
      { cause: e },
    )
  }
  log(`reconnected ${device}: the kernel sends its held requests to this daemon`)
  return attachment
}

/** Whether the kernel still has `attachment` configured (a dead daemon's device waiting for a new one). */
export const nbdConfigured = async (attachment: NbdModuleAttachment): Promise<boolean> => {
  if (!fs.existsSync('/sys/module/nbd')) return false
  return (await withNbdNetlink(nl => nl.connected(nbdIndex(attachment.device)))) === true
}

export const detachNbdModule = async ({ device }: NbdModuleAttachment): Promise<void> => {
  await withNbdNetlink(nl => nl.disconnect(nbdIndex(device)))
}
