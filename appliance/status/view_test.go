package status

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sie-europe/dnssensor/internal/health"
)

// serveUnix serves h on a fresh unix socket until the test ends.
func serveUnix(t *testing.T, h http.Handler) string {
	t.Helper()
	sock := filepath.Join(socketDir(t), "d.sock")
	ln, err := health.ListenUnix(sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return sock
}

// TestLogLines: the page shows each daemon's last lines from its /log.json, scrubbed, even from
// a daemon that served a secret unscrubbed; a daemon whose log cannot be read says so.
func TestLogLines(t *testing.T) {
	ring := health.NewLogRing(0)
	for i := range 80 {
		fmt.Fprintf(ring, "sensord: line %d\n", i)
	}
	fmt.Fprintf(ring, "sensord: <script>alert(1)</script> token=abcdefgh123\n")
	sensord := serveUnix(t, (&health.Server{Daemon: "sensord", Tree: health.NewTree("sensord", time.Now), Registry: prometheus.NewRegistry(), Log: ring}).Handler())
	// A daemon of another make that does not scrub its lines.
	mux := http.NewServeMux()
	mux.Handle("GET /health.json", (&health.Server{Daemon: "uplinkd", Tree: health.NewTree("uplinkd", time.Now), Registry: prometheus.NewRegistry()}).Handler())
	mux.HandleFunc("GET /log.json", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"schema":"dnssensor.log/v1","daemon":"uplinkd","time":"2026-01-02T03:04:05Z","evicted":0,
			"lines":[{"time":"2026-01-02T03:04:05Z","text":"dial wss://sensor:s3cr3tpass@sie.example/ failed"}]}`)
	})
	uplinkd := serveUnix(t, mux)
	srv := &Server{Daemons: []Daemon{{Name: "sensord", Socket: sensord}, {Name: "uplinkd", Socket: uplinkd},
		{Name: "oldd", Socket: serveUnix(t, (&health.Server{Daemon: "oldd", Tree: health.NewTree("oldd", time.Now), Registry: prometheus.NewRegistry()}).Handler())}},
		Password: []byte(testPassword), LogLines: 50, Logf: t.Logf}
	p := srv.Page(context.Background())
	if len(p.Logs) != 3 {
		t.Fatalf("logs of %d daemons, want 3: %+v", len(p.Logs), p.Logs)
	}
	if l := p.Logs[0]; len(l.Lines) != 50 || l.Lines[49].Text != "sensord: <script>alert(1)</script> token=[redacted]" {
		t.Errorf("sensord: %d lines, last %q", len(l.Lines), l.Lines[len(l.Lines)-1].Text)
	}
	if l := p.Logs[1]; len(l.Lines) != 1 || strings.Contains(l.Lines[0].Text, "s3cr3t") {
		t.Errorf("uplinkd: %+v", l)
	}
	// An old daemon without the endpoint: its lines are empty, not an error of the page.
	if l := p.Logs[2]; len(l.Lines) != 0 {
		t.Errorf("oldd: %+v", l)
	}
	ts := httptest.NewServer(srv.Handler())
	defer ts.Close()
	_, body := get(t, ts.URL+"/", testPassword, "text/html")
	if strings.Contains(body, "<script>") || !strings.Contains(body, "&lt;script&gt;alert(1)&lt;/script&gt;") || strings.Contains(body, "s3cr3t") {
		t.Errorf("log lines not escaped or scrubbed in the page")
	}
	if !strings.Contains(body, "sensord: line 79") || strings.Contains(body, "sensord: line 30\n") {
		t.Errorf("page does not show the last 50 lines")
	}
}

// TestIdentity: sensor name from uplinkd, a fingerprint that is not the machine id, gokrazy's
// build timestamp (asked with the device password) and SBOM hash, root B from the kernel command
// line, and the update agent's last result; each "unknown" or "no update yet" when absent.
func TestIdentity(t *testing.T) {
	dir := t.TempDir()
	write := func(name, s string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	const machineID = "0123456789abcdef0123456789abcdef"
	gok := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, pw, _ := r.BasicAuth(); pw != testPassword || r.Header.Get("Accept") != "application/json" {
			http.Error(w, "no", http.StatusUnauthorized)
			return
		}
		io.WriteString(w, `{"BuildTimestamp":"2026-02-03T04:05:06Z","SBOMHash":"ignored"}`)
	}))
	defer gok.Close()
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status.json", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, `{"destinations":[{"name":"sie","sensor":"lab-7"},{"name":"relay"},{"name":"soc","sensor":"lab-7"}]}`)
	})
	uplinkd := serveUnix(t, mux)
	is := &IdentitySource{MachineIDFiles: []string{filepath.Join(dir, "absent"), write("machine-id", machineID+"\n")},
		SBOMFile: write("sbom.json", `{"sbom_hash":"b1946ac92492d2347c6235b4d2611184","sbom":{}}`),
		Cmdline:  write("cmdline", "console=ttyS0 root=PARTUUID=60c24cc1-03 init=/gokrazy/init rootwait\n"),
		UpdateFile: write("state.json", `{"time":"2026-03-01T02:00:00Z","result":"rolled back","from_sbom_hash":"b19","to_sbom_hash":"c20",
			"detail":"sensord's health gate failed: capture"}`),
		GokrazyURL: gok.URL, Password: []byte(testPassword), Uplinkd: uplinkd}
	id := is.Read(context.Background())
	if id.SensorName != "lab-7" || id.BuildTimestamp != "2026-02-03T04:05:06Z" || id.SBOMHash != "b1946ac92492d2347c6235b4d2611184" ||
		!strings.HasPrefix(id.ActiveRoot, "B ") || id.LastUpdate == nil || id.LastUpdate.Result != "rolled back" {
		t.Errorf("identity %+v", id)
	}
	if len(id.Fingerprint) != 19 || strings.Contains(machineID, strings.ReplaceAll(id.Fingerprint, "-", "")[:8]) {
		t.Errorf("fingerprint %q (must not show the machine id)", id.Fingerprint)
	}
	for _, c := range []struct{ cmdline, want string }{
		{"root=PARTUUID=60c24cc1-02 rootwait", "A (PARTUUID=60c24cc1-02)"},
		{"root=/dev/mmcblk0p3", "B (/dev/mmcblk0p3)"},
		{"root=/dev/sda2", "A (/dev/sda2)"},
		{"quiet", "unknown"},
		{"root=PARTUUID=60c24cc1-04", "unknown (PARTUUID=60c24cc1-04)"},
	} {
		if got := activeRoot(write("c", c.cmdline)); got != c.want {
			t.Errorf("%q: %q, want %q", c.cmdline, got, c.want)
		}
	}
	// Nothing there.
	none := &IdentitySource{MachineIDFiles: []string{filepath.Join(dir, "x")}, SBOMFile: filepath.Join(dir, "x"), Cmdline: filepath.Join(dir, "x"),
		UpdateFile: filepath.Join(dir, "x"), GokrazyURL: "http://127.0.0.1:1/", Uplinkd: filepath.Join(dir, "x.sock")}
	id = none.Read(context.Background())
	if id.SensorName != unknownValue || id.Fingerprint != unknownValue || id.BuildTimestamp != unknownValue || id.SBOMHash != unknownValue ||
		id.ActiveRoot != unknownValue || id.LastUpdate != nil || id.UpdateNote != "no update yet" {
		t.Errorf("nothing there: %+v", id)
	}
	// A damaged state file is reported, not shown as no update.
	bad := &IdentitySource{UpdateFile: write("bad.json", `{"time":`)}
	if id := bad.Read(context.Background()); !strings.Contains(id.UpdateNote, "unreadable") {
		t.Errorf("damaged state: %q", id.UpdateNote)
	}
	// The page shows it.
	srv := &Server{Password: []byte(testPassword), Ident: is, Logf: t.Logf}
	ts := httptest.NewServer(srv.Handler())
	defer ts.Close()
	_, body := get(t, ts.URL+"/", testPassword, "text/html")
	for _, want := range []string{"lab-7", "2026-02-03T04:05:06Z", "rolled back at 2026-03-01 02:00:00 UTC, to c20: sensord&#39;s health gate failed", id.Fingerprint} {
		if !strings.Contains(body, want) {
			t.Errorf("page lacks %q", want)
		}
	}
}

// TestClockNode: the kernel's view colours the last link: synchronised is green; never set (a
// time before this software) or an error grown past a second is red with the fix; the kernel not
// knowing (gokrazy's ntp steps the clock without telling it) is unknown, never green.
func TestClockNode(t *testing.T) {
	now := time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC)
	for _, c := range []struct {
		name string
		st   ClockState
		err  error
		want State
	}{
		{"synchronised", ClockState{MaxError: 20 * time.Millisecond, Now: now}, nil, OK},
		{"error grown", ClockState{MaxError: 3 * time.Second, Now: now}, nil, Fail},
		{"never set", ClockState{Unsync: true, MaxError: 16 * time.Second, Now: time.Unix(0, 0)}, nil, Fail},
		{"stepped, kernel unaware", ClockState{Unsync: true, MaxError: 16 * time.Second, Now: now}, nil, Unknown},
		{"adjtimex fails", ClockState{}, errors.New("EPERM"), Unknown},
	} {
		n := &Node{Name: stageClock}
		clockNode(n, func() (ClockState, error) { return c.st, c.err })
		if n.State != c.want {
			t.Errorf("%s: %s (%s), want %s", c.name, n.State, n.Detail, c.want)
		}
		if n.State != OK && c.err == nil && n.Fix == "" {
			t.Errorf("%s: no fix", c.name)
		}
	}
	// In the chain: a never-set clock is the first failure when all else is green.
	fx := newFixture(t)
	fx.srv.Clock = func() (ClockState, error) { return ClockState{Unsync: true, Now: time.Unix(0, 0)}, nil }
	p := fx.page(t)
	if n := stage(t, p, stageClock); n.State != Fail || !n.FirstFailure || !strings.Contains(n.Fix, "NTP") {
		t.Errorf("clock in the chain: %s first=%v fix %q", n.State, n.FirstFailure, n.Fix)
	}
	// The real kernel answers (whatever its state) without error on Linux.
	if _, err := KernelClock(); err != nil {
		t.Errorf("KernelClock: %v", err)
	}
}
