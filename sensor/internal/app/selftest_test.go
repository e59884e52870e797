package app

import (
	"bytes"
	"context"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sie-europe/dnssensor/internal/health"
	"github.com/sie-europe/dnssensor/nmsg/dnsqr"
	"github.com/sie-europe/dnssensor/sensor/internal/canary"
	"github.com/sie-europe/dnssensor/sensor/internal/pipeline"
)

// gatedOutcome is what a run of sensord left behind.
type gatedOutcome struct {
	err              error
	stderr           string
	nmsg, json, segs int     // records in -w, lines in -J, spool segment files
	withheld         float64 // dropped_total{stage="output",reason="privacy_selftest_failed"}
	records          uint64  // records the pipeline made
	check            *health.Check
	report           *health.Report
}

// gatedRun runs sensord over the ECS capture (real client subnets in the resolver's upstream
// queries) into every kind of output, and reads its health and metrics as statusd would.
func gatedRun(t *testing.T) gatedOutcome {
	t.Helper()
	dir := t.TempDir()
	w, j, ram, disk := filepath.Join(dir, "out.nmsg"), filepath.Join(dir, "out.json"), filepath.Join(dir, "ram"), filepath.Join(dir, "disk")
	o, err := ParseFlags([]string{"-r", "../../testdata/real/ecs.pcap,../../testdata/real/basic.pcap", "-resolver", realResolvers, "-rd", "any",
		"-w", w, "-J", j, "-spool", ram, "-spool-disk", disk}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	o.Health.Socket = filepath.Join(dir, "health.sock") // publishes the pipeline's counters
	var stderr bytes.Buffer
	var out gatedOutcome
	out.err = Run(context.Background(), o, io.Discard, &stderr)
	out.stderr = stderr.String()
	out.nmsg = len(payloads(t, readFile(t, w)))
	out.json = len(bytes.Split(bytes.TrimSpace(readFile(t, j)), []byte("\n")))
	if len(bytes.TrimSpace(readFile(t, j))) == 0 {
		out.json = 0
	}
	for _, d := range []string{ram, disk} {
		des, _ := os.ReadDir(d)
		out.segs += countSegs(des)
	}
	for _, n := range o.Health.pipe.Load().Records {
		out.records += n
	}
	reg := health.NewRegistry()
	reg.MustRegister(&sensordCollector{h: &o.Health, o: o})
	tree := o.Health.tree(o, time.Now)
	srv := &health.Server{Daemon: "sensord", Tree: tree, Registry: reg}
	m, err := srv.Metrics()
	if err != nil {
		t.Fatal(err)
	}
	out.withheld, _ = m.Value("dnssensor_sensord_dropped_total", map[string]string{"stage": "output", "reason": "privacy_selftest_failed"})
	out.report = tree.Evaluate()
	for _, c := range out.report.Checks {
		if c.Name == "privacy self-test" {
			out.check = c
		}
	}
	if out.check == nil {
		t.Fatal("no check named \"privacy self-test\" among the roots")
	}
	return out
}

// TestSelfTestPassesEndToEnd: with the real scrubber the start-up self-test passes, says so with
// its canary counts, and every record reaches every output.
func TestSelfTestPassesEndToEnd(t *testing.T) {
	if brokenBuild != "" {
		t.Skip("a build broken on purpose: TestSelfTestRefusesBrokenBuild covers it")
	}
	out := gatedRun(t)
	if out.err != nil {
		t.Fatalf("run: %v\n%s", out.err, out.stderr)
	}
	if !out.check.OK || !strings.Contains(out.check.Detail, "24 canary packets") {
		t.Errorf("check: %+v", out.check)
	}
	if out.records == 0 || uint64(out.nmsg) != out.records || uint64(out.json) != out.records || out.segs == 0 || out.withheld != 0 {
		t.Errorf("records %d; -w %d, -J %d, spool segments %d, withheld %v", out.records, out.nmsg, out.json, out.segs, out.withheld)
	}
	if !strings.Contains(out.stderr, "privacy self-test passed") {
		t.Errorf("no log line of the self-test: %s", out.stderr)
	}
}

// TestSelfTestRefusesBrokenBuild builds sensord's tests with the scrubber broken on purpose
// (ECS zeroing off; the client rule off) and runs TestBrokenBuildWithholds in them: the self-test
// must fail and nothing may reach any output.
func TestSelfTestRefusesBrokenBuild(t *testing.T) {
	if testing.Short() || brokenBuild != "" {
		t.Skip("builds the package twice more")
	}
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Skipf("no go command: %v", err)
	}
	for _, tag := range []string{"dnssensor_broken_ecs", "dnssensor_broken_client"} {
		t.Run(tag, func(t *testing.T) {
			cmd := exec.Command(gobin, "test", "-count=1", "-tags", tag, "-run", "^TestBrokenBuildWithholds$", "-v", ".")
			cmd.Env = append(os.Environ(), "GOTOOLCHAIN=local")
			b, err := cmd.CombinedOutput()
			if err != nil || !strings.Contains(string(b), "--- PASS: TestBrokenBuildWithholds") {
				t.Fatalf("go test -tags %s: %v\n%s", tag, err, b)
			}
			for _, l := range strings.Split(string(b), "\n") {
				if strings.Contains(l, "selftest_test.go") {
					t.Log(strings.TrimSpace(l))
				}
			}
		})
	}
}

// TestBrokenBuildWithholds runs only in a build broken on purpose (see broken_*_test.go): the
// self-test fails, nothing reaches -w, -J or the spool, every record is counted as withheld,
// the check is red with its fix and the run's error says why.
func TestBrokenBuildWithholds(t *testing.T) {
	if brokenBuild == "" {
		t.Skip("only in a build broken on purpose (go test -tags dnssensor_broken_ecs or dnssensor_broken_client)")
	}
	out := gatedRun(t)
	if out.err == nil || !strings.Contains(out.err.Error(), "privacy self-test failed") {
		t.Errorf("run error %v, want the self-test's failure", out.err)
	}
	if out.nmsg != 0 || out.json != 0 || out.segs != 0 {
		t.Errorf("records reached the outputs: -w %d, -J %d, spool segments %d", out.nmsg, out.json, out.segs)
	}
	if out.records == 0 || out.withheld != float64(out.records) {
		t.Errorf("withheld %v of %d records", out.withheld, out.records)
	}
	if out.check.OK || !out.check.FirstFailure || out.check.Fix == "" || !strings.Contains(out.check.Detail, "leak") {
		t.Errorf("check: %+v", out.check)
	}
	t.Logf("%s: %s", brokenBuild, out.check.Detail)
}

// TestSelfTestHourly: the self-test runs again on the hour (virtual clock); once a run fails,
// the records that follow are withheld and counted, and the check turns red.
func TestSelfTestHourly(t *testing.T) {
	defer func(old func(pipeline.Config) canary.Result) { runSelfTest = old }(runSelfTest)
	fail := make(chan bool, 1)
	runSelfTest = func(cfg pipeline.Config) canary.Result {
		r := canary.Run(cfg)
		select {
		case <-fail:
			r = canary.Result{Kind: "leak", Why: "1 canary leaks: test"}
		default:
		}
		return r
	}
	var s selfTestState
	// waitRuns waits until n runs have been recorded (the loop's goroutine records them).
	waitRuns := func(n uint64) {
		t.Helper()
		for deadline := time.Now().Add(time.Minute); s.runs[0].Load()+s.runs[1].Load()+s.runs[2].Load() < n; time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("run %d never recorded", n)
			}
		}
	}
	ticks := make(chan time.Time)
	var asked []time.Duration
	s.after = func(d time.Duration) <-chan time.Time { asked = append(asked, d); return ticks }
	cfg := pipeline.Config{Resolvers: []netip.Prefix{netip.MustParsePrefix("192.0.2.53/32")}}
	s.check(cfg, t.Logf)
	var got int
	emit := s.gate(func(*dnsqr.Record) error { got++; return nil })
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); s.loop(ctx, cfg, t.Logf) }()

	ticks <- time.Now()
	waitRuns(2)
	emit(&dnsqr.Record{})
	if got != 1 || !s.probe(time.Now()).OK {
		t.Fatalf("after a passing hourly run: %d records out, check %+v", got, s.probe(time.Now()))
	}
	fail <- true
	ticks <- time.Now()
	waitRuns(3)
	emit(&dnsqr.Record{})
	emit(&dnsqr.Record{})
	if r := s.probe(time.Now()); got != 1 || s.withheld.Load() != 2 || r.OK || !strings.Contains(r.Detail, "2 records withheld") {
		t.Errorf("after a failing run: %d out, %d withheld, check %+v", got, s.withheld.Load(), r)
	}
	// A later pass does not reopen the gate: the build is suspect until it is replaced.
	ticks <- time.Now()
	waitRuns(4)
	emit(&dnsqr.Record{})
	if got != 1 || s.runs[0].Load() != 3 || s.runs[1].Load() != 1 {
		t.Errorf("after a pass that followed a failure: %d out; runs %d/%d", got, s.runs[0].Load(), s.runs[1].Load())
	}
	cancel()
	<-done
	for _, d := range asked {
		if d != time.Hour {
			t.Errorf("timer of %v, want an hour", d)
		}
	}
}
