package timesync

import (
	"fmt"
	"time"

	"golang.org/x/sys/unix"
)

// Clock is the kernel's clock as the daemon changes it; a seam, since a test must never change
// the clock of the machine it runs on.
type Clock interface {
	Now() time.Time
	// Step jumps the clock by d at once.
	Step(d time.Duration) error
	// Slew moves the clock by d gradually (no jump backwards for timestamps being taken).
	Slew(d time.Duration) error
	// SetSynced tells the kernel the clock is synchronised, with its maximum and estimated error.
	SetSynced(maxErr, estErr time.Duration) error
}

// Kernel is the real clock, through adjtimex(2).
type Kernel struct{}

func (Kernel) Now() time.Time { return time.Now() }

// Step uses ADJ_SETOFFSET: the kernel adds the offset itself, so no time passes between reading
// the clock and writing it back.
func (Kernel) Step(d time.Duration) error {
	sec, nsec := int64(d/time.Second), int64(d%time.Second)
	if nsec < 0 { // the kernel wants 0 <= nsec < 1e9
		sec, nsec = sec-1, nsec+int64(time.Second)
	}
	tx := unix.Timex{Modes: unix.ADJ_SETOFFSET | unix.ADJ_NANO, Time: unix.Timeval{Sec: sec, Usec: nsec}}
	if _, err := unix.Adjtimex(&tx); err != nil {
		return fmt.Errorf("stepping the clock by %v: %w", d, err)
	}
	return nil
}

// Slew uses the single-shot adjustment (adjtime(3)'s), at most 0.5 s.
func (Kernel) Slew(d time.Duration) error {
	tx := unix.Timex{Modes: unix.ADJ_OFFSET_SINGLESHOT, Offset: int64(d / time.Microsecond)}
	if _, err := unix.Adjtimex(&tx); err != nil {
		return fmt.Errorf("slewing the clock by %v: %w", d, err)
	}
	return nil
}

func (Kernel) SetSynced(maxErr, estErr time.Duration) error {
	var tx unix.Timex
	if _, err := unix.Adjtimex(&tx); err != nil {
		return err
	}
	tx = unix.Timex{Modes: unix.ADJ_STATUS | unix.ADJ_MAXERROR | unix.ADJ_ESTERROR,
		Status: tx.Status &^ unix.STA_UNSYNC, Maxerror: int64(maxErr / time.Microsecond), Esterror: int64(estErr / time.Microsecond)}
	if _, err := unix.Adjtimex(&tx); err != nil {
		return fmt.Errorf("marking the clock synchronised: %w", err)
	}
	return nil
}
