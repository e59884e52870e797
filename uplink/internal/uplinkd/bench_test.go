package uplinkd

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/sie-europe/dnssensor/nmsg/dnsqr"
	"github.com/sie-europe/dnssensor/uplink/internal/collector"
	"github.com/sie-europe/dnssensor/uplink/sielink/sielinktest"
	"github.com/sie-europe/dnssensor/uplink/spool"
)

// fillSpool writes n dnsqr records of realistic size (one query and one response packet, about
// 300 octets encoded) into a spool's disk tier, as an outage leaves it, and returns the octets.
func fillSpool(b *testing.B, ram, disk string, n int) int64 {
	p, err := spool.OpenProducer(spool.Options{Dir: ram, DiskDir: disk, DiskQuota: 8 << 30, RAMQuota: 64 << 20,
		SegmentSize: 1 << 20, Logf: func(string, ...any) {}})
	if err != nil {
		b.Fatal(err)
	}
	// Records reach the spool as sensord sends them, through its payload adapter.
	w := newRecordWriter(p)
	q := make([]byte, 60)
	r := make([]byte, 180)
	for i := range q {
		q[i] = byte(i * 7)
	}
	for i := range r {
		r[i] = byte(i * 13)
	}
	rec := &dnsqr.Record{Type: dnsqr.UDPQueryResponse, QueryIP: netip.MustParseAddr("198.51.100.2"),
		ResponseIP: netip.MustParseAddr("192.0.2.10"), Proto: 17, ResponsePort: 53,
		HasQuestion: true, Qname: []byte("\x03www\x07example\x03com\x00"), Qtype: 1, Qclass: 1, HasRcode: true,
		QueryPackets: [][]byte{q}, ResponsePackets: [][]byte{r}, QueryTimes: []int64{0}, ResponseTimes: []int64{0}}
	for i := 0; i < n; i++ {
		rec.ID, rec.QueryPort = uint16(i), uint16(1024+i%60000)
		rec.QueryTimes[0], rec.ResponseTimes[0] = int64(1e18)+int64(i)*1e5, int64(1e18)+int64(i)*1e5+2e6
		if err := w.Write(rec); err != nil {
			b.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		b.Fatal(err)
	}
	var size int64
	filepath.Walk(disk, func(_ string, fi os.FileInfo, _ error) error {
		if fi != nil && fi.Mode().IsRegular() {
			size += fi.Size()
		}
		return nil
	})
	return size
}

// BenchmarkDrainToCollector measures how fast uplinkd empties a full spool (200k records, 10 s of
// a busy sensor at 20k records/s) into a collector on loopback over sielink/TLS, each segment
// confirmed before it is deleted. Reported as records/s and MB/s; compare with
// BenchmarkLoopbackCopy for the raw rate of the same bytes.
func BenchmarkDrainToCollector(b *testing.B) {
	const records = 200000
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		dir := b.TempDir()
		certPEM, keyPEM, _ := sielinktest.CertPEM("127.0.0.1")
		certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
		os.WriteFile(certFile, certPEM, 0o644)
		os.WriteFile(keyFile, keyPEM, 0o600)
		keysFile, apiKeys, _ := sielinktest.WriteKeys(dir, "bench")
		ram, disk := filepath.Join(dir, "ram"), filepath.Join(dir, "disk")
		size := fillSpool(b, ram, disk, records)
		ctx, cancel := context.WithCancel(context.Background())
		ready := make(chan string, 1)
		cdone := make(chan error, 1)
		go func() {
			cdone <- collector.Run(ctx, collector.Options{Listen: "127.0.0.1:0", CertFile: certFile, KeyFile: keyFile,
				KeysFile: keysFile, Store: collector.StoreOptions{Dir: filepath.Join(dir, "store"), Rotate: time.Hour, Sync: true},
				Ready: func(a, _ string) { ready <- a }})
		}()
		addr := <-ready
		cfg, err := ParseConfig([]byte(fmt.Sprintf(`{"spool": {"dir": %q, "disk_dir": %q}, "metrics": "127.0.0.1:0",
			"destinations": [{"type": "sielink", "url": "wss://%s", "sensor": "bench", "api_key_file": %q, "ca_file": %q}]}`,
			ram, disk, addr, apiKeys["bench"], certFile)), "bench")
		if err != nil {
			b.Fatal(err)
		}
		s, err := New(cfg, func(string, ...any) {})
		if err != nil {
			b.Fatal(err)
		}
		sctx, scancel := context.WithCancel(ctx)
		sdone := make(chan error, 1)
		b.StartTimer()
		start := time.Now()
		go func() { sdone <- s.Run(sctx) }()
		for {
			m := s.Snapshot()
			if len(m.Destinations) == 1 && m.Destinations[0].Records >= records {
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
		el := time.Since(start)
		b.StopTimer()
		scancel()
		<-sdone
		cancel()
		<-cdone
		b.ReportMetric(records/el.Seconds(), "records/s")
		b.ReportMetric(float64(size)/el.Seconds()/1e6, "MB/s")
		b.ReportMetric(records/el.Seconds()/20000, "x_busy_sensor")
	}
}

// BenchmarkLoopbackCopy is the baseline: raw TCP over loopback, 1 MiB writes.
func BenchmarkLoopbackCopy(b *testing.B) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	go func() {
		c, err := l.Accept()
		if err == nil {
			io.Copy(io.Discard, c)
			c.Close()
		}
	}()
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 1<<20)
	b.SetBytes(int64(len(buf)))
	for i := 0; i < b.N; i++ {
		if _, err := c.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
}
