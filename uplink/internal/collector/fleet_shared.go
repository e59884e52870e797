package collector

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sie-europe/dnssensor/uplink/sielink"
)

// FleetBucket is the JetStream key-value bucket that collectors sharing a stream share their
// fleet in: a sensor reports on its current session only, to one collector of several behind
// one name, and every collector's page must show the whole fleet.
const FleetBucket = "dnssensor-fleet"

// fleetValueMax bounds a bucket value: a report is at most about 22 KB with the decoder's limits.
const fleetValueMax = 64 << 10

// fleetShared is a bucket value: the sensor's last report and when it arrived (the receiving
// collector's clock).
type fleetShared struct {
	Sensor   string               `json:"sensor"`
	Received time.Time            `json:"received"`
	Report   sielink.HealthReport `json:"report"`
}

// fleetKey is a sensor's key in the bucket. A sensor name may end in a dot or hold two in a row,
// which a key may not; '=' is a key character no sensor name has, so the mapping is one to one.
func fleetKey(sensor string) string { return strings.ReplaceAll(sensor, ".", "=") }

// fleetShare puts the reports this collector receives into the bucket and watches the bucket
// into the fleet. At most the latest report per sensor waits to be put: a newer one replaces it.
type fleetShare struct {
	f    *Fleet
	kv   jetstream.KeyValue
	logf sielink.Logf

	mu      sync.Mutex
	pending map[string]*fleetEntry
	kick    chan struct{}

	stopping chan struct{}
	cancel   context.CancelFunc
	wg       sync.WaitGroup
}

// fleetRetry is the pause after a failed put or watch.
const fleetRetry = time.Second

// fleetFlush bounds how long a stopping collector tries to put the reports still waiting.
const fleetFlush = 5 * time.Second

// shareFleet starts sharing f through the bucket (created with the stream's replicas if it is
// missing); stop puts what is waiting (at most fleetFlush) and ends the watch. Call stop before
// the bus closes. The bucket is opened in the background: a collector serves its sensors at
// once (a new R3 bucket takes seconds to elect its leader, and a failing one must not keep the
// data out), and the reports wait meanwhile.
func shareFleet(f *Fleet, b *bus, logf sielink.Logf) (stop func()) {
	s := &fleetShare{f: f, logf: logf, pending: map[string]*fleetEntry{},
		kick: make(chan struct{}, 1), stopping: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if s.kv = s.open(ctx, b); s.kv == nil {
			return
		}
		s.wg.Add(2)
		go func() { defer s.wg.Done(); s.put() }()
		go func() { defer s.wg.Done(); s.watch(ctx) }()
	}()
	f.mu.Lock()
	f.share = s
	if f.shareErrors == nil {
		f.shareErrors = map[string]uint64{} // every operation's counter shows, at 0
	}
	f.mu.Unlock()
	return func() {
		f.mu.Lock()
		f.share = nil
		f.mu.Unlock()
		close(s.stopping) // the put loop flushes, then ends
		s.cancel()        // the opening and the watch end
		s.wg.Wait()
	}
}

// open creates or opens the bucket, retrying until ctx ends (then nil): as for the stream, a
// cluster may still be electing its meta leader, or lack a quorum for a while.
func (s *fleetShare) open(ctx context.Context, b *bus) jetstream.KeyValue {
	cfg := jetstream.KeyValueConfig{
		Bucket: FleetBucket, Description: "the last health report of every dnssensor sensor, by sensor",
		History: 1, Replicas: b.opts.Replicas, Storage: jetstream.FileStorage, MaxValueSize: fleetValueMax,
	}
	for {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		kv, err := b.js.CreateOrUpdateKeyValue(cctx, cfg)
		cancel()
		if err == nil {
			return kv
		}
		if ctx.Err() != nil {
			return nil
		}
		s.f.shareFailed("open")
		logTo(s.logf, "collector: fleet: creating the bucket %s: %v (retrying; the fleet page shows this collector's sensors meanwhile)", FleetBucket, err)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(fleetRetry):
		}
	}
}

// offer queues a report to be put; it never blocks the session that received it.
func (s *fleetShare) offer(sensor string, e *fleetEntry) {
	s.mu.Lock()
	s.pending[sensor] = e
	s.mu.Unlock()
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

func (s *fleetShare) take() map[string]*fleetEntry {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.pending
	s.pending = map[string]*fleetEntry{}
	return p
}

// put puts the waiting reports. One that fails waits again (unless a newer one came meanwhile,
// here or from the bucket) and is tried after fleetRetry; at stop, what waits is tried once
// more within fleetFlush.
func (s *fleetShare) put() {
	failing := false
	for {
		var flush bool
		select {
		case <-s.stopping: // first: a stop does not wait for another full round
			flush = true
		default:
			select {
			case <-s.kick:
			case <-s.stopping:
				flush = true
			}
		}
		deadline := PublishTimeout
		if flush {
			deadline = fleetFlush
		}
		ctx, cancel := context.WithTimeout(context.Background(), deadline)
		var failed error
		for sensor, e := range s.take() {
			if failed != nil {
				s.requeue(sensor, e)
				continue
			}
			if err := s.putOne(ctx, sensor, e); err != nil {
				// Logged once per failing spell, counted each time.
				s.f.shareFailed("put")
				failed = fmt.Errorf("%s: %w", sensor, err)
				s.requeue(sensor, e)
			}
		}
		cancel()
		if failed != nil && !failing {
			logTo(s.logf, "collector: fleet: sharing a report in the bucket %s: %v (retrying every %v; the other collectors show the sensor's earlier state meanwhile)", FleetBucket, failed, fleetRetry)
		} else if failed == nil && failing {
			logTo(s.logf, "collector: fleet: sharing reports in the bucket %s again", FleetBucket)
		}
		failing = failed != nil
		if flush {
			return
		}
		if failing {
			select {
			case <-time.After(fleetRetry):
				s.offerAgain()
			case <-s.stopping:
			}
		}
	}
}

// putOne puts e unless the bucket holds a report of the sensor that arrived later (another
// collector's, or this put was retried late): a compare-and-set on the key's revision, so two
// collectors putting at once cannot leave the older report in the bucket either.
func (s *fleetShare) putOne(ctx context.Context, sensor string, e *fleetEntry) error {
	v, err := json.Marshal(fleetShared{Sensor: sensor, Received: e.Received, Report: e.Report})
	if err != nil {
		return err
	}
	key := fleetKey(sensor)
	for {
		var rev uint64
		cur, err := s.kv.Get(ctx, key)
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound):
		case err != nil:
			return err
		default:
			var old fleetShared
			if json.Unmarshal(cur.Value(), &old) == nil && !e.Received.After(old.Received) {
				return nil
			}
			rev = cur.Revision()
		}
		if rev == 0 {
			_, err = s.kv.Create(ctx, key, v)
		} else {
			_, err = s.kv.Update(ctx, key, v, rev)
		}
		if !errors.Is(err, jetstream.ErrKeyExists) && !errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
			return err
		}
		// Another put came in between: look again.
	}
}

// requeue puts e back unless a newer report of the sensor waits or is known.
func (s *fleetShare) requeue(sensor string, e *fleetEntry) {
	if s.f.newer(sensor, e.Received) {
		return
	}
	s.mu.Lock()
	if _, ok := s.pending[sensor]; !ok {
		s.pending[sensor] = e
	}
	s.mu.Unlock()
}

func (s *fleetShare) offerAgain() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// watch keeps the fleet up to date with the bucket: its current values first (a restarted
// collector learns what the others received meanwhile), then every put. The watch is an
// ordered consumer, which recovers from a lost NATS node by itself; one that ends (the
// connection closed) is started again.
func (s *fleetShare) watch(ctx context.Context) {
	for ctx.Err() == nil {
		w, err := s.kv.WatchAll(ctx)
		if err != nil {
			s.f.shareFailed("watch")
			logTo(s.logf, "collector: fleet: watching the bucket %s: %v (retrying)", FleetBucket, err)
		} else {
			// Stopping the watch closes its updates.
			stopped := make(chan struct{})
			go func() {
				select {
				case <-ctx.Done():
					w.Stop()
				case <-stopped:
				}
			}()
			for e := range w.Updates() {
				if e != nil && e.Operation() == jetstream.KeyValuePut {
					s.applyEntry(e)
				}
			}
			close(stopped)
			w.Stop()
		}
		select {
		case <-ctx.Done():
		case <-time.After(fleetRetry):
		}
	}
}

func (s *fleetShare) applyEntry(e jetstream.KeyValueEntry) {
	var v fleetShared
	err := json.Unmarshal(e.Value(), &v)
	if err == nil && fleetKey(v.Sensor) != e.Key() {
		err = errors.New("the value names another sensor")
	}
	if err != nil {
		s.f.shareFailed("bad_value")
		logTo(s.logf, "collector: fleet: bucket %s, key %q: %v (ignored)", FleetBucket, e.Key(), err)
		return
	}
	s.f.apply(v.Sensor, &fleetEntry{Received: v.Received, Report: v.Report})
}
