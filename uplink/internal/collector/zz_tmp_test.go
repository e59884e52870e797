package collector

import (
	"bytes"
	"testing"
	"time"

	"github.com/sie-europe/dnssensor/nmsg"
)

func BenchmarkZZInflate(b *testing.B) {
	recs := corpusDnsqr(b)
	for _, z := range []bool{false, true} {
		bb := &testing.B{}
		_ = bb
		conts, n := dnsqrRecords(recs, z)(&testing.B{N: 1}, 0, 64<<10)
		c := conts[0]
		b.Run("seq", func(b *testing.B) {
			b.ReportAllocs()
			for range b.N {
				nmsg.ContainerSequence(c)
			}
			b.ReportMetric(float64(len(conts))/float64(n), "x")
		})
		b.Run("read", func(b *testing.B) {
			b.ReportAllocs()
			rd := nmsg.NewReassembler(nmsg.ReassemblerOptions{})
			for range b.N {
				if _, err := rd.Feed("", c, time.Time{}); err != nil {
					b.Fatal(err)
				}
			}
		})
		_ = bytes.Equal
	}
}
