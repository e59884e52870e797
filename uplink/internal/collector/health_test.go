package collector

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/sie-europe/dnssensor/internal/health"
	"github.com/sie-europe/dnssensor/internal/health/healthtest"
	"github.com/sie-europe/dnssensor/internal/testenv"
	"github.com/sie-europe/dnssensor/uplink/sielink"
)

func getDoc(t *testing.T, addr, path string) (int, []byte) {
	t.Helper()
	return healthtest.Get(t, http.DefaultClient, "http://"+addr+path)
}

func healthReport(t *testing.T, addr string) (int, *health.Report) {
	t.Helper()
	code, b := getDoc(t, addr, "/health.json")
	var r health.Report
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatalf("/health.json: %v\n%s", err, b)
	}
	return code, &r
}

func findCheck(cs []*health.Check, name string) *health.Check {
	for _, c := range cs {
		if c.Name == name {
			return c
		}
		if f := findCheck(c.Children, name); f != nil {
			return f
		}
	}
	return nil
}

// TestHealthContract: the collector speaks internal/health's contract on its metrics address:
// /health.json fails while a sensor of the keys file has no session and passes once every one
// has; /metrics parses, every family has HELP and TYPE and the dnssensor_collector_ prefix, and
// /metrics.json carries the same counters.
func TestHealthContract(t *testing.T) {
	testenv.CheckLeaks(t)
	tc := startCollector(t, nil)

	code, rep := healthReport(t, tc.metrics)
	if code != http.StatusServiceUnavailable || rep.OK || rep.Daemon != "collector" {
		t.Fatalf("without sessions: %d, ok %v, daemon %q", code, rep.OK, rep.Daemon)
	}
	if got := strings.Join(rep.FirstFailurePath, "/"); got != "listening/sensor alpha" {
		t.Errorf("first failure %q, want listening/sensor alpha", got)
	}
	if c := findCheck(rep.Checks, "store"); c == nil || !c.OK {
		t.Errorf("store check %+v", c)
	}

	ctx := ctxT(t, 30*time.Second)
	var conns []*sielink.Conn
	for _, s := range []string{"alpha", "beta"} {
		c, err := sielink.Dial(ctx, tc.config(s))
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	testenv.WaitFor(t, "both sensors' sessions in /health.json", func() bool {
		code, rep := healthReport(t, tc.metrics)
		return code == http.StatusOK && rep.OK
	})

	code, body := getDoc(t, tc.metrics, "/metrics")
	if code != http.StatusOK {
		t.Fatalf("/metrics: %d", code)
	}
	p := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(string(body)))
	if err != nil {
		t.Fatalf("/metrics does not parse: %v\n%s", err, body)
	}
	ours, fleet := 0, 0
	for name, f := range fams {
		if f.GetHelp() == "" {
			t.Errorf("%s has no HELP", name)
		}
		if strings.HasPrefix(name, "go_") || strings.HasPrefix(name, "process_") || strings.HasPrefix(name, "promhttp_") {
			continue
		}
		if !strings.HasPrefix(name, "dnssensor_collector_") {
			t.Errorf("%s: want the dnssensor_collector_ prefix", name)
		}
		if strings.HasPrefix(name, "dnssensor_collector_fleet_") {
			fleet++
			continue
		}
		ours++
	}
	// Before any health report: the fleet's counts, and red and silent for each expected sensor.
	if fleet != 4 {
		t.Errorf("%d fleet families, want 4 (sensors, sensor_red, sensor_silent, reports_total)", fleet)
	}
	if want := len(serverMetrics) + len(sensorMetrics); ours != want {
		t.Errorf("%d collector families, want %d", ours, want)
	}
	if !strings.Contains(string(body), `dnssensor_collector_sensor_sessions{sensor="beta"} 1`+"\n") {
		t.Errorf("/metrics lacks beta's session:\n%s", body)
	}

	_, b := getDoc(t, tc.metrics, "/metrics.json")
	var doc health.MetricsDoc
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	if v, ok := doc.Value("dnssensor_collector_sessions_active", nil); !ok || v != 2 {
		t.Errorf("/metrics.json sessions_active = %v, %v; want 2", v, ok)
	}

	conns[1].Close()
	testenv.WaitFor(t, "beta's check to fail", func() bool {
		_, rep := healthReport(t, tc.metrics)
		c := findCheck(rep.Checks, "sensor beta")
		return c != nil && !c.OK && strings.Join(rep.FirstFailurePath, "/") == "listening/sensor beta"
	})
	conns[0].Close()
}

// TestPrometheusLabelEscaping: label values are escaped by the exposition format, not Go's %q
// (which writes \u00e9 for é and \x01 for a control character, neither of which the format knows).
func TestPrometheusLabelEscaping(t *testing.T) {
	name := "s\"1\\é\n\x01"
	text := fetchPrometheusText(Snapshot{Sensors: []SensorSnapshot{{SensorStats: sielink.SensorStats{Sensor: name, Payloads: 7}}}})
	p := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(text))
	if err != nil {
		t.Fatalf("does not parse: %v\n%s", err, text)
	}
	f := fams["dnssensor_collector_sensor_payloads_total"]
	if f == nil || len(f.GetMetric()) != 1 {
		t.Fatalf("payloads family %v", f)
	}
	m := f.GetMetric()[0]
	if got := m.GetLabel()[0].GetValue(); got != name || m.GetCounter().GetValue() != 7 {
		t.Errorf("label %q value %v, want %q 7", got, m.GetCounter().GetValue(), name)
	}
}
