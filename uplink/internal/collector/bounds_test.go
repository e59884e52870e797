package collector

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/expfmt"

	"github.com/sie-europe/dnssensor/internal/testenv"
	"github.com/sie-europe/dnssensor/uplink/sielink"
	"github.com/sie-europe/dnssensor/uplink/sielink/sielinktest"
)

type testCollector struct {
	dir, addr, metrics string
	files              [3]string // certificate, key, keys file
	certPEM            []byte
	apiKeys            map[string]string
	log                *logBuf
	stop               func() error
}

// startCollector runs a collector with TLS on loopback; change opts in mod.
func startCollector(t *testing.T, mod func(*Options)) *testCollector {
	t.Helper()
	return startCollectorKeys(t, []string{"alpha", "beta"}, mod, nil)
}

// startCollectorKeys runs a collector for the sensors; with share, one with share's
// certificate and keys (another host behind the same name).
func startCollectorKeys(t *testing.T, sensors []string, mod func(*Options), share *testCollector) *testCollector {
	t.Helper()
	tc := &testCollector{dir: t.TempDir(), log: &logBuf{}}
	if share != nil {
		tc.certPEM, tc.apiKeys, tc.files = share.certPEM, share.apiKeys, share.files
	} else {
		certPEM, keyPEM, err := sielinktest.CertPEM("127.0.0.1")
		if err != nil {
			t.Fatal(err)
		}
		tc.certPEM = certPEM
		certFile, keyFile := filepath.Join(tc.dir, "cert.pem"), filepath.Join(tc.dir, "key.pem")
		os.WriteFile(certFile, certPEM, 0o644)
		os.WriteFile(keyFile, keyPEM, 0o600)
		keysFile, apiKeys, err := sielinktest.WriteKeys(tc.dir, sensors...)
		if err != nil {
			t.Fatal(err)
		}
		tc.apiKeys, tc.files = apiKeys, [3]string{certFile, keyFile, keysFile}
	}
	certFile, keyFile, keysFile := tc.files[0], tc.files[1], tc.files[2]
	ready := make(chan [2]string, 1)
	opts := Options{
		Listen: "127.0.0.1:0", CertFile: certFile, KeyFile: keyFile, KeysFile: keysFile,
		Store:         StoreOptions{Dir: filepath.Join(tc.dir, "nmsg"), Rotate: time.Hour, Logf: tc.log.logf},
		MetricsListen: "127.0.0.1:0",
		Logf:          tc.log.logf,
		Ready:         func(a, m string) { ready <- [2]string{a, m} },
	}
	if mod != nil {
		mod(&opts)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, opts) }()
	select {
	case a := <-ready:
		tc.addr, tc.metrics = a[0], a[1]
	case err := <-done:
		cancel()
		t.Fatal(err)
	}
	var stopped bool
	tc.stop = func() error {
		if stopped {
			return nil
		}
		stopped = true
		cancel()
		return <-done
	}
	t.Cleanup(func() { tc.stop() })
	return tc
}

func (tc *testCollector) config(sensor string) sielink.Config {
	return sielink.Config{URL: "wss://" + tc.addr, Name: sensor, APIKeyFile: tc.apiKeys[sensor],
		TLS: &tls.Config{RootCAs: x509PoolPEM(tc.certPEM)}, Heartbeat: 20 * time.Second}
}

// closedWithin reports whether the server closes c within d.
func closedWithin(c net.Conn, d time.Duration) bool {
	c.SetReadDeadline(time.Now().Add(d))
	var b [1]byte
	for {
		_, err := c.Read(b[:])
		if err == nil {
			continue
		}
		var ne net.Error
		return !(errors.As(err, &ne) && ne.Timeout())
	}
}

// TestUnauthenticatedBounded: peers refused for their API key are disconnected after the answer
// (before: kept alive for ever, 2,000 held ≥ 75 s), idle peers after the header timeout, and no
// more than MaxUnauthenticated are held at once; a real sensor still connects afterwards.
func TestUnauthenticatedBounded(t *testing.T) {
	testenv.CheckLeaks(t)
	tc := startCollector(t, func(o *Options) { o.MaxUnauthenticated = 20; o.headerTimeout = 2 * time.Second })
	tlsConf := &tls.Config{RootCAs: x509PoolPEM(tc.certPEM)}

	// Refused requests: each connection must be closed right after its 401.
	held := 0
	for range 10 {
		c, err := tls.Dial("tcp", tc.addr, tlsConf)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(c, "GET /session/alpha HTTP/1.1\r\nHost: x\r\nX-API-Key: wrong\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil || resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("response %v, %v", resp, err)
		}
		if !closedWithin(c, 5*time.Second) {
			held++
		}
		c.Close()
	}
	if held != 0 {
		t.Errorf("%d of 10 connections held open after a 401", held)
	}

	// Idle connections: 20 are held until the header timeout, the others closed at once.
	var conns []net.Conn
	for range 50 {
		c, err := net.Dial("tcp", tc.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		conns = append(conns, c)
	}
	testenv.WaitFor(t, "the gate to fill", func() bool {
		s := fetchSnapshot(t, tc.metrics)
		return s.Unauthenticated == 20 && s.RefusedConns == 30
	})
	start := time.Now()
	for i, c := range conns {
		if !closedWithin(c, 20*time.Second) {
			t.Fatalf("connection %d still open after %v", i, time.Since(start))
		}
	}
	testenv.WaitFor(t, "the gate to empty", func() bool { return fetchSnapshot(t, tc.metrics).Unauthenticated == 0 })

	conn, err := sielink.Dial(ctxT(t, 30*time.Second), tc.config("alpha"))
	if err != nil {
		t.Fatalf("a sensor after the flood: %v", err)
	}
	conn.Close()
	if !strings.Contains(fetchPrometheus(t, tc.metrics), "dnssensor_collector_unauthenticated_refused_total 30\n") {
		t.Errorf("Prometheus output lacks the refused connections")
	}
}

// TestTLSPolicy: TLS 1.3, or TLS 1.2 with an ECDHE AEAD suite; no CBC suites, nothing older.
func TestTLSPolicy(t *testing.T) {
	testenv.CheckLeaks(t)
	tc := startCollector(t, nil)
	pool := x509PoolPEM(tc.certPEM)
	for _, c := range []struct {
		name   string
		conf   *tls.Config
		accept bool
	}{
		{"TLS 1.3", &tls.Config{MinVersion: tls.VersionTLS13}, true},
		{"TLS 1.2 GCM", &tls.Config{MaxVersion: tls.VersionTLS12, CipherSuites: []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256}}, true},
		{"TLS 1.2 CBC", &tls.Config{MaxVersion: tls.VersionTLS12, CipherSuites: []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA, tls.TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA, tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256, tls.TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256}}, false},
		{"TLS 1.2 RSA key exchange", &tls.Config{MaxVersion: tls.VersionTLS12, CipherSuites: []uint16{tls.TLS_RSA_WITH_AES_128_GCM_SHA256, tls.TLS_RSA_WITH_AES_256_GCM_SHA384}}, false},
		{"TLS 1.1", &tls.Config{MaxVersion: tls.VersionTLS11}, false},
	} {
		c.conf.RootCAs = pool
		conn, err := tls.Dial("tcp", tc.addr, c.conf)
		if err == nil {
			conn.Close()
		}
		if (err == nil) != c.accept {
			t.Errorf("%s: handshake error %v, want accepted %v", c.name, err, c.accept)
		}
	}
}

// TestTLSKeyFileMode: a TLS private key others could read is refused like a keys file.
func TestTLSKeyFileMode(t *testing.T) {
	dir := t.TempDir()
	certPEM, keyPEM, _ := sielinktest.CertPEM("127.0.0.1")
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	os.WriteFile(certFile, certPEM, 0o644)
	os.WriteFile(keyFile, keyPEM, 0o644)
	keysFile, _, _ := sielinktest.WriteKeys(dir, "a")
	// Bounded: a collector that accepted the key would serve until the context ends.
	err := Run(ctxT(t, 5*time.Second), Options{Listen: "127.0.0.1:0", CertFile: certFile, KeyFile: keyFile, KeysFile: keysFile, Store: StoreOptions{Dir: dir}})
	if err == nil || !strings.Contains(err.Error(), "-key") || !strings.Contains(err.Error(), "0600") {
		t.Errorf("Run with a 0644 TLS key = %v, want a refusal naming -key and 0600", err)
	}
}

// TestQuota: a sensor over its disk quota is told so in an alert, mid-session and at the next
// session, and what it sent past the quota stays unconfirmed (in its spool); another sensor is
// unaffected.
func TestQuota(t *testing.T) {
	testenv.CheckLeaks(t)
	const quota = 64 << 10
	tc := startCollector(t, func(o *Options) { o.Store.Quota = quota })
	ctx := ctxT(t, 60*time.Second)
	rng := rand.New(rand.NewPCG(7, 8))
	conn, err := sielink.Dial(ctx, tc.config("alpha"))
	if err != nil {
		t.Fatal(err)
	}
	sent := 0
	for ; sent < 40 && conn.Err() == nil; sent++ {
		if err := conn.Send(ctx, makeContainer(t, rng, 10, 400, nil), sielink.LossCounter{}); err != nil {
			break
		}
		conn.Sync(ctx)
	}
	<-conn.Done()
	var alert *sielink.Alert
	if !errors.As(conn.Err(), &alert) || !strings.Contains(alert.Message, "quota") {
		t.Errorf("flooding sensor's session ended with %v, want the quota alert", conn.Err())
	}
	if u := conn.Stats(); u.PayloadsSent == 0 {
		t.Fatal("nothing sent")
	}
	st := fetchSnapshot(t, tc.metrics)
	if len(st.Sensors) != 1 || st.Sensors[0].Files.DiskBytes > quota || st.Sensors[0].Files.QuotaRefusals == 0 {
		t.Errorf("sensor stats %+v", st.Sensors)
	}
	stored := st.Sensors[0].Files.Containers
	if stored >= uint64(sent) {
		t.Errorf("%d of %d containers stored despite the quota", stored, sent)
	}
	// The next session is refused at once, with the reason.
	_, err = sielink.Dial(ctx, tc.config("alpha"))
	if !errors.As(err, &alert) || !strings.Contains(alert.Message, "quota") {
		t.Errorf("next session: Dial = %v, want the quota alert", err)
	}
	// Another sensor still delivers.
	other, err := sielink.Dial(ctx, tc.config("beta"))
	if err != nil {
		t.Fatal(err)
	}
	if err := other.Send(ctx, makeContainer(t, rng, 10, 400, nil), sielink.LossCounter{}); err != nil {
		t.Fatal(err)
	}
	if err := other.Sync(ctx); err != nil {
		t.Errorf("other sensor: %v", err)
	}
	other.Close()
	if err := tc.stop(); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(fetchPrometheusText(st), `dnssensor_collector_sensor_quota_refusals_total{sensor="alpha"}`) {
		t.Errorf("Prometheus output lacks the quota refusals")
	}
}

// TestWriteErrorCutBack: a write that fails for lack of space is cut back out of the file and
// returned as a stall; once space returns the same file takes data again, and everything stored
// is there exactly once (before: the failed write counted as stored, and every later write to
// the file failed).
func TestWriteErrorCutBack(t *testing.T) {
	disk := smallDisk(t, 1<<20)
	s, err := NewStore(StoreOptions{Dir: filepath.Join(disk, "nmsg"), Rotate: time.Hour, Sync: true})
	if err != nil {
		t.Fatal(err)
	}
	filler := fill(t, disk, 48<<10)
	rng := rand.New(rand.NewPCG(9, 10))
	var stored records
	failed := 0
	for i := 0; i < 40; i++ {
		var rec records
		c := makeContainer(t, rng, 4, 1000, &rec)
		err := s.Deliver(&sielink.Delivery{Sensor: "s1", Payload: &sielink.Payload{Data: c}})
		if err == nil {
			stored = append(stored, rec...)
			continue
		}
		failed++
		if !errors.Is(err, syscall.ENOSPC) {
			t.Fatalf("Deliver = %v, want ENOSPC", err)
		}
		st := s.Stats()["s1"]
		n, _ := wholeContainers(st.CurrentFile)
		if fi, _ := os.Stat(st.CurrentFile); fi == nil || fi.Size() != n {
			t.Fatalf("after a failed write the file is not cut back to whole containers")
		}
		if i > 30 {
			break
		}
		if failed == 3 {
			os.Remove(filler)
		}
	}
	st := s.Stats()["s1"]
	if failed < 3 || st.WriteErrors != uint64(failed) || st.Stalled || st.LastWriteError == "" {
		t.Errorf("%d failed; stats %+v", failed, st)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	got, _ := readDir(t, filepath.Join(disk, "nmsg", "s1"))
	equalRecords(t, stored, got)
}

// TestSealFailureKept: a file whose seal fails holds confirmed data: it is kept, sealed on a
// later Rotate once possible, and sealed by Close at the latest.
func TestSealFailureKept(t *testing.T) {
	dir := t.TempDir()
	now := time.Date(2026, 5, 4, 12, 0, 0, 0, time.UTC)
	s, err := NewStore(StoreOptions{Dir: dir, Rotate: time.Minute, now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(11, 12))
	var want records
	deliver := func() {
		if err := s.Deliver(&sielink.Delivery{Sensor: "s1", Payload: &sielink.Payload{Data: makeContainer(t, rng, 3, 100, &want)}}); err != nil {
			t.Fatal(err)
		}
	}
	deliver()
	// Something in the way of the rename: the seal fails.
	blocker := filepath.Join(dir, "s1", "20260504.120000.0.nmsg")
	os.MkdirAll(filepath.Join(blocker, "x"), 0o750)
	now = now.Add(time.Minute)
	deliver() // seals the first file (fails) and starts the next
	st := s.Stats()["s1"]
	if st.PendingSeals != 1 || st.WriteErrors == 0 || st.FilesSealed != 0 {
		t.Fatalf("stats %+v, want one pending seal", st)
	}
	os.RemoveAll(blocker)
	s.Rotate()
	if st := s.Stats()["s1"]; st.PendingSeals != 0 || st.FilesSealed != 1 {
		t.Fatalf("stats %+v, want the pending file sealed", st)
	}
	deliver()
	// At shutdown a seal that fails is retried at once; with its name taken, the file is sealed
	// beside it.
	blocker = filepath.Join(dir, "s1", "20260504.120100.0.nmsg")
	os.MkdirAll(filepath.Join(blocker, "x"), 0o750)
	if err := s.Close(); err != nil {
		t.Errorf("Close = %v", err)
	}
	os.RemoveAll(blocker)
	if left, _ := filepath.Glob(filepath.Join(dir, "s1", ".*")); len(left) != 0 {
		t.Errorf("temp files left: %q", left)
	}
	got, _ := readDir(t, filepath.Join(dir, "s1"))
	equalRecords(t, want, got)
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func fetchPrometheus(t *testing.T, addr string) string {
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var b strings.Builder
	bufio.NewReader(resp.Body).WriteTo(&b)
	return b.String()
}

// fetchPrometheusText renders s as /metrics does.
func fetchPrometheusText(s Snapshot) string {
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(&promCollector{snap: func() Snapshot { return s }})
	mfs, err := reg.Gather()
	var b strings.Builder
	if err != nil {
		fmt.Fprintf(&b, "gather: %v\n", err)
	}
	for _, mf := range mfs {
		expfmt.MetricFamilyToText(&b, mf)
	}
	return b.String()
}
