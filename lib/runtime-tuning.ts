// Process-wide settings of the Node.js runtime that the daemon's speed and
// memory depend on, each measured with fio over NBD on a 2-core VM.

/**
 * libuv's thread pool serves the engine's file I/O; it must be sized before
 * it first runs, so the command imports this module first. 1 MiB writes over
 * existing blocks went from 1298 MiB/s with libuv's default of 4 threads to
 * 1786 MiB/s with 8; 4K random reads and writes were the same within noise
 * (cached reads bypass the pool). A size the user set is kept.
 */
const THREAD_POOL_SIZE = 8

process.env.UV_THREADPOOL_SIZE ??= String(THREAD_POOL_SIZE)

/**
 * V8 flags for the daemon: a young generation of fixed size from the start.
 * Left to grow, it made the daemon's RSS climb from 96 MB to 110 MB over the
 * first 25 s of 64K random reads and writes (flat afterwards); fixed at
 * 16 MiB, RSS was 123 MB at 10 s and at 40 s. Only command-line flags size it
 * (v8.setFlagsFromString comes too late), so `create` starts the daemon with
 * them and the command's #! line passes them too.
 */
export const DAEMON_NODE_FLAGS: readonly string[] = ['--min-semi-space-size=16', '--max-semi-space-size=16']
