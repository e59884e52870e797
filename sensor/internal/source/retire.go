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
// looked, and softirqs (timers, receive) deferred to ksoftirqd on a busy machine: on a 2-core
// machine saturated by other work, frames surfaced up to 90 ms after their stamp. A larger bound
// costs only latency (a frame waits for it when the other port is idle); one too small costs
// pairs, until the merge widens it.
func RetireDelay(blockTimeout time.Duration) time.Duration {
	return 2*blockTimeout + 100*time.Millisecond
}
