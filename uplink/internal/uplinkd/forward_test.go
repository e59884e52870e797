package uplinkd

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/sie-europe/dnssensor/internal/testenv"
	"github.com/sie-europe/dnssensor/uplink/sielink/sielinktest"
)

// TestSOCForwardsToSIE: sensor -> uplinkd -> SOC collector, which stores and spools what it
// receives -> a second uplinkd on the collector host -> "SIE" (another collector). Every record the
// sensor produced must be stored at the SOC and arrive at SIE.
func TestSOCForwardsToSIE(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test builds and runs three programs")
	}
	bin := t.TempDir()
	sensord, uplinkd, collector := goBuild(t, bin, "sensor/cmd/sensord"), goBuild(t, bin, "uplink/cmd/uplinkd"), goBuild(t, bin, "uplink/cmd/collector")
	dir := t.TempDir()
	certPEM, keyPEM, err := sielinktest.CertPEM("127.0.0.1", "localhost")
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	os.WriteFile(certFile, certPEM, 0o644)
	os.WriteFile(keyFile, keyPEM, 0o600)
	socKeys, socAPI, _ := sielinktest.WriteKeys(filepath.Join(dir), "sensor1")
	os.MkdirAll(filepath.Join(dir, "sie"), 0o755)
	sieKeys, sieAPI, _ := sielinktest.WriteKeys(filepath.Join(dir, "sie"), "soc1")

	// uplinkd does not create its spool (a mistyped path must not be watched): sensord and the
	// collector would, and the order of their starts is not the point here.
	for _, d := range []string{"ram", "disk", "fwd-ram", "fwd-disk"} {
		os.MkdirAll(filepath.Join(dir, d), 0o755)
	}
	socListen, sieListen := freeAddr(t), freeAddr(t)
	socMetrics, up1Metrics, up2Metrics := freeAddr(t), freeAddr(t), freeAddr(t)
	sie := start(t, collector, "-listen", sieListen, "-cert", certFile, "-key", keyFile, "-keys", sieKeys,
		"-dir", filepath.Join(dir, "sie-store"), "-metrics", "", "-rotate", "1h")
	soc := start(t, collector, "-listen", socListen, "-cert", certFile, "-key", keyFile, "-keys", socKeys,
		"-dir", filepath.Join(dir, "soc-store"), "-metrics", socMetrics, "-rotate", "1h",
		"-forward-spool", filepath.Join(dir, "fwd-ram"), "-forward-spool-disk", filepath.Join(dir, "fwd-disk"))
	conf := func(name, ram, disk, metrics, listen, sensor, key string) string {
		f := filepath.Join(dir, name)
		os.WriteFile(f, []byte(fmt.Sprintf(`{"spool": {"dir": %q, "disk_dir": %q}, "metrics": %q, "retry_max": "1s",
			"destinations": [{"type": "sielink", "url": "wss://%s", "sensor": %q, "api_key_file": %q, "ca_file": %q}]}`,
			ram, disk, metrics, listen, sensor, key, certFile)), 0o644)
		return f
	}
	up1 := start(t, uplinkd, "-config", conf("up1.json", filepath.Join(dir, "ram"), filepath.Join(dir, "disk"), up1Metrics, socListen, "sensor1", socAPI["sensor1"]))
	up2 := start(t, uplinkd, "-config", conf("up2.json", filepath.Join(dir, "fwd-ram"), filepath.Join(dir, "fwd-disk"), up2Metrics, sieListen, "soc1", sieAPI["soc1"]))

	var capture bytes.Buffer
	writeCapture(&capture, 7, 3000, nil)
	pcap := filepath.Join(dir, "in.pcap")
	os.WriteFile(pcap, capture.Bytes(), 0o644)
	ref := filepath.Join(dir, "ref.nmsg")
	if out, err := exec.Command(sensord, "-r", pcap, "-resolver", resolver.String(), "-w", ref).CombinedOutput(); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if out, err := exec.Command(sensord, "-r", pcap, "-resolver", resolver.String(), "-spool", filepath.Join(dir, "ram"),
		"-spool-disk", filepath.Join(dir, "disk")).CombinedOutput(); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	refBytes, _ := os.ReadFile(ref)
	want := payloads(t, refBytes)

	drained := func(metrics string) bool {
		resp, err := http.Get("http://" + metrics + "/status.json")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		var m Metrics
		json.NewDecoder(resp.Body).Decode(&m)
		return m.Spool.Segments == 0 && m.InFlight == 0 && len(m.Destinations) == 1 && m.Destinations[0].Records > 0
	}
	deadline := time.Now().Add(60 * time.Second)
	for !(drained(up1Metrics) && drained(up2Metrics)) {
		if time.Now().After(deadline) {
			t.Fatal("spools not drained within 60 s")
		}
		time.Sleep(300 * time.Millisecond)
	}
	// The sensor's uplinkd reported its health to the SOC, whose fleet page (real processes,
	// default flags) shows it.
	testenv.WaitFor(t, "sensor1 on the SOC's fleet page", func() bool {
		s := fleetSensor(t, socMetrics, "sensor1")
		return s != nil && s.LastSeen != nil && s.Version != "" && s.Loss != nil
	})
	up1.term(t)
	// Stopping the SOC collector seals its forward spool's last segment (Close returns after it);
	// then up2 must take it.
	soc.term(t)
	deadline = time.Now().Add(30 * time.Second)
	for !drained(up2Metrics) {
		if time.Now().After(deadline) {
			t.Fatal("the SOC's forward spool not drained within 30 s of the collector's exit")
		}
		time.Sleep(300 * time.Millisecond)
	}
	up2.term(t)
	sie.term(t)

	for _, where := range []string{"soc-store/sensor1", "sie-store/soc1"} {
		got := map[[32]byte]int{}
		files, _ := filepath.Glob(filepath.Join(dir, where, "*.nmsg"))
		for _, f := range files {
			b, _ := os.ReadFile(f)
			for _, p := range payloads(t, b) {
				got[sha256.Sum256(p)]++
			}
		}
		missing := 0
		for _, p := range want {
			if got[sha256.Sum256(p)] == 0 {
				missing++
			}
		}
		if missing != 0 {
			t.Errorf("%s: %d of %d records missing", where, missing, len(want))
		} else {
			t.Logf("%s: all %d records", where, len(want))
		}
	}
}
