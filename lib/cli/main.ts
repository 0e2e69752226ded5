// The geom-rowr command line: arguments checked and normalised once, then
// handed to one verb. Exit status: 0 success, 1 failure, 2 usage error.
import yargs, { type Argv } from 'yargs'
import { checkSectorSize } from '../devices/device-pair.js'
import { checkName } from '../daemon/run-state.js'
import { create, type CreateArgs } from './create.js'
import { destroy } from './destroy.js'
import { list, status } from './list.js'
import { commit, diff, exportCommand, revert, type CommitArgs, type TargetArgs } from './lifecycle.js'
import { serve } from './serve.js'

export const EXIT_FAILURE = 1
export const EXIT_USAGE = 2

/** A mistake in the command line itself. */
class UsageError extends Error {}

const sectorSizeOption = {
  type: 'number',
  describe: 'sector size in bytes (a power of two, 512..65536); default: the larger of the two devices\' sector sizes',
} as const

const mapOptions = {
  map: { type: 'string', describe: 'keep the sector map in this file, and resume from it: changes survive destroy, reboot and crash' },
  'map-on-rw': {
    type: 'boolean',
    default: false,
    describe: "keep the sector map in RW's tail (RW must be larger than RO by about 1/2000 of RO's size)",
  },
  force: {
    type: 'boolean',
    default: false,
    describe: 'resume a map whose fingerprints do not match these devices (you vouch that they hold the same data)',
  },
} as const

const checkMap = (argv: { map?: string; 'map-on-rw'?: boolean; force?: boolean }): true => {
  if (argv.map !== undefined && argv['map-on-rw']) throw new UsageError('--map and --map-on-rw exclude each other: choose where the map lives')
  if (argv.force && argv.map === undefined && !argv['map-on-rw']) throw new UsageError('--force only applies to a map (--map or --map-on-rw)')
  return true
}

/** NAME, or a stopped device as --ro --rw and its map: the lifecycle commands' target. */
const targetOptions = (y: Argv, force: string): Argv =>
  y
    .option('ro', { type: 'string', describe: 'a stopped device\'s read-only device (with --rw and --map or --map-on-rw, in place of NAME)' })
    .option('rw', { type: 'string', describe: 'a stopped device\'s read-write device' })
    .option('map', { type: 'string', describe: 'a stopped device\'s map file' })
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

const build = (args: string[]): Argv =>
  yargs(args)
    .scriptName('geom-rowr')
    .usage('$0 <command> [options]\n\nMake a read-only block device writable: reads come from RO until a sector is written, then from RW.')
    .command(
      'create [options] <name> <ro> <rw>',
      'combine RO and RW into a new device NAME and print its path',
      y =>
        y
          .positional('name', { type: 'string', demandOption: true, describe: 'device name, e.g. rowr0' })
          .positional('ro', { type: 'string', demandOption: true, describe: 'read-only device or image (never written)' })
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
          .option('daemon-child', { type: 'boolean', hidden: true, default: false })
          .check(argv => checkMap(argv) && checkCommon(argv)),
      argv => create(argv as unknown as CreateArgs),
    )
    .command(
      'serve [options] <ro> <rw>',
      'serve RO+RW over NBD in the foreground, without a kernel device',
      y =>
        y
          .positional('ro', { type: 'string', demandOption: true })
          .positional('rw', { type: 'string', demandOption: true })
          .option('name', { type: 'string', describe: 'device and export name (default: the first free rowrN)' })
          .option('socket', { type: 'string', describe: 'Unix socket path (default: in the run directory)' })
          .option('port', { type: 'number', describe: 'serve over TCP on this port instead of a Unix socket' })
          .option('bind', { type: 'string', default: '127.0.0.1', describe: 'TCP address to bind with --port' })
          .option('sector-size', sectorSizeOption)
          .option('verbose', { alias: 'v', type: 'boolean', default: false, describe: 'log connections and errors' })
          .options(mapOptions)
          .conflicts('socket', 'port')
          .check(argv => {
            checkMap(argv)
            if (argv.port !== undefined && (!Number.isInteger(argv.port) || argv.port < 0 || argv.port > 65535)) {
              throw new UsageError(`--port ${argv.port} is not a TCP port (0..65535)`)
            }
            return checkCommon(argv)
          }),
      argv => serve(argv as unknown as Parameters<typeof serve>[0]),
    )
    .command(
      'destroy [options] <name>',
      'flush and tear down device NAME',
      y =>
        y
          .positional('name', { type: 'string', demandOption: true })
          .option('force', { alias: 'f', type: 'boolean', default: false, describe: 'even while mounted or open' }),
      argv => destroy(argv as unknown as Parameters<typeof destroy>[0]),
    )
    .command('list', 'list the devices', y => y, () => list())
    .command(
      'status [name]',
      'show devices with their statistics',
      y => y.positional('name', { type: 'string' }).option('json', { type: 'boolean', default: false }),
      argv => status(argv as unknown as Parameters<typeof status>[0]),
    )
    .command(
      'diff [name]',
      'list the written ranges (byte offsets and lengths)',
      y => targetOptions(y.positional('name', { type: 'string' }), 'resume a stopped device\'s map whose fingerprints do not match'),
      argv => diff(argv as unknown as TargetArgs),
    )
    .command(
      'revert [name]',
      'forget every write: the device reads as RO again',
      y => targetOptions(y.positional('name', { type: 'string' }), 'even while the device is open (or: accept a map whose fingerprints do not match)'),
      argv => revert(argv as unknown as TargetArgs),
    )
    .command(
      'commit [name]',
      'copy the written sectors into RO (the one command that writes RO), then empty the map',
      y =>
        targetOptions(
          y
            .positional('name', { type: 'string' })
            .option('yes', { alias: 'y', type: 'boolean', default: false, describe: 'do not ask for confirmation (needed without a terminal)' })
            .option('dry-run', { type: 'boolean', default: false, describe: 'make every check and print the ranges it would write; write nothing' }),
          'even while the device is open (or: accept a stopped device\'s map whose fingerprints do not match)',
        ),
      argv => commit(argv as unknown as CommitArgs),
    )
    .command(
      'export <first> [second]',
      'write the combined device to a new sparse image: export NAME FILE, or export --ro RO --rw RW --map MAP FILE',
      y =>
        targetOptions(
          y
            .positional('first', { type: 'string', demandOption: true, describe: 'NAME, or FILE for a stopped device' })
            .positional('second', { type: 'string', describe: 'FILE, after NAME' })
            .option('name', { type: 'string', hidden: true })
            .option('file', { type: 'string', hidden: true })
            .middleware(argv => {
              // export NAME FILE, or export FILE with --ro/--rw.
              if (argv.second !== undefined) Object.assign(argv, { name: argv.first, file: argv.second })
              else Object.assign(argv, { file: argv.first })
            }, true),
          'accept a stopped device\'s map whose fingerprints do not match',
        ),
      argv => exportCommand(argv as unknown as TargetArgs & { file: string }),
    )
    .demandCommand(1, 'give a command: create, serve, destroy, list, status, diff, revert, commit or export')
    .strict()
    .help()
    .alias('h', 'help')
    .version(false)
    .wrap(Math.min(100, process.stdout.columns || 100))
    .exitProcess(false)

/** Runs the command line; resolves to the exit status. */
export const main = async (args: string[]): Promise<number> => {
  const parser = build(args).fail((message: string | null, error: Error | undefined) => {
    // A handler's own failure passes through; anything yargs found wrong
    // with the command line (including our checks) is a usage error. Either
    // way this must throw, or yargs goes on to run the handler.
    if (error && !(error instanceof UsageError) && error.name !== 'YError') throw error
    throw new UsageError(message ?? error?.message ?? 'usage error')
  })
  try {
    await parser.parseAsync()
  } catch (e) {
    if (e instanceof UsageError) {
      process.stderr.write(`geom-rowr: ${e.message}\nRun 'geom-rowr --help' for usage.\n`)
      return EXIT_USAGE
    }
    process.stderr.write(`geom-rowr: ${e instanceof Error ? e.message : String(e)}\n`)
    return EXIT_FAILURE
  }
  return process.exitCode === undefined ? 0 : Number(process.exitCode)
}
