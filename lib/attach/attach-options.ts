// What every way of attaching a kernel block device is given.

export interface AttachOptions {
  readonly name: string
  readonly nbdSocket: string
  /** An empty directory for the FUSE mount. */
  readonly mountDir: string
  readonly sectorSize: number
  /** The device keeps a map: a new daemon can take over from one that died (nbd driver only). */
  readonly persistent: boolean
  readonly log: (message: string) => void
}
