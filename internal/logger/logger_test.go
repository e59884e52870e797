package logger

import (
	"fmt"
	"sync"
	"testing"
	"time"
)

type lines struct {
	mu sync.Mutex
	l  []string
}

func (b *lines) logf(format string, args ...any) {
	b.mu.Lock()
	b.l = append(b.l, fmt.Sprintf(format, args...))
	b.mu.Unlock()
}

func TestLimiter(t *testing.T) {
	var b lines
	now := time.Unix(1e9, 0)
	l := NewLimiter(b.logf, 10*time.Second)
	l.SetClock(func() time.Time { return now })

	l.Printf("bad", "bad %d", 1)
	l.Printf("bad", "bad %d", 2)   // within the interval: counted
	l.Printf("auth", "auth %d", 1) // another kind: logged at once
	now = now.Add(9 * time.Second)
	l.Printf("bad", "bad %d", 3) // still within
	now = now.Add(time.Second)
	l.Printf("bad", "bad %d", 4) // interval over: logged with the count
	l.Printf("bad", "bad %d", 5)
	now = now.Add(time.Minute)
	l.Printf("bad", "bad %d", 6)
	l.Printf("auth", "auth %d", 2)

	want := []string{"bad 1", "auth 1", "bad 4 (2 similar events not logged)", "bad 6 (1 similar events not logged)", "auth 2"}
	if fmt.Sprint(b.l) != fmt.Sprint(want) {
		t.Errorf("logged %q\nwant %q", b.l, want)
	}
}

func TestLimiterDiscards(t *testing.T) {
	var l *Limiter
	l.Printf("k", "nil Limiter")
	(&Limiter{}).Printf("k", "zero Limiter")
	NewLimiter(nil, time.Second).Printf("k", "nil Logf")
}

func TestLimiterConcurrent(t *testing.T) {
	var b lines
	l := NewLimiter(b.logf, time.Hour)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 100 {
				l.Printf("k", "x")
			}
		})
	}
	wg.Wait()
	if len(b.l) != 1 {
		t.Errorf("%d lines logged within one interval, want 1", len(b.l))
	}
}
