package app

import (
	"io"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sie-europe/dnssensor/nmsg/dnsqr"
	"github.com/sie-europe/dnssensor/sensor/internal/conformance"
	"github.com/sie-europe/dnssensor/sensor/internal/dnstap"
	"github.com/sie-europe/dnssensor/sensor/internal/pipeline"
)

// TestDnstapAllowRequired: a dnstap TCP listener on a non-loopback address needs an allow-list
// of writers; the error names the flag.
func TestDnstapAllowRequired(t *testing.T) {
	for _, tc := range []struct {
		args []string
		err  string // "" for accepted
	}{
		{[]string{"-dnstap", "tcp:0.0.0.0:6000"}, "-dnstap-allow"},
		{[]string{"-dnstap", "tcp::6000"}, "-dnstap-allow"},
		{[]string{"-dnstap", "tcp:192.0.2.1:6000"}, "-dnstap-allow"},
		{[]string{"-dnstap", "tcp:[2001:db8::1]:6000"}, "-dnstap-allow"},
		{[]string{"-dnstap", "tcp:resolver.example:6000"}, "-dnstap-allow"},
		{[]string{"-dnstap", "tcp:0.0.0.0:6000", "-dnstap-allow", "192.0.2.0/24,2001:db8::53"}, ""},
		{[]string{"-dnstap", "tcp:0.0.0.0:6000", "-dnstap-allow", "nonsense"}, "-dnstap-allow"},
		{[]string{"-dnstap", "tcp:127.0.0.1:6000"}, ""},
		{[]string{"-dnstap", "tcp:[::1]:6000"}, ""},
		{[]string{"-dnstap", "tcp:localhost:6000"}, ""},
		{[]string{"-dnstap", "unix:/run/dnstap.sock"}, ""},
		{[]string{"-dnstap", "unix:/run/dnstap.sock", "-dnstap-allow", "192.0.2.1"}, "-dnstap-allow"},
	} {
		_, err := ParseFlags(append(tc.args, "-w", "/dev/null"), io.Discard)
		switch {
		case tc.err == "" && err != nil:
			t.Errorf("%q: %v", tc.args, err)
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("%q: error %v, want one naming %s", tc.args, err, tc.err)
		}
	}
}

// TestDnstapStreamTime: a dnstap stream is expired by its own time, as a file is. The
// conformance file's events are years old; delivered over a socket with a tick of the sensor's
// clock between every two events, all 27 transactions still pair (0 of 27 did: each tick
// expired every pending query against the wall clock).
func TestDnstapStreamTime(t *testing.T) {
	path := filepath.Join(conformance.Dir(t), "dnstap", "dnstap-input-data")
	o, err := ParseFlags([]string{"-dnstap-file", path, "-w", "/dev/null"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	var evs []dnstap.Event
	if err := dnstap.ReadFile(path, nil, &dnstap.Stats{}, func(e dnstap.Event) { evs = append(evs, e) }); err != nil {
		t.Fatal(err)
	}
	// run delivers evs[i] at wall[i] of the sensor's clock, each followed by a tick, then ticks
	// at every time in after.
	run := func(evs []dnstap.Event, wall, after []time.Duration) map[dnsqr.Type]int {
		types := map[dnsqr.Type]int{}
		p, err := pipeline.New(o.Pipeline, func(r *dnsqr.Record) error { types[r.Type]++; return nil })
		if err != nil {
			t.Fatal(err)
		}
		out, tick, done := make(chan []dnstap.Event), make(chan time.Time), make(chan error)
		base := time.Now()
		var wallNow atomic.Int64 // the sensor's clock, as an offset from base
		ended := make(chan error)
		go func() {
			ended <- dnstapLoop(out, done, tick, func() time.Time { return base.Add(time.Duration(wallNow.Load())) }, p,
				func(e dnstap.Event) { p.Message(e.Time, e.TCP, e.Src, e.Dst, e.Msg) }, o.Pipeline.QueryTimeout, 0, nil, nil)
		}()
		for i, e := range evs {
			wallNow.Store(int64(wall[i]))
			out <- []dnstap.Event{e}
			tick <- time.Time{}
		}
		for _, d := range after {
			wallNow.Store(int64(d))
			tick <- time.Time{}
		}
		done <- nil
		if err := <-ended; err != nil {
			t.Fatal(err)
		}
		return types
	}
	// A delayed stream: every event arrives a second after the one before, years after it was
	// logged.
	wall := make([]time.Duration, len(evs))
	for i := range wall {
		wall[i] = time.Duration(i) * time.Second
	}
	if got := run(evs, wall, nil); got[dnsqr.UDPQueryResponse]+got[dnsqr.TCP] != 27 {
		t.Errorf("records by type %v; want 27 transactions", got)
	}
	// A stream that goes silent still expires its last query, once the silence outlasts
	// -query-timeout of the sensor's clock.
	var q []dnstap.Event
	for _, e := range evs {
		if len(e.Msg) > 2 && e.Msg[2]&0x80 == 0 {
			q = append(q, e)
			break
		}
	}
	if got := run(q, []time.Duration{0}, []time.Duration{o.Pipeline.QueryTimeout / 2}); got[dnsqr.UDPUnansweredQuery] != 0 {
		t.Errorf("a query expired at once: %v", got)
	}
	if got := run(q, []time.Duration{0}, []time.Duration{o.Pipeline.QueryTimeout + 2*time.Second}); got[dnsqr.UDPUnansweredQuery] == 0 {
		t.Errorf("silent stream: pending query never expired: %v", got)
	}
}
