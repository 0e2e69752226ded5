// errno numbers to names, from the running platform's own table.
import { constants } from 'node:os'

const names = new Map<number, string>()
for (const [name, value] of Object.entries(constants.errno)) {
  if (!names.has(value)) names.set(value, name)
}

export const errnoName = (errno: number): string => names.get(errno) ?? `errno ${errno}`
