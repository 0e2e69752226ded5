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
