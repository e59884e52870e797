package collector

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/sie-europe/dnssensor/internal/testenv"
	"github.com/sie-europe/dnssensor/uplink/sielink"
)

// fetchFleet reads a collector's /fleet.json.
func fetchFleet(t testing.TB, metrics string) FleetView {
	t.Helper()
	resp, err := http.Get("http://" + metrics + "/fleet.json")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var v FleetView
	if err := json.NewDecoder(resp.Body).Decode(&v); err != nil {
		t.Fatalf("/fleet.json: %v", err)
	}
	return v
}

// fleetRow is sensor's row in v, or nil.
func fleetRow(v FleetView, sensor string) *FleetSensor {
	for i := range v.Sensors {
		if v.Sensors[i].Sensor == sensor {
			return &v.Sensors[i]
		}
	}
	return nil
}

// natsServer runs a single JetStream node on a loopback port, as a shared NATS the collectors
// reach with -nats.
func natsServer(t testing.TB) string {
	t.Helper()
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, JetStream: true,
		StoreDir: t.TempDir(), NoSigs: true, NoLog: true})
	if err != nil {
		t.Fatal(err)
	}
	ns.Start()
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	if !ns.ReadyForConnections(30 * time.Second) {
		t.Fatal("NATS server did not start")
	}
	return ns.ClientURL()
}

// TestFleetShared: two collectors on one JetStream, a sensor connected to collector a only:
// collector b's fleet page shows its report, with the time it arrived at a. The bucket's
// values pass the keys-file filter, and a report put late (older than the one shown) does not
// replace a newer one. A collector started later learns the fleet from the bucket.
func TestFleetShared(t *testing.T) {
	url := natsServer(t)
	sensors := []string{"alpha", "beta.", "gamma"}
	js := func(noArchive bool) func(*Options) {
		return func(o *Options) {
			o.JetStream = &JetStreamOptions{URL: url, Replicas: 1, NoArchive: noArchive}
		}
	}
	a := startCollectorKeys(t, sensors, js(false), nil)
	b := startCollectorKeys(t, sensors, js(true), a)

	ctx := ctxT(t, 2*testenv.Patience)
	conn, err := sielink.Dial(ctx, a.config("alpha"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	r := greenReport()
	r.Version = "shared-1"
	if err := conn.SendReport(ctx, r); err != nil {
		t.Fatal(err)
	}
	var atA, atB *FleetSensor
	testenv.WaitFor(t, "collector b's fleet page to show alpha's report sent to collector a", func() bool {
		atB = fleetRow(fetchFleet(t, b.metrics), "alpha")
		return atB != nil && atB.LastSeen != nil
	})
	atA = fleetRow(fetchFleet(t, a.metrics), "alpha")
	if atA == nil || atA.LastSeen == nil || atB.Version != "shared-1" || atB.State != "green" ||
		*atB.RecordsPerSecond != 20000 || !atB.LastSeen.Equal(*atA.LastSeen) {
		t.Fatalf("alpha at a %+v, at b %+v: want the same report, arrived at the same time", atA, atB)
	}
	for _, s := range fetchSnapshot(t, b.metrics).Sensors {
		if s.Sensor == "alpha" && s.SessionsTotal > 0 {
			t.Fatalf("alpha had a session at collector b: %+v", s)
		}
	}

	// A collector that starts now learns the fleet from the bucket, with the arrival times.
	c := startCollectorKeys(t, sensors, func(o *Options) {
		js(true)(o)
		o.Store.Dir = filepath.Join(t.TempDir(), "c")
	}, a)
	testenv.WaitFor(t, "a new collector's fleet page to show alpha", func() bool {
		row := fleetRow(fetchFleet(t, c.metrics), "alpha")
		return row != nil && row.LastSeen != nil && row.LastSeen.Equal(*atA.LastSeen) && row.Version == "shared-1"
	})

	// Straight into the bucket: a late put of an older report of alpha, a sensor that is not in
	// the keys file, and then a report of beta. (which also checks the key mapping of a name
	// ending in a dot). The watch is in bucket order: once beta. shows, the others were seen.
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	jsc, _ := jetstream.New(nc)
	kv, err := jsc.KeyValue(ctx, FleetBucket)
	if err != nil {
		t.Fatal(err)
	}
	put := func(sensor string, received time.Time, version string) {
		rep := greenReport()
		rep.Version = version
		v, _ := json.Marshal(fleetShared{Sensor: sensor, Received: received, Report: *rep})
		if _, err := kv.Put(ctx, fleetKey(sensor), v); err != nil {
			t.Fatal(err)
		}
	}
	put("alpha", atA.LastSeen.Add(-time.Minute), "stale")
	put("intruder", time.Now(), "made-up")
	put("beta.", time.Now(), "beta-1")
	testenv.WaitFor(t, "collector b's fleet page to show beta.", func() bool {
		row := fleetRow(fetchFleet(t, b.metrics), "beta.")
		return row != nil && row.Version == "beta-1"
	})
	for _, tc := range []*testCollector{b, c} {
		v := fetchFleet(t, tc.metrics)
		if row := fleetRow(v, "alpha"); row.Version != "shared-1" {
			t.Errorf("a late put of an older report replaced alpha's: %+v", row)
		}
		if row := fleetRow(v, "intruder"); row != nil {
			t.Errorf("a sensor outside the keys file is on the page: %+v", row)
		}
		if row := fleetRow(v, "gamma"); row == nil || row.State != "red" || row.Why != "never reported" {
			t.Errorf("gamma: %+v, want red, never reported", row)
		}
	}

	// The collector's own puts compare and set: a report older than the bucket's is not put
	// (the bucket holds the stale one put above; one older still stays out), a newer one is.
	before, err := kv.Get(ctx, "alpha")
	if err != nil {
		t.Fatal(err)
	}
	share := &fleetShare{kv: kv}
	if err := share.putOne(ctx, "alpha", &fleetEntry{Received: atA.LastSeen.Add(-time.Hour), Report: *greenReport()}); err != nil {
		t.Fatal(err)
	}
	if e, err := kv.Get(ctx, "alpha"); err != nil || e.Revision() != before.Revision() {
		t.Errorf("after putting an older report: %v, revision %d, want %d kept", err, e.Revision(), before.Revision())
	}
	if err := share.putOne(ctx, "alpha", &fleetEntry{Received: *atA.LastSeen, Report: *r}); err != nil {
		t.Fatal(err)
	}
	if e, err := kv.Get(ctx, "alpha"); err != nil || !strings.Contains(string(e.Value()), `"shared-1"`) {
		t.Errorf("after putting a newer report: %v %s, want shared-1", err, e.Value())
	}

}

// failingKV is a bucket whose every read and write fails, as one without a quorum.
type failingKV struct{ jetstream.KeyValue }

var errNoQuorum = errors.New("no quorum")

func (failingKV) Get(context.Context, string) (jetstream.KeyValueEntry, error) {
	return nil, errNoQuorum
}

// TestFleetShareErrorsCounted: a report that cannot be put into the bucket was only logged (once
// per failing spell); the other collectors' pages then show the sensor's earlier state, and
// /metrics must say why: dnssensor_collector_fleet_share_errors_total{op="put"} counts each
// failed put.
func TestFleetShareErrorsCounted(t *testing.T) {
	f := NewFleet(FleetOptions{}, "", []string{"alpha"}, nil)
	s := &fleetShare{f: f, kv: failingKV{}, pending: map[string]*fleetEntry{},
		kick: make(chan struct{}, 1), stopping: make(chan struct{})}
	f.mu.Lock()
	f.share = s
	f.mu.Unlock()
	done := make(chan struct{})
	go func() { defer close(done); s.put() }()
	defer func() { close(s.stopping); <-done }()
	s.offer("alpha", &fleetEntry{Received: time.Now(), Report: *greenReport()})

	reg := prometheus.NewRegistry()
	reg.MustRegister(&fleetCollector{f: f})
	errorsTotal := func(op string) float64 {
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			if mf.GetName() != "dnssensor_collector_fleet_share_errors_total" {
				continue
			}
			for _, m := range mf.GetMetric() {
				for _, l := range m.GetLabel() {
					if l.GetName() == "op" && l.GetValue() == op {
						return m.GetCounter().GetValue()
					}
				}
			}
		}
		return -1
	}
	// Two: the first failure and its retry (fleetRetry later), both counted.
	testenv.WaitFor(t, `dnssensor_collector_fleet_share_errors_total{op="put"} to count the failed puts`, func() bool {
		return errorsTotal("put") >= 2
	})
	for _, op := range []string{"open", "watch", "bad_value"} {
		if n := errorsTotal(op); n != 0 {
			t.Errorf(`fleet_share_errors_total{op=%q} = %v, want 0`, op, n)
		}
	}
}
