package health

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// serve starts a server for tree and reg on a fresh unix socket and returns its path; the server
// stops with the test.
func serve(t *testing.T, s *Server) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "run", s.Daemon, "health.sock")
	ln, err := ListenUnix(sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
		if _, err := os.Lstat(sock); !os.IsNotExist(err) {
			t.Errorf("socket left behind after shutdown: %v", err)
		}
	})
	return sock
}

func get(t *testing.T, sock, path string) (int, string, []byte) {
	t.Helper()
	resp, err := Client(sock).Get("http://unix" + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, resp.Header.Get("Content-Type"), b
}

func TestServeContract(t *testing.T) {
	var frames atomic.Uint64
	reg := NewRegistry()
	fc := prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "dnssensor_testd_frames_total", Help: "frames read"},
		func() float64 { return float64(frames.Load()) })
	drops := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "dnssensor_testd_dropped_total", Help: "frames dropped, by reason"}, []string{"reason"})
	drops.WithLabelValues(`quote"and\backslash`).Add(2)
	drops.WithLabelValues("truncated").Add(3)
	reg.MustRegister(fc, drops)
	c := newClock()
	tree := NewTree("testd", c.now, NewNode("input", Fixed(true, "reading", ""),
		NewNode("frames", Increasing(frames.Load, time.Minute, "frames", "feed it"))))
	sock := serve(t, &Server{Daemon: "testd", Tree: tree, Registry: reg, Now: c.now,
		Extra: map[string]http.Handler{"/status.json": http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "{}") })}})

	fi, err := os.Stat(sock)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o660 {
		t.Errorf("socket mode %v, want 0660", fi.Mode().Perm())
	}
	if di, _ := os.Stat(filepath.Dir(sock)); di.Mode().Perm() != 0o755 {
		t.Errorf("socket directory mode %v, want 0755", di.Mode().Perm())
	}

	// No frames: 503 with the report, the first failure marked.
	code, ct, body := get(t, sock, "/health.json")
	if code != http.StatusServiceUnavailable || ct != "application/json" {
		t.Errorf("failing tree: %d %s, want 503 application/json", code, ct)
	}
	validDoc(t, "health.schema.json", body)
	rep, err := Get(context.Background(), sock)
	if err != nil {
		t.Fatal(err)
	}
	if rep.OK || strings.Join(rep.FirstFailurePath, "/") != "input/frames" || !rep.Checks[0].Children[0].FirstFailure {
		t.Errorf("failing report: %+v", rep)
	}

	frames.Store(10)
	code, _, body = get(t, sock, "/health.json")
	if code != http.StatusOK {
		t.Errorf("healthy tree: %d, want 200\n%s", code, body)
	}
	validDoc(t, "health.schema.json", body)
	if rep, err := Get(context.Background(), sock); err != nil || !rep.OK || rep.FirstFailurePath != nil {
		t.Errorf("healthy report: %+v, %v", rep, err)
	}

	code, ct, body = get(t, sock, "/metrics")
	if code != http.StatusOK || !strings.HasPrefix(ct, "text/plain") {
		t.Errorf("/metrics: %d %s", code, ct)
	}
	text := string(body)
	for _, want := range []string{
		"# HELP dnssensor_testd_frames_total frames read\n# TYPE dnssensor_testd_frames_total counter\ndnssensor_testd_frames_total 10\n",
		"# TYPE dnssensor_testd_dropped_total counter\n",
		// Exposition escaping, not Go's %q.
		`dnssensor_testd_dropped_total{reason="quote\"and\\backslash"} 2` + "\n",
		"# TYPE go_goroutines gauge\n",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}

	code, ct, body = get(t, sock, "/metrics.json")
	if code != http.StatusOK || ct != "application/json" {
		t.Errorf("/metrics.json: %d %s", code, ct)
	}
	validDoc(t, "metrics.schema.json", body)
	m, err := GetMetrics(context.Background(), sock)
	if err != nil {
		t.Fatal(err)
	}
	if v, ok := m.Value("dnssensor_testd_frames_total", nil); !ok || v != 10 {
		t.Errorf("frames in metrics.json: %v %v", v, ok)
	}
	if v, _ := m.Value("dnssensor_testd_dropped_total", map[string]string{"reason": "truncated"}); v != 3 {
		t.Errorf("truncated drops in metrics.json: %v", v)
	}
	if v, _ := m.Value("dnssensor_testd_dropped_total", nil); v != 5 {
		t.Errorf("all drops in metrics.json: %v", v)
	}
	if f := m.Metrics["go_gc_duration_seconds"]; f == nil || f.Type != "summary" || len(f.Samples) != 1 || f.Samples[0].Count == nil {
		t.Errorf("summary in metrics.json: %+v", f)
	}
	if m.Metrics["dnssensor_testd_frames_total"].Type != "counter" || m.Daemon != "testd" || !m.Time.Equal(c.now()) {
		t.Errorf("metrics.json header or type: %+v", m)
	}

	if code, _, body := get(t, sock, "/health.schema.json"); code != 200 || string(body) != string(HealthSchemaJSON) {
		t.Errorf("/health.schema.json: %d", code)
	}
	if code, _, body := get(t, sock, "/status.json"); code != 200 || string(body) != "{}" {
		t.Errorf("extra handler: %d %s", code, body)
	}
	if code, _, _ := get(t, sock, "/nothing"); code != http.StatusNotFound {
		t.Errorf("unknown path: %d", code)
	}
	resp, err := Client(sock).Post("http://unix/health.json", "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST: %d, want 405", resp.StatusCode)
	}
}

func TestListenUnix(t *testing.T) {
	dir := t.TempDir()

	stale := filepath.Join(dir, "stale.sock")
	ln, err := net.Listen("unix", stale)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close() // a killed daemon's socket: the file stays, nobody answers
	if _, err := os.Lstat(stale); err != nil {
		t.Fatal(err)
	}
	ln, err = ListenUnix(stale)
	if err != nil {
		t.Fatalf("stale socket not replaced: %v", err)
	}

	// The same path again while served: a second instance must not steal it.
	if ln2, err := ListenUnix(stale); err == nil || !strings.Contains(err.Error(), "another process") {
		t.Errorf("live socket taken over: %v", err)
		if ln2 != nil {
			ln2.Close()
		}
	}
	ln.Close()

	file := filepath.Join(dir, "file")
	os.WriteFile(file, []byte("keep me"), 0o644)
	if _, err := ListenUnix(file); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("regular file: %v", err)
	}
	if b, _ := os.ReadFile(file); string(b) != "keep me" {
		t.Error("a regular file in the socket's place was removed")
	}
}

func TestListenLoopback(t *testing.T) {
	for _, addr := range []string{"127.0.0.1:0", "localhost:0", "127.0.0.2:0"} {
		ln, err := ListenLoopback(addr)
		if err != nil {
			t.Errorf("%s: %v", addr, err)
			continue
		}
		if a := ln.Addr().(*net.TCPAddr); !a.IP.IsLoopback() {
			t.Errorf("%s listens on %v", addr, a)
		}
		ln.Close()
	}
	for _, addr := range []string{":9411", "0.0.0.0:9411", "[::]:9411", "192.0.2.1:9411", "example.net:9411", "127.0.0.1"} {
		if ln, err := ListenLoopback(addr); err == nil {
			ln.Close()
			t.Errorf("%s accepted", addr)
		}
	}
}

func TestClientErrors(t *testing.T) {
	ctx := context.Background()
	if _, err := Get(ctx, filepath.Join(t.TempDir(), "none.sock")); err == nil {
		t.Error("no daemon: no error")
	}
	// Something that is not the contract: refused, not decoded into an empty report.
	sock := filepath.Join(t.TempDir(), "other.sock")
	ln, err := ListenUnix(sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"schema":"other"}`)
	})}
	go srv.Serve(ln)
	defer srv.Close()
	if _, err := Get(ctx, sock); err == nil || !strings.Contains(err.Error(), "schema") {
		t.Errorf("foreign document: %v", err)
	}
	if _, err := GetMetrics(ctx, sock); err == nil || !strings.Contains(err.Error(), "schema") {
		t.Errorf("foreign metrics document: %v", err)
	}
}

func TestWantsJSON(t *testing.T) {
	cases := []struct {
		path, accept string
		want         bool
	}{
		{"/status.json", "", true},
		{"/status.json", "text/html", true},
		{"/", "", false},
		{"/", "application/json", true},
		{"/", "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", false},
		{"/", "application/json; charset=utf-8, text/html", true},
		{"/", " text/html ;q=1, application/json", false},
		{"/", "*/*", false},
	}
	for _, c := range cases {
		r := httptest.NewRequest("GET", c.path, nil)
		if c.accept != "" {
			r.Header.Set("Accept", c.accept)
		}
		if got := WantsJSON(r, "/status.json"); got != c.want {
			t.Errorf("%s with Accept %q: %v, want %v", c.path, c.accept, got, c.want)
		}
	}
}
