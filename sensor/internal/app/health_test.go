package app

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/sie-europe/dnssensor/internal/health"
	"github.com/sie-europe/dnssensor/internal/health/healthtest"
	"github.com/sie-europe/dnssensor/nmsg/dnsqr"
	"github.com/sie-europe/dnssensor/sensor/internal/canary"
	"github.com/sie-europe/dnssensor/sensor/internal/decode"
	"github.com/sie-europe/dnssensor/sensor/internal/live"
	"github.com/sie-europe/dnssensor/sensor/internal/pipeline"
	"github.com/sie-europe/dnssensor/sensor/internal/source"
)

// TestNotConfigured: a box without its config file exits 125 (gokrazy leaves it stopped) instead
// of 2 (restarted every second); bad flags and bad files stay exit 2, and command-line use is as
// before.
func TestNotConfigured(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	missing := filepath.Join(dir, "missing.json")
	empty := write("empty.json", " \n")
	noResolver := write("noresolver.json", `{"rd": "0", "zero-resolver": true}`)
	good := write("good.json", `{"resolver": "`+realResolvers+`", "rd": "any"}`)
	broken := write("broken.json", `{"resolver": `)
	pcap := "../../testdata/real/basic.pcap"
	// The image's flags (images/*.json) with the interface of a box that has none such: the
	// check comes before anything is opened.
	device := func(config string) []string {
		return []string{"-i", "health0,health1", "-config", config, "-spool", filepath.Join(dir, "spool")}
	}
	for _, tc := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"no arguments", nil, 125, "not configured: no settings"},
		{"device without its config file", device(missing), 125, "not configured: " + missing + " does not exist"},
		{"-config=FILE form", []string{"-i", "health0", "-config=" + missing}, 125, "does not exist"},
		{"empty config file", device(empty), 125, "is empty"},
		{"config without resolver nor interfaces", []string{"-config", noResolver, "-w", os.DevNull}, 125, "sets neither resolver nor authoritative"},
		// With interfaces it is discovery (TestDiscoveryMode); here the box has no such port, so
		// sensord waits for it (TestCapturePortWaitedFor) until it is stopped.
		{"config without resolver: discovery", device(noResolver), 0, "discovery mode"},
		{"resolver on the command line, config missing", []string{"-r", pcap, "-resolver", realResolvers, "-config", missing, "-w", os.DevNull}, 2, "-config"},
		{"broken config", device(broken), 2, "not a JSON object"},
		{"bad flag", []string{"-bogus"}, 2, "bogus"},
		{"-r without resolver, as today", []string{"-r", pcap, "-w", os.DevNull}, 2, "resolver"},
		{"-r with a config file", []string{"-r", pcap, "-config", good, "-w", os.DevNull}, 0, "records="},
		{"-r with flags", []string{"-r", pcap, "-resolver", realResolvers, "-rd", "any", "-w", os.DevNull}, 0, "records="},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// A sensord that waits for its capture port is stopped once it says so.
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			stderr := &stopAt{text: "waiting for it", stop: cancel}
			code := Main(ctx, tc.args, io.Discard, stderr)
			if code != tc.code || !strings.Contains(stderr.String(), tc.want) {
				t.Errorf("exit %d, want %d; stderr %q, want it to contain %q", code, tc.code, stderr.String(), tc.want)
			}
		})
	}
}

// stopAt is a stderr that calls stop once text has been written to it.
type stopAt struct {
	syncBuffer
	text string
	stop func()
}

func (w *stopAt) Write(p []byte) (int, error) {
	n, err := w.syncBuffer.Write(p)
	if strings.Contains(w.String(), w.text) {
		w.stop()
	}
	return n, err
}

// TestHealthContract: sensord's counters reach /metrics and /metrics.json unchanged, the health
// tree of a file run is green once records flow, and both documents match the schemas.
func TestHealthContract(t *testing.T) {
	for _, workers := range []string{"1", "2"} {
		t.Run("workers="+workers, func(t *testing.T) {
			dir := t.TempDir()
			sock := filepath.Join(dir, "run", "sensord", "health.sock")
			pcap := "../../testdata/real/basic.pcap"
			o, err := ParseFlags([]string{"-r", pcap, "-resolver", realResolvers, "-rd", "any", "-w", os.DevNull,
				"-workers", workers, "-health", sock, "-health-addr", "127.0.0.1:0"}, io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			o.selfTest.check(o.Pipeline, t.Logf) // as Run does before anything else
			var p frameSink
			emit := func(*dnsqr.Record) error { return nil }
			if workers == "1" {
				p, err = pipeline.New(o.Pipeline, emit)
			} else {
				p, err = pipeline.NewSharded(2, o.Pipeline, emit)
			}
			if err != nil {
				t.Fatal(err)
			}
			var stderr bytes.Buffer
			sink, err := o.Health.start(context.Background(), o, p, nil, &stderr)
			if err != nil {
				t.Fatal(err)
			}
			if _, ok := sink.(interface{ Sync() }); !ok {
				t.Error("the publishing sink hides Sync from live (sharded pipelines would wait for full batches)")
			}
			ctx := context.Background()
			rep, err := health.Get(ctx, sock)
			if err != nil {
				t.Fatal(err)
			}
			if rep.OK || strings.Join(rep.FirstFailurePath, "/") != "input/resolver transactions" {
				t.Errorf("before any frame: ok=%v first failure %q", rep.OK, rep.FirstFailurePath)
			}

			if _, err := source.ReadFile(pcap, sink.Frame); err != nil {
				t.Fatal(err)
			}
			sink.Flush()
			want := p.Stats()
			if want.Frames == 0 {
				t.Fatal("no frames read")
			}

			resp, err := health.Client(sock).Get("http://unix/health.json")
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				t.Errorf("after the capture: %d, want 200\n%s", resp.StatusCode, body)
			}
			healthtest.Check(t, health.HealthSchemaJSON, body)

			resp, err = health.Client(sock).Get("http://unix/metrics.json")
			if err != nil {
				t.Fatal(err)
			}
			body, _ = io.ReadAll(resp.Body)
			resp.Body.Close()
			healthtest.Check(t, health.MetricsSchemaJSON, body)

			m, err := health.GetMetrics(ctx, sock)
			if err != nil {
				t.Fatal(err)
			}
			check := func(name string, labels map[string]string, want uint64) {
				t.Helper()
				got, ok := m.Value(name, labels)
				if !ok || got != float64(want) {
					t.Errorf("%s%v = %v (present %v), want %d", name, labels, got, ok, want)
				}
			}
			check("dnssensor_sensord_frames_total", nil, want.Frames)
			check("dnssensor_sensord_ip_datagrams_total", nil, want.IP)
			var records uint64
			for _, n := range want.Records {
				records += n
			}
			check("dnssensor_sensord_records_total", nil, records)
			check("dnssensor_sensord_records_total", map[string]string{"type": "udp_query_response"}, want.Records[dnsqr.UDPQueryResponse])
			v := reflect.ValueOf(want)
			for _, f := range pipelineCounters {
				name := "dnssensor_sensord_stage_events_total"
				labels := map[string]string{"stage": f.stage, "event": f.name}
				if f.drop {
					name, labels = "dnssensor_sensord_dropped_total", map[string]string{"stage": f.stage, "reason": f.name}
				}
				check(name, labels, v.FieldByIndex(f.index).Uint())
			}
			for r := 1; r < len(want.Decode); r++ {
				check("dnssensor_sensord_dropped_total", map[string]string{"stage": "decode", "reason": decode.Result(r).String()}, want.Decode[r])
			}
			if want.NotDNS == 0 || want.Decode[decode.NotIP] == 0 || want.Defrag.Datagrams == 0 || want.Records[dnsqr.UDPQueryResponse] == 0 {
				t.Errorf("the capture exercises too little: %+v", want)
			}

			resp, err = health.Client(sock).Get("http://unix/metrics")
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			text := string(b)
			for _, fam := range []string{"dnssensor_sensord_frames_total", "dnssensor_sensord_dropped_total", "dnssensor_sensord_records_total", "dnssensor_sensord_pending_queries"} {
				if !strings.Contains(text, "# HELP "+fam+" ") || !strings.Contains(text, "# TYPE "+fam+" ") {
					t.Errorf("/metrics: %s lacks HELP or TYPE", fam)
				}
			}
			o.Health.stop()
			if _, err := os.Lstat(sock); !os.IsNotExist(err) {
				t.Errorf("socket left after stop: %v", err)
			}
			if stderr.Len() > 0 {
				t.Errorf("server logged: %s", stderr.String())
			}
		})
	}
}

// TestMetricsCoverPipelineStats: every counter of the stats line has a metric, so a drop reason
// added to the pipeline cannot go unexported.
func TestMetricsCoverPipelineStats(t *testing.T) {
	mapped := map[string]bool{}
	labels := map[string]bool{}
	for _, f := range pipelineCounters {
		mapped[f.field] = true
		key := f.stage + "/" + f.name
		if labels[key] {
			t.Errorf("%s: stage and name used twice", key)
		}
		labels[key] = true
	}
	var walk func(prefix string, typ reflect.Type)
	walk = func(prefix string, typ reflect.Type) {
		for i := 0; i < typ.NumField(); i++ {
			f := typ.Field(i)
			path := prefix + f.Name
			switch {
			case pipelineCountersElsewhere[path]:
			case f.Type.Kind() == reflect.Struct:
				walk(path+".", f.Type)
			case !mapped[path]:
				t.Errorf("pipeline.Stats.%s has no metric: add it to pipelineCounters (health.go)", path)
			case f.Type.Kind() != reflect.Uint64:
				t.Errorf("pipeline.Stats.%s is %v, not a uint64 counter", path, f.Type)
			}
		}
	}
	walk("", reflect.TypeOf(pipeline.Stats{}))
}

// TestSensordTree walks the "why is there no data?" chain of a two-port capture from nothing to
// healthy: each step's first failure names the next thing to fix.
func TestSensordTree(t *testing.T) {
	links := map[string]net.Flags{}
	old := linkFlags
	linkFlags = func(ifc string) (net.Flags, error) {
		f, ok := links[ifc]
		if !ok {
			return 0, fmt.Errorf("route ip+net: no such network interface")
		}
		return f, nil
	}
	defer func() { linkFlags = old }()
	link := func(ifc, state string) {
		links[ifc] = map[string]net.Flags{"up": net.FlagUp | net.FlagRunning, "no carrier": net.FlagUp, "down": 0}[state]
	}
	o, err := ParseFlags([]string{"-i", "tapA,tapB", "-resolver", realResolvers, "-spool", filepath.Join(t.TempDir(), "spool")}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 1, 2, 3, 0, 0, 0, time.UTC)
	tree := o.Health.tree(o, func() time.Time { return now })
	st := &live.Stats{Ports: []*live.PortStats{{Name: "tapA"}, {Name: "tapB"}}}
	var ps pipeline.Stats

	step := func(name string, wantPath string) {
		t.Helper()
		now = now.Add(time.Second)
		o.Health.pipe.Store(&ps)
		r := tree.Evaluate()
		if got := strings.Join(r.FirstFailurePath, "/"); got != wantPath || r.OK != (wantPath == "") {
			t.Errorf("%s: first failure %q (ok %v), want %q", name, got, r.OK, wantPath)
		}
	}
	step("self-test not run yet", "privacy self-test")
	o.selfTest.check(o.Pipeline, t.Logf)
	step("ports not open", "capture")
	o.Health.live.Store(st)
	step("tapA missing", "capture/port tapA")
	link("tapA", "no carrier")
	step("tapA without carrier", "capture/port tapA")
	link("tapA", "up")
	link("tapB", "down")
	step("tapA has no frames", "capture/port tapA/frames on tapA")
	st.Ports[0].Frames.Store(100)
	step("tapA has frames but no DNS", "capture/port tapA/frames on tapA/DNS on tapA")
	st.Ports[0].Queries.Store(10)
	step("tapB's link is down", "capture/port tapB")
	link("tapB", "up")
	st.Ports[1].Frames.Store(100)
	st.Ports[1].Responses.Store(10)
	step("no resolver transactions", "capture/resolver transactions")
	ps.Pending = 10
	step("queries but no pairs", "capture/resolver transactions/pairs")
	ps.Records[dnsqr.UDPQueryResponse] = 5
	step("healthy", "")
	ps.OutputErrors = 1
	step("output failing", "capture/resolver transactions/pairs/output")
	ps.OutputErrors = 0
	// Recovery of an error counter takes a window; meanwhile the next thing fails.
	st.Ports[0].KDrops.Store(3)
	now = now.Add(2 * healthWindow)
	st.Ports[0].Frames.Store(200)
	st.Ports[1].Frames.Store(200)
	st.Ports[0].Queries.Store(20)
	st.Ports[1].Responses.Store(20)
	ps.Pending = 11
	ps.Records[dnsqr.UDPQueryResponse] = 6
	step("kernel drops", "capture/port tapA/kernel drops on tapA")
	now = now.Add(2 * healthWindow)
	step("everything stalled", "capture/port tapA/frames on tapA")
	defer func(old func(pipeline.Config) canary.Result) { runSelfTest = old }(runSelfTest)
	runSelfTest = func(pipeline.Config) canary.Result { return canary.Result{Kind: "leak", Why: "canary leaks"} }
	o.selfTest.check(o.Pipeline, t.Logf)
	step("self-test failed: before everything else", "privacy self-test")
}

// TestLinkProbe reads real interfaces: loopback is up and running, a missing port fails.
func TestLinkProbe(t *testing.T) {
	if r := linkProbe("lo")(time.Now()); !r.OK {
		t.Errorf("lo: %+v", r)
	}
	if r := linkProbe("health-none0")(time.Now()); r.OK || r.Fix == "" {
		t.Errorf("missing interface: %+v", r)
	}
}

// TestLogJSON: with the contract served, what sensord writes to stderr is kept for /log.json
// (scrubbed) as well as written; without it nothing is kept.
func TestLogJSON(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "run", "sensord", "health.sock")
	o, err := ParseFlags([]string{"-r", "../../testdata/real/basic.pcap", "-resolver", realResolvers, "-w", os.DevNull, "-health", sock}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	w := o.Health.keepLog(&stderr)
	p, err := pipeline.New(o.Pipeline, func(*dnsqr.Record) error { return nil })
	if err != nil {
		t.Fatal(err)
	}
	if _, err := o.Health.start(context.Background(), o, p, nil, w); err != nil {
		t.Fatal(err)
	}
	defer o.Health.stop()
	fmt.Fprintf(w, "sensord: 10 frames password=hunter2hunter2\n")
	doc, err := health.GetLog(context.Background(), sock, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(doc.Lines) != 1 || doc.Lines[0].Text != "sensord: 10 frames password=[redacted]" {
		t.Errorf("/log.json lines %+v", doc.Lines)
	}
	if !strings.Contains(stderr.String(), "10 frames") {
		t.Errorf("the line did not reach stderr: %q", stderr.String())
	}
	var none healthOptions
	if none.keepLog(&stderr) != io.Writer(&stderr) || none.log != nil {
		t.Error("a ring kept without the contract served")
	}
}
