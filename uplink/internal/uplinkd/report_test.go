package uplinkd

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sie-europe/dnssensor/internal/health"
	"github.com/sie-europe/dnssensor/internal/testenv"
	"github.com/sie-europe/dnssensor/uplink/internal/collector"
	"github.com/sie-europe/dnssensor/uplink/sielink"
	"github.com/sie-europe/dnssensor/uplink/sielink/sielinktest"
)

// fakeSensord serves the health contract on a unix socket with sensord's check names, one of
// which can be broken, and a records counter.
type fakeSensord struct {
	sock    string
	mu      sync.Mutex
	failing bool
	records prometheus.Counter
}

func startFakeSensord(t *testing.T) *fakeSensord {
	t.Helper()
	fs := &fakeSensord{sock: filepath.Join(t.TempDir(), "sensord", "health.sock"),
		records: prometheus.NewCounter(prometheus.CounterOpts{Name: "dnssensor_sensord_records_total", Help: "records"})}
	frames := health.NewNode("frames on eth1", func(time.Time) health.Result {
		fs.mu.Lock()
		defer fs.mu.Unlock()
		if fs.failing {
			return health.Result{OK: false, Detail: "1520 frames, none in the last 5m0s", Fix: "check the cable from the tap to eth1"}
		}
		return health.Result{OK: true, Detail: "1520 frames"}
	})
	tree := health.NewTree("sensord", time.Now, health.NewNode("capture", health.Fixed(true, "1 port open", ""),
		health.NewNode("port eth1", health.Fixed(true, "link up", ""), frames)))
	reg := health.NewRegistry()
	reg.MustRegister(fs.records)
	ln, err := health.ListenUnix(fs.sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- (&health.Server{Daemon: "sensord", Tree: tree, Registry: reg, Logf: t.Logf}).Serve(ctx, ln)
	}()
	t.Cleanup(func() { cancel(); <-done })
	return fs
}

func (fs *fakeSensord) setFailing(v bool) {
	fs.mu.Lock()
	fs.failing = v
	fs.mu.Unlock()
}

func fleetSensor(t *testing.T, addr, sensor string) *collector.FleetSensor {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/fleet.json")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var v collector.FleetView
	if err := json.NewDecoder(resp.Body).Decode(&v); err != nil {
		t.Fatal(err)
	}
	for i := range v.Sensors {
		if v.Sensors[i].Sensor == sensor {
			return &v.Sensors[i]
		}
	}
	return nil
}

// TestReportReachesFleet, end to end: uplinkd, reading a sensord-shaped health socket, sends its
// summary over sielink to a collector, whose fleet page shows it: on connecting, sensord's
// broken check as the first failure (with the fix), the version, the loss ledger; then, with a
// report interval of an hour, the repaired check within one look at the tree (5 s), with the rates
// taken since the first summary.
func TestReportReachesFleet(t *testing.T) {
	dir := t.TempDir()
	ram, disk := filepath.Join(dir, "ram"), filepath.Join(dir, "disk")
	spoolFreshRecords(t, ram, disk, 200)
	keysFile, apiKeys, err := sielinktest.WriteKeys(dir, "sensor1")
	if err != nil {
		t.Fatal(err)
	}
	sensord := startFakeSensord(t)
	sensord.setFailing(true)
	sensord.records.Add(1000)

	ctx, cancel := context.WithCancel(context.Background())
	ready, fleetReady := make(chan string, 1), make(chan string, 1)
	cdone := make(chan error, 1)
	go func() {
		cdone <- collector.Run(ctx, collector.Options{Listen: "127.0.0.1:0", PlainHTTP: true, KeysFile: keysFile,
			Store: collector.StoreOptions{Dir: filepath.Join(dir, "store"), Rotate: time.Hour},
			Fleet: collector.FleetOptions{Listen: "127.0.0.1:0", Ready: func(a string) { fleetReady <- a }},
			Ready: func(a, _ string) { ready <- a }, Logf: t.Logf})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-cdone; err != nil {
			t.Errorf("collector: %v", err)
		}
	})
	fleet, addr := <-fleetReady, <-ready
	startSupervisor(t, fmt.Sprintf(`{"spool": {"dir": %q, "disk_dir": %q}, "metrics": "127.0.0.1:0",
		"report_interval": "1h", "sensord_health": %q,
		"destinations": [{"type": "sielink", "url": "ws://%s", "sensor": "sensor1", "api_key_file": %q}]}`,
		ram, disk, sensord.sock, addr, apiKeys["sensor1"]))

	var s *collector.FleetSensor
	testenv.WaitFor(t, "sensor1's first report on the fleet page", func() bool {
		s = fleetSensor(t, fleet, "sensor1")
		return s != nil && s.LastSeen != nil
	})
	if s.State != "red" || s.FirstFailure == nil || s.FirstFailure.Daemon != "sensord" ||
		strings.Join(s.FirstFailure.Path, "/") != "capture/port eth1/frames on eth1" ||
		s.FirstFailure.Fix != "check the cable from the tap to eth1" {
		t.Errorf("first report: %+v (first failure %+v), want red with sensord's frames check", s, s.FirstFailure)
	}
	if s.Version == "" || s.UptimeSeconds == 0 || s.Loss == nil || s.RecordsPerSecond != nil {
		t.Errorf("first report: version %q, uptime %d, loss %v, rate %v: want a version, an uptime, the ledger and no rate yet",
			s.Version, s.UptimeSeconds, s.Loss, s.RecordsPerSecond)
	}

	sensord.records.Add(500)
	sensord.setFailing(false)
	start := time.Now()
	testenv.WaitFor(t, "sensor1 green on the fleet page", func() bool {
		s = fleetSensor(t, fleet, "sensor1")
		return s.State == "green"
	})
	t.Logf("the repaired check reached the fleet page %v after the repair", time.Since(start).Round(time.Millisecond))
	if s.FirstFailure != nil || s.RecordsPerSecond == nil || *s.RecordsPerSecond <= 0 || s.DeliveredPerSecond == nil {
		t.Errorf("second report: %+v, want no failure and both rates", s)
	}
}

// TestReportSensordMissing: without an answer on sensord's socket the summary's first failure
// says so; with "none" (a host without sensord) uplinkd's own tree is all there is.
func TestReportSensordMissing(t *testing.T) {
	dir := t.TempDir()
	ram, disk := filepath.Join(dir, "ram"), filepath.Join(dir, "disk")
	os.MkdirAll(ram, 0o755)
	os.MkdirAll(disk, 0o755)
	for _, tc := range []struct{ sock, wantDaemon string }{{filepath.Join(dir, "nothing.sock"), "sensord"}, {"none", ""}} {
		cfg, err := ParseConfig([]byte(fmt.Sprintf(`{"spool": {"dir": %q, "disk_dir": %q}, "metrics": "127.0.0.1:0", "sensord_health": %q,
			"destinations": [{"type": "nmsg-udp", "addr": "127.0.0.1:9"}]}`, ram, disk, tc.sock)), "test")
		if err != nil {
			t.Fatal(err)
		}
		s, err := New(cfg, t.Logf)
		if err != nil {
			t.Fatal(err)
		}
		r := newReporter(s).make(context.Background())
		s.Close()
		got := ""
		if r.FirstFailure != nil {
			got = r.FirstFailure.Daemon
		}
		if got != tc.wantDaemon || r.OK != (tc.wantDaemon == "") {
			t.Errorf("sensord_health %s: first failure %+v, ok %v", tc.sock, r.FirstFailure, r.OK)
		}
		var back sielink.HealthReport
		if err := sielink.DecodeHealthReport(sielink.AppendHealthReport(nil, r), &back); err != nil {
			t.Error(err)
		}
	}
}

// TestReportScrubbed: a check's detail that carries a secret (a URL's user information, an API
// key after its key word) leaves the box redacted, and the path is the checks' names.
func TestReportScrubbed(t *testing.T) {
	rep := &health.Report{Checks: []*health.Check{{Name: "spool", OK: true, Children: []*health.Check{
		{Name: "destination sie", OK: false, FirstFailure: true, Since: time.Unix(1700000000, 0),
			Detail: "backing off; last error: dial wss://user:hunter2@sie.example/: refused",
			Fix:    "check api_key=0123456789abcdef and the network"},
		{Name: "loss ledger", OK: false}}}}}
	f, n := failures("uplinkd", rep)
	if n != 2 || f == nil || strings.Join(f.Path, "/") != "spool/destination sie" || f.SinceUnixMs != 1700000000000 {
		t.Fatalf("failures: %d, %+v", n, f)
	}
	if strings.Contains(f.Detail, "hunter2") || strings.Contains(f.Fix, "0123456789abcdef") || !strings.Contains(f.Detail, "[redacted]") {
		t.Errorf("not scrubbed: detail %q, fix %q", f.Detail, f.Fix)
	}
}
