package source

import "time"

// RetireDelay bounds how long after its capture timestamp a frame can still surface from a
// TPACKET_V3 ring with this block timeout: the bound the two-port merge needs to turn "polled the
// ring empty at T" into "nothing older than T − RetireDelay can still come".
//
// A frame is readable only once its block is retired, when full or by the retire timer. The
// timer does not retire the block it sees for the first time (one opened since it last fired); it
// re-arms, so a block opened just before a firing waits almost two timeouts. The timeout is kept
// in jiffies, rounded up, and the timer fires on a tick: at HZ=100 that adds up to two 10 ms
// jiffies. The rest of the margin covers a frame stamped but not yet in the ring when the poll
// looked (softirq still copying it).
func RetireDelay(blockTimeout time.Duration) time.Duration {
	return 2*blockTimeout + 25*time.Millisecond
}
