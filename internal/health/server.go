package health

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log"
	"math"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"
)

// MetricsSchema names the version of the /metrics.json document.
const MetricsSchema = "dnssensor.metrics/v1"

// SocketPath is where daemon serves the contract: /run/<daemon>/health.sock.
func SocketPath(daemon string) string { return filepath.Join("/run", daemon, "health.sock") }

// NewRegistry returns a Prometheus registry with the Go runtime and process collectors, to which
// the daemon adds its own.
func NewRegistry() *prometheus.Registry {
	r := prometheus.NewRegistry()
	r.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return r
}

// Server serves the contract.
type Server struct {
	Daemon   string
	Tree     *Tree
	Registry prometheus.Gatherer
	// Extra are daemon-specific documents served beside the contract (uplinkd's /status.json).
	Extra map[string]http.Handler
	// Logf reports serving errors; nil: the standard logger.
	Logf func(format string, args ...any)
	// Now stamps /metrics.json and /log.json; nil: time.Now.
	Now func() time.Time
	// Log holds the daemon's recent log lines for /log.json; nil serves an empty list.
	Log *LogRing
}

func (s *Server) logf(format string, args ...any) {
	if s.Logf != nil {
		s.Logf(format, args...)
		return
	}
	log.Printf(format, args...)
}

// Handler serves /health.json, /metrics, /metrics.json and the extras.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /health.json", s.serveHealth)
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.Registry, promhttp.HandlerOpts{
		// A failing collector should cost its own metrics, not everyone's.
		ErrorHandling: promhttp.ContinueOnError,
		ErrorLog:      logger{s},
	}))
	mux.HandleFunc("GET /metrics.json", s.serveMetricsJSON)
	mux.HandleFunc("GET /log.json", s.serveLog)
	mux.Handle("GET /log.schema.json", schemaHandler(LogSchemaJSON))
	mux.Handle("GET /health.schema.json", schemaHandler(HealthSchemaJSON))
	mux.Handle("GET /metrics.schema.json", schemaHandler(MetricsSchemaJSON))
	for path, h := range s.Extra {
		mux.Handle("GET "+path, h)
	}
	return mux
}

func schemaHandler(b []byte) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/schema+json")
		w.Write(b)
	})
}

type logger struct{ s *Server }

func (l logger) Println(v ...any) { l.s.logf("%s: /metrics: %s", l.s.Daemon, fmt.Sprint(v...)) }

// serveHealth answers 200 when every check passes and 503 otherwise, with the report either way:
// an update gate can test the status code alone (curl --fail), a page reads the body.
func (s *Server) serveHealth(w http.ResponseWriter, r *http.Request) {
	rep := s.Tree.Evaluate()
	code := http.StatusOK
	if !rep.OK {
		code = http.StatusServiceUnavailable
	}
	writeJSON(w, code, rep)
}

// MetricsDoc is the /metrics.json document: the same families as /metrics, by name.
type MetricsDoc struct {
	Schema  string             `json:"schema"`
	Daemon  string             `json:"daemon"`
	Time    time.Time          `json:"time"`
	Metrics map[string]*Family `json:"metrics"`
}

// Family is one metric name's samples.
type Family struct {
	Type    string   `json:"type"` // counter, gauge, untyped, summary or histogram
	Help    string   `json:"help"`
	Samples []Sample `json:"samples"`
}

// Sample is one label set's value: Value for counters, gauges and untyped metrics; Count and Sum
// for summaries and histograms.
type Sample struct {
	Labels map[string]string `json:"labels"`
	Value  *float64          `json:"value,omitempty"`
	Count  *uint64           `json:"count,omitempty"`
	Sum    *float64          `json:"sum,omitempty"`
}

// Value sums the samples of name whose labels include every pair of match (nil: all samples);
// found is false when name is absent.
func (d *MetricsDoc) Value(name string, match map[string]string) (sum float64, found bool) {
	f := d.Metrics[name]
	if f == nil {
		return 0, false
	}
next:
	for _, s := range f.Samples {
		for k, v := range match {
			if s.Labels[k] != v {
				continue next
			}
		}
		if s.Value != nil {
			sum += *s.Value
		}
	}
	return sum, true
}

// Metrics gathers the registry into a MetricsDoc. Samples whose value is NaN or infinite have no
// JSON number and are left out (they stay in /metrics).
func (s *Server) Metrics() (*MetricsDoc, error) {
	now := time.Now
	if s.Now != nil {
		now = s.Now
	}
	mfs, err := s.Registry.Gather()
	d := &MetricsDoc{Schema: MetricsSchema, Daemon: s.Daemon, Time: now(), Metrics: map[string]*Family{}}
	for _, mf := range mfs {
		f := &Family{Help: mf.GetHelp(), Samples: []Sample{}}
		switch mf.GetType() {
		case dto.MetricType_COUNTER:
			f.Type = "counter"
		case dto.MetricType_GAUGE:
			f.Type = "gauge"
		case dto.MetricType_SUMMARY:
			f.Type = "summary"
		case dto.MetricType_HISTOGRAM, dto.MetricType_GAUGE_HISTOGRAM:
			f.Type = "histogram"
		default:
			f.Type = "untyped"
		}
		for _, m := range mf.GetMetric() {
			smp := Sample{Labels: map[string]string{}}
			for _, lp := range m.GetLabel() {
				smp.Labels[lp.GetName()] = lp.GetValue()
			}
			var v float64
			switch {
			case m.Counter != nil:
				v = m.Counter.GetValue()
			case m.Gauge != nil:
				v = m.Gauge.GetValue()
			case m.Untyped != nil:
				v = m.Untyped.GetValue()
			case m.Summary != nil:
				c, sum := m.Summary.GetSampleCount(), m.Summary.GetSampleSum()
				smp.Count, smp.Sum = &c, &sum
			case m.Histogram != nil:
				c, sum := m.Histogram.GetSampleCount(), m.Histogram.GetSampleSum()
				smp.Count, smp.Sum = &c, &sum
			}
			if smp.Count == nil {
				if math.IsNaN(v) || math.IsInf(v, 0) {
					continue
				}
				smp.Value = &v
			} else if math.IsNaN(*smp.Sum) || math.IsInf(*smp.Sum, 0) {
				smp.Sum = nil
			}
			f.Samples = append(f.Samples, smp)
		}
		d.Metrics[mf.GetName()] = f
	}
	return d, err
}

func (s *Server) serveMetricsJSON(w http.ResponseWriter, r *http.Request) {
	d, err := s.Metrics()
	if err != nil {
		// As /metrics: what could be gathered is still served.
		s.logf("%s: /metrics.json: %v", s.Daemon, err)
	}
	writeJSON(w, http.StatusOK, d)
}

// writeJSON renders into a buffer first, so an encoding error never leaves half a document.
func writeJSON(w http.ResponseWriter, code int, v any) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	w.Write(buf.Bytes())
}

// ListenUnix listens on the unix socket path, creating its directory (0755) and removing a stale
// socket left by a killed predecessor. The socket is 0660: root and the group may read the
// daemon's health, others may not. A socket another process still answers on is an error (two
// instances), and so is a path that exists and is not a socket (never delete an operator's file).
func ListenUnix(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("health socket: %v", err)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != fs.ModeSocket {
			return nil, fmt.Errorf("health socket: %s exists and is not a socket; remove it", path)
		}
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("health socket: %s: another process is serving on it", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("health socket: removing the stale %s: %v", path, err)
		}
	}
	// The socket is created with the umask's mode (0755 under gokrazy's 022: only root may
	// connect, since connecting needs write permission) and then opened to the group. The umask
	// is not narrowed instead: it is process-wide, and other goroutines create files meanwhile.
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("health socket: %v", err)
	}
	if err := os.Chmod(path, 0o660); err != nil {
		ln.Close()
		return nil, fmt.Errorf("health socket: %v", err)
	}
	return ln, nil
}

// ListenLoopback listens on a loopback TCP address (127.0.0.1:9411, [::1]:9411 or
// localhost:9411). Anything else is refused: the contract tells an attacker on the management
// network which inputs are idle, and it is not authenticated.
func ListenLoopback(addr string) (net.Listener, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("health address %q: %v (want 127.0.0.1:PORT)", addr, err)
	}
	if host != "localhost" {
		a, err := netip.ParseAddr(host)
		if err != nil || !a.IsLoopback() {
			return nil, fmt.Errorf("health address %q: not a loopback address; use 127.0.0.1:PORT or [::1]:PORT", addr)
		}
	}
	network := "tcp"
	if host == "localhost" {
		// Resolving localhost must not reach an outside address through a rewritten hosts file.
		network = "tcp4"
		addr = net.JoinHostPort("127.0.0.1", addr[len(host)+1:])
	}
	ln, err := net.Listen(network, addr)
	if err != nil {
		return nil, fmt.Errorf("health address: %v", err)
	}
	return ln, nil
}

// Serve serves the contract on every listener until ctx ends, then shuts down within a second
// or two and removes the unix sockets it served. It returns the first serving error, or nil.
func (s *Server) Serve(ctx context.Context, lns ...net.Listener) error {
	srv := &http.Server{Handler: s.Handler(), ReadHeaderTimeout: 5 * time.Second, ErrorLog: log.New(logWriter{s}, "", 0)}
	errc := make(chan error, len(lns))
	for _, ln := range lns {
		if ul, ok := ln.(*net.UnixListener); ok {
			// Remove the socket on Close, so a stopped daemon leaves no stale socket behind.
			ul.SetUnlinkOnClose(true)
		}
		go func() {
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				errc <- err
				return
			}
			errc <- nil
		}()
	}
	var first error
	running := len(lns)
	select {
	case <-ctx.Done():
	case first = <-errc:
		running-- // a listener failed: stop serving on the others too
	}
	shut, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	srv.Shutdown(shut)
	for ; running > 0; running-- {
		if err := <-errc; err != nil && first == nil {
			first = err
		}
	}
	return first
}

type logWriter struct{ s *Server }

func (l logWriter) Write(p []byte) (int, error) {
	l.s.logf("%s: health server: %s", l.s.Daemon, bytes.TrimRight(p, "\n"))
	return len(p), nil
}

// WantsJSON reports whether a page request asks for the page's data as JSON rather than HTML:
// by its path (jsonPath, e.g. /status.json, for clients that cannot set headers; "" for none) or by the first
// of application/json and text/html in its Accept header. The status page and the fleet page
// answer both ways, and a browser's Accept names text/html first.
func WantsJSON(r *http.Request, jsonPath string) bool {
	if r.URL.Path == jsonPath {
		return true
	}
	for _, a := range strings.Split(r.Header.Get("Accept"), ",") {
		mt, _, _ := strings.Cut(strings.TrimSpace(a), ";")
		switch strings.TrimSpace(mt) {
		case "application/json":
			return true
		case "text/html":
			return false
		}
	}
	return false
}
