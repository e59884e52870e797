package uplinkd

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/sie-europe/dnssensor/internal/health"
	"github.com/sie-europe/dnssensor/internal/health/healthtest"
	"github.com/sie-europe/dnssensor/internal/testenv"
	"github.com/sie-europe/dnssensor/nmsg/dnsqr"
	"github.com/sie-europe/dnssensor/uplink/spool"
)

// spoolRecords seals n small records into the spool's RAM tier.
func spoolFreshRecords(t *testing.T, ram, disk string, n int) {
	t.Helper()
	p, err := spool.OpenProducer(spool.Options{Dir: ram, DiskDir: disk, SegmentSize: 8192, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	// Records reach the spool as sensord sends them, through its payload adapter.
	w := newRecordWriter(p)
	rec := &dnsqr.Record{Type: dnsqr.UDPQueryResponse, QueryIP: netip.MustParseAddr("198.51.100.2"),
		ResponseIP: netip.MustParseAddr("192.0.2.10"), Proto: 17, ResponsePort: 53,
		HasQuestion: true, Qname: []byte("\x07example\x03com\x00"), Qtype: 1, Qclass: 1, HasRcode: true,
		QueryPackets: [][]byte{make([]byte, 60)}, ResponsePackets: [][]byte{make([]byte, 120)}, QueryTimes: []int64{0}, ResponseTimes: []int64{0}}
	for i := 0; i < n; i++ {
		rec.ID, rec.QueryPort = uint16(i), uint16(1024+i)
		rec.QueryTimes[0], rec.ResponseTimes[0] = time.Now().UnixNano(), time.Now().UnixNano()+2e6
		if err := w.Write(rec); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
}

// startSupervisor runs uplinkd on cfgJSON with the contract on a temp socket until the test ends.
func startSupervisor(t *testing.T, cfgJSON string) (sock string) {
	t.Helper()
	cfg, err := ParseConfig([]byte(cfgJSON), "test")
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(cfg, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	s.HealthSocket = filepath.Join(t.TempDir(), "uplinkd", "health.sock")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return s.HealthSocket
}

// waitHealth polls /health.json until cond holds, on a deadline generous for a loaded machine.
func waitHealth(t *testing.T, sock string, what string, cond func(*health.Report) bool) *health.Report {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	var last *health.Report
	var lastErr error
	for time.Now().Before(deadline) {
		last, lastErr = health.Get(context.Background(), sock)
		if lastErr == nil && cond(last) {
			return last
		}
		time.Sleep(50 * time.Millisecond)
	}
	b, _ := json.MarshalIndent(last, "", "  ")
	t.Fatalf("%s: not within 30s (last error %v)\n%s", what, lastErr, b)
	return nil
}

func getBody(t *testing.T, sock, path string) (int, []byte) {
	t.Helper()
	return healthtest.Get(t, health.Client(sock), "http://unix"+path)
}

// TestHealthContract: uplinkd delivering to an NMSG/UDP receiver is healthy (200), its counters
// reach /metrics with HELP and TYPE on every family and exposition escaping (not Go's %q), and
// both JSON documents match the schemas.
func TestHealthContract(t *testing.T) {
	dir := t.TempDir()
	ram, disk := filepath.Join(dir, "ram"), filepath.Join(dir, "disk")
	const records = 300
	spoolFreshRecords(t, ram, disk, records)
	rx, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer rx.Close()
	go func() {
		buf := make([]byte, 65536)
		for {
			if _, _, err := rx.ReadFrom(buf); err != nil {
				return
			}
		}
	}()
	// A zero-width space: Go's %q writes it as \u200b, which the exposition format reads as six
	// literal characters.
	name := "relay\u200b\"one\"\\"
	sock := startSupervisor(t, fmt.Sprintf(`{"spool": {"dir": %q, "disk_dir": %q}, "metrics": "127.0.0.1:0",
		"destinations": [{"type": "nmsg-udp", "name": %q, "addr": %q}]}`, ram, disk, name, rx.LocalAddr()))

	rep := waitHealth(t, sock, "healthy and drained", func(r *health.Report) bool {
		return r.OK && strings.Contains(r.Checks[0].Detail, "0 segments")
	})
	if len(rep.Checks) != 1 || rep.Checks[0].Name != "spool" || len(rep.Checks[0].Children) != 2 {
		t.Errorf("tree: %+v", rep.Checks)
	}
	code, body := getBody(t, sock, "/health.json")
	if code != http.StatusOK {
		t.Errorf("/health.json: %d", code)
	}
	healthtest.Check(t, health.HealthSchemaJSON, body)
	_, body = getBody(t, sock, "/metrics.json")
	healthtest.Check(t, health.MetricsSchemaJSON, body)
	// An empty spool can be seen while the last segment is still in flight, before its records
	// are counted as sent: wait for the counter itself.
	var sent float64
	testenv.WaitFor(t, "every record counted as sent", func() bool {
		m, err := health.GetMetrics(context.Background(), sock)
		if err != nil {
			t.Fatal(err)
		}
		sent, _ = m.Value("dnssensor_uplinkd_records_sent_total", map[string]string{"destination": name})
		return sent >= records
	})
	if sent != records {
		t.Errorf("records sent: %v, want %d", sent, records)
	}

	code, body = getBody(t, sock, "/metrics")
	if code != http.StatusOK {
		t.Fatalf("/metrics: %d", code)
	}
	parser := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := parser.TextToMetricFamilies(strings.NewReader(string(body)))
	if err != nil {
		t.Fatalf("/metrics does not parse: %v\n%s", err, body)
	}
	for _, fam := range []string{"dnssensor_uplinkd_up", "dnssensor_uplinkd_records_sent_total", "dnssensor_uplinkd_lost_records_total",
		"dnssensor_uplinkd_lost_segments_total", "dnssensor_uplinkd_lost_bytes_total", "dnssensor_uplinkd_spool_bytes", "dnssensor_uplinkd_datagrams_sent_total"} {
		f := fams[fam]
		if f == nil || f.GetHelp() == "" || !strings.Contains(string(body), "# TYPE "+fam+" ") {
			t.Errorf("%s: missing, or without HELP or TYPE", fam)
		}
	}
	if f := fams["dnssensor_uplinkd_records_sent_total"]; f != nil {
		if got := f.GetMetric()[0].GetLabel()[0].GetValue(); got != name {
			t.Errorf("destination label reads back as %q, want %q", got, name)
		}
	}

	// /status.json is the whole state, as the status page reads it.
	_, body = getBody(t, sock, "/status.json")
	var st Metrics
	if err := json.Unmarshal(body, &st); err != nil || len(st.Destinations) != 1 || st.Destinations[0].Records != records {
		t.Errorf("/status.json: %v %+v", err, st)
	}
}

// TestHealthUnreachable: a destination that cannot be reached is the first failure, with the
// reason, and /health.json answers 503.
func TestHealthUnreachable(t *testing.T) {
	dir := t.TempDir()
	ram, disk := filepath.Join(dir, "ram"), filepath.Join(dir, "disk")
	spoolFreshRecords(t, ram, disk, 10)
	key := filepath.Join(dir, "api.key")
	if err := os.WriteFile(key, []byte("0123456789abcdef0123456789abcdef\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// A port nobody listens on: connections are refused at once.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	sock := startSupervisor(t, fmt.Sprintf(`{"spool": {"dir": %q, "disk_dir": %q}, "metrics": "127.0.0.1:0", "retry_max": "1s", "shutdown_grace": "1s",
		"destinations": [{"type": "sielink", "name": "sie", "url": "wss://%s", "sensor": "s1", "api_key_file": %q}]}`, ram, disk, addr, key))
	rep := waitHealth(t, sock, "destination failing with its error", func(r *health.Report) bool {
		return strings.Join(r.FirstFailurePath, "/") == "spool/destination sie" && strings.Contains(r.Checks[0].Children[0].Detail, "last error")
	})
	c := rep.Checks[0].Children[0]
	if !c.FirstFailure || c.Fix == "" || c.OK {
		t.Errorf("destination check: %+v", c)
	}
	if code, _ := getBody(t, sock, "/health.json"); code != http.StatusServiceUnavailable {
		t.Errorf("/health.json: %d, want 503", code)
	}
}

// TestMetricsAddressLoopbackOnly: the contract carries no authentication, so the metrics address
// must be loopback.
func TestMetricsAddressLoopbackOnly(t *testing.T) {
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "ram"), 0o755); err != nil {
		t.Fatal(err)
	}
	_, err := ParseConfig([]byte(fmt.Sprintf(`{"spool": {"dir": %q}, "metrics": "0.0.0.0:0",
		"destinations": [{"type": "nmsg-udp", "addr": "127.0.0.1:9"}]}`, filepath.Join(dir, "ram"))), "test")
	if err == nil || !strings.Contains(err.Error(), "loopback") {
		t.Errorf("config with metrics on 0.0.0.0: %v, want a refusal naming loopback", err)
	}
	// The server refuses too, whoever built the configuration.
	cfg, err := ParseConfig([]byte(fmt.Sprintf(`{"spool": {"dir": %q}, "metrics": "127.0.0.1:0",
		"destinations": [{"type": "nmsg-udp", "addr": "127.0.0.1:9"}]}`, filepath.Join(dir, "ram"))), "test")
	if err != nil {
		t.Fatal(err)
	}
	cfg.Metrics = "0.0.0.0:0"
	s, err := New(cfg, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Run(context.Background()); err == nil || !strings.Contains(err.Error(), "loopback") {
		t.Errorf("Run with metrics on 0.0.0.0: %v", err)
	}
}

// TestLogJSON: what uplinkd logs reaches the contract's /log.json (the status page's recent
// lines), scrubbed.
func TestLogJSON(t *testing.T) {
	dir := t.TempDir()
	ram, disk := filepath.Join(dir, "ram"), filepath.Join(dir, "disk")
	spoolFreshRecords(t, ram, disk, 1)
	cfg, err := ParseConfig([]byte(fmt.Sprintf(`{"spool": {"dir": %q, "disk_dir": %q}, "metrics": "127.0.0.1:0",
		"destinations": [{"type": "nmsg-udp", "name": "relay", "addr": "127.0.0.1:9"}]}`, ram, disk)), "test")
	if err != nil {
		t.Fatal(err)
	}
	ring := health.NewLogRing(0)
	s, err := New(cfg, func(format string, args ...any) { fmt.Fprintf(ring, format+"\n", args...) })
	if err != nil {
		t.Fatal(err)
	}
	s.Log = ring
	s.HealthSocket = filepath.Join(t.TempDir(), "uplinkd", "health.sock")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	defer func() { cancel(); <-done }()
	waitHealth(t, s.HealthSocket, "serving", func(*health.Report) bool { return true })
	s.logf("uplinkd: test line api_key=hunter2hunter2")
	doc, err := health.GetLog(ctx, s.HealthSocket, 100)
	if err != nil {
		t.Fatal(err)
	}
	var texts []string
	for _, l := range doc.Lines {
		texts = append(texts, l.Text)
	}
	all := strings.Join(texts, "\n")
	if !strings.Contains(all, "uplinkd: test line api_key=[redacted]") || strings.Contains(all, "hunter2") {
		t.Errorf("/log.json lines:\n%s", all)
	}
}
