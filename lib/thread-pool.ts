// The size of libuv's thread pool, which serves the engine's file I/O. It
// must be set before the pool first runs, so the command imports this first.
//
// Measured with fio over NBD on a 2-core VM (bench/, and README): 1 MiB
// sequential writes reached 1298 MiB/s with libuv's default of 4 threads and
// 1786 MiB/s with 8, as more writes can wait in the kernel at once (page
// cache allocation, dirty-page throttling); 4K random reads and writes were
// the same within noise, as cached reads bypass the pool. A size the user
// set is kept.
export const THREAD_POOL_SIZE = 8

process.env.UV_THREADPOOL_SIZE ??= String(THREAD_POOL_SIZE)
