package collector

import (
	"bytes"
	"context"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"math"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/google/renameio/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/sie-europe/dnssensor/internal/health"
	"github.com/sie-europe/dnssensor/uplink/sielink"
)

// FleetOptions configures the fleet view: the last health report of every sensor (sielink
// HealthReport, sent by each sensor's uplinkd), kept in memory and in a file, and served as a
// page, JSON and Prometheus metrics.
type FleetOptions struct {
	// Listen serves the fleet page on an address of its own (GET / as HTML, or JSON with
	// Accept: application/json; /fleet.json always JSON), its stylesheet and /metrics with the
	// fleet's families. It must be a loopback address: the page has no authentication. Empty:
	// only the metrics address (Options.MetricsListen) serves it, at /fleet.
	Listen string
	// Silent is how long a sensor may go without a report before it turns red; default
	// DefaultFleetSilent.
	Silent time.Duration
	// File keeps the last reports across restarts; default <Store.Dir>/.fleet.json (a sensor
	// name cannot start with a dot, so it never collides with a sensor's directory).
	File string
	// Ready, if set, is called with the bound address once the page listens.
	Ready func(addr string)

	now func() time.Time // seam for tests; default time.Now
}

// DefaultFleetSilent is FleetOptions.Silent's default: five missed reports at uplinkd's default
// report interval (60 s).
const DefaultFleetSilent = 5 * time.Minute

// MinFleetSilent is the least -fleet-silent: below it a sensor would turn red between two reports
// delayed by a loaded machine.
const MinFleetSilent = 10 * time.Second

// CheckLoopback refuses an address that is not host:port with a loopback host.
func CheckLoopback(addr string) error {
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return fmt.Errorf("want host:port: %v", err)
	}
	if !isLoopback(addr) {
		return errors.New("not a loopback address")
	}
	return nil
}

// fleetSaveEvery bounds how stale the file is after a crash: a report is at most this old there.
const fleetSaveEvery = 10 * time.Second

// Fleet holds the last report of each sensor. Only authenticated sessions report, so it holds at
// most one entry per sensor of the keys file.
type Fleet struct {
	now    func() time.Time
	silent time.Duration
	file   string
	logf   sielink.Logf

	mu       sync.Mutex
	sensors  map[string]*fleetEntry
	expected []string // the keys file's sensors: shown red ("never reported") until they report
	dirty    bool
	reports  uint64
	// share, with JetStream, hands each report to the other collectors (fleet_shared.go).
	share *fleetShare
	// shareErrors counts the failures of the sharing by operation (fleetShareOps); nil while the
	// fleet is not shared.
	shareErrors map[string]uint64
}

// fleetShareOps are the operations of the fleet's sharing whose failures are counted
// (dnssensor_collector_fleet_share_errors_total): creating the bucket, putting a report, watching
// the bucket, and a bucket value that is not a report.
var fleetShareOps = []string{"open", "put", "watch", "bad_value"}

// shareFailed counts a failure of the sharing's operation op.
func (f *Fleet) shareFailed(op string) {
	f.mu.Lock()
	if f.shareErrors == nil {
		f.shareErrors = map[string]uint64{}
	}
	f.shareErrors[op]++
	f.mu.Unlock()
}

// fleetEntry is what is kept (and saved) per sensor.
type fleetEntry struct {
	Received time.Time            `json:"received"` // the collector's clock
	Report   sielink.HealthReport `json:"report"`
}

// fleetFile is the saved state.
type fleetFile struct {
	Schema  string                 `json:"schema"`
	Sensors map[string]*fleetEntry `json:"sensors"`
}

const (
	fleetFileSchema = "dnssensor.fleet-state/v1"
	// FleetSchema names the version of the fleet page's JSON.
	FleetSchema = "dnssensor.fleet/v1"
)

// NewFleet returns a fleet that loads and saves its state in opts.File (default under dir) and
// expects the given sensors. A file that cannot be read is logged and the fleet starts empty:
// the sensors' next reports (within a minute) rebuild it.
func NewFleet(opts FleetOptions, dir string, expected []string, logf sielink.Logf) *Fleet {
	f := &Fleet{now: opts.now, silent: opts.Silent, file: opts.File, logf: logf,
		sensors: map[string]*fleetEntry{}, expected: append([]string(nil), expected...)}
	if f.now == nil {
		f.now = time.Now
	}
	if f.silent <= 0 {
		f.silent = DefaultFleetSilent
	}
	if f.file == "" && dir != "" {
		f.file = filepath.Join(dir, ".fleet.json")
	}
	f.load()
	return f
}

func (f *Fleet) load() {
	if f.file == "" {
		return
	}
	b, err := os.ReadFile(f.file)
	if errors.Is(err, fs.ErrNotExist) {
		return
	}
	var ff fleetFile
	if err == nil {
		err = json.Unmarshal(b, &ff)
	}
	if err == nil && ff.Schema != fleetFileSchema {
		err = fmt.Errorf("schema %q, want %q", ff.Schema, fleetFileSchema)
	}
	if err != nil {
		logTo(f.logf, "collector: fleet: %s: %v (starting with an empty fleet; the sensors' next reports fill it)", f.file, err)
		return
	}
	known := map[string]bool{}
	for _, s := range f.expected {
		known[s] = true
	}
	// Only the keys file's sensors: one removed from it leaves the fleet, and a damaged file
	// cannot put a made-up name on the page.
	for name, e := range ff.Sensors {
		if e != nil && known[name] {
			f.sensors[name] = e
		}
	}
}

// Report keeps r as sensor's last state (sielink.Reporter).
func (f *Fleet) Report(sensor string, r *sielink.HealthReport) {
	f.mu.Lock()
	e := &fleetEntry{Received: f.now(), Report: *r}
	f.sensors[sensor] = e
	f.dirty = true
	f.reports++
	share := f.share
	f.mu.Unlock()
	if share != nil {
		share.offer(sensor, e)
	}
}

// apply keeps a report another collector received (or this one, coming back through the shared
// bucket) unless the fleet knows a newer one of the sensor: reports put late (a retry after a
// failed put) cannot replace a newer state. Only the keys file's sensors are kept, as in load.
func (f *Fleet) apply(sensor string, e *fleetEntry) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !slices.Contains(f.expected, sensor) {
		return false
	}
	if old := f.sensors[sensor]; old != nil && !e.Received.After(old.Received) {
		return false
	}
	// A collector whose clock runs ahead must not keep the sensor green beyond -fleet-silent on
	// this one's clock: an arrival in the future counts as now.
	if now := f.now(); e.Received.After(now) {
		e.Received = now
	}
	f.sensors[sensor] = e
	f.dirty = true
	return true
}

// newer reports whether the fleet holds a report of sensor that arrived after t.
func (f *Fleet) newer(sensor string, t time.Time) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	old := f.sensors[sensor]
	return old != nil && old.Received.After(t)
}

// Save writes the state if it changed since the last save.
func (f *Fleet) Save() error {
	f.mu.Lock()
	if !f.dirty || f.file == "" {
		f.mu.Unlock()
		return nil
	}
	b, err := json.Marshal(fleetFile{Schema: fleetFileSchema, Sensors: f.sensors})
	f.dirty = false
	f.mu.Unlock()
	if err == nil {
		err = renameio.WriteFile(f.file, b, 0o644)
	}
	if err != nil {
		f.mu.Lock()
		f.dirty = true
		f.mu.Unlock()
		return fmt.Errorf("fleet: saving %s: %w", f.file, err)
	}
	return nil
}

// FleetView is the fleet page's content (its JSON form).
type FleetView struct {
	Schema      string        `json:"schema"`
	Time        time.Time     `json:"time"`
	SilentAfter time.Duration `json:"-"`
	SilentSecs  float64       `json:"silent_after_seconds"`
	Red         int           `json:"red"`
	Green       int           `json:"green"`
	Sensors     []FleetSensor `json:"sensors"`
}

// FleetSensor is one sensor's row.
type FleetSensor struct {
	Sensor string `json:"sensor"`
	// State is "red" or "green"; Why says what made it red.
	State string `json:"state"`
	Why   string `json:"why,omitempty"`
	// LastSeen is when the last report arrived (the collector's clock); absent: never.
	LastSeen      *time.Time `json:"last_seen,omitempty"`
	SilentSeconds float64    `json:"silent_seconds"`
	Silent        bool       `json:"silent"`
	// The rest is the last report's.
	Version            string               `json:"version,omitempty"`
	UptimeSeconds      uint64               `json:"uptime_seconds"`
	RecordsPerSecond   *float64             `json:"records_per_second"`
	DeliveredPerSecond *float64             `json:"delivered_per_second"`
	Loss               *sielink.ReportLoss  `json:"loss,omitempty"`
	FirstFailure       *sielink.FailedCheck `json:"first_failure,omitempty"`
	FailingChecks      uint32               `json:"failing_checks"`
}

// View is the fleet now: every sensor that reported or is expected, red ones first.
func (f *Fleet) View() FleetView {
	f.mu.Lock()
	defer f.mu.Unlock()
	now := f.now()
	v := FleetView{Schema: FleetSchema, Time: now, SilentAfter: f.silent, SilentSecs: f.silent.Seconds(), Sensors: []FleetSensor{}}
	names := map[string]bool{}
	for _, s := range f.expected {
		names[s] = true
	}
	for s := range f.sensors {
		names[s] = true
	}
	for name := range names {
		row := FleetSensor{Sensor: name, State: "green"}
		e := f.sensors[name]
		switch {
		case e == nil:
			row.State, row.Why, row.Silent = "red", "never reported", true
		default:
			r := &e.Report
			seen := e.Received
			row.LastSeen = &seen
			row.SilentSeconds = math.Max(0, now.Sub(seen).Seconds())
			row.Version, row.UptimeSeconds, row.FailingChecks = r.Version, r.UptimeSeconds, r.FailingChecks
			row.RecordsPerSecond, row.DeliveredPerSecond, row.Loss, row.FirstFailure = r.RecordsPerSecond, r.DeliveredPerSecond, r.Loss, r.FirstFailure
			switch {
			case now.Sub(seen) > f.silent:
				row.State, row.Silent = "red", true
				row.Why = fmt.Sprintf("silent for %v (more than %v): its uplinkd does not reach the collector", now.Sub(seen).Round(time.Second), f.silent)
			case r.FirstFailure != nil:
				row.State = "red"
				row.Why = r.FirstFailure.Daemon + ": " + strings.Join(r.FirstFailure.Path, " › ")
			case !r.OK:
				row.State, row.Why = "red", "the sensor reports a failing check"
			}
		}
		if row.State == "red" {
			v.Red++
		} else {
			v.Green++
		}
		v.Sensors = append(v.Sensors, row)
	}
	sort.Slice(v.Sensors, func(i, j int) bool {
		a, b := &v.Sensors[i], &v.Sensors[j]
		if (a.State == "red") != (b.State == "red") {
			return a.State == "red"
		}
		return a.Sensor < b.Sensor
	})
	return v
}

//go:embed fleetassets
var fleetAssets embed.FS

var fleetTmpl = template.Must(template.New("fleet.html").Funcs(template.FuncMap{
	"rate": func(v *float64) string {
		if v == nil {
			return "–"
		}
		return fmt.Sprintf("%.1f", *v)
	},
	"ago":    func(s float64) string { return (time.Duration(s) * time.Second).String() },
	"uptime": func(s uint64) string { return (time.Duration(s) * time.Second).String() },
	"join":   strings.Join,
	"ms": func(ms uint64) string {
		return time.UnixMilli(int64(min(ms, math.MaxInt64))).UTC().Format("2006-01-02 15:04:05")
	},
}).ParseFS(fleetAssets, "fleetassets/fleet.html"))

// pages are the fleet's documents, served on the collector's metrics address (-metrics) and on
// the fleet's own one (-fleet) alike.
func (f *Fleet) pages() map[string]http.Handler {
	css, _ := fleetAssets.ReadFile("fleetassets/fleet.css")
	page := http.HandlerFunc(f.servePage)
	return map[string]http.Handler{
		"/fleet":      secureHeaders(page),
		"/fleet.json": secureHeaders(page),
		"/fleet.css": secureHeaders(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/css; charset=utf-8")
			w.Write(css)
		})),
	}
}

// secureHeaders: the page shows what sensors sent, so it runs no script, sits in no frame and
// loads nothing from elsewhere.
func secureHeaders(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Security-Policy", "default-src 'none'; style-src 'self'")
		w.Header().Set("X-Frame-Options", "DENY")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		h.ServeHTTP(w, r)
	})
}

// Handler serves the fleet's own address: the page at / (and /fleet), /fleet.json, /fleet.css,
// and /metrics with the fleet's families only.
func (f *Fleet) Handler() http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(&fleetCollector{f: f})
	mux := http.NewServeMux()
	pages := f.pages()
	for path, h := range pages {
		mux.Handle("GET "+path, h)
	}
	mux.Handle("GET /{$}", pages["/fleet"])
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError}))
	return mux
}

// servePage renders into a buffer first, so a template error never leaves half a page behind a
// 200.
func (f *Fleet) servePage(w http.ResponseWriter, r *http.Request) {
	v := f.View()
	var buf bytes.Buffer
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Add("Vary", "Accept")
	if health.WantsJSON(r, "/fleet.json") {
		enc := json.NewEncoder(&buf)
		enc.SetIndent("", "  ")
		if err := enc.Encode(v); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
	} else {
		if err := fleetTmpl.Execute(&buf, v); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
	}
	w.Write(buf.Bytes())
}

// startFleet makes the fleet, listens for its page (opts.Listen) and saves its state every
// fleetSaveEvery; stop serves no more, and saves a last time.
func startFleet(opts FleetOptions, dir string, expected []string, logf sielink.Logf) (f *Fleet, stop func(), err error) {
	f = NewFleet(opts, dir, expected, logf)
	var hs *http.Server
	if opts.Listen != "" {
		if !isLoopback(opts.Listen) {
			return nil, nil, fmt.Errorf("fleet page address (-fleet) %s is not a loopback address: the page has no authentication; listen on 127.0.0.1 or ::1 and put an authenticating proxy in front", opts.Listen)
		}
		ln, err := net.Listen("tcp", opts.Listen)
		if err != nil {
			return nil, nil, fmt.Errorf("fleet page address (-fleet): %w", err)
		}
		hs = &http.Server{Handler: f.Handler(), ReadHeaderTimeout: HeaderTimeout, IdleTimeout: 30 * time.Second}
		go hs.Serve(ln)
		if opts.Ready != nil {
			opts.Ready(ln.Addr().String())
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(fleetSaveEvery)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				if err := f.Save(); err != nil {
					logTo(logf, "collector: %v", err)
				}
			}
		}
	}()
	return f, func() {
		cancel()
		<-done
		if hs != nil {
			sctx, c := context.WithTimeout(context.Background(), 5*time.Second)
			hs.Shutdown(sctx)
			c()
		}
		if err := f.Save(); err != nil {
			logTo(logf, "collector: %v", err)
		}
	}, nil
}

// fleetCollector exposes the fleet as Prometheus metrics.
type fleetCollector struct{ f *Fleet }

var (
	fdescSensors   = cdesc("fleet_sensors", "Sensors of the fleet, by state (red: a failing check reported, silent, or never reported).", "state")
	fdescLastSeen  = cdesc("fleet_sensor_last_report_seconds", "Unix time of the sensor's last health report.", "sensor")
	fdescRed       = cdesc("fleet_sensor_red", "1 while the sensor is red: a failing check reported, silent, or never reported.", "sensor")
	fdescSilent    = cdesc("fleet_sensor_silent", "1 while the sensor has not reported for longer than -fleet-silent (or never).", "sensor")
	fdescRate      = cdesc("fleet_sensor_records_per_second", "Records/s the sensor captured, as of its last report.", "sensor")
	fdescDelivered = cdesc("fleet_sensor_delivered_per_second", "Records/s the sensor's uplinkd delivered, as of its last report.", "sensor")
	fdescLostRec   = cdesc("fleet_sensor_lost_records_total", "Records in the sensor's spool loss ledger, as of its last report.", "sensor")
	fdescLostBytes = cdesc("fleet_sensor_lost_bytes_total", "Octets in the sensor's spool loss ledger, as of its last report.", "sensor")
	fdescUptime    = cdesc("fleet_sensor_uptime_seconds", "The sensor box's uptime, as of its last report.", "sensor")
	fdescInfo      = cdesc("fleet_sensor_info", "1, labelled with the version the sensor last reported.", "sensor", "version")
	fdescReports   = cdesc("fleet_reports_total", "Health reports received since the collector started.")
	fdescShareErrs = cdesc("fleet_share_errors_total", "Failures sharing the fleet through the JetStream bucket "+FleetBucket+", by operation (open: creating the bucket, put: a report, retried; watch: reading the others' reports; bad_value: a value that is not a report, ignored). While puts fail, the other collectors show the sensor's earlier state.", "op")
)

func (c *fleetCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{fdescSensors, fdescLastSeen, fdescRed, fdescSilent, fdescRate, fdescDelivered, fdescLostRec, fdescLostBytes, fdescUptime, fdescInfo, fdescReports, fdescShareErrs} {
		ch <- d
	}
}

func (c *fleetCollector) Collect(ch chan<- prometheus.Metric) {
	v := c.f.View()
	gauge := func(d *prometheus.Desc, x float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, x, labels...)
	}
	gauge(fdescSensors, float64(v.Red), "red")
	gauge(fdescSensors, float64(v.Green), "green")
	for _, s := range v.Sensors {
		gauge(fdescRed, b2f(s.State == "red"), s.Sensor)
		gauge(fdescSilent, b2f(s.Silent), s.Sensor)
		if s.LastSeen == nil {
			continue
		}
		gauge(fdescLastSeen, float64(s.LastSeen.UnixMilli())/1000, s.Sensor)
		gauge(fdescUptime, float64(s.UptimeSeconds), s.Sensor)
		gauge(fdescInfo, 1, s.Sensor, s.Version)
		if s.RecordsPerSecond != nil {
			gauge(fdescRate, *s.RecordsPerSecond, s.Sensor)
		}
		if s.DeliveredPerSecond != nil {
			gauge(fdescDelivered, *s.DeliveredPerSecond, s.Sensor)
		}
		if s.Loss != nil {
			ch <- prometheus.MustNewConstMetric(fdescLostRec, prometheus.CounterValue, float64(s.Loss.Records), s.Sensor)
			ch <- prometheus.MustNewConstMetric(fdescLostBytes, prometheus.CounterValue, float64(s.Loss.Bytes), s.Sensor)
		}
	}
	c.f.mu.Lock()
	n := c.f.reports
	var shareErrs []float64
	if c.f.shareErrors != nil {
		for _, op := range fleetShareOps {
			shareErrs = append(shareErrs, float64(c.f.shareErrors[op]))
		}
	}
	c.f.mu.Unlock()
	ch <- prometheus.MustNewConstMetric(fdescReports, prometheus.CounterValue, float64(n))
	for i, v := range shareErrs {
		ch <- prometheus.MustNewConstMetric(fdescShareErrs, prometheus.CounterValue, v, fleetShareOps[i])
	}
}
