import t from 'tap'
import { BufferPool } from '../lib/nbd/buffer-pool.js'

t.test('large buffers are reused; small ones and strangers are not pooled', async t => {
  const pool = new BufferPool(4 << 20)
  const a = pool.acquire(1 << 20)
  t.equal(a.length, 1 << 20)
  pool.release(a)
  t.equal(pool.pooledBytes, 1 << 20)
  const b = pool.acquire(1000 * 1000)
  t.equal(b.buffer, a.buffer, 'the same memory comes back for a size of the same class')
  t.equal(b.length, 1000 * 1000)
  t.equal(pool.pooledBytes, 0)
  pool.release(b)
  pool.release(b)
  t.equal(pool.pooledBytes, 1 << 20, 'releasing twice does not pool twice')
  const small = pool.acquire(4096)
  pool.release(small)
  pool.release(Buffer.alloc(1 << 20))
  t.equal(pool.pooledBytes, 1 << 20, 'small buffers and buffers from elsewhere are ignored')
})

t.test('the pool keeps at most its limit', async t => {
  const pool = new BufferPool(2 << 20)
  const bufs = [pool.acquire(1 << 20), pool.acquire(1 << 20), pool.acquire(1 << 20)]
  for (const b of bufs) pool.release(b)
  t.equal(pool.pooledBytes, 2 << 20)
})
