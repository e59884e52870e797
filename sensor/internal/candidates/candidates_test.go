package candidates

import (
	"encoding/binary"
	"net/netip"
	"runtime"
	"sync"
	"testing"
	"time"
)

var t0 = time.Date(2026, 1, 2, 3, 0, 0, 0, time.UTC).UnixNano()

func addr4(i uint32) netip.Addr {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], i)
	return netip.AddrFrom4(b)
}

// TestTopFive: the busiest five, busiest first, with their counts; mapped forms count as IPv4.
func TestTopFive(t *testing.T) {
	tr := New()
	res := []string{"192.0.2.53", "2001:db8::53", "198.51.100.7", "192.0.2.54", "203.0.113.9", "10.0.0.1"}
	for i, a := range res {
		for j := 0; j < 100-10*i; j++ {
			tr.Query(t0+int64(j), netip.MustParseAddr(a))
		}
	}
	tr.Query(t0, netip.MustParseAddr("::ffff:192.0.2.53"))
	got := tr.Top(5, t0+int64(time.Second))
	if len(got) != 5 {
		t.Fatalf("%d candidates: %v", len(got), got)
	}
	want := []uint64{101, 90, 80, 70, 60}
	for i, c := range got {
		if c.Addr.String() != res[i] || c.Queries != want[i] {
			t.Errorf("#%d: %v %d, want %s %d", i, c.Addr, c.Queries, res[i], want[i])
		}
	}
}

// TestWindows: the last complete minute is shown once there is one; traffic older than two
// minutes is forgotten (virtual clock: packet times).
func TestWindows(t *testing.T) {
	tr := New()
	a, b := netip.MustParseAddr("192.0.2.53"), netip.MustParseAddr("192.0.2.99")
	for i := 0; i < 10; i++ {
		tr.Query(t0+int64(i)*int64(time.Second), a)
	}
	if got := tr.Top(5, t0+int64(30*time.Second)); len(got) != 1 || got[0].Addr != a || got[0].Queries != 10 {
		t.Errorf("first minute, partial: %v", got)
	}
	tr.Query(t0+int64(61*time.Second), b) // the second minute
	if got := tr.Top(5, t0+int64(62*time.Second)); len(got) != 1 || got[0].Addr != a {
		t.Errorf("after the first minute: %v, want the complete minute's", got)
	}
	if got := tr.Top(5, t0+int64(121*time.Second)); len(got) != 1 || got[0].Addr != b {
		t.Errorf("after the second minute: %v, want its traffic only", got)
	}
	if got := tr.Top(5, t0+int64(200*time.Second)); len(got) != 0 {
		t.Errorf("after two quiet minutes: %v, want nothing", got)
	}
}

// TestResolverAmongManyClients: a resolver that sends a few percent of the queries is found
// among 300,000 distinct sources, and the tracker's memory does not grow with them.
func TestResolverAmongManyClients(t *testing.T) {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	tr := New()
	res := netip.MustParseAddr("2001:db8::53")
	for i := 0; i < 300_000; i++ {
		tr.Query(t0+int64(i)*int64(time.Microsecond), addr4(0x0a000000+uint32(i)))
		if i%20 == 0 {
			tr.Query(t0+int64(i)*int64(time.Microsecond), res)
		}
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	got := tr.Top(5, t0+int64(time.Second))
	if len(got) == 0 || got[0].Addr != res || got[0].Queries < 15_000 {
		t.Errorf("top %v, want %v first with at least 15000", got, res)
	}
	held := int64(after.HeapAlloc) - int64(before.HeapAlloc)
	t.Logf("tracker after 315,000 queries from 300,001 sources: %d octets of heap", held)
	if held > 64<<10 {
		t.Errorf("tracker holds %d octets, want a bound independent of the sources (< 64 KiB)", held)
	}
	runtime.KeepAlive(tr)
}

// TestConcurrent: two ports' readers and the health server at once (run with -race).
func TestConcurrent(t *testing.T) {
	tr := New()
	var wg sync.WaitGroup
	for p := 0; p < 2; p++ {
		wg.Go(func() {
			for i := 0; i < 10000; i++ {
				tr.Query(t0+int64(i)*int64(10*time.Millisecond), addr4(uint32(p*1000+i%100)))
			}
		})
	}
	wg.Go(func() {
		for i := 0; i < 100; i++ {
			tr.Top(5, t0+int64(i)*int64(time.Second))
		}
	})
	wg.Wait()
	if tr.Counted.Load() != 20000 {
		t.Errorf("counted %d", tr.Counted.Load())
	}
}

func BenchmarkQuery(b *testing.B) {
	tr := New()
	for i := 0; i < b.N; i++ {
		tr.Query(t0+int64(i), addr4(uint32(i%1000)))
	}
}

func BenchmarkQueryHit(b *testing.B) {
	tr := New()
	a := addr4(7)
	for i := 0; i < b.N; i++ {
		tr.Query(t0+int64(i), a)
	}
}

// TestSpaceSavingBounds: on a skewed random stream, every source that sent more than 1/K of the
// queries is kept, with a count at least its true one and over by at most N/K.
func TestSpaceSavingBounds(t *testing.T) {
	tr := New()
	exact := map[netip.Addr]uint64{}
	x := uint32(12345)
	const n = 100_000
	for i := 0; i < n; i++ {
		x = x*1664525 + 1013904223
		a := addr4(x >> 16 % 5000) // many rare sources
		if x%7 == 0 {
			a = addr4(x >> 30) // 4 frequent ones
		}
		exact[a]++
		tr.Query(t0+int64(i), a)
	}
	kept := map[netip.Addr]uint64{}
	for _, c := range tr.Top(K, t0+1) {
		kept[c.Addr] = c.Queries
	}
	heavy := 0
	for a, c := range exact {
		if c <= n/K {
			continue
		}
		heavy++
		got, ok := kept[a]
		if !ok || got < c || got > c+n/K {
			t.Errorf("%v sent %d: kept %v with %d", a, c, ok, got)
		}
	}
	if heavy < 4 {
		t.Fatalf("only %d sources above 1/K: the stream does not test the bound", heavy)
	}
}
