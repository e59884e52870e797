// Package logger holds the logging function type and a rate limit for it. A daemon that logs
// every malformed message of a hostile peer, or every failed write of a full disk, fills its
// log (on the appliance: RAM) faster than anyone reads it; limited per kind of event, the first
// line of a kind is logged at once and the rest are counted into the next line that is.
package logger

import (
	"fmt"
	"sync"
	"time"
)

// Logf is the logging function type (log.Printf fits). A nil Logf discards.
type Logf func(format string, args ...any)

// Limiter logs the first event of each kind and then at most one line per interval for that
// kind, appending to it how many events of the kind were not logged since the last one. Kinds are
// a fixed set of constants in the caller's code (the state per kind is never freed). A Limiter is
// safe for concurrent use; its zero value discards.
type Limiter struct {
	logf     Logf
	interval time.Duration
	now      func() time.Time

	mu    sync.Mutex
	kinds map[string]*kindState
}

type kindState struct {
	last       time.Time
	suppressed int
}

// NewLimiter returns a Limiter that writes to logf (nil discards).
func NewLimiter(logf Logf, interval time.Duration) *Limiter {
	return &Limiter{logf: logf, interval: interval, now: time.Now, kinds: make(map[string]*kindState)}
}

// SetClock replaces time.Now, for tests with a virtual clock. Call it before the first Printf.
func (l *Limiter) SetClock(now func() time.Time) { l.now = now }

// Printf logs an event of kind, unless one of the same kind was logged less than the interval ago.
func (l *Limiter) Printf(kind, format string, args ...any) {
	if l == nil || l.logf == nil {
		return
	}
	now := l.now()
	l.mu.Lock()
	k := l.kinds[kind]
	if k == nil {
		k = &kindState{}
		l.kinds[kind] = k
	} else if now.Sub(k.last) < l.interval {
		k.suppressed++
		l.mu.Unlock()
		return
	}
	n := k.suppressed
	k.last, k.suppressed = now, 0
	l.mu.Unlock()
	if n > 0 {
		format += fmt.Sprintf(" (%d similar events not logged)", n)
	}
	l.logf(format, args...)
}
