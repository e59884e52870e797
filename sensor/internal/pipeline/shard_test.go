package pipeline

import (
	"net/netip"
	"path/filepath"
	"sort"
	"sync"
	"testing"

	"github.com/sie-europe/dnssensor/internal/testenv"
	"github.com/sie-europe/dnssensor/nmsg/dnsqr"
	"github.com/sie-europe/dnssensor/sensor/internal/decode"
	"github.com/sie-europe/dnssensor/sensor/internal/source"
)

type frameSink interface {
	Frame(decode.LinkType, int64, []byte, int)
	Flush()
	Stats() Stats
}

func records(t *testing.T, pcaps []string, mk func(Emit) frameSink) ([]string, Stats) {
	t.Helper()
	var mu sync.Mutex
	var out []string
	sink := mk(func(r *dnsqr.Record) error {
		mu.Lock()
		out = append(out, string(dnsqr.AppendProto(nil, r)))
		mu.Unlock()
		return nil
	})
	for _, f := range pcaps {
		if _, err := source.ReadFile(f, sink.Frame); err != nil {
			t.Fatal(err)
		}
	}
	sink.Flush()
	sort.Strings(out)
	return out, sink.Stats()
}

// TestShardedEqualsSingle: the real captures (fragments, TCP, ICMP, lame servers) give the same
// records through 3 shards as through one pipeline.
func TestShardedEqualsSingle(t *testing.T) {
	pcaps, _ := filepath.Glob("../../testdata/real/*.pcap")
	if len(pcaps) == 0 {
		testenv.Need(t, false, "no real-traffic fixtures in sensor/testdata/real (make them with ci/make-fixtures)")
	}
	cfg := Config{RD: -1, ZeroResolver: true, Resolvers: []netip.Prefix{
		netip.MustParsePrefix("198.51.100.2/32"), netip.MustParsePrefix("2001:db8:1::2/128")}}
	for _, f := range pcaps {
		one, s1 := records(t, []string{f}, func(e Emit) frameSink {
			p, err := New(cfg, e)
			if err != nil {
				t.Fatal(err)
			}
			return p
		})
		three, s3 := records(t, []string{f}, func(e Emit) frameSink {
			s, err := NewSharded(3, cfg, e)
			if err != nil {
				t.Fatal(err)
			}
			return s
		})
		if len(one) != len(three) {
			t.Errorf("%s: %d records from one pipeline, %d from three shards", filepath.Base(f), len(one), len(three))
			continue
		}
		for i := range one {
			if one[i] != three[i] {
				t.Errorf("%s: record sets differ", filepath.Base(f))
				break
			}
		}
		if s1.Records != s3.Records || s1.Frames != s3.Frames || s1.NotResolver != s3.NotResolver {
			t.Errorf("%s: stats differ: %v/%d vs %v/%d", filepath.Base(f), s1.Records, s1.Frames, s3.Records, s3.Frames)
		}
	}
}

func BenchmarkSharded(b *testing.B) {
	frames, times := benchFrames(b, 4096)
	for _, n := range []int{1, 2} {
		b.Run(map[int]string{1: "shards=1", 2: "shards=2"}[n], func(b *testing.B) {
			var buf []byte // emit is serialized by Sharded
			s, err := NewSharded(n, Config{RD: -1, Resolvers: []netip.Prefix{netip.PrefixFrom(res4, 32), netip.PrefixFrom(res6, 128)}},
				func(r *dnsqr.Record) error { buf = dnsqr.AppendProto(buf[:0], r); return nil })
			if err != nil {
				b.Fatal(err)
			}
			replay(b, s.Frame, frames, times)
			s.Flush()
			b.StopTimer()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "pkts/s")
		})
	}
}
