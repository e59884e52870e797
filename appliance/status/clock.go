package status

import (
	"fmt"
	"time"

	"golang.org/x/sys/unix"
)

// ClockState is the kernel's view of its clock (adjtimex(2)).
type ClockState struct {
	// Unsync is STA_UNSYNC: no NTP daemon has told the kernel the clock is disciplined, or the
	// kernel's maximum error reached 16 s since the last time one did.
	Unsync bool
	// MaxError is the kernel's bound of the clock's error (it grows by 500 ppm between updates).
	MaxError time.Duration
	EstError time.Duration
	// Now is the clock's reading, to tell a clock that was never set.
	Now time.Time
}

// KernelClock asks the kernel (adjtimex with no modes: read only).
func KernelClock() (ClockState, error) {
	var tx unix.Timex
	if _, err := unix.Adjtimex(&tx); err != nil {
		return ClockState{}, fmt.Errorf("adjtimex: %v", err)
	}
	return ClockState{Unsync: tx.Status&unix.STA_UNSYNC != 0, MaxError: time.Duration(tx.Maxerror) * time.Microsecond,
		EstError: time.Duration(tx.Esterror) * time.Microsecond, Now: time.Now()}, nil
}

// clockFloor is a time the box's clock cannot honestly be before: this code did not exist yet.
// A clock behind it was never set (no RTC, no NTP answer yet).
var clockFloor = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// maxClockError is the error beyond which a record's timestamps stop being useful for pairing
// with other sensors' data and the collector's.
const maxClockError = time.Second

const clockFix = "the box sets its clock by NTP over the management port (timed): let it reach an NTP server (UDP port 123; the DHCP server's NTP option, network.static.ntp in the box configuration, or pool.ntp.org) and see timed's log"

// clockNode colours the "clock synchronised" link from the kernel's view. The kernel knows the
// clock is synchronised only when an NTP daemon disciplines it through adjtimex; one that steps
// the clock with settimeofday (gokrazy's ntp) leaves STA_UNSYNC set, so an unsynchronised kernel
// clock that reads a plausible time is unknown, not red: nobody can tell from here.
func clockNode(n *Node, read func() (ClockState, error)) {
	if read == nil {
		n.State, n.Detail = Unknown, "not checked: statusd runs without a clock check"
		return
	}
	st, err := read()
	switch {
	case err != nil:
		n.State, n.Detail = Unknown, "the kernel's clock state could not be read: "+err.Error()
	case st.Now.Before(clockFloor):
		n.State, n.Detail = Fail, fmt.Sprintf("the clock reads %s, before this software existed: it was never set, so every record's time is wrong", st.Now.UTC().Format(time.RFC3339))
		n.Fix = clockFix
	case !st.Unsync && st.MaxError <= maxClockError:
		n.State, n.Detail = OK, fmt.Sprintf("the kernel's clock is synchronised (maximum error %v, estimated %v)", st.MaxError, st.EstError)
	case !st.Unsync:
		n.State, n.Detail = Fail, fmt.Sprintf("the kernel's clock is synchronised, but its maximum error is %v (more than %v): the NTP server has not been reached for hours", st.MaxError, maxClockError)
		n.Fix = clockFix
	default:
		n.State = Unknown
		n.Detail = "the kernel does not know whether the clock is synchronised (STA_UNSYNC): no NTP daemon disciplines it through adjtimex (gokrazy's ntp sets it hourly without telling the kernel); it reads " + st.Now.UTC().Format(time.RFC3339)
		n.Fix = clockFix
	}
}
