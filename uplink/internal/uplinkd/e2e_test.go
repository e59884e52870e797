package uplinkd

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"syscall"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"
	"github.com/miekg/dns"

	"github.com/sie-europe/dnssensor/internal/pktbuild"
	"github.com/sie-europe/dnssensor/nmsg"
	"github.com/sie-europe/dnssensor/uplink/sielink/sielinktest"
	"github.com/sie-europe/dnssensor/uplink/spool"
)

// The end-to-end fault-injection test runs the real programs — sensord writing the spool, uplinkd
// shipping it, the collector storing it — and breaks things while data flows: collector outages
// longer than the RAM tier, kill -9 of uplinkd and of sensord mid-write, a corrupted segment and a
// full disk quota. At the end every record the sensor sealed must be in the collector's files,
// except exactly what the spool's loss ledger reports; duplicates (at-least-once resends) are
// allowed and reported.

var (
	resolver = netip.MustParseAddr("198.51.100.2")
	auth     = netip.MustParseAddr("192.0.2.10")
)

func goBuild(t *testing.T, dir, pkg string) string {
	t.Helper()
	out := filepath.Join(dir, filepath.Base(pkg))
	cmd := exec.Command("go", "build", "-o", out, "github.com/sie-europe/dnssensor/"+pkg)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, b)
	}
	return out
}

// writeCapture writes n resolver transactions (query + response), phase-specific times and ids,
// calling pace after each so a FIFO reader sees a live-like stream.
func writeCapture(w io.Writer, phase, n int, pace func(i int)) error {
	pw := pcapgo.NewWriter(w)
	if err := pw.WriteFileHeader(65535, layers.LinkTypeRaw); err != nil {
		return err
	}
	base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).Add(time.Duration(phase) * time.Hour)
	for i := 0; i < n; i++ {
		name := fmt.Sprintf("h%d.p%d.example.", i, phase)
		q := new(dns.Msg)
		q.SetQuestion(name, dns.TypeA)
		q.Id, q.RecursionDesired = uint16(i), false
		qb, _ := q.Pack()
		r := new(dns.Msg)
		r.SetReply(q)
		r.Answer = append(r.Answer, &dns.A{Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeA, Class: 1, Ttl: 60}, A: []byte{192, 0, 2, byte(i)}})
		rb, _ := r.Pack()
		port := uint16(1024 + i%60000)
		qa, ra := netip.AddrPortFrom(resolver, port), netip.AddrPortFrom(auth, 53)
		t := base.Add(time.Duration(i) * time.Millisecond)
		for j, pkt := range [][]byte{pktbuild.AppendUDP(nil, qa, ra, qb), pktbuild.AppendUDP(nil, ra, qa, rb)} {
			ci := gopacket.CaptureInfo{Timestamp: t.Add(time.Duration(j) * 100 * time.Microsecond), CaptureLength: len(pkt), Length: len(pkt)}
			if err := pw.WritePacket(ci, pkt); err != nil {
				return err
			}
		}
		if pace != nil {
			pace(i)
		}
	}
	return nil
}

func payloads(t *testing.T, data []byte) [][]byte {
	t.Helper()
	rd := nmsg.NewReader(bytes.NewReader(data), nmsg.ReaderOptions{})
	var out [][]byte
	for {
		p, err := rd.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatalf("reading NMSG: %v", err)
		}
		out = append(out, append([]byte(nil), p.Data...))
	}
}

type proc struct {
	cmd *exec.Cmd
	out *bytes.Buffer
}

func start(t *testing.T, name string, args ...string) *proc {
	t.Helper()
	var out bytes.Buffer
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{cmd, &out}
	t.Cleanup(func() { p.cmd.Process.Kill(); p.cmd.Wait() })
	return p
}

func (p *proc) kill9() { p.cmd.Process.Signal(syscall.SIGKILL); p.cmd.Wait() }

func (p *proc) term(t *testing.T) {
	t.Helper()
	p.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- p.cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("%s exited with %v after SIGTERM:\n%s", filepath.Base(p.cmd.Path), err, p.out)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("%s did not exit within 30 s of SIGTERM", filepath.Base(p.cmd.Path))
	}
}

func freeAddr(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func TestEndToEndFaults(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test builds and runs three programs")
	}
	bin := t.TempDir()
	sensord, uplinkd, collector := goBuild(t, bin, "sensor/cmd/sensord"), goBuild(t, bin, "uplink/cmd/uplinkd"), goBuild(t, bin, "uplink/cmd/collector")
	dir := t.TempDir()
	ram, disk, store := filepath.Join(dir, "ram"), filepath.Join(dir, "disk"), filepath.Join(dir, "store")
	// uplinkd does not create the spool (a mistyped path must not be watched): sensord would.
	os.MkdirAll(ram, 0o755)
	os.MkdirAll(disk, 0o755)

	certPEM, keyPEM, err := sielinktest.CertPEM("127.0.0.1", "localhost")
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	os.WriteFile(certFile, certPEM, 0o644)
	os.WriteFile(keyFile, keyPEM, 0o600)
	keysFile, apiKeys, err := sielinktest.WriteKeys(dir, "sensor1")
	if err != nil {
		t.Fatal(err)
	}
	listen, metrics := freeAddr(t), freeAddr(t)
	colMetrics := freeAddr(t)
	startCollector := func() *proc {
		return start(t, collector, "-listen", listen, "-cert", certFile, "-key", keyFile, "-keys", keysFile,
			"-dir", store, "-metrics", colMetrics, "-heartbeat", "2s", "-rotate", "1h")
	}
	cfg := fmt.Sprintf(`{"spool": {"dir": %q, "disk_dir": %q}, "metrics": %q, "retry_max": "1s", "shutdown_grace": "5s",
		"destinations": [{"type": "sielink", "url": "wss://%s", "sensor": "sensor1", "api_key_file": %q, "ca_file": %q, "heartbeat": "2s"}]}`,
		ram, disk, metrics, listen, apiKeys["sensor1"], certFile)
	cfgFile := filepath.Join(dir, "uplinkd.json")
	os.WriteFile(cfgFile, []byte(cfg), 0o644)
	startUplinkd := func() *proc { return start(t, uplinkd, "-config", cfgFile) }

	spoolArgs := []string{"-resolver", resolver.String(), "-spool", ram, "-spool-disk", disk,
		"-spool-segment-age", "200ms", "-spool-segment-size", "65536", "-spool-spill-age", "1s"}
	// Phases are ordered by what uplinkd's metrics show, never by sleeping: the deadlines are
	// generous for a loaded 2-core machine and only a failure waits for them.
	upMetrics := func() (Metrics, bool) {
		var m Metrics
		resp, err := http.Get("http://" + metrics + "/status.json")
		if err != nil {
			return m, false
		}
		defer resp.Body.Close()
		return m, json.NewDecoder(resp.Body).Decode(&m) == nil
	}
	waitUp := func(what string, timeout time.Duration, cond func(Metrics) bool) {
		t.Helper()
		deadline := time.Now().Add(timeout)
		for {
			if m, ok := upMetrics(); ok && cond(m) {
				return
			}
			if time.Now().After(deadline) {
				m, _ := upMetrics()
				t.Fatalf("waited %v for %s; uplinkd metrics: %+v", timeout, what, m)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	delivered := func(m Metrics) uint64 {
		if len(m.Destinations) != 1 {
			return 0
		}
		return m.Destinations[0].Segments
	}
	destState := func(m Metrics) DestStatus {
		if len(m.Destinations) != 1 {
			return DestStatus{}
		}
		return m.Destinations[0]
	}

	// runSensor feeds a phase's capture through a FIFO at a live-like pace; kill after > 0 kills
	// sensord with SIGKILL after that many transactions were written.
	reference := map[int][][]byte{}
	runSensor := func(phase, n, killAfter int, extra ...string) {
		t.Helper()
		var ref bytes.Buffer
		writeCapture(&ref, phase, n, nil)
		refPcap := filepath.Join(dir, fmt.Sprintf("ref%d.pcap", phase))
		os.WriteFile(refPcap, ref.Bytes(), 0o644)
		refOut := filepath.Join(dir, fmt.Sprintf("ref%d.nmsg", phase))
		if out, err := exec.Command(sensord, "-r", refPcap, "-resolver", resolver.String(), "-w", refOut).CombinedOutput(); err != nil {
			t.Fatalf("reference run: %v\n%s", err, out)
		}
		b, _ := os.ReadFile(refOut)
		reference[phase] = payloads(t, b)

		fifo := filepath.Join(dir, fmt.Sprintf("feed%d", phase))
		if err := syscall.Mkfifo(fifo, 0o600); err != nil {
			t.Fatal(err)
		}
		segsBefore := uint64(0)
		if killAfter > 0 {
			m, _ := upMetrics()
			segsBefore = delivered(m)
		}
		p := start(t, sensord, append(append([]string{"-r", fifo}, spoolArgs...), extra...)...)
		f, err := os.OpenFile(fifo, os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		w := bufio.NewWriter(f)
		killed := false
		writeCapture(w, phase, n, func(i int) {
			if i%50 == 49 {
				w.Flush()
				time.Sleep(10 * time.Millisecond) // about 5000 transactions/s
			}
			if killAfter > 0 && i == killAfter && !killed {
				w.Flush()
				// Kill only once some of this phase's segments were sealed: uplinkd has
				// delivered one.
				waitUp("a segment of phase "+fmt.Sprint(phase)+" delivered", 30*time.Second, func(m Metrics) bool {
					return delivered(m) > segsBefore
				})
				p.kill9()
				killed = true
			}
		})
		if killed {
			f.Close()
			return
		}
		w.Flush()
		f.Close()
		if err := p.cmd.Wait(); err != nil {
			t.Fatalf("sensord phase %d: %v\n%s", phase, err, p.out)
		}
	}
	spoolEmpty := func(timeout time.Duration) {
		t.Helper()
		waitUp("spool drained", timeout, func(m Metrics) bool { return m.Spool.Segments == 0 && m.InFlight == 0 })
	}

	col := startCollector()
	up := startUplinkd()
	waitUp("uplinkd connected", 30*time.Second, func(m Metrics) bool { return destState(m).State == "up" })

	t.Log("phase 1: healthy link")
	runSensor(1, 2000, 0)
	spoolEmpty(30 * time.Second)

	t.Log("phase 2: collector down for longer than the RAM tier holds; uplinkd kill -9 during the outage")
	col.kill9()
	runSensor(2, 2000, 0)
	up.kill9()
	up = startUplinkd()
	// The restarted uplinkd must meet the outage before the collector returns.
	waitUp("the restarted uplinkd failing to connect", 30*time.Second, func(m Metrics) bool {
		d := destState(m)
		return d.State != "up" && d.LastError != ""
	})
	col = startCollector()
	spoolEmpty(60 * time.Second)

	t.Log("phase 3: sensord kill -9 mid-write")
	runSensor(3, 4000, 2000)
	spoolEmpty(30 * time.Second)

	t.Log("phase 4: uplinkd kill -9 mid-delivery")
	m, _ := upMetrics()
	before := delivered(m)
	killedUp := make(chan bool)
	go func() {
		// Kill once delivery of this phase is under way; the deadline only guards a hang.
		deadline := time.Now().Add(30 * time.Second)
		for time.Now().Before(deadline) {
			if m, ok := upMetrics(); ok && delivered(m) > before {
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
		up.kill9()
		killedUp <- time.Now().Before(deadline)
	}()
	runSensor(4, 3000, 0)
	if !<-killedUp {
		t.Error("phase 4: uplinkd delivered nothing of the phase within 30 s; killed it anyway")
	}
	up = startUplinkd()
	spoolEmpty(30 * time.Second)

	t.Log("phase 5: a corrupted segment")
	up.term(t)
	runSensor(5, 2000, 0)
	segs, _ := filepath.Glob(filepath.Join(disk, "*.seg"))
	corrupted := false
	for _, s := range segs {
		if fi, err := os.Stat(s); err == nil && fi.Mode().IsRegular() && fi.Size() > 1000 {
			b, _ := os.ReadFile(s)
			b[len(b)/2] ^= 0xff
			os.WriteFile(s, b, 0o644)
			corrupted = true
			break
		}
	}
	if !corrupted {
		t.Fatalf("no segment to corrupt in %s: %v", disk, segs)
	}
	up = startUplinkd()
	spoolEmpty(30 * time.Second)

	t.Log("phase 6: disk quota full during an outage")
	col.kill9()
	runSensor(6, 3000, 0, "-spool-disk-quota", "150000", "-spool-ram-quota", "65536")
	col = startCollector()
	spoolEmpty(60 * time.Second)

	up.term(t)
	// The loss travels upstream: the collector (restarted after phase 6's drops) must have been
	// told of it as linkLoss, once.
	var snap struct {
		Sensors []struct {
			Sensor           string `json:"sensor"`
			LinkLossPayloads uint64 `json:"link_loss_payloads"`
		} `json:"sensors"`
	}
	if resp, err := http.Get("http://" + colMetrics + "/status.json"); err != nil {
		t.Errorf("collector metrics: %v", err)
	} else {
		json.NewDecoder(resp.Body).Decode(&snap)
		resp.Body.Close()
	}
	col.term(t)

	// What arrived.
	files, _ := filepath.Glob(filepath.Join(store, "sensor1", "*.nmsg"))
	got := map[[32]byte]int{}
	for _, f := range files {
		b, _ := os.ReadFile(f)
		for _, p := range payloads(t, b) {
			got[sha256.Sum256(p)]++
		}
	}
	ledger, err := spool.ReadLedger(disk)
	if err != nil {
		t.Fatal(err)
	}
	var missing, dups, expected int
	phases := make([]int, 0, len(reference))
	for ph := range reference {
		phases = append(phases, ph)
	}
	sort.Ints(phases)
	for _, ph := range phases {
		ref := reference[ph]
		if ph == 3 {
			// sensord died: what it had sealed must have arrived, as a prefix of its stream.
			n := 0
			for n < len(ref) && got[sha256.Sum256(ref[n])] > 0 {
				n++
			}
			for _, p := range ref[n:] {
				if got[sha256.Sum256(p)] > 0 {
					t.Errorf("phase 3: records after the first missing one arrived: a hole, not a lost tail")
					break
				}
			}
			t.Logf("phase 3: %d of %d records sealed before kill -9 and delivered (the unsealed tail, at most one segment age, died with the process)", n, len(ref))
			for _, p := range ref[:n] {
				got[sha256.Sum256(p)]--
			}
			continue
		}
		expected += len(ref)
		before := missing
		for _, p := range ref {
			h := sha256.Sum256(p)
			switch c := got[h]; {
			case c == 0:
				missing++
			case c > 1:
				dups += c - 1
			}
			got[h] = 0
		}
		t.Logf("phase %d: %d of %d records missing", ph, missing-before, len(ref))
	}
	for _, c := range got {
		if c > 0 {
			t.Errorf("the collector holds %d records the sensor never produced", c)
			break
		}
	}
	lost := ledger.Dropped.Records + ledger.Quarantined.Records + ledger.Rejected.Records
	t.Logf("expected %d records, missing %d, duplicates %d; ledger: dropped %+v quarantined %+v temp %+v rejected %+v",
		expected, missing, dups, ledger.Dropped, ledger.Quarantined, ledger.TempFiles, ledger.Rejected)
	if uint64(missing) != lost {
		t.Errorf("shortfall %d records, but the ledger reports %d lost", missing, lost)
	}
	// The collector restarted after phase 2 and 6; what it was told since its last start is the
	// ledger's growth since then, which for phase 6's drops is at least ledger.Dropped.
	if len(snap.Sensors) != 1 || snap.Sensors[0].LinkLossPayloads < ledger.Dropped.Records || snap.Sensors[0].LinkLossPayloads > lost {
		t.Errorf("collector was told of %+v lost payloads; the ledger has dropped %d of %d lost", snap.Sensors, ledger.Dropped.Records, lost)
	} else {
		t.Logf("collector told of %d lost records through linkLoss", snap.Sensors[0].LinkLossPayloads)
	}
	if ledger.Quarantined.Segments == 0 {
		t.Error("the corrupted segment was not quarantined")
	}
	if ledger.Dropped.Segments == 0 {
		t.Error("the disk quota dropped nothing: phase 6 did not fill it")
	}
	_ = context.Background
}
