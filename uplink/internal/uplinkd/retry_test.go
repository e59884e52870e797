package uplinkd

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sie-europe/dnssensor/internal/testenv"
	"github.com/sie-europe/dnssensor/nmsg/dnsqr"
	collectorauth "github.com/sie-europe/dnssensor/uplink/internal/collector/auth"
	"github.com/sie-europe/dnssensor/uplink/sielink"
	"github.com/sie-europe/dnssensor/uplink/sielink/sielinktest"
	"github.com/sie-europe/dnssensor/uplink/spool"
)

// gate is a listener for a collector that can be "down": while down it accepts and at once closes
// every connection (as a restarting collector or a middlebox resetting it would), counting them,
// so a test sees each of the client's attempts without depending on ports being reusable.
type gate struct {
	net.Listener
	up       atomic.Bool
	attempts atomic.Int64
}

func (g *gate) Accept() (net.Conn, error) {
	for {
		c, err := g.Listener.Accept()
		if err != nil || g.up.Load() {
			return c, err
		}
		g.attempts.Add(1)
		c.Close()
	}
}

// spoolRecords writes n records into a spool and seals them.
func spoolRecords(t *testing.T, ram, disk string, n int) {
	t.Helper()
	p, err := spool.OpenProducer(spool.Options{Dir: ram, DiskDir: disk, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	// Records reach the spool as sensord sends them, through its payload adapter.
	w := newRecordWriter(p)
	rec := &dnsqr.Record{Type: dnsqr.UDPQueryResponse, QueryIP: resolver, ResponseIP: auth, Proto: 17, ResponsePort: 53,
		HasQuestion: true, Qname: []byte("\x07example\x03com\x00"), Qtype: 1, Qclass: 1,
		QueryPackets: [][]byte{make([]byte, 40)}, QueryTimes: []int64{0}}
	for i := 0; i < n; i++ {
		rec.ID, rec.QueryPort, rec.QueryTimes[0] = uint16(i), uint16(1024+i), int64(1e18)+int64(i)*1e6
		if err := w.Write(rec); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
}

// gatedCollector starts a sielink collector behind a gate (down until g.up is set), spools n
// records, and returns uplinkd's configuration for them with its one destination there.
func gatedCollector(t *testing.T, n int, retryMax, grace time.Duration) (g *gate, received *atomic.Int64, cfg *Config) {
	t.Helper()
	dir := t.TempDir()
	certPEM, keyPEM, err := sielinktest.CertPEM("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	certFile := filepath.Join(dir, "cert.pem")
	os.WriteFile(certFile, certPEM, 0o644)
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	keysFile, apiKeys, err := sielinktest.WriteKeys(dir, "s1")
	if err != nil {
		t.Fatal(err)
	}
	keys, err := collectorauth.LoadKeys(keysFile)
	if err != nil {
		t.Fatal(err)
	}
	received = new(atomic.Int64)
	srv := &sielink.Server{Auth: keys, Heartbeat: time.Second, Logf: t.Logf,
		Handler: sielink.HandlerFunc(func(d *sielink.Delivery) error { received.Add(int64(d.Records)); return nil })}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g = &gate{Listener: ln}
	hs := &http.Server{Handler: srv, ReadHeaderTimeout: 5 * time.Second}
	go hs.Serve(tls.NewListener(g, &tls.Config{Certificates: []tls.Certificate{cert}}))
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		hs.Close()
	})

	ram, disk := filepath.Join(dir, "ram"), filepath.Join(dir, "disk")
	spoolRecords(t, ram, disk, n)
	cfg, err = ParseConfig([]byte(fmt.Sprintf(`{"spool": {"dir": %q, "disk_dir": %q}, "metrics": "127.0.0.1:0", "retry_max": %q, "shutdown_grace": %q,
		"destinations": [{"type": "sielink", "url": "wss://%s", "sensor": "s1", "api_key_file": %q, "ca_file": %q}]}`,
		ram, disk, retryMax, grace, ln.Addr(), apiKeys["s1"], certFile)), "test.json")
	if err != nil {
		t.Fatal(err)
	}
	return g, received, cfg
}

// TestRetryMaxBoundsReconnect: after a long collector outage, uplinkd must try again at least every
// retry_max and so deliver within about retry_max of the collector answering again. (The sielink
// client used to back off on its own up to 2 minutes ±50 %: 31.5 s to reconnect with retry_max 1s.)
func TestRetryMaxBoundsReconnect(t *testing.T) {
	const retryMax = 200 * time.Millisecond
	g, received, cfg := gatedCollector(t, 100, retryMax, time.Second)
	s, err := New(cfg, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()

	// The outage: enough failed attempts that an unbounded exponential back-off would by now wait
	// far beyond retry_max (1+2+4+8+16+32 s ≥ 31 s even at the lowest jitter). With the bound
	// they take about 8 × retry_max; the deadline leaves room for a loaded machine.
	const outageAttempts = 8
	deadline := time.Now().Add(15 * time.Second)
	for g.attempts.Load() < outageAttempts {
		if time.Now().After(deadline) {
			t.Fatalf("only %d connection attempts within 15 s of outage with retry_max %v", g.attempts.Load(), retryMax)
		}
		time.Sleep(10 * time.Millisecond)
	}
	g.up.Store(true)
	back := time.Now()
	// Time to deliver once the collector answers: at most one retry_max of waiting, plus a TLS and
	// WebSocket handshake and one segment; 5 s is generous even on a loaded 2-core machine and
	// far below what the unbounded back-off waits after this outage.
	for received.Load() < 100 {
		if time.Since(back) > 5*time.Second {
			t.Fatalf("%d of 100 records delivered %v after the collector came back (retry_max %v); status %+v",
				received.Load(), time.Since(back).Round(time.Millisecond), retryMax, s.Snapshot().Destinations)
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Logf("outage of %d attempts; delivered %v after the collector came back (retry_max %v)", outageAttempts, time.Since(back).Round(time.Millisecond), retryMax)
}

// TestShutdownDoesNotRetry: SIGTERM while a destination is failing ends uplinkd at once, the
// segment in flight released (not acknowledged), so it is delivered after the restart: nothing
// lost. The grace is for an attempt in progress to finish, not for retrying: uplinkd kept
// retrying for all of shutdown_grace (20 s by default), and gokrazy, which waits for every
// service before a reboot, held every update's reboot that long while the collector was down.
func TestShutdownDoesNotRetry(t *testing.T) {
	const grace = 30 * time.Second
	g, received, cfg := gatedCollector(t, 100, 200*time.Millisecond, grace)
	run := func(ctx context.Context) <-chan error {
		s, err := New(cfg, t.Logf)
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- s.Run(ctx) }()
		return done
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := run(ctx)
	deadline := time.Now().Add(testenv.Patience)
	for g.attempts.Load() < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("only %d connection attempts in %v", g.attempts.Load(), testenv.Patience)
		}
		time.Sleep(10 * time.Millisecond)
	}
	stopped := time.Now()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(testenv.Patience):
		t.Fatal("uplinkd did not stop")
	}
	took := time.Since(stopped)
	// At once: one attempt in progress may finish (a failing one here fails in milliseconds);
	// a third of the grace leaves a loaded machine room and is far below what retrying took.
	if took > grace/3 {
		t.Errorf("uplinkd stopped %v after SIGTERM with its destination failing, want at once (shutdown_grace %v)", took.Round(time.Millisecond), grace)
	}
	if received.Load() != 0 {
		t.Fatalf("%d records delivered to a collector that was down", received.Load())
	}

	// The restart delivers what was in flight.
	g.up.Store(true)
	ctx2, cancel2 := context.WithCancel(context.Background())
	done2 := run(ctx2)
	testenv.WaitFor(t, "the 100 records after the restart", func() bool { return received.Load() >= 100 })
	cancel2()
	if err := <-done2; err != nil {
		t.Error(err)
	}
	t.Logf("stopped %v after SIGTERM (destination failing, shutdown_grace %v); all 100 records delivered after the restart", took.Round(time.Millisecond), grace)
}
