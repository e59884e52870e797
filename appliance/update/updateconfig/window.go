package updateconfig

import (
	"fmt"
	"time"
)

// Window is a daily maintenance window in UTC, e.g. 02:00-05:00; one that ends before it starts
// (22:00-04:00) spans midnight.
type Window struct {
	From, To time.Duration // since midnight
}

// ParseWindow reads HH:MM-HH:MM; "" is no window (nil).
func ParseWindow(s string) (*Window, error) {
	if s == "" {
		return nil, nil
	}
	var fh, fm, th, tm int
	if n, err := fmt.Sscanf(s, "%d:%d-%d:%d", &fh, &fm, &th, &tm); err != nil || n != 4 ||
		fh < 0 || fh > 23 || th < 0 || th > 24 || fm < 0 || fm > 59 || tm < 0 || tm > 59 {
		return nil, fmt.Errorf("%q: want HH:MM-HH:MM in UTC, e.g. 02:00-05:00", s)
	}
	w := &Window{From: time.Duration(fh)*time.Hour + time.Duration(fm)*time.Minute,
		To: time.Duration(th)*time.Hour + time.Duration(tm)*time.Minute}
	if w.From == w.To {
		return nil, fmt.Errorf("%q: an empty window; leave it out for any time", s)
	}
	return w, nil
}

// Contains tells whether t falls into the window.
func (w *Window) Contains(t time.Time) bool {
	t = t.UTC()
	d := t.Sub(time.Date(t.Year(), t.Month(), t.Day(), 0, 0, 0, 0, time.UTC))
	if w.From < w.To {
		return d >= w.From && d < w.To
	}
	return d >= w.From || d < w.To
}
