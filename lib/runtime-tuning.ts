// Process-wide settings of the Node.js runtime that the daemon's speed and
// memory depend on, each chosen by measuring with fio over NBD (the figures:
// bench/results/design-figures.md).

/**
 * libuv's thread pool serves the engine's file I/O; it must be sized before
 * it first runs, so the command imports this module first. Large writes keep
 * more threads busy than libuv's default of 4 and ran faster with 8; small
 * random I/O did not change (cached reads bypass the pool). A size the user
 * set is kept.
 */
const THREAD_POOL_SIZE = 8

process.env.UV_THREADPOOL_SIZE ??= String(THREAD_POOL_SIZE)

/**
 * V8 flags for the daemon: a young generation of fixed size from the start.
 * Left to grow, it made the daemon's RSS climb during the first seconds of
 * random reads and writes, which looks like a leak; of fixed size, RSS is
 * flat from the start. Only command-line flags size it
 * (v8.setFlagsFromString comes too late), so `create` starts the daemon with
 * them and the command's #! line passes them too.
 */
export const DAEMON_NODE_FLAGS: readonly string[] = ['--min-semi-space-size=16', '--max-semi-space-size=16']
