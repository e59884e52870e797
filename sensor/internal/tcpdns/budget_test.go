package tcpdns

import (
	"net/netip"
	"testing"

	"github.com/sie-europe/dnssensor/sensor/internal/budget"
)

// TestSharedBudget: partial messages on many streams stay within a shared byte budget smaller
// than MaxTotalBytes; the least recently used streams are evicted and counted, never the one
// being added to.
func TestSharedBudget(t *testing.T) {
	const limit = 1 << 20
	b := budget.New(limit)
	r := New(Config{Budget: b})
	b.Register(r)
	emit := func(*Message) { t.Fatal("no message is complete") }
	part := append([]byte{0xff, 0xff}, dnsMsg(1, 60000)...)
	for i := 0; i < 100; i++ {
		c := &conn{src: netip.AddrPortFrom(cli.Addr(), uint16(1024+i)), dst: srv, isn: 1}
		r.Add(c.syn(int64(i)), emit)
		r.Add(c.seg(0, part, int64(i)), emit)
		if b.Used() > limit {
			t.Fatalf("after %d streams: %d octets held, budget %d", i+1, b.Used(), limit)
		}
	}
	s := r.Stats()
	if s.StreamsEvicted == 0 || b.Evicted(0) == 0 {
		t.Errorf("nothing evicted: %+v", s)
	}
	t.Logf("held %d KiB of a %d KiB budget; %d streams evicted", b.Used()>>10, limit>>10, s.StreamsEvicted)
}
