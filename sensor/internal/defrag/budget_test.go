package defrag

import (
	"testing"

	"github.com/sie-europe/dnssensor/sensor/internal/budget"
)

// TestSharedBudget: incomplete datagrams stay within a shared byte budget smaller than
// MaxBytes; the oldest are evicted and counted, never the one being added to.
func TestSharedBudget(t *testing.T) {
	const limit = 1 << 20
	b := budget.New(limit)
	r := New(Config{Budget: b})
	b.Register(r)
	dg := udpDatagram(60000)
	for i := 0; i < 100; i++ {
		// All but the last fragment: never complete.
		for off := 0; off+1480 < len(dg); off += 1480 {
			add(t, r, frag4(uint16(i), off, true, dg[off:off+1480]), int64(i))
			if b.Used() > limit {
				t.Fatalf("after %d datagrams: %d octets held, budget %d", i+1, b.Used(), limit)
			}
		}
	}
	s := r.Stats()
	if s.Evicted == 0 || b.Evicted(0) != s.Evicted {
		t.Errorf("evicted %d (budget %d)", s.Evicted, b.Evicted(0))
	}
	t.Logf("held %d KiB of a %d KiB budget; %d datagrams evicted", b.Used()>>10, limit>>10, s.Evicted)
}
