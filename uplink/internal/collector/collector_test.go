package collector

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sie-europe/dnssensor/internal/testenv"
	"github.com/sie-europe/dnssensor/nmsg"
	"github.com/sie-europe/dnssensor/uplink/sielink"
	"github.com/sie-europe/dnssensor/uplink/sielink/sielinktest"
)

// records is what a test sent: the data of every NMSG payload, in order.
type records [][]byte

// makeContainer returns one container of n random payloads of size
// octets and appends their data to rec.
func makeContainer(t testing.TB, rng *rand.Rand, n, size int, rec *records) []byte {
	var buf bytes.Buffer
	w, err := nmsg.NewFileWriter(&buf, nmsg.FileOptions{CRC: true})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < n; i++ {
		d := make([]byte, size)
		for j := range d {
			d[j] = byte(rng.Uint32() % 16) // compressible, like DNS
		}
		if rec != nil {
			*rec = append(*rec, d)
		}
		if err := w.Write(&nmsg.Payload{Vid: 1, Msgtype: 9, TimeSec: 1700000000, Data: d}); err != nil {
			t.Fatal(err)
		}
	}
	w.Close()
	return buf.Bytes()
}

// readDir returns the payload data of all sealed files of a sensor, in
// file-name order, and the file names.
func readDir(t testing.TB, dir string) (records, []string) {
	names, err := filepath.Glob(filepath.Join(dir, "*.nmsg"))
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(names)
	var got records
	for _, n := range names {
		f, err := os.Open(n)
		if err != nil {
			t.Fatal(err)
		}
		r := nmsg.NewReader(f, nmsg.ReaderOptions{})
		for {
			p, err := r.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatalf("%s: %v", n, err)
			}
			if p.CRC != nmsg.CRCValid {
				t.Errorf("%s: payload CRC %v", n, p.CRC)
			}
			got = append(got, bytes.Clone(p.Data))
		}
		f.Close()
	}
	return got, names
}

func equalRecords(t *testing.T, want, got records) {
	t.Helper()
	if len(want) != len(got) {
		t.Fatalf("%d records stored, want %d", len(got), len(want))
	}
	for i := range want {
		if !bytes.Equal(want[i], got[i]) {
			t.Fatalf("record %d differs", i)
		}
	}
}

func TestStoreRotation(t *testing.T) {
	for _, zlib := range []bool{false, true} {
		t.Run(map[bool]string{false: "plain", true: "zlib"}[zlib], func(t *testing.T) {
			dir := t.TempDir()
			var mu sync.Mutex
			now := time.Date(2026, 5, 4, 12, 0, 59, 0, time.UTC)
			clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
			advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
			s, err := NewStore(StoreOptions{Dir: dir, Rotate: time.Minute, Zlib: zlib, now: clock})
			if err != nil {
				t.Fatal(err)
			}
			rng := rand.New(rand.NewPCG(1, 1))
			var want records
			deliver := func() {
				c := makeContainer(t, rng, 10, 500, &want)
				if err := s.Deliver(&sielink.Delivery{Sensor: "s1", Payload: &sielink.Payload{Data: c}}); err != nil {
					t.Fatal(err)
				}
			}
			deliver()            // 12:00:59 → 20260504.120000.0
			advance(time.Second) // 12:01:00: period over
			deliver()            // seals the first file, opens 120100
			advance(30 * time.Second)
			deliver()
			if _, names := readDir(t, filepath.Join(dir, "s1")); len(names) != 1 {
				t.Errorf("sealed files before the period ended: %q", names)
			}
			advance(45 * time.Second) // 12:02:15, quiet sensor
			s.Rotate()
			deliver() // 120200
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			got, names := readDir(t, filepath.Join(dir, "s1"))
			equalRecords(t, want, got)
			var base []string
			for _, n := range names {
				base = append(base, filepath.Base(n))
			}
			if strings.Join(base, " ") != "20260504.120000.0.nmsg 20260504.120100.0.nmsg 20260504.120200.0.nmsg" {
				t.Errorf("files %q", base)
			}
			if tmps, _ := filepath.Glob(filepath.Join(dir, "s1", ".*")); len(tmps) != 0 {
				t.Errorf("temp files left: %q", tmps)
			}
			b, _ := os.ReadFile(names[0])
			if compressed := b[4]&1 != 0; compressed != zlib {
				t.Errorf("first container zlib flag %v, want %v", compressed, zlib)
			}
			if st := s.Stats()["s1"]; st.Containers != 4 || st.FilesSealed != 3 {
				t.Errorf("stats %+v", st)
			}
			if err := s.Deliver(&sielink.Delivery{Sensor: "s1", Payload: &sielink.Payload{Data: makeContainer(t, rng, 1, 1, nil)}}); !errors.Is(err, ErrStoreClosed) {
				t.Errorf("Deliver after Close = %v", err)
			}
		})
	}
}

// TestStoreRecovery: a temp file left by a crash, with a half-written
// container at its end, is cut back and renamed into place; a name
// collision after a restart in the same period gets the next sequence.
func TestStoreRecovery(t *testing.T) {
	dir := t.TempDir()
	rng := rand.New(rand.NewPCG(2, 2))
	var want records
	c1 := makeContainer(t, rng, 3, 100, &want)
	c2 := makeContainer(t, rng, 3, 100, nil)
	os.MkdirAll(filepath.Join(dir, "s1"), 0o750)
	tmp := filepath.Join(dir, "s1", ".20260504.120000.0.nmsg.tmp")
	os.WriteFile(tmp, append(bytes.Clone(c1), c2[:len(c2)/2]...), 0o640)
	os.WriteFile(filepath.Join(dir, "s1", ".20260504.120100.0.nmsg.tmp"), []byte("NMS"), 0o640)
	now := time.Date(2026, 5, 4, 12, 0, 30, 0, time.UTC)
	s, err := NewStore(StoreOptions{Dir: dir, now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	if s.Recovered() != 1 {
		t.Errorf("recovered %d files", s.Recovered())
	}
	if err := s.Deliver(&sielink.Delivery{Sensor: "s1", Payload: &sielink.Payload{Data: makeContainer(t, rng, 2, 10, &want)}}); err != nil {
		t.Fatal(err)
	}
	s.Close()
	got, names := readDir(t, filepath.Join(dir, "s1"))
	equalRecords(t, want, got)
	if len(names) != 2 || filepath.Base(names[1]) != "20260504.120000.1.nmsg" {
		t.Errorf("files %q", names)
	}
	if left, _ := filepath.Glob(filepath.Join(dir, "s1", ".*")); len(left) != 0 {
		t.Errorf("left over: %q", left)
	}
}

// TestCollectorEndToEnd runs the collector (TLS, keys file, metrics)
// and two sensors delivering at the same time through the real client.
func TestCollectorEndToEnd(t *testing.T) {
	testenv.CheckLeaks(t)
	dir := t.TempDir()
	certPEM, keyPEM, err := sielinktest.CertPEM("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	os.WriteFile(certFile, certPEM, 0o644)
	os.WriteFile(keyFile, keyPEM, 0o600)
	keysFile, apiKeys, err := sielinktest.WriteKeys(dir, "alpha", "beta")
	if err != nil {
		t.Fatal(err)
	}
	var forwarded atomic.Int64
	ready := make(chan [2]string, 1)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, Options{
			Listen: "127.0.0.1:0", CertFile: certFile, KeyFile: keyFile, KeysFile: keysFile,
			Store:         StoreOptions{Dir: filepath.Join(dir, "nmsg"), Rotate: time.Second, Zlib: true},
			MetricsListen: "127.0.0.1:0",
			Heartbeat:     20 * time.Second, // not a heartbeat test: 1 s timed sessions out on a loaded machine
			Forward:       sielink.HandlerFunc(func(d *sielink.Delivery) error { forwarded.Add(1); return nil }),
			Logf:          func(string, ...any) {},
			Ready:         func(a, m string) { ready <- [2]string{a, m} },
		})
	}()
	var addrs [2]string
	select {
	case addrs = <-ready:
	case err := <-done:
		t.Fatal(err)
	}
	pool := x509Pool(t, certPEM)
	want := map[string]records{}
	var wg sync.WaitGroup
	var mu sync.Mutex
	for i, sensor := range []string{"alpha", "beta"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(i), 9))
			var rec records
			conn, err := sielink.Dial(ctx, sielink.Config{URL: "wss://" + addrs[0], Name: sensor, APIKeyFile: apiKeys[sensor],
				TLS: &tls.Config{RootCAs: pool}, Heartbeat: 20 * time.Second})
			if err != nil {
				t.Error(err)
				return
			}
			// Sending for ~2.5 s crosses at least two rotations.
			for j := 0; j < 25; j++ {
				if err := conn.Send(ctx, makeContainer(t, rng, 20, 200+j*10, &rec), sielink.LossCounter{Payloads: uint64(j % 2)}); err != nil {
					t.Error(err)
					return
				}
				time.Sleep(100 * time.Millisecond)
			}
			if err := conn.Sync(ctx); err != nil {
				t.Error(err)
			}
			conn.Close()
			mu.Lock()
			want[sensor] = rec
			mu.Unlock()
		}()
	}
	wg.Wait()

	resp, err := http.Get("http://" + addrs[1] + "/status.json")
	if err != nil {
		t.Fatal(err)
	}
	var snap Snapshot
	json.NewDecoder(resp.Body).Decode(&snap)
	resp.Body.Close()
	resp, err = http.Get("http://" + addrs[1] + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	prom, _ := io.ReadAll(resp.Body)
	resp.Body.Close()

	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	for _, sensor := range []string{"alpha", "beta"} {
		got, names := readDir(t, filepath.Join(dir, "nmsg", sensor))
		equalRecords(t, want[sensor], got)
		if len(names) < 2 {
			t.Errorf("%s: %d files, want rotation", sensor, len(names))
		}
	}
	if forwarded.Load() != 50 {
		t.Errorf("forwarded %d payloads, want 50", forwarded.Load())
	}
	if len(snap.Sensors) != 2 || snap.Sensors[0].Payloads != 25 || snap.Sensors[0].Records != 500 || snap.Sensors[0].LinkLossPayloads != 12 {
		t.Errorf("metrics %+v", snap.Sensors)
	}
	for _, line := range []string{`dnssensor_collector_sensor_payloads_total{sensor="alpha"} 25`, `dnssensor_collector_sensor_records_total{sensor="beta"} 500`, "dnssensor_collector_sessions_accepted_total 2"} {
		if !strings.Contains(string(prom), line+"\n") {
			t.Errorf("Prometheus output lacks %q:\n%s", line, prom)
		}
	}
}

func TestPlainHTTPOnlyOnLoopback(t *testing.T) {
	dir := t.TempDir()
	keysFile, _, _ := sielinktest.WriteKeys(dir, "a")
	err := Run(context.Background(), Options{Listen: "0.0.0.0:0", PlainHTTP: true, KeysFile: keysFile, Store: StoreOptions{Dir: dir}})
	if err == nil || !strings.Contains(err.Error(), "loopback") {
		t.Errorf("Run with plain HTTP on 0.0.0.0 = %v", err)
	}
}
