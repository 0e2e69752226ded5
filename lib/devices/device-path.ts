// Device arguments as geom(8) takes them: a path, or a bare device name
// that lives in /dev (md0, md1.uzip, loop3).
import fs from 'node:fs'
import path from 'node:path'

export const resolveDevicePath = (arg: string): string => {
  if (!arg.includes('/') && !fs.existsSync(arg) && fs.existsSync(path.join('/dev', arg))) {
    return path.join('/dev', arg)
  }
  return path.resolve(arg)
}

/** The read-write device argument: a device as above, or the word auto. */
export const resolveRwPath = (arg: string): string => (arg === 'auto' ? 'auto' : resolveDevicePath(arg))
