// Linux's nbd driver, for real: a Debian 12 kernel under qemu runs
// test/vm/guest/nbd-driver.sh, which attaches over netlink (the path
// geom-rowr takes wherever the nbd module is loaded): the original module's
// procedure on ext4, destroy -f while mounted, and a SIGKILLed daemon of a
// device without a map cleaned up by the next list.
import t from 'tap'
import { bootNbdScenario } from '../fixtures/vm.js'

t.test("the module's procedure, destroy -f and a killed daemon, through the nbd driver", t => bootNbdScenario(t, 'nbd-driver', 41))
