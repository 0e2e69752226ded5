// Who else uses a device, as Linux tells it: mounts (/proc/self/mountinfo,
// by major:minor), holders in sysfs (device-mapper, md, ...) and loop
// devices whose backing file is the device. A loop device does not claim
// its backing file or disk, so an exclusive open of that cannot see it.
// Nothing here opens a device: the claims are made while this process may
// already serve a kernel device, and opening one can read from it.
import fs from 'node:fs'
import path from 'node:path'
import type { DeviceIdentity } from './block-device.js'

interface Mount {
  readonly point: string
  readonly writable: boolean
}

/** "major:minor" of a device number, from glibc's encoding of dev_t. */
export const majorMinor = (rdev: number): string => {
  const d = BigInt(rdev)
  const major = ((d >> 8n) & 0xfffn) | ((d >> 32n) & ~0xfffn)
  const minor = (d & 0xffn) | ((d >> 12n) & ~0xffn)
  return `${major}:${minor}`
}

/** mountinfo escapes space, tab, newline and backslash as octal. */
const unescapeOctal = (field: string): string =>
  field.replace(/\\([0-7]{3})/g, (_, octal: string) => String.fromCharCode(parseInt(octal, 8)))

const readMounts = (): { dev: string; mount: Mount }[] => {
  let text: string
  try {
    text = fs.readFileSync('/proc/self/mountinfo', 'utf8')
  } catch {
    return []
  }
  const out: { dev: string; mount: Mount }[] = []
  for (const line of text.split('\n')) {
    const fields = line.split(' ')
    const dash = fields.indexOf('-')
    if (fields.length < 6 || dash < 0) continue
    const perMount = fields[5]!.split(',')
    const superOptions = (fields[dash + 3] ?? '').split(',')
    out.push({
      dev: fields[2]!,
      mount: { point: unescapeOctal(fields[4]!), writable: perMount.includes('rw') || superOptions.includes('rw') },
    })
  }
  return out
}

const readDir = (dir: string): string[] => {
  try {
    return fs.readdirSync(dir)
  } catch {
    return []
  }
}

const readLine = (file: string): string | undefined => {
  try {
    return fs.readFileSync(file, 'utf8').trim()
  } catch {
    return undefined
  }
}

/** The device and its partitions: sysfs directories with their major:minor. */
const withPartitions = (dev: string): { name: string; dev: string; sys: string }[] => {
  const sys = `/sys/dev/block/${dev}`
  let real: string
  try {
    real = fs.realpathSync(sys)
  } catch {
    return [{ name: dev, dev, sys }]
  }
  const own = { name: path.basename(real), dev, sys: real }
  const parts = readDir(real)
    .filter(entry => fs.existsSync(path.join(real, entry, 'partition')))
    .map(entry => ({ name: entry, dev: readLine(path.join(real, entry, 'dev')) ?? '', sys: path.join(real, entry) }))
  return [own, ...parts]
}

export interface KernelUsers {
  /** Mount points of the device or its partitions. */
  readonly mounts: readonly Mount[]
  /** Sentences such as "mounted on /mnt", "held by dm-0", "its partition loop3p1 is mounted on /x". */
  readonly uses: readonly string[]
}

/** Mounts and holders of the disk with this "major:minor" (and of its partitions). */
export const kernelUsers = (dev: string): KernelUsers => {
  const all = readMounts()
  const mounts: Mount[] = []
  const uses: string[] = []
  withPartitions(dev).forEach((d, i) => {
    const whose = i === 0 ? '' : `its partition ${d.name} is `
    for (const m of all.filter(m => m.dev === d.dev)) {
      mounts.push(m.mount)
      uses.push(`${whose}mounted${m.mount.writable ? '' : ' read-only'} on ${m.mount.point}`)
    }
    for (const holder of readDir(path.join(d.sys, 'holders'))) uses.push(`${i === 0 ? '' : `its partition ${d.name} is `}held by ${holder}`)
  })
  return { mounts, uses }
}

interface LoopOver {
  /** /dev/loopN. */
  readonly device: string
  readonly users: KernelUsers
}

/** Whether a backing file the kernel names is the device with this identity. */
const isBacking = (backing: string, target: DeviceIdentity): boolean => {
  let st: fs.Stats
  try {
    st = fs.statSync(backing)
  } catch {
    return false
  }
  if (target.kind === 'disk') return st.isBlockDevice() && st.rdev === target.rdev
  return st.isFile() && st.dev === target.dev && st.ino === target.ino
}

/** The loop devices whose backing file (or disk) is this one, with their users. */
export const loopsOver = (target: DeviceIdentity): LoopOver[] => {
  const out: LoopOver[] = []
  for (const entry of readDir('/sys/block').filter(e => e.startsWith('loop'))) {
    const backing = readLine(`/sys/block/${entry}/loop/backing_file`)
    if (!backing || !isBacking(backing, target)) continue
    const dev = readLine(`/sys/block/${entry}/dev`)
    const users = dev ? kernelUsers(dev) : { mounts: [], uses: [] }
    out.push({ device: `/dev/${entry}`, users })
  }
  return out
}

/** glibc's encoding of a "major:minor" as a dev_t, the inverse of majorMinor. */
const makeDev = (dev: string): number => {
  const [major, minor] = dev.split(':').map(n => BigInt(n)) as [bigint, bigint]
  return Number((minor & 0xffn) | ((major & 0xfffn) << 8n) | ((minor & ~0xffn) << 12n) | ((major & ~0xfffn) << 32n))
}

/** A device that shares bytes with a disk, and how, as a message says it. */
export interface Overlap {
  readonly identity: DeviceIdentity
  /** How it relates to the disk it was reached from. */
  readonly relation: 'itself' | 'partition' | 'whole disk' | 'under it' | 'backing' | 'loop over it'
  /** The backing file or disk's path, as the loop device names it. */
  readonly path?: string
  /** e.g. "its partition loop3p1", "its backing file /x/ro.img"; '' for the disk itself. */
  readonly how: string
}

const diskIdentity = (dev: string): DeviceIdentity => ({ kind: 'disk', dev: 0, ino: 0, rdev: makeDev(dev) })

/**
 * The disk with this "major:minor" and every device whose bytes a write to
 * it changes: its partitions, the whole disk it is a partition of, the
 * devices under it (device-mapper, md), a loop device's backing file or
 * disk, and the loop devices over any of these, followed to the end.
 */
export const overlapping = (dev: string): Overlap[] => {
  const seen = new Set<string>()
  const out: Overlap[] = []
  const queue: Overlap[] = []
  const add = (identity: DeviceIdentity, relation: Overlap['relation'], how: string, backing?: string): void => {
    const key = identity.kind === 'disk' ? `disk:${identity.rdev}` : `file:${identity.dev}:${identity.ino}`
    if (seen.has(key)) return
    seen.add(key)
    const o = { identity, relation, how, ...(backing !== undefined ? { path: backing } : {}) }
    out.push(o)
    queue.push(o)
  }
  add(diskIdentity(dev), 'itself', '')
  const via = (how: string, what: string): string => (how ? `${what}, via ${how}` : what)
  while (queue.length) {
    const { identity, relation, how } = queue.shift()!
    for (const loop of loopsOver(identity)) {
      const loopDev = readLine(`/sys/block/${path.basename(loop.device)}/dev`)
      if (loopDev) add(diskIdentity(loopDev), 'loop over it', via(how, `${loop.device}, a loop device over it`))
    }
    if (identity.kind !== 'disk') continue
    let real: string
    try {
      real = fs.realpathSync(`/sys/dev/block/${majorMinor(identity.rdev)}`)
    } catch {
      continue
    }
    const name = path.basename(real)
    const sysDev = (dir: string): string | undefined => readLine(path.join(dir, 'dev'))
    // The other partitions of a whole disk reached from one of them keep their bytes.
    for (const entry of relation === 'whole disk' ? [] : readDir(real)) {
      const d = fs.existsSync(path.join(real, entry, 'partition')) ? sysDev(path.join(real, entry)) : undefined
      if (d) add(diskIdentity(d), 'partition', via(how, `its partition ${entry}`))
    }
    if (fs.existsSync(path.join(real, 'partition'))) {
      const whole = sysDev(path.dirname(real))
      if (whole) add(diskIdentity(whole), 'whole disk', via(how, `its whole disk ${path.basename(path.dirname(real))}`))
    }
    for (const slave of readDir(path.join(real, 'slaves'))) {
      const d = readLine(`/sys/class/block/${slave}/dev`)
      if (d) add(diskIdentity(d), 'under it', via(how, `${slave}, under ${name}`))
    }
    const backing = readLine(path.join(real, 'loop', 'backing_file'))
    if (backing) {
      try {
        const st = fs.statSync(backing)
        const backingIdentity: DeviceIdentity = st.isBlockDevice()
          ? diskIdentity(majorMinor(st.rdev))
          : { kind: 'file', dev: st.dev, ino: st.ino, rdev: 0 }
        add(backingIdentity, 'backing', via(how, `its backing ${st.isBlockDevice() ? 'disk' : 'file'} ${backing}`), backing)
      } catch {
        // A backing file deleted since: nothing else can use it.
      }
    }
  }
  return out
}
