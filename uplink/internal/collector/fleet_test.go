package collector

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sie-europe/dnssensor/uplink/sielink"
)

// vclock is a virtual clock.
type vclock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *vclock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *vclock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func rate(v float64) *float64 { return &v }

func greenReport() *sielink.HealthReport {
	return &sielink.HealthReport{Sensor: "green1", Version: "sbom-1", UptimeSeconds: 3600, OK: true,
		RecordsPerSecond: rate(20000), DeliveredPerSecond: rate(19990), Loss: &sielink.ReportLoss{Records: 7, Bytes: 2100}}
}

func redReport() *sielink.HealthReport {
	return &sielink.HealthReport{Version: "sbom-2", UptimeSeconds: 60, RecordsPerSecond: rate(0),
		FirstFailure: &sielink.FailedCheck{Daemon: "sensord", Path: []string{"capture", "port eth1", "frames on eth1"},
			Detail: "1520 frames, none in the last 5m0s", Fix: "check the cable from the tap to eth1", SinceUnixMs: 1772366100000}, FailingChecks: 2}
}

func rowOf(t *testing.T, v FleetView, sensor string) FleetSensor {
	t.Helper()
	for _, s := range v.Sensors {
		if s.Sensor == sensor {
			return s
		}
	}
	t.Fatalf("sensor %s not in the fleet view: %+v", sensor, v.Sensors)
	return FleetSensor{}
}

// TestFleetSilentTurnsRed, on a virtual clock: a sensor that reported green stays green up to
// -fleet-silent after its report and is red (silent) one second later, until it reports again;
// a sensor whose report names a failing check is red with that check; a sensor of the keys file
// that never reported is red.
func TestFleetSilentTurnsRed(t *testing.T) {
	clk := &vclock{t: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}
	f := NewFleet(FleetOptions{Silent: 2 * time.Minute, now: clk.now}, t.TempDir(), []string{"green1", "red1", "never1"}, t.Logf)
	f.Report("green1", greenReport())
	f.Report("red1", redReport())

	v := f.View()
	if g := rowOf(t, v, "green1"); g.State != "green" || g.Silent || *g.RecordsPerSecond != 20000 || g.Version != "sbom-1" || g.Loss.Records != 7 {
		t.Errorf("green1: %+v", g)
	}
	if r := rowOf(t, v, "red1"); r.State != "red" || r.Silent || r.FirstFailure == nil || !strings.Contains(r.Why, "sensord: capture › port eth1 › frames on eth1") {
		t.Errorf("red1: %+v", r)
	}
	if n := rowOf(t, v, "never1"); n.State != "red" || !n.Silent || n.LastSeen != nil || n.Why != "never reported" {
		t.Errorf("never1: %+v", n)
	}
	if v.Red != 2 || v.Green != 1 || v.Sensors[len(v.Sensors)-1].Sensor != "green1" {
		t.Errorf("red %d, green %d, order %v: want 2, 1, red first", v.Red, v.Green, v.Sensors)
	}

	clk.add(2 * time.Minute)
	if g := rowOf(t, f.View(), "green1"); g.State != "green" || g.SilentSeconds != 120 {
		t.Errorf("at exactly -fleet-silent: %+v, want green", g)
	}
	clk.add(time.Second)
	g := rowOf(t, f.View(), "green1")
	if g.State != "red" || !g.Silent || !strings.Contains(g.Why, "silent for 2m1s (more than 2m0s)") {
		t.Errorf("a second later: %+v, want red, silent", g)
	}
	// What it last said stays on the page while it is silent.
	if g.Version != "sbom-1" || g.LastSeen == nil || !g.LastSeen.Equal(clk.now().Add(-121*time.Second)) {
		t.Errorf("silent row lost the last report: %+v", g)
	}
	f.Report("green1", greenReport())
	if g := rowOf(t, f.View(), "green1"); g.State != "green" || g.Silent {
		t.Errorf("after a new report: %+v, want green", g)
	}
}

// TestFleetPersisted: a restarted collector knows the fleet's last state (with the times the
// reports arrived, so a sensor silent across the restart turns red on time), and forgets a
// sensor that left the keys file.
func TestFleetPersisted(t *testing.T) {
	clk := &vclock{t: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}
	dir := t.TempDir()
	f, stop, err := startFleet(FleetOptions{Silent: time.Minute, now: clk.now}, dir, []string{"a", "b"}, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	f.Report("a", greenReport())
	f.Report("b", redReport())
	stop()

	clk.add(30 * time.Second)
	f2 := NewFleet(FleetOptions{Silent: time.Minute, now: clk.now}, dir, []string{"a"}, t.Logf)
	v := f2.View()
	if len(v.Sensors) != 1 {
		t.Fatalf("after restart: %+v, want sensor a only (b left the keys file)", v.Sensors)
	}
	if a := v.Sensors[0]; a.State != "green" || a.SilentSeconds != 30 || a.Version != "sbom-1" {
		t.Errorf("after restart: %+v", a)
	}
	clk.add(31 * time.Second)
	if a := f2.View().Sensors[0]; a.State != "red" || !a.Silent {
		t.Errorf("61 s after its last report, across the restart: %+v, want red", a)
	}

	// A damaged file is logged and the fleet starts empty, never refusing to start.
	os.WriteFile(filepath.Join(dir, ".fleet.json"), []byte("{garbage"), 0o644)
	var logged []string
	f3 := NewFleet(FleetOptions{now: clk.now}, dir, []string{"a"}, func(format string, args ...any) { logged = append(logged, format) })
	if a := f3.View().Sensors[0]; a.State != "red" || a.Why != "never reported" || len(logged) != 1 {
		t.Errorf("damaged file: %+v, log %v", a, logged)
	}
}

// TestFleetPage: HTML by default (escaped: a sensor's text cannot inject markup), JSON with
// Accept: application/json and at /fleet.json, and the Prometheus families.
func TestFleetPage(t *testing.T) {
	clk := &vclock{t: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}
	f := NewFleet(FleetOptions{now: clk.now}, "", []string{"green1", "red1"}, t.Logf)
	f.Report("green1", greenReport())
	r := redReport()
	r.FirstFailure.Detail = `<script>alert(1)</script>`
	f.Report("red1", r)
	hs := httptest.NewServer(f.Handler())
	defer hs.Close()
	get := func(path, accept string) (string, http.Header) {
		req, _ := http.NewRequest("GET", hs.URL+path, nil)
		if accept != "" {
			req.Header.Set("Accept", accept)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 {
			t.Fatalf("%s: %s", path, resp.Status)
		}
		return string(b), resp.Header
	}
	html, h := get("/", "text/html,application/xhtml+xml")
	if !strings.HasPrefix(h.Get("Content-Type"), "text/html") || !strings.Contains(h.Get("Content-Security-Policy"), "default-src 'none'") {
		t.Errorf("headers %v", h)
	}
	if strings.Contains(html, "<script>") || !strings.Contains(html, "&lt;script&gt;") || !strings.Contains(html, `data-sensor="red1"`) {
		t.Errorf("page not escaped or incomplete:\n%s", html)
	}
	for _, path := range []string{"/", "/fleet"} {
		body, h := get(path, "application/json")
		var v FleetView
		if err := json.Unmarshal([]byte(body), &v); err != nil || h.Get("Content-Type") != "application/json" {
			t.Fatalf("%s as JSON: %v %v", path, err, h)
		}
		if v.Schema != FleetSchema || v.Red != 1 || v.Green != 1 || v.SilentSecs != 300 {
			t.Errorf("%s: %+v", path, v)
		}
	}
	if body, _ := get("/fleet.json", ""); !strings.Contains(body, `"schema": "dnssensor.fleet/v1"`) {
		t.Errorf("/fleet.json: %s", body)
	}
	if css, h := get("/fleet.css", ""); !strings.HasPrefix(h.Get("Content-Type"), "text/css") || !strings.Contains(css, "tr.red") {
		t.Errorf("/fleet.css: %v", h)
	}
	prom, _ := get("/metrics", "")
	for _, want := range []string{
		`dnssensor_collector_fleet_sensor_red{sensor="red1"} 1`,
		`dnssensor_collector_fleet_sensor_red{sensor="green1"} 0`,
		`dnssensor_collector_fleet_sensor_records_per_second{sensor="green1"} 20000`,
		`dnssensor_collector_fleet_sensor_lost_records_total{sensor="green1"} 7`,
		`dnssensor_collector_fleet_sensor_info{sensor="green1",version="sbom-1"} 1`,
		`dnssensor_collector_fleet_sensor_last_report_seconds{sensor="green1"} 1.7723664e+09`,
		`dnssensor_collector_fleet_sensors{state="red"} 1`,
		`dnssensor_collector_fleet_reports_total 2`,
	} {
		if !strings.Contains(prom, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if t.Failed() {
		t.Log(prom)
	}
}
