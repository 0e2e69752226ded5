// GEOM's mesh as FreeBSD's kern.geom.confxml describes it: each provider
// with its access counts and the consumers attached to it, which say who
// uses it (sys/geom/geom_dump.c: g_conf_class, g_conf_geom,
// g_conf_consumer, g_conf_provider). Only text goes in; reading the sysctl
// is geom-users.ts's.
//
// The layout is fixed by geom_dump.c, line by line and indentation by
// indentation, and classes' own <config> blocks are not all escaped
// (g_gate.c prints a provider's info as it was given): structure is read
// from whole lines at their fixed indentation, and config blocks are
// skipped without being parsed.

export interface Access {
  readonly r: number
  readonly w: number
  readonly e: number
}

export interface GeomConsumer {
  /** The class of the geom that holds it: DEV (opens of /dev/NAME), VFS (a mount), PART, SWAP, ... */
  readonly className: string
  /** That geom's name: for VFS, "ffs.ada0p1" (file system type, provider). */
  readonly geom: string
  readonly mode: Access
}

export interface GeomProvider {
  readonly name: string
  readonly className: string
  readonly geom: string
  /** The sum of its consumers' counts. */
  readonly mode: Access
  readonly mediaSize: number
  readonly sectorSize: number
  readonly consumers: readonly GeomConsumer[]
}

class GeomMeshError extends Error {
  override readonly name = 'GeomMeshError'
}

const MODE = /^r(\d+)w(\d+)e(\d+)$/

const parseMode = (text: string, line: number): Access => {
  const m = MODE.exec(text)
  if (!m) throw new GeomMeshError(`kern.geom.confxml line ${line}: "${text}" is not an access mode rNwNeN`)
  return { r: Number(m[1]), w: Number(m[2]), e: Number(m[3]) }
}

/** g_conf_cat_escaped writes markup characters and every byte past 0x7e as &#xNN;. */
const unescapeXml = (text: string): string => {
  const bytes: number[] = []
  for (let i = 0; i < text.length; ) {
    const m = /^&#x([0-9A-Fa-f]{1,2});/.exec(text.slice(i, i + 6))
    if (m) {
      bytes.push(parseInt(m[1]!, 16))
      i += m[0].length
    } else {
      bytes.push(...Buffer.from(text[i]!))
      i++
    }
  }
  return Buffer.from(bytes).toString()
}

interface Element {
  readonly kind: 'consumer' | 'provider'
  readonly id: string
  ref?: string
  mode?: Access
  name?: string
  mediaSize?: number
  sectorSize?: number
}

/** One structural line: its indentation and tag, and what the tag holds. */
const LINE = /^( *\t? *)<(\/?)([a-z_]+)(?: (id|ref)="([^"]*)")?(\/?)>(?:(.*)<\/\3>)?$/

/** Providers by name, from the text of kern.geom.confxml; a GeomMeshError if it is not that. */
export const parseGeomMesh = (xml: string): Map<string, GeomProvider> => {
  const lines = xml.split('\n')
  if (lines[0] !== '<mesh>') throw new GeomMeshError('kern.geom.confxml does not start with <mesh>')
  let className: string | undefined
  let geom: { name?: string } | undefined
  let element: Element | undefined
  let skipUntil: string | undefined
  let ended = false
  const geomOf = new Map<Element, { className: string; geom: string }>()
  const elements: Element[] = []

  lines.forEach((text, index) => {
    const line = index + 1
    // The newline that ends the text leaves one empty line.
    if (index === 0 || (text === '' && index === lines.length - 1)) return
    if (skipUntil !== undefined) {
      if (text === skipUntil) skipUntil = undefined
      return
    }
    if (ended) throw new GeomMeshError(`kern.geom.confxml line ${line}: text after </mesh>`)
    const m = LINE.exec(text)
    if (!m) {
      if (element || geom) return
      throw new GeomMeshError(`kern.geom.confxml line ${line}: unexpected "${text}"`)
    }
    const [, indent, closing, tag, attribute, value, selfClosing, content] = m
    const where = `${indent}<${closing}${tag}>`
    if (tag === 'config' && !closing && !selfClosing && content === undefined) {
      skipUntil = `${indent}</config>`
      return
    }
    switch (where) {
      case '</mesh>':
        if (className !== undefined) throw new GeomMeshError(`kern.geom.confxml line ${line}: </mesh> inside a class`)
        ended = true
        return
      case '  <class>':
        className = ''
        return
      case '    <name>':
        if (className === undefined || geom) break
        className = unescapeXml(content ?? '')
        return
      case '  </class>':
        className = undefined
        return
      case '    <geom>':
        if (className === undefined) break
        geom = {}
        return
      case '      <class>':
      case '      <rank>':
      case '      <wither>':
        if (!geom) break
        return
      case '      <name>':
        if (!geom) break
        geom.name = unescapeXml(content ?? '')
        return
      case '    </geom>':
        geom = undefined
        return
      case '\t<consumer>':
      case '\t<provider>':
        if (!geom || element || attribute !== 'id' || value === undefined) break
        element = { kind: tag as Element['kind'], id: value }
        elements.push(element)
        geomOf.set(element, { className: className ?? '', geom: geom.name ?? '' })
        return
      case '\t</consumer>':
      case '\t</provider>':
        if (!element || element.kind !== tag) break
        if (!element.mode) throw new GeomMeshError(`kern.geom.confxml line ${line}: a ${tag} without <mode>`)
        if (tag === 'provider' && element.name === undefined)
          throw new GeomMeshError(`kern.geom.confxml line ${line}: a provider without <name>`)
        element = undefined
        return
      case '\t  <geom>':
        if (!element) break
        return
      case '\t  <provider>':
        if (element?.kind !== 'consumer' || attribute !== 'ref') break
        element.ref = value
        return
      case '\t  <mode>':
        if (!element) break
        element.mode = parseMode(content ?? '', line)
        return
      case '\t  <name>':
        if (element?.kind !== 'provider') break
        element.name = unescapeXml(content ?? '')
        return
      case '\t  <mediasize>':
        if (element?.kind !== 'provider') break
        element.mediaSize = Number(content)
        return
      case '\t  <sectorsize>':
        if (element?.kind !== 'provider') break
        element.sectorSize = Number(content)
        return
      default:
        // A field this reader does not know, inside a geom or an element.
        if (element || geom) return
    }
    throw new GeomMeshError(`kern.geom.confxml line ${line}: unexpected "${text.trim()}"`)
  })
  if (skipUntil !== undefined || !ended) throw new GeomMeshError('kern.geom.confxml ends before </mesh>')

  const byId = new Map<string, GeomConsumer[]>()
  for (const e of elements) {
    if (e.kind !== 'consumer' || e.ref === undefined) continue
    const list = byId.get(e.ref) ?? []
    list.push({ ...geomOf.get(e)!, mode: e.mode! })
    byId.set(e.ref, list)
  }
  const providers = new Map<string, GeomProvider>()
  for (const e of elements) {
    if (e.kind !== 'provider') continue
    const { className: cls, geom: geomName } = geomOf.get(e)!
    providers.set(e.name!, {
      name: e.name!,
      className: cls,
      geom: geomName,
      mode: e.mode!,
      mediaSize: e.mediaSize ?? 0,
      sectorSize: e.sectorSize ?? 0,
      consumers: byId.get(e.id) ?? [],
    })
  }
  return providers
}
