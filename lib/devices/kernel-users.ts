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
const unescapeOctal = (field: string): string => field.replace(/\\([0-7]{3})/g, (_, octal: string) => String.fromCharCode(parseInt(octal, 8)))

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
    out.push({ dev: fields[2]!, mount: { point: unescapeOctal(fields[4]!), writable: perMount.includes('rw') || superOptions.includes('rw') } })
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
