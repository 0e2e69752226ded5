// Surviving a daemon crash on Linux, for real: a Debian 12 kernel under qemu
// runs test/vm/guest/nbd-crash.sh. A device with a map whose daemon is
// SIGKILLed under a mounted ext4 waits; create of the same NAME reconnects it
// (NBD_CMD_RECONFIGURE), the writes issued meanwhile complete, every file is
// intact and e2fsck -fn is clean; destroy -f of a waiting device fails its
// I/O and leaves nothing.
import t from 'tap'
import { bootNbdScenario } from '../fixtures/vm.js'

t.test('a daemon SIGKILLed under a mounted ext4 is replaced without the file system noticing', t => bootNbdScenario(t, 'nbd-crash', 36))
