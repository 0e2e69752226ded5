// Other processes, as far as this one can tell.
import { errnoCode } from './errors.js'

/** Whether process `pid` exists (EPERM: it does, but belongs to someone else). */
export const processAlive = (pid: number): boolean => {
  try {
    process.kill(pid, 0)
    return true
  } catch (e) {
    return errnoCode(e) === 'EPERM'
  }
}
