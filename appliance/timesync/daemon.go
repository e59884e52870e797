package timesync

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/sie-europe/dnssensor/internal/cli"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sie-europe/dnssensor/internal/health"
)

// Options configure timed.
type Options struct {
	// ServersFile is netconfd's ntp.json: {"source": "dhcp4", "servers": ["192.0.2.123"]}.
	ServersFile string
	// Servers are used when ServersFile names none (host or host:port).
	Servers []string
	// Poll is the time between two synchronisations; after a failed one it is 16 s, doubling.
	Poll time.Duration
	// StepThreshold: offsets beyond it are stepped, smaller ones slewed.
	StepThreshold time.Duration
	Health        string // unix socket of the health contract; empty: off
}

// ParseFlags reads timed's command line.
func ParseFlags(args []string, stderr io.Writer) (*Options, error) {
	fs := flag.NewFlagSet("timed", flag.ContinueOnError)
	fs.SetOutput(stderr)
	o := &Options{}
	fs.StringVar(&o.ServersFile, "servers-file", "/run/netconfd/ntp.json", "netconfd's list of NTP servers (from DHCP or the box configuration)")
	servers := fs.String("servers", "0.gokrazy.pool.ntp.org,1.gokrazy.pool.ntp.org,2.gokrazy.pool.ntp.org", "comma-separated NTP servers used while -servers-file names none")
	fs.DurationVar(&o.Poll, "poll", 256*time.Second, "time between two synchronisations (the kernel's error bound grows 0.5 ms a second in between)")
	fs.DurationVar(&o.StepThreshold, "step-threshold", 128*time.Millisecond, "offsets beyond this are stepped, smaller ones slewed")
	fs.StringVar(&o.Health, "health", "", "serve /health.json, /metrics and /metrics.json on this unix `SOCKET` (the appliance: /run/timed/health.sock); empty: off")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	for _, s := range strings.Split(*servers, ",") {
		if s = strings.TrimSpace(s); s != "" {
			o.Servers = append(o.Servers, s)
		}
	}
	switch {
	case o.Poll < 16*time.Second || o.Poll > 1024*time.Second:
		return nil, fmt.Errorf("-poll %v: between 16s and 1024s (beyond, the kernel's error bound passes a second between updates)", o.Poll)
	case o.StepThreshold <= 0 || o.StepThreshold > 500*time.Millisecond:
		return nil, fmt.Errorf("-step-threshold %v: above 0 and at most 500ms (the most a slew can move)", o.StepThreshold)
	}
	return o, nil
}

// Main runs timed with args and returns the process exit code.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	return cli.Main(ctx, "timed", args, stderr, ParseFlags,
		func(ctx context.Context, o *Options, logf func(string, ...any)) error {
			d := &Daemon{Opts: o, Clock: Kernel{}, Logf: logf}
			return d.Run(ctx)
		})
}

// Daemon keeps the clock synchronised.
type Daemon struct {
	Opts  *Options
	Clock Clock
	Logf  func(string, ...any)
	// After waits (time.After by default); a seam for tests.
	After func(time.Duration) <-chan time.Time

	mu       sync.Mutex
	servers  []string
	source   string
	last     Sample    // the sample last applied
	lastSync time.Time // Clock time of the last successful synchronisation
	lastErr  string
	queries  map[string]float64 // result → count
	steps    float64
}

// fileServers is ntp.json as netconfd writes it.
type fileServers struct {
	Source  string   `json:"source"`
	Servers []string `json:"servers"`
}

// currentServers reads the servers to ask: netconfd's if it names any, else the flag's.
func (d *Daemon) currentServers() ([]string, string) {
	b, err := os.ReadFile(d.Opts.ServersFile)
	if err == nil {
		var f fileServers
		if err := json.Unmarshal(b, &f); err != nil {
			d.Logf("%s: %v (using -servers)", d.Opts.ServersFile, err)
		} else if len(f.Servers) > 0 {
			return f.Servers, f.Source + " (" + d.Opts.ServersFile + ")"
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		d.Logf("%v (using -servers)", err)
	}
	return d.Opts.Servers, "-servers"
}

// Sync asks every server once and applies the best answer (the shortest round trip: the least
// room for an asymmetric path to bias the offset).
func (d *Daemon) Sync(ctx context.Context) error {
	servers, source := d.currentServers()
	d.mu.Lock()
	d.servers, d.source = servers, source
	d.mu.Unlock()
	if len(servers) == 0 {
		return errors.New("no NTP server known")
	}
	var best *Sample
	var errs []string
	for _, s := range servers {
		if _, _, err := net.SplitHostPort(s); err != nil {
			s = net.JoinHostPort(s, "123")
		}
		qctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		smp, err := Query(qctx, s, d.Clock.Now)
		cancel()
		d.count(err)
		if err != nil {
			errs = append(errs, err.Error())
			continue
		}
		if best == nil || smp.Delay < best.Delay {
			best = &smp
		}
	}
	if best == nil {
		return fmt.Errorf("no usable answer: %s", strings.Join(errs, "; "))
	}
	off := best.Offset
	if off > d.Opts.StepThreshold || off < -d.Opts.StepThreshold {
		if err := d.Clock.Step(off); err != nil {
			return err
		}
		d.mu.Lock()
		d.steps++
		d.mu.Unlock()
		d.Logf("clock stepped by %v (from %s, stratum %d, round trip %v)", off, best.Server, best.Stratum, best.Delay)
	} else if err := d.Clock.Slew(off); err != nil {
		return err
	}
	if err := d.Clock.SetSynced(best.ErrorBound(), best.Delay/2); err != nil {
		return err
	}
	d.mu.Lock()
	d.last, d.lastSync, d.lastErr = *best, d.Clock.Now(), ""
	d.mu.Unlock()
	return nil
}

func (d *Daemon) count(err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.queries == nil {
		d.queries = map[string]float64{}
	}
	if err != nil {
		d.queries["error"]++
	} else {
		d.queries["ok"]++
	}
}

// Run synchronises at once and then every Poll until ctx ends; failures are retried after 16 s,
// doubling up to Poll.
func (d *Daemon) Run(ctx context.Context) error {
	after := d.After
	if after == nil {
		after = time.After
	}
	if d.Opts.Health != "" {
		ln, err := health.ListenUnix(d.Opts.Health)
		if err != nil {
			return fmt.Errorf("-health: %v", err)
		}
		reg := health.NewRegistry()
		reg.MustRegister(collector{d})
		srv := &health.Server{Daemon: "timed", Tree: d.tree(), Registry: reg, Logf: d.Logf}
		done := make(chan struct{})
		hctx, stop := context.WithCancel(ctx)
		go func() { defer close(done); srv.Serve(hctx, ln) }()
		defer func() { stop(); <-done }()
	}
	retry := 16 * time.Second
	for {
		wait := d.Opts.Poll
		if err := d.Sync(ctx); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			d.mu.Lock()
			first := d.lastErr == ""
			d.lastErr = err.Error()
			d.mu.Unlock()
			if first {
				d.Logf("%v (again in %v)", err, retry)
			}
			wait, retry = retry, min(2*retry, d.Opts.Poll)
		} else {
			retry = 16 * time.Second
		}
		select {
		case <-ctx.Done():
			return nil
		case <-after(wait):
		}
	}
}

// tree: "time servers" → "synchronised".
func (d *Daemon) tree() *health.Tree {
	return health.NewTree("timed", d.Clock.Now, health.NewNode("time servers", func(time.Time) health.Result {
		d.mu.Lock()
		defer d.mu.Unlock()
		if len(d.servers) == 0 {
			return health.Result{Detail: "no NTP server known", Fix: "give the management network's DHCP server an NTP option, or set network.static.ntp in the box configuration"}
		}
		return health.Result{OK: true, Detail: fmt.Sprintf("%s from %s", strings.Join(d.servers, ", "), d.source)}
	}, health.NewNode("synchronised", func(now time.Time) health.Result {
		d.mu.Lock()
		defer d.mu.Unlock()
		fix := "let the box reach UDP port 123 of " + strings.Join(d.servers, ", ") + " from the management port"
		switch {
		case d.lastSync.IsZero():
			return health.Result{Detail: "not yet synchronised: " + orNone(d.lastErr), Fix: fix}
		case now.Sub(d.lastSync) > 4*d.Opts.Poll:
			return health.Result{Detail: fmt.Sprintf("last synchronised %v ago: %s", now.Sub(d.lastSync).Round(time.Second), orNone(d.lastErr)), Fix: fix}
		}
		return health.Result{OK: true, Detail: fmt.Sprintf("offset %v from %s (stratum %d, round trip %v), %v ago",
			d.last.Offset, d.last.Server, d.last.Stratum, d.last.Delay, now.Sub(d.lastSync).Round(time.Second))}
	})))
}

func orNone(s string) string {
	if s == "" {
		return "no answer yet"
	}
	return s
}

type collector struct{ d *Daemon }

var (
	descOffset  = prometheus.NewDesc("dnssensor_timed_offset_seconds", "the clock's offset from the server last applied", nil, nil)
	descQueries = prometheus.NewDesc("dnssensor_timed_queries_total", "NTP queries, by result", []string{"result"}, nil)
	descSteps   = prometheus.NewDesc("dnssensor_timed_steps_total", "times the clock was stepped rather than slewed", nil, nil)
	descLast    = prometheus.NewDesc("dnssensor_timed_last_sync_timestamp_seconds", "when the clock was last synchronised (0: never)", nil, nil)
)

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descOffset
	ch <- descQueries
	ch <- descSteps
	ch <- descLast
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	d := c.d
	d.mu.Lock()
	defer d.mu.Unlock()
	ch <- prometheus.MustNewConstMetric(descOffset, prometheus.GaugeValue, d.last.Offset.Seconds())
	for _, r := range []string{"ok", "error"} {
		ch <- prometheus.MustNewConstMetric(descQueries, prometheus.CounterValue, d.queries[r], r)
	}
	ch <- prometheus.MustNewConstMetric(descSteps, prometheus.CounterValue, d.steps)
	last := 0.0
	if !d.lastSync.IsZero() {
		last = float64(d.lastSync.UnixNano()) / 1e9
	}
	ch <- prometheus.MustNewConstMetric(descLast, prometheus.GaugeValue, last)
}
