// setsockopt on an accepted Unix-socket connection through Node's handle.
import net from 'node:net'
import path from 'node:path'
import t from 'tap'
import { enlargeSocketBuffers } from '../native-bindings/socket-buffers.js'
import { shortDir } from './fixtures/helpers.js'

t.test('an accepted Unix-socket connection gets larger buffers', async t => {
  const socketPath = path.join(shortDir(t), 's.sock')
  const accepted = new Promise<boolean>(resolve => {
    const server = net.createServer(socket => {
      resolve(enlargeSocketBuffers(socket, 1 << 20))
      socket.destroy()
      server.close()
    })
    server.listen(socketPath, () => net.connect(socketPath).on('error', () => undefined))
  })
  t.equal(await accepted, true, 'setsockopt accepted SO_SNDBUF and SO_RCVBUF')
})

t.test('a socket without a descriptor is left alone', async t => {
  t.equal(enlargeSocketBuffers(new net.Socket(), 1 << 20), false)
})
