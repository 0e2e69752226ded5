// The geom-rowr command line: arguments checked and normalised once, then
// handed to one verb. Exit status: 0 success, 1 failure, 2 usage error.
import fs from 'node:fs'
import yargs, { type Argv } from 'yargs'
import { checkSectorSize } from '../devices/device-pair.js'
import { checkName } from '../daemon/run-state.js'
import { failureMessage } from '../failure-message.js'
import { create, type CreateArgs } from './create.js'
import { destroy } from './destroy.js'
import { list, status } from './list.js'
import { commit, diff, exportCommand, revert, type CommitArgs, type ExportArgs, type TargetArgs } from './lifecycle.js'
import { serve } from './serve.js'
import { reset } from './reset.js'
import { hydrate } from './hydrate.js'
import { DEFAULT_SHARE } from '../engine/hydration.js'
import { parseBytes } from '../units.js'

const EXIT_FAILURE = 1
const EXIT_USAGE = 2

/** A mistake in the command line itself. */
class UsageError extends Error {}

const sectorSizeOption = {
  type: 'number',
  describe: "sector size in bytes (a power of two, 512..65536); default: the larger of the two devices' sector sizes",
} as const

const mapOptions = {
  map: { type: 'string', describe: 'keep the sector map in this file, and resume from it: changes survive destroy, reboot and crash' },
  'map-on-rw': {
    type: 'boolean',
    default: false,
    describe: "keep the sector map in RW's tail (RW must be larger than RO by about 1/1000 of RO's size)",
  },
  force: {
    type: 'boolean',
    default: false,
    describe:
      "resume a map although RO or RW is not the one it was made with (you vouch that they are its devices); RW then carries the map's ID",
  },
  'discard-map': {
    type: 'boolean',
    default: false,
    describe:
      "start over: a new, empty map in place of what the map holds (damaged or not), and RW taken as empty, even if it holds another map's changes; those changes are lost",
  },
} as const

/** A rate in bytes per second, from the word the user typed: N with an optional K, M, G or T. */
const parseRate = (option: string, value: string): number => {
  const rate = parseBytes(value)
  if (rate === null) throw new UsageError(`${option} ${value} is not a rate: give bytes per second as N, NK, NM or NG (0: no limit)`)
  return rate
}

/** A share of the time, in percent, from the word the user typed. */
const checkShare = (option: string, value: number): void => {
  if (!(value > 0 && value <= 100)) throw new UsageError(`${option} ${value} is not a share: give a percentage above 0, at most 100`)
}

const hydrationOptions = {
  hydrate: { type: 'boolean', default: false, describe: 'copy RO to RW in the background; once every sector is on RW, RO is released' },
  'hydrate-rate': { type: 'string', default: '0', describe: 'limit hydration to this many bytes per second (N[KMG]; 0: no limit)' },
  'hydrate-share': {
    type: 'number',
    default: DEFAULT_SHARE * 100,
    describe: 'the share of the time hydration keeps while clients are busy, in percent (it yields to them, but never below this)',
  },
  'copy-on-read': { type: 'boolean', default: false, describe: 'a read of RO data also copies it to RW' },
} as const

const checkHydration = (argv: { ro?: string; rw?: string; map?: string; 'hydrate-rate'?: string; 'hydrate-share'?: number }): true => {
  if (argv.ro === 'none' && argv.map === undefined) {
    throw new UsageError("RO none (a fully hydrated device resumed without its RO) needs the device's map file: --map FILE")
  }
  if (argv.ro === 'none' && argv.rw === 'auto') throw new UsageError("RO none needs the device's RW, which holds all of it: not auto")
  parseRate('--hydrate-rate', argv['hydrate-rate'] ?? '0')
  checkShare('--hydrate-share', argv['hydrate-share'] ?? DEFAULT_SHARE * 100)
  return true
}

/** The command line's hydration words as the verbs take them. */
const withRate = <T extends { 'hydrate-rate'?: string }>(argv: T): T & { 'hydrate-rate': number } => ({
  ...argv,
  'hydrate-rate': parseRate('--hydrate-rate', argv['hydrate-rate'] ?? '0'),
})

const checkMap = (argv: { map?: string; 'map-on-rw'?: boolean; force?: boolean; 'discard-map'?: boolean }): true => {
  if (argv.map !== undefined && argv['map-on-rw'])
    throw new UsageError('--map and --map-on-rw exclude each other: choose where the map lives')
  if (argv.force && argv.map === undefined && !argv['map-on-rw'])
    throw new UsageError('--force only applies to a map (--map or --map-on-rw)')
  if (argv.force && argv['discard-map']) {
    throw new UsageError("--force (resume the map's changes) and --discard-map (throw them away) exclude each other: choose one")
  }
  return true
}

/** NAME, or a stopped device as --ro --rw and its map: the lifecycle commands' target. */
const targetOptions = (y: Argv, force: string): Argv =>
  y
    .option('ro', {
      type: 'string',
      describe: "a stopped device's read-only device (with --rw and --map or --map-on-rw, in place of NAME)",
    })
    .option('rw', { type: 'string', describe: "a stopped device's read-write device" })
    .option('map', { type: 'string', describe: "a stopped device's map file" })
    .option('map-on-rw', { type: 'boolean', default: false, describe: "a stopped device's map is in RW's tail" })
    .option('force', { alias: 'f', type: 'boolean', default: false, describe: force })
    .option('json', { type: 'boolean', default: false, describe: 'print the result as JSON' })
    .check(argv => {
      const offline = argv.ro !== undefined || argv.rw !== undefined || argv.map !== undefined || argv['map-on-rw'] === true
      if (argv.name !== undefined && offline) throw new UsageError('give NAME or --ro/--rw/--map, not both')
      if (argv.name === undefined && !offline) throw new UsageError('give NAME, or a stopped device as --ro RO --rw RW --map MAP')
      if (offline && (argv.ro === undefined || argv.rw === undefined)) throw new UsageError('a stopped device needs both --ro and --rw')
      if (offline && (argv.map === undefined) === (argv['map-on-rw'] !== true)) {
        throw new UsageError('a stopped device needs its map: --map MAP or --map-on-rw (one of them)')
      }
      if (argv.name !== undefined) checked(() => checkName(argv.name as string))
      return true
    })

/**
 * An option nobody declared takes the next word as its value (`create
 * --hydrate NAME RO RW` would lose NAME), and yargs would then complain
 * about the positionals instead: undeclared options are named first, before
 * yargs validates anything.
 */
const rejectUnknownOptions = (args: readonly string[], command: string, y: Argv) => (): void => {
  // getOptions is yargs's, though its types leave it out.
  const o = (y as unknown as { getOptions(): { key: Record<string, unknown>; alias: Record<string, string[]> } }).getOptions()
  const known = new Set([...Object.keys(o.key), ...Object.values(o.alias).flat(), 'help', 'h'])
  for (const a of args) {
    if (a === '--') break
    if (!a.startsWith('-') || a === '-') continue
    const name = a.replace(/^--?/, '').split('=')[0]!
    const unknown = a.startsWith('--')
      ? !known.has(name) && !(name.startsWith('no-') && known.has(name.slice(3)))
      : [...name].some(c => !known.has(c))
    if (unknown) throw new UsageError(`${command}: unknown option ${a.split('=')[0]}`)
  }
}

/** A TCP port, from the word the user typed. */
const parsePort = (value: string): number => {
  const port = /^\d+$/.test(value) ? Number(value) : NaN
  if (!(port >= 0 && port <= 65535)) throw new UsageError(`--port ${value} is not a TCP port (0..65535)`)
  return port
}

/** The version in geom-rowr's package.json, the nearest one above this module (compiled or not). */
const packageVersion = (): string => {
  for (let dir = new URL('.', import.meta.url); ; dir = new URL('..', dir)) {
    const file = new URL('package.json', dir)
    if (fs.existsSync(file)) {
      const pkg = JSON.parse(fs.readFileSync(file, 'utf8')) as { name?: string; version: string }
      if (pkg.name === 'geom-rowr') return pkg.version
    }
    if (dir.pathname === '/') throw new Error('geom-rowr: no package.json of geom-rowr above this program')
  }
}

const checked = <T>(check: () => T): T => {
  try {
    return check()
  } catch (e) {
    throw new UsageError((e as Error).message)
  }
}

const checkCommon = (argv: { name?: string; 'sector-size'?: number }): true => {
  if (argv.name !== undefined) checked(() => checkName(argv.name!))
  if (argv['sector-size'] !== undefined) checked(() => checkSectorSize(argv['sector-size']!))
  return true
}

const COMMANDS = 'create, serve, destroy, list, status, reset, hydrate, diff, revert, commit or export'

const build = (args: string[]): Argv => {
  /**
   * The chosen command's check for undeclared options: run before the
   * command's middleware and, when yargs finds the command line wrong, before
   * its own complaint, so an option that swallowed a word is what is named.
   */
  let undeclaredOptions: (() => void) | undefined
  const strictly = (command: string, y: Argv): (() => void) => (undeclaredOptions = rejectUnknownOptions(args, command, y))
  return yargs(args)
    .scriptName('geom-rowr')
    .usage('$0 <command> [options]\n\nMake a read-only block device writable: reads come from RO until a sector is written, then from RW.')
    .command(
      'create <name> <ro> <rw>',
      'combine RO and RW into a new device NAME and print its path',
      y =>
        y
          .positional('name', { type: 'string', demandOption: true, describe: 'device name, e.g. rowr0' })
          .positional('ro', {
            type: 'string',
            demandOption: true,
            describe: "read-only device or image (never written); 'none' for a fully hydrated device's map (with --map)",
          })
          .positional('rw', {
            type: 'string',
            demandOption: true,
            describe: "read-write device or file at least RO's size, or 'auto' to make a sparse one",
          })
          .option('verbose', { alias: 'v', type: 'boolean', default: false, describe: 'stay in the foreground and log' })
          .option('sector-size', sectorSizeOption)
          .option('attach', {
            type: 'boolean',
            default: true,
            describe: 'attach a kernel block device (--no-attach: serve NBD only and print its URI)',
          })
          .options(mapOptions)
          .options(hydrationOptions)
          .option('systemd-mark', {
            type: 'boolean',
            default: false,
            describe: "the daemon serves the root file system: its argv[0] begins with '@', so systemd's shutdown does not kill it",
          })
          .middleware(strictly('create', y), true)
          .check(argv => {
            if (argv['systemd-mark'] && argv.verbose) {
              throw new UsageError(
                "--systemd-mark marks the background daemon; with -v, start geom-rowr with an argv[0] that begins with '@' (exec -a @geom-rowr ...)",
              )
            }
            return checkMap(argv) && checkHydration(argv) && checkCommon(argv)
          }),
      argv => create(withRate(argv) as unknown as CreateArgs),
    )
    .command(
      'serve <ro> <rw>',
      'serve RO+RW over NBD in the foreground, without a kernel device',
      y =>
        y
          .positional('ro', { type: 'string', demandOption: true })
          .positional('rw', { type: 'string', demandOption: true })
          .option('name', { type: 'string', describe: 'device and export name (default: the first free rowrN)' })
          .option('socket', { type: 'string', describe: 'Unix socket path (default: in the run directory)' })
          .option('port', { type: 'string', describe: 'serve over TCP on this port instead of a Unix socket' })
          .option('bind', { type: 'string', default: '127.0.0.1', describe: 'TCP address to bind with --port' })
          .option('sector-size', sectorSizeOption)
          .option('verbose', { alias: 'v', type: 'boolean', default: false, describe: 'log connections and errors' })
          .options(mapOptions)
          .options(hydrationOptions)
          .conflicts('socket', 'port')
          .middleware(strictly('serve', y), true)
          .check(argv => {
            checkMap(argv)
            checkHydration(argv)
            if (argv.port !== undefined) parsePort(argv.port)
            return checkCommon(argv)
          }),
      argv =>
        serve({ ...withRate(argv), port: argv.port === undefined ? undefined : parsePort(argv.port) } as unknown as Parameters<
          typeof serve
        >[0]),
    )
    .command(
      'destroy <names..>',
      'flush and tear down each device NAME, in order',
      y =>
        y
          .positional('names', { type: 'string', array: true, demandOption: true, describe: 'one or more device names' })
          .option('force', { alias: 'f', type: 'boolean', default: false, describe: 'even while mounted or open' })
          .middleware(strictly('destroy', y), true)
          .check(argv => {
            for (const name of argv.names) checked(() => checkName(String(name)))
            return true
          }),
      argv => destroyAll(argv.names.map(String), argv.force),
    )
    .command(
      'list',
      'list the devices',
      y =>
        y
          .option('json', { type: 'boolean', default: false, describe: "print an array of the objects 'status --json NAME' prints" })
          .middleware(strictly('list', y), true),
      argv => list({ json: argv.json }),
    )
    .command(
      'status [name]',
      'show devices with their statistics',
      y =>
        y
          .positional('name', { type: 'string' })
          .option('json', { type: 'boolean', default: false })
          .middleware(strictly('status', y), true),
      argv => status(argv as unknown as Parameters<typeof status>[0]),
    )
    .command(
      'reset <name>',
      'clear the statistics and I/O error counts of device NAME: a degraded device is ok again',
      y =>
        y
          .positional('name', { type: 'string', demandOption: true })
          .middleware(strictly('reset', y), true)
          .check(argv => checkCommon(argv)),
      argv => reset(argv as unknown as Parameters<typeof reset>[0]),
    )
    .command(
      'hydrate <name>',
      'copy RO to RW in the background (start or resume it, unless --pause), then release RO; --rate, --share and --copy-on-read change its settings',
      y =>
        y
          .positional('name', { type: 'string', demandOption: true })
          .option('rate', { type: 'string', describe: 'limit the copy to this many bytes per second (N[KMG]; 0: no limit)' })
          .option('share', { type: 'number', describe: 'the share of the time the copy keeps while clients are busy, in percent' })
          .option('pause', { type: 'boolean', default: false, describe: 'pause the copy (its progress is kept)' })
          .option('resume', {
            type: 'boolean',
            default: false,
            describe: 'start or resume the copy, retrying after a failure (what hydrate does without --pause)',
          })
          .option('copy-on-read', { type: 'string', choices: ['on', 'off'], describe: 'whether a read of RO data also copies it to RW' })
          .option('wait', {
            type: 'boolean',
            default: false,
            describe: 'wait until it is done (or fails or is paused), with a progress bar on a terminal',
          })
          .middleware(strictly('hydrate', y), true)
          .check(argv => {
            if (argv.pause && (argv.resume || argv.wait))
              throw new UsageError(`--pause excludes ${argv.resume ? '--resume' : '--wait'}: pause, or resume (and wait), not both`)
            if (argv.rate !== undefined) parseRate('--rate', argv.rate)
            if (argv.share !== undefined) checkShare('--share', argv.share)
            return checkCommon(argv)
          }),
      argv =>
        hydrate({
          name: argv.name,
          action: argv.pause ? 'pause' : 'start',
          ...(argv.rate !== undefined ? { rate: parseRate('--rate', argv.rate) } : {}),
          ...(argv.share !== undefined ? { share: argv.share / 100 } : {}),
          ...(argv['copy-on-read'] !== undefined ? { copyOnRead: argv['copy-on-read'] === 'on' } : {}),
          wait: argv.wait,
        }),
    )
    .command(
      'diff [name]',
      'list the written ranges (byte offsets and lengths)',
      y =>
        targetOptions(y.positional('name', { type: 'string' }), "resume a stopped device's map whose fingerprints do not match").middleware(
          strictly('diff', y),
          true,
        ),
      argv => diff(argv as unknown as TargetArgs),
    )
    .command(
      'revert [name]',
      'forget every write: the device reads as RO again',
      y =>
        targetOptions(
          y.positional('name', { type: 'string' }),
          'even while the device is open (or: accept a map whose fingerprints do not match)',
        ).middleware(strictly('revert', y), true),
      argv => revert(argv as unknown as TargetArgs),
    )
    .command(
      'commit [name]',
      'copy the written sectors into RO (the one command that writes RO), then empty the map',
      y =>
        targetOptions(
          y
            .positional('name', { type: 'string' })
            .option('yes', {
              alias: 'y',
              type: 'boolean',
              default: false,
              describe: 'do not ask for confirmation (needed without a terminal)',
            })
            .option('dry-run', {
              type: 'boolean',
              default: false,
              describe: 'make every check and print the ranges it would write; write nothing',
            }),
          "even while the device is open (or: accept a stopped device's map whose fingerprints do not match)",
        ).middleware(strictly('commit', y), true),
      argv => commit(argv as unknown as CommitArgs),
    )
    .command(
      'export <first> [second]',
      'write the combined device to a new sparse image: export NAME FILE, or export --ro RO --rw RW --map MAP FILE; with --to-device, onto an existing disk',
      y =>
        targetOptions(
          y
            .positional('first', { type: 'string', demandOption: true, describe: 'NAME, or FILE for a stopped device' })
            .positional('second', { type: 'string', describe: 'FILE, after NAME' })
            .option('name', { type: 'string', hidden: true })
            .option('file', { type: 'string', hidden: true })
            .option('to-device', {
              type: 'boolean',
              default: false,
              describe:
                "FILE is an existing disk device at least the device's size: overwrite it with every byte of the device (refused while it is mounted or in use)",
            })
            .middleware(argv => {
              // export NAME FILE, or export FILE with --ro/--rw.
              if (argv.second !== undefined) Object.assign(argv, { name: argv.first, file: argv.second })
              else Object.assign(argv, { file: argv.first })
            }, true),
          "accept a stopped device's map whose fingerprints do not match",
        ).middleware(strictly('export', y), true),
      argv => exportCommand(argv as unknown as ExportArgs),
    )
    .demandCommand(1, `give a command: ${COMMANDS}`)
    .strict()
    .help()
    .alias('h', 'help')
    .version('version', 'print the version', `geom-rowr ${packageVersion()}`)
    .wrap(Math.min(100, process.stdout.columns || 100))
    .exitProcess(false)
    .fail((message: string | null, error: Error | undefined) => {
      // A handler's own failure passes through; anything yargs found wrong
      // with the command line (including our checks) is a usage error. Either
      // way this must throw, or yargs goes on to run the handler.
      if (error && !(error instanceof UsageError) && error.name !== 'YError') throw error
      undeclaredOptions?.()
      const text = message ?? error?.message ?? 'usage error'
      // What strict mode calls unknown, once every option is declared, is a
      // word past the command's positional arguments.
      const extra = /^Unknown arguments?: (.*)$/.exec(text)
      if (!extra) throw new UsageError(text)
      // No command's builder ran: the first word names no command.
      if (!undeclaredOptions) throw new UsageError(`unknown command ${String(args[0])}; the commands are ${COMMANDS}`)
      throw new UsageError(`${String(args[0])}: unexpected argument${extra[1]!.includes(',') ? 's' : ''} ${extra[1]}`)
    })
}

/** Each NAME in turn; one that fails does not keep the others from being destroyed. */
const destroyAll = async (names: string[], force: boolean): Promise<void> => {
  const failed: string[] = []
  for (const name of names) {
    try {
      await destroy({ name, force })
    } catch (e) {
      if (names.length === 1) throw e
      process.stderr.write(`geom-rowr: ${failureMessage(e)}\n`)
      failed.push(name)
    }
  }
  if (failed.length) throw new Error(`not destroyed: ${failed.join(', ')}`)
}

/** Runs the command line; resolves to the exit status. */
export const main = async (args: string[]): Promise<number> => {
  const parser = build(args)
  try {
    await parser.parseAsync()
  } catch (e) {
    if (e instanceof UsageError) {
      process.stderr.write(`geom-rowr: ${e.message}\nRun 'geom-rowr --help' for usage.\n`)
      return EXIT_USAGE
    }
    process.stderr.write(`geom-rowr: ${failureMessage(e)}\n`)
    return EXIT_FAILURE
  }
  return process.exitCode === undefined ? 0 : Number(process.exitCode)
}
