package collector

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/sie-europe/dnssensor/uplink/sielink"
	"github.com/sie-europe/dnssensor/uplink/sielink/sielinktest"
)

var benchSizes = []int{64 << 10, 256 << 10, 1000 << 10}

// BenchmarkSielinkToCollector measures a sensor's client sending
// containers to a collector over loopback TLS, the collector validating
// each and writing it to its NMSG file: directly (path=direct), or through the
// embedded JetStream server (R1; like the direct path here without fsync) and its
// archiver (path=jetstream; timed until the archive holds the last container).
// Compare with BenchmarkLoopbackCopy.
func BenchmarkSielinkToCollector(b *testing.B) {
	for _, path := range []string{"direct", "jetstream"} {
		for _, size := range benchSizes {
			benchCollector(b, path, size)
		}
	}
}

func benchCollector(b *testing.B, path string, size int) {
	b.Run(fmt.Sprintf("path=%s/container=%dKiB", path, size>>10), func(b *testing.B) {
		dir := b.TempDir()
		certPEM, keyPEM, _ := sielinktest.CertPEM("127.0.0.1")
		certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
		os.WriteFile(certFile, certPEM, 0o644)
		os.WriteFile(keyFile, keyPEM, 0o600)
		keysFile, apiKeys, _ := sielinktest.WriteKeys(dir, "bench")
		ready := make(chan string, 1)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		opts := Options{Listen: "127.0.0.1:0", CertFile: certFile, KeyFile: keyFile, KeysFile: keysFile,
			Store: StoreOptions{Dir: filepath.Join(dir, "nmsg"), Rotate: time.Hour},
			Ready: func(a, _ string) { ready <- a }}
		var m *metrics
		if path == "jetstream" {
			opts.JetStream = &JetStreamOptions{}
			opts.metricsHook = func(mm *metrics) { m = mm }
		}
		go func() { done <- Run(ctx, opts) }()
		addr := <-ready
		conn, err := sielink.Dial(ctx, sielink.Config{URL: "wss://" + addr, Name: "bench", APIKeyFile: apiKeys["bench"],
			TLS: &tls.Config{RootCAs: x509Pool(b, certPEM)}})
		if err != nil {
			b.Fatal(err)
		}
		// ~250-octet records, the size of a typical dnsqr payload.
		c := makeContainer(b, rand.New(rand.NewPCG(1, 2)), size/260, 250, nil)
		b.SetBytes(int64(len(c)))
		b.ReportAllocs()
		b.ResetTimer()
		start := time.Now()
		for i := 0; i < b.N; i++ {
			if err := conn.Send(ctx, c, sielink.LossCounter{}); err != nil {
				b.Fatal(err)
			}
		}
		// Count only what the collector has read and stored.
		if err := conn.Sync(ctx); err != nil {
			b.Fatal(err)
		}
		for m != nil {
			js := m.js.snapshot()
			if js.Archiver.StreamSeq >= js.LastSeq {
				break
			}
			time.Sleep(time.Millisecond)
		}
		el := time.Since(start)
		b.StopTimer()
		b.ReportMetric(float64(b.N)/el.Seconds(), "payloads/s")
		conn.Close()
		cancel()
		if err := <-done; err != nil {
			b.Fatal(err)
		}
	})
}

// BenchmarkLoopbackCopy is the floor: the same octets copied over a
// loopback TCP connection (plain and TLS) into io.Discard.
func BenchmarkLoopbackCopy(b *testing.B) {
	for _, useTLS := range []bool{false, true} {
		for _, size := range benchSizes {
			name := fmt.Sprintf("tls=%v/chunk=%dKiB", useTLS, size>>10)
			b.Run(name, func(b *testing.B) {
				ln, err := net.Listen("tcp", "127.0.0.1:0")
				if err != nil {
					b.Fatal(err)
				}
				defer ln.Close()
				var ctls *tls.Config
				if useTLS {
					stls, c, err := sielinktest.TLS("127.0.0.1")
					if err != nil {
						b.Fatal(err)
					}
					ln, ctls = tls.NewListener(ln, stls), c
				}
				done := make(chan int64)
				go func() {
					c, err := ln.Accept()
					if err != nil {
						done <- 0
						return
					}
					n, _ := io.Copy(io.Discard, c)
					c.Close()
					done <- n
				}()
				var c net.Conn
				if useTLS {
					c, err = tls.Dial("tcp", ln.Addr().String(), ctls)
				} else {
					c, err = net.Dial("tcp", ln.Addr().String())
				}
				if err != nil {
					b.Fatal(err)
				}
				buf := make([]byte, size)
				b.SetBytes(int64(size))
				b.ReportAllocs()
				b.ResetTimer()
				start := time.Now()
				for i := 0; i < b.N; i++ {
					if _, err := c.Write(buf); err != nil {
						b.Fatal(err)
					}
				}
				c.Close()
				<-done
				b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "payloads/s")
			})
		}
	}
}
