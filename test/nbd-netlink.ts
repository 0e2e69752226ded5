// The generic netlink messages for Linux's nbd driver, byte for byte: each
// expected message is written out by hand from the layouts in
// <linux/netlink.h>, <linux/genetlink.h> and <linux/nbd-netlink.h>.
import { endianness } from 'node:os'
import t from 'tap'
import {
  errorCode,
  getFamilyRequest,
  nbdConnectRequest,
  nbdDisconnectRequest,
  nbdReconfigureRequest,
  parseConnectIndex,
  parseFamilyId,
  parseMessages,
  parseStatusConnected,
} from '../lib/attach/nbd-netlink-codec.js'

/** Hex with spaces and comments (`# ...` to the end of a line) allowed. */
const hex = (s: string): Buffer => Buffer.from(s.replace(/#[^\n]*/g, '').replace(/\s+/g, ''), 'hex')

t.test('little-endian hosts (the byte order of every expected message here)', async t => {
  if (endianness() !== 'LE') {
    t.plan(0, 'skipped: a big-endian host')
    return
  }

  t.test('CTRL_CMD_GETFAMILY for "nbd"', async t => {
    t.same(
      getFamilyRequest(0x01020304),
      hex(`
        1c000000 1000 0500 04030201 00000000   # nlmsghdr: 28 bytes, GENL_ID_CTRL, REQUEST|ACK, seq, port 0
        03 02 0000                             # genlmsghdr: CTRL_CMD_GETFAMILY, version 2
        0800 0200 6e626400                     # CTRL_ATTR_FAMILY_NAME "nbd\\0"
      `),
    )
  })

  t.test('NBD_CMD_CONNECT with every attribute, the kernel choosing the device', async t => {
    const m = nbdConnectRequest(0x1a, 7, {
      sizeBytes: 64 << 20,
      blockSizeBytes: 4096,
      serverFlags: 0x01ed,
      timeoutSeconds: 0,
      deadConnTimeoutSeconds: 3600,
      socketFds: [5],
    })
    t.same(
      m,
      hex(`
        60000000 1a00 0500 07000000 00000000   # nlmsghdr: 96 bytes, family 0x1a, REQUEST|ACK, seq 7
        01 01 0000                             # NBD_CMD_CONNECT, NBD_GENL_VERSION
        0c00 0200 0000000400000000             # NBD_ATTR_SIZE_BYTES: 64 MiB
        0c00 0300 0010000000000000             # NBD_ATTR_BLOCK_SIZE_BYTES: 4096
        0c00 0400 0000000000000000             # NBD_ATTR_TIMEOUT: 0
        0c00 0500 ed01000000000000             # NBD_ATTR_SERVER_FLAGS
        0c00 0800 100e000000000000             # NBD_ATTR_DEAD_CONN_TIMEOUT: 3600
        1000 0780                              # NBD_ATTR_SOCKETS, nested: 16 bytes
          0c00 0180                            #   NBD_SOCK_ITEM, nested: 12 bytes
            0800 0100 05000000                 #     NBD_SOCK_FD: 5
      `),
    )
  })

  t.test('NBD_CMD_CONNECT for a given device starts with NBD_ATTR_INDEX', async t => {
    const m = nbdConnectRequest(0x1a, 1, {
      index: 3,
      sizeBytes: 512,
      blockSizeBytes: 512,
      serverFlags: 1,
      timeoutSeconds: 0,
      deadConnTimeoutSeconds: 0,
      socketFds: [9, 10],
    })
    t.equal(m.readUInt32LE(0), m.length, 'nlmsg_len is the whole message')
    t.same(m.subarray(20, 28), hex('0800 0100 03000000'), 'NBD_ATTR_INDEX 3 first')
    t.same(
      m.subarray(m.length - 28),
      hex('1c00 0780  0c00 0180 0800 0100 09000000  0c00 0180 0800 0100 0a000000'),
      'two sockets, each in its own NBD_SOCK_ITEM',
    )
  })

  t.test('NBD_CMD_RECONFIGURE and NBD_CMD_DISCONNECT', async t => {
    t.same(
      nbdReconfigureRequest(0x1a, 2, 0, 12, 3600),
      hex(`
        38000000 1a00 0500 02000000 00000000   # 56 bytes
        03 01 0000                             # NBD_CMD_RECONFIGURE
        0800 0100 00000000                     # NBD_ATTR_INDEX 0
        0c00 0800 100e000000000000             # NBD_ATTR_DEAD_CONN_TIMEOUT 3600
        1000 0780 0c00 0180 0800 0100 0c000000 # NBD_ATTR_SOCKETS / NBD_SOCK_ITEM / NBD_SOCK_FD 12
      `),
    )
    t.same(
      nbdDisconnectRequest(0x1a, 3, 2),
      hex(`
        1c000000 1a00 0500 03000000 00000000
        02 01 0000                             # NBD_CMD_DISCONNECT
        0800 0100 02000000                     # NBD_ATTR_INDEX 2
      `),
    )
  })

  t.test("the controller's reply to GETFAMILY, with its acknowledgement in the same datagram", async t => {
    const datagram = hex(`
      3c000000 1000 0000 04030201 e8030000   # nlmsghdr: 60 bytes, GENL_ID_CTRL, seq, port 1000
      01 02 0000                             # CTRL_CMD_NEWFAMILY
      0800 0200 6e626400                     # CTRL_ATTR_FAMILY_NAME "nbd"
      0600 0100 1a00 0000                    # CTRL_ATTR_FAMILY_ID 0x1a (2 bytes, padded)
      0800 0300 01000000                     # CTRL_ATTR_VERSION 1
      0800 0400 00000000                     # CTRL_ATTR_HDRSIZE 0
      0800 0500 09000000                     # CTRL_ATTR_MAXATTR 9
      24000000 0200 0001 04030201 e8030000   # NLMSG_ERROR, flags CAPPED: 36 bytes
      00000000                               # error 0: the acknowledgement
      1c000000 1000 0500 04030201 00000000   # the request's header
    `)
    const [reply, ack, ...rest] = parseMessages(datagram)
    t.same(rest, [], 'two messages')
    t.equal(reply!.type, 0x10)
    t.equal(reply!.seq, 0x01020304)
    t.equal(parseFamilyId(reply!), 0x1a, 'the family id')
    t.equal(ack!.type, 2, 'then NLMSG_ERROR')
    t.equal(errorCode(ack!), 0, 'an acknowledgement')
  })

  t.test('an error answer carries the negative errno', async t => {
    const [m] = parseMessages(hex('24000000 0200 0001 05000000 e8030000 feffffff 18000000 1000 0500 05000000 00000000'))
    t.equal(errorCode(m!), -2, 'ENOENT: no such family (the nbd module is not loaded)')
  })

  t.test("CONNECT's reply names the device; STATUS says whether it is configured", async t => {
    const [connect] = parseMessages(hex('1c000000 1a00 0000 07000000 e8030000 01 01 0000 0800 0100 04000000'))
    t.equal(parseConnectIndex(connect!), 4)
    const [status] = parseMessages(
      hex(`
        2c000000 1a00 0000 08000000 e8030000 05 01 0000
        1800 0980                              # NBD_ATTR_DEVICE_LIST, nested: 24 bytes
          1400 0180                            #   NBD_DEVICE_ITEM, nested: 20 bytes
            0800 0100 04000000                 #     NBD_DEVICE_INDEX 4
            0500 0200 01 000000                #     NBD_DEVICE_CONNECTED 1 (1 byte, padded)
      `),
    )
    t.equal(parseStatusConnected(status!, 4), true)
    t.equal(parseStatusConnected(status!, 5), undefined, 'another index is not in the list')
  })

  t.test('truncated input is refused, not misread', async t => {
    t.throws(() => parseMessages(hex('40000000 1000 0000 01000000 00000000')), { name: 'NetlinkFormatError' }, 'a length past the datagram')
    const [m] = parseMessages(hex('18000000 1000 0000 01000000 00000000 01 02 0000 0800 0100'))
    t.throws(() => parseFamilyId(m!), { name: 'NetlinkFormatError' }, 'an attribute past the message')
  })
})
