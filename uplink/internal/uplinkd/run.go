package uplinkd

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/renameio/v2"
	"golang.org/x/sync/errgroup"

	"github.com/sie-europe/dnssensor/internal/health"
	"github.com/sie-europe/dnssensor/uplink/internal/nmsgudp"
	"github.com/sie-europe/dnssensor/uplink/sielink"
	"github.com/sie-europe/dnssensor/uplink/spool"
)

// destination delivers whole segments. deliver returns only when the destination has the segment
// (sielink: confirmed by a Sync), or with an error after which the whole segment is retried.
// ctx bounds an attempt under way (it outlives SIGTERM by the shutdown grace); connect bounds
// the wait for a destination that is not connected, and ends with SIGTERM: waiting for a
// destination that is down is not an attempt in progress.
type destination interface {
	deliver(ctx, connect context.Context, seg *spool.Segment, loss sielink.LossCounter) error
	run(ctx context.Context) error // background work for the destination's lifetime
	status() DestStatus
}

// DestStatus is one destination's row in the metrics.
type DestStatus struct {
	Name      string    `json:"name"`
	Type      string    `json:"type"`
	State     string    `json:"state"`
	Since     time.Time `json:"since"`
	LastError string    `json:"last_error,omitempty"`
	Segments  uint64    `json:"segments"`
	Records   uint64    `json:"records"`
	Bytes     uint64    `json:"bytes"`
	Failures  uint64    `json:"failures"` // delivery attempts that failed and were retried
	// Sensor is the session name a sielink destination logs in with (the status page's sensor
	// name).
	Sensor string `json:"sensor,omitempty"`
	// sielink
	Reconnects   uint64 `json:"reconnects"`
	PossiblyLost uint64 `json:"possibly_lost_payloads"` // unconfirmed at a drop, then resent
	// nmsg-udp
	Datagrams uint64 `json:"datagrams,omitempty"`
	Refused   uint64 `json:"refused,omitempty"`
}

type counts struct {
	segments, records, bytes, failures atomic.Uint64
}

func (c *counts) delivered(seg *spool.Segment) {
	c.segments.Add(1)
	c.records.Add(uint64(seg.Records))
	c.bytes.Add(uint64(seg.BodyLen))
}

type sielinkDest struct {
	cfg    Destination
	client *sielink.Client
	counts
	mu      sync.Mutex
	lastErr error
}

func newSielink(d Destination, retryMax time.Duration, logf func(string, ...any)) (*sielinkDest, error) {
	// retry_max bounds the client's reconnection back-off too: delivery resumes within it once the
	// destination answers again, however long the outage was.
	cfg := sielink.Config{URL: d.URL, Name: d.Sensor, APIKeyFile: d.APIKeyFile, Origin: d.Origin,
		Channel: d.Channel, Heartbeat: d.Heartbeat.Duration, Logf: logf, MaxBackoff: retryMax}
	if d.CAFile != "" {
		pem, err := os.ReadFile(d.CAFile)
		if err != nil {
			return nil, fmt.Errorf("destination %s: ca_file: %v", d.Name, err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("destination %s: ca_file %s holds no PEM certificate", d.Name, d.CAFile)
		}
		cfg.TLS = &tls.Config{RootCAs: pool}
	}
	c, err := sielink.NewClient(cfg)
	if err != nil {
		return nil, fmt.Errorf("destination %s: %v", d.Name, err)
	}
	return &sielinkDest{cfg: d, client: c}, nil
}

func (s *sielinkDest) run(ctx context.Context) error { s.client.Run(ctx); return nil }

func (s *sielinkDest) deliver(ctx, connect context.Context, seg *spool.Segment, loss sielink.LossCounter) error {
	c, err := s.client.Conn(connect)
	if err != nil {
		return err
	}
	for i, ct := range seg.Containers() {
		// linkLoss is a delta the server adds up: it rides on the segment's first payload.
		l := sielink.LossCounter{}
		if i == 0 {
			l = loss
		}
		if err := c.Send(ctx, ct, l); err != nil {
			return s.fail(err)
		}
	}
	// No acknowledgements in sielink: a ping answered after our data proves the peer read it.
	if err := c.Sync(ctx); err != nil {
		return s.fail(err)
	}
	s.delivered(seg)
	return nil
}

func (s *sielinkDest) fail(err error) error {
	s.mu.Lock()
	s.lastErr = err
	s.mu.Unlock()
	return err
}

func (s *sielinkDest) status() DestStatus {
	st := s.client.Status()
	ds := DestStatus{Name: s.cfg.Name, Type: "sielink", State: st.State.String(), Since: st.Since, LastError: st.LastError,
		Segments: s.segments.Load(), Records: s.records.Load(), Bytes: s.bytes.Load(), Failures: s.failures.Load(),
		Reconnects: st.Stats.Reconnects, PossiblyLost: st.Stats.PossiblyLostPayloads, Sensor: s.cfg.Sensor}
	s.mu.Lock()
	if ds.LastError == "" && s.lastErr != nil {
		ds.LastError = s.lastErr.Error()
	}
	s.mu.Unlock()
	return ds
}

type udpDest struct {
	cfg    Destination
	sender *nmsgudp.Sender
	since  time.Time
	counts
}

func newUDP(d Destination) (*udpDest, error) {
	s, err := nmsgudp.New(nmsgudp.Config{Addr: d.Addr, MTU: d.MTU, Zlib: d.Zlib, Rate: d.Rate})
	if err != nil {
		return nil, fmt.Errorf("destination %s: %v", d.Name, err)
	}
	return &udpDest{cfg: d, sender: s, since: time.Now()}, nil
}

func (u *udpDest) run(ctx context.Context) error { <-ctx.Done(); return u.sender.Close() }

func (u *udpDest) deliver(ctx, _ context.Context, seg *spool.Segment, _ sielink.LossCounter) error {
	if err := u.sender.SendContainers(ctx, seg.Body()); err != nil {
		return err
	}
	u.delivered(seg)
	return nil
}

func (u *udpDest) status() DestStatus {
	return DestStatus{Name: u.cfg.Name, Type: "nmsg-udp", State: "up", Since: u.since,
		Segments: u.segments.Load(), Records: u.records.Load(), Bytes: u.bytes.Load(), Failures: u.failures.Load(),
		Datagrams: u.sender.Stats.Datagrams.Load(), Refused: u.sender.Stats.Refused.Load()}
}

// Supervisor owns the spool consumer and the destinations.
type Supervisor struct {
	cfg   *Config
	cons  *spool.Consumer
	dests []destination
	logf  func(string, ...any)
	start time.Time

	inFlight atomic.Uint64 // sequence of the segment being delivered, 0 when idle

	// HealthSocket is the unix socket of the health contract (health.go); empty: only the
	// config's loopback metrics address serves it.
	HealthSocket string
	// Log holds uplinkd's recent log lines for the contract's /log.json; nil serves none.
	Log *health.LogRing

	// tree is uplinkd's health tree, served (health.go) and summarised upstream (report.go).
	tree *health.Tree

	// reported is, per destination, the spool loss already sent as linkLoss. It is durable so a
	// restart does not report the same loss twice.
	reported     map[string]sielink.LossCounter
	reportedFile string
}

func (s *Supervisor) loadReported() {
	s.reported = map[string]sielink.LossCounter{}
	if b, err := os.ReadFile(s.reportedFile); err == nil {
		if err := json.Unmarshal(b, &s.reported); err != nil {
			s.logf("uplinkd: %s: %v (loss will be reported again)", s.reportedFile, err)
			s.reported = map[string]sielink.LossCounter{}
		}
	}
}

func (s *Supervisor) saveReported() {
	b, _ := json.Marshal(s.reported)
	if err := renameio.WriteFile(s.reportedFile, b, 0o644); err != nil {
		s.logf("uplinkd: saving %s: %v", s.reportedFile, err)
	}
}

// New opens the spool and the destinations. Close releases them when Run is not used.
func New(cfg *Config, logf func(string, ...any)) (*Supervisor, error) {
	if err := cfg.CheckDirs(cfg.dirWait, logf); err != nil {
		return nil, err
	}
	s := &Supervisor{cfg: cfg, logf: logf, start: time.Now()}
	for _, d := range cfg.Destinations {
		var dest destination
		var err error
		switch d.Type {
		case "sielink":
			dest, err = newSielink(d, cfg.RetryMax.Duration, logf)
		case "nmsg-udp":
			dest, err = newUDP(d)
		}
		if err != nil {
			s.closeDests()
			return nil, err
		}
		s.dests = append(s.dests, dest)
	}
	cons, err := spool.OpenConsumer(spool.Options{Dir: cfg.Spool.Dir, DiskDir: cfg.Spool.DiskDir, Logf: logf})
	if err != nil {
		s.closeDests()
		return nil, err
	}
	s.cons = cons
	dir := cfg.Spool.DiskDir
	if dir == "" {
		dir = cfg.Spool.Dir
	}
	s.reportedFile = filepath.Join(dir, "uplinkd-reported.json")
	s.loadReported()
	s.tree = s.healthTree(time.Now)
	return s, nil
}

// Close releases what New opened, for a Supervisor whose Run was not called.
func (s *Supervisor) Close() error {
	s.closeDests()
	return s.cons.Close()
}

func (s *Supervisor) closeDests() {
	for _, d := range s.dests {
		if u, ok := d.(*udpDest); ok {
			u.sender.Close()
		}
	}
}

// Run delivers until ctx is done, then lets the segment in flight finish for up to ShutdownGrace
// (else releases it to be resent after restart), and returns nil on a clean shutdown.
func (s *Supervisor) Run(ctx context.Context) error {
	defer s.cons.Close()
	lns, err := s.listenHealth()
	if err != nil {
		return err
	}
	hctx, stopHealth := context.WithCancel(context.Background())
	bg, bgCtx := errgroup.WithContext(context.Background())
	bgCtx, stopBG := context.WithCancel(bgCtx)
	for _, d := range s.dests {
		bg.Go(func() error { return d.run(bgCtx) })
	}
	bg.Go(func() error { return s.serveHealth(hctx, lns) })
	rp := newReporter(s)
	bg.Go(func() error { return s.reportLoop(bgCtx, rp) })
	err = s.loop(ctx)
	stopHealth()
	stopBG()
	bg.Wait()
	return err
}

func (s *Supervisor) loop(ctx context.Context) error {
	for {
		seg, err := s.cons.Next(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		s.inFlight.Store(seg.Seq)
		// The segment in flight may finish after SIGTERM, within the grace period.
		dctx, cancel := graceContext(ctx, s.cfg.ShutdownGrace.Duration)
		ok := s.deliver(dctx, ctx, seg)
		cancel()
		s.inFlight.Store(0)
		if !ok {
			s.cons.Release(seg)
			return nil
		}
		if err := s.cons.Ack(seg); err != nil {
			s.logf("uplinkd: ack of segment %d: %v (it may be delivered again)", seg.Seq, err)
		}
		if ctx.Err() != nil {
			return nil
		}
	}
}

// deliver hands seg to every destination that does not have it yet, retrying failures with
// jittered back-off, and reports false only when ctx ended first, or when a round failed after
// stop (SIGTERM) ended: the grace lets an attempt in progress finish, it is not for retrying
// nor for waiting for a destination to come back.
// A segment not delivered everywhere is released and sent again after the restart, so stopping
// loses nothing, and gokrazy, which waits for every service before a reboot, is not held for
// the whole grace while a destination is down.
func (s *Supervisor) deliver(ctx, stop context.Context, seg *spool.Segment) bool {
	done := make([]bool, len(s.dests))
	wait := 500 * time.Millisecond
	for {
		total := s.linkLoss()
		all := true
		for i, d := range s.dests {
			if done[i] {
				continue
			}
			name := d.status().Name
			prev := s.reported[name]
			delta := sielink.LossCounter{Bytes: total.Bytes - prev.Bytes, Payloads: total.Payloads - prev.Payloads}
			if total.Bytes < prev.Bytes || total.Payloads < prev.Payloads {
				delta = sielink.LossCounter{} // a recreated spool restarted its ledger
			}
			if err := d.deliver(ctx, stop, seg, delta); err != nil {
				if ctx.Err() != nil || stop.Err() != nil {
					return false
				}
				all = false
				st := d.status()
				switch d := d.(type) {
				case *sielinkDest:
					d.failures.Add(1)
				case *udpDest:
					d.failures.Add(1)
				}
				s.logf("uplinkd: %s: segment %d: %v (retrying)", st.Name, seg.Seq, err)
				continue
			}
			done[i] = true
			if delta != (sielink.LossCounter{}) || total != prev {
				s.reported[name] = total
				s.saveReported()
			}
		}
		if all {
			return true
		}
		// Jitter only shortens the wait: retry_max is a bound.
		t := time.NewTimer(time.Duration(float64(wait) * (1 - rand.Float64()/2)))
		select {
		case <-ctx.Done():
			t.Stop()
			return false
		case <-stop.Done():
			t.Stop()
			return false
		case <-t.C:
		}
		wait = min(2*wait, s.cfg.RetryMax.Duration)
	}
}

// linkLoss is what the spool has lost so far (cumulative), reported with every payload.
func (s *Supervisor) linkLoss() sielink.LossCounter {
	l, err := s.cons.Loss()
	if err != nil {
		return sielink.LossCounter{}
	}
	t := l.Total()
	return sielink.LossCounter{Bytes: t.Bytes, Payloads: t.Records}
}

// graceContext is ctx, except that its end is delayed by grace.
func graceContext(ctx context.Context, grace time.Duration) (context.Context, context.CancelFunc) {
	d, cancel := context.WithCancel(context.WithoutCancel(ctx))
	stop := context.AfterFunc(ctx, func() {
		t := time.AfterFunc(grace, cancel)
		context.AfterFunc(d, func() { t.Stop() })
	})
	return d, func() { stop(); cancel() }
}
