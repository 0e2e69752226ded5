// Byte counts as people read them.

/** 1536 -> "1.5 KiB"; under 1 KiB, "N B". */
export const human = (bytes: number): string => {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB']
  let v = bytes
  let u = 0
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024
    u++
  }
  return u === 0 ? `${bytes} B` : `${v.toFixed(1)} ${units[u]}`
}

const UNITS: Record<string, number> = { '': 1, K: 1024, M: 1024 ** 2, G: 1024 ** 3, T: 1024 ** 4 }

/** "64M" -> 67108864: a count of bytes with an optional K, M, G or T (powers of 1024); null when it is not one. */
export const parseBytes = (text: string): number | null => {
  const m = /^(\d+)([KMGT]?)$/i.exec(text.trim())
  if (!m) return null
  const n = Number(m[1]) * UNITS[m[2]!.toUpperCase()]!
  return Number.isSafeInteger(n) ? n : null
}
