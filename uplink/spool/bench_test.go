package spool

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/sie-europe/dnssensor/internal/testenv"
	"github.com/sie-europe/dnssensor/nmsg"
	"github.com/sie-europe/dnssensor/nmsg/dnsqr"
)

// benchOpts puts the RAM tier on tmpfs when the machine has /dev/shm (as
// /run is on the appliance) and the disk tier in the test's temp dir.
func benchOpts(b *testing.B) Options {
	o := testOpts(b, true)
	o.Logf = func(string, ...any) {}
	o.SegmentSize = DefaultSegmentSize
	if fi, err := os.Stat("/dev/shm"); err == nil && fi.IsDir() {
		d, err := os.MkdirTemp("/dev/shm", "spoolbench")
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { os.RemoveAll(d) })
		o.Dir = filepath.Join(d, "ram")
	}
	return o
}

func recordsPerSec(b *testing.B, n int, d time.Duration, unit string) {
	b.ReportMetric(float64(n)/d.Seconds(), unit)
}

// BenchmarkProducerWrite: base:dnsqr payloads through WritePayload into sealed RAM segments
// while a consumer acks them (a healthy link). ~300-octet records.
func BenchmarkProducerWrite(b *testing.B) {
	for _, zlib := range []bool{false, true} {
		b.Run(map[bool]string{false: "plain", true: "zlib"}[zlib], func(b *testing.B) {
			o := benchOpts(b)
			o.Zlib = zlib
			p := mustProducer(b, o)
			c := mustConsumer(b, o)
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() {
				defer close(done)
				for {
					s, err := c.Next(ctx)
					if err != nil {
						return
					}
					c.Ack(s)
				}
			}()
			pls := make([]nmsg.Payload, 1024)
			var r dnsqr.Record
			for i := range pls {
				payload(&pls[i], rec(&r, uint32(i)))
			}
			b.ReportAllocs()
			b.SetBytes(int64(len(pls[0].Data)))
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if err := p.WritePayload(&pls[i%len(pls)]); err != nil {
					b.Fatal(err)
				}
			}
			p.Flush()
			recordsPerSec(b, b.N, b.Elapsed(), "records/s")
			b.StopTimer()
			testenv.WaitFor(b, "drain", func() bool { return len(segFiles(b, o.Dir)) == 0 })
			cancel()
			<-done
			p.Close()
		})
	}
}

// fill writes n records as full segments into the RAM tier without a
// consumer and without spilling.
func fill(b *testing.B, o Options, n int) {
	o.SpillAge = time.Hour
	o.RAMQuota = 1 << 40
	p := mustProducer(b, o)
	var r dnsqr.Record
	for i := 0; i < n; i++ {
		write(p, rec(&r, uint32(i)))
	}
	p.mu.Lock()
	p.sealLocked()
	p.closed = true
	p.mu.Unlock()
	close(p.stop)
	p.wg.Wait()
	p.unlock() // no final spill: the data stays in RAM
}

// BenchmarkConsumerRead: Next (read + full verification) and Ack of
// 1 MiB segments from the RAM tier; one op is one record.
func BenchmarkConsumerRead(b *testing.B) {
	o := benchOpts(b)
	fill(b, o, b.N)
	c := mustConsumer(b, o)
	b.ReportAllocs()
	b.ResetTimer()
	n := 0
	var bytes int64
	for n < b.N {
		s, err := c.Next(context.Background())
		if err != nil {
			b.Fatal(err)
		}
		n += int(s.Records)
		bytes += int64(len(s.Body()))
		c.Ack(s)
	}
	recordsPerSec(b, n, b.Elapsed(), "records/s")
	b.ReportMetric(float64(bytes)/b.Elapsed().Seconds()/1e6, "MB/s")
}

// BenchmarkSpillReplay: an outage (no consumer) spills everything from
// the RAM tier to the disk tier (fsync per segment), then the consumer
// replays it from disk. Reports both rates; the target is ≥ 100k
// records/s (5× a busy sensor's 20k/s) for each.
func BenchmarkSpillReplay(b *testing.B) {
	o := benchOpts(b)
	n := max(b.N, 200_000)
	fill(b, o, n)
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	o.SpillAge = time.Millisecond
	p := mustProducer(b, o) // Close moves the whole RAM tier to disk
	p.Close()
	spill := time.Since(start)
	if len(segFiles(b, o.Dir)) != 0 {
		b.Fatal("RAM tier not empty after spill")
	}
	start = time.Now()
	c := mustConsumer(b, o)
	got := 0
	for got < n {
		s, err := c.Next(context.Background())
		if err != nil {
			b.Fatal(err)
		}
		if s.Tier != "disk" {
			b.Fatalf("segment %d from %s", s.Seq, s.Tier)
		}
		got += int(s.Records)
		c.Ack(s)
	}
	replay := time.Since(start)
	b.StopTimer()
	recordsPerSec(b, n, spill, "spill-records/s")
	recordsPerSec(b, n, replay, "replay-records/s")
}
