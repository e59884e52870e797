package collector

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/sie-europe/dnssensor/internal/testenv"
	"github.com/sie-europe/dnssensor/nmsg"
	"github.com/sie-europe/dnssensor/nmsg/dnsqr"
	"github.com/sie-europe/dnssensor/uplink/sielink"
)

// dnsqrContainers returns n base:dnsqr records in containers of sequence id id, and each
// record's nmsgtool -J line.
func dnsqrContainers(t *testing.T, id uint64, n int) ([][]byte, []string) {
	var buf bytes.Buffer
	w, err := nmsg.NewFileWriter(&buf, nmsg.FileOptions{SequenceID: id, MaxSize: 4 << 10})
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	var pb []byte
	for i := 0; i < n; i++ {
		ts := int64(1700000000e9) + int64(i)*1e6
		r := &dnsqr.Record{Type: dnsqr.UDPQueryResponse, Proto: 17,
			QueryIP: netip.MustParseAddr("192.0.2.1"), ResponseIP: netip.MustParseAddr("198.51.100.7"),
			QueryPort: uint16(1024 + i), ResponsePort: 53, ID: uint16(i),
			HasQuestion: true, Qname: []byte("\x07example\x03com\x00"), Qtype: 1, Qclass: 1,
			HasRcode: true, QueryPackets: [][]byte{{0, 1, 2, 3}}, QueryTimes: []int64{ts}}
		var p nmsg.Payload
		pb = dnsqr.Payload(&p, pb, r)
		if err := w.Write(&p); err != nil {
			t.Fatal(err)
		}
		lines = append(lines, string(dnsqr.AppendJSON(nil, dnsqr.PayloadInfo{Time: ts}, r)))
	}
	w.Close()
	return splitContainers(buf.Bytes()), lines
}

// flakyForward records what it is handed and fails while fail > 0.
type flakyForward struct {
	mu   sync.Mutex
	fail int
	got  map[string]int // container → times handed over
}

func (f *flakyForward) Deliver(d *sielink.Delivery) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail > 0 {
		f.fail--
		return errors.New("forward spool refuses data")
	}
	f.got[d.Sensor+"/"+string(d.Payload.Data)]++
	return nil
}

func (f *flakyForward) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.got)
}

// TestStreamConsumers: with JetStream the forward to SIE Europe and the SOC's fan-outs (NMSG/UDP,
// nmsgtool -J lines) are durable consumers of the stream: every container reaches each, a failing
// forward is retried without losing or reordering anything, and a restarted collector resumes
// where each consumer's acknowledgements stopped.
func TestStreamConsumers(t *testing.T) {
	dir := t.TempDir()
	archive := filepath.Join(dir, "nmsg")
	jsonFile := filepath.Join(dir, "fanout.jsonl")
	udp, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer udp.Close()
	var udpMu sync.Mutex
	udpPayloads := 0
	go func() {
		b := make([]byte, 65536)
		for {
			n, _, err := udp.ReadFrom(b)
			if err != nil {
				return
			}
			rd := nmsg.NewReader(bytes.NewReader(b[:n]), nmsg.ReaderOptions{})
			for {
				if _, err := rd.Next(); err != nil {
					break
				}
				udpMu.Lock()
				udpPayloads++
				udpMu.Unlock()
			}
		}
	}()
	fwd := &flakyForward{fail: 3, got: map[string]int{}}
	mod := func(o *Options) {
		o.Store.Dir = archive
		o.Forward = fwd
		o.JetStream = &JetStreamOptions{FanOut: []FanOut{
			{UDP: udp.LocalAddr().String(), MTU: 60000},
			{Durable: "soc-json", JSONFile: jsonFile},
		}}
	}
	conts, lines := dnsqrContainers(t, 5, 400)
	half := len(conts) / 2

	tc := startCollector(t, mod)
	sendAll(t, tc, "alpha", conts[:half])
	testenv.WaitFor(t, "the forward to take the first half", func() bool { return fwd.count() == half })
	if err := tc.stop(); err != nil {
		t.Fatal(err)
	}
	tc = startCollector(t, mod)
	sendAll(t, tc, "alpha", conts[half:])
	var js *JetStreamSnapshot
	testenv.WaitFor(t, "every consumer to hand on the whole stream", func() bool {
		js = fetchSnapshot(t, tc.metrics).JetStream
		for _, c := range js.Consumers {
			if c.StreamSeq != js.LastSeq || c.Pending != 0 {
				return false
			}
		}
		return len(js.Consumers) == 3 && js.LastSeq == uint64(len(conts))
	})
	prom := fetchPrometheus(t, tc.metrics)
	if err := tc.stop(); err != nil {
		t.Fatal(err)
	}

	if fwd.count() != len(conts) {
		t.Errorf("forwarded %d distinct containers, want %d", fwd.count(), len(conts))
	}
	for i, c := range conts {
		if fwd.got["alpha/"+string(c)] == 0 {
			t.Fatalf("container %d never forwarded", i)
		}
	}
	kinds := map[string]ConsumerStats{}
	for _, c := range js.Consumers {
		kinds[c.Kind] = c
	}
	if f := kinds["forward"]; f.Durable != "forward" || f.Skipped != 0 {
		t.Errorf("forward consumer %+v", f)
	}
	if j := kinds["json"]; j.Durable != "soc-json" || j.Skipped != 0 {
		t.Errorf("JSON fan-out %+v", j)
	}
	b, err := os.ReadFile(jsonFile)
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
	// At least once: a restart may repeat a container's lines, never lose or reorder them.
	seen := map[string]bool{}
	for _, l := range got {
		seen[l] = true
	}
	for i, l := range lines {
		if !seen[l] {
			t.Fatalf("JSON line of record %d missing: %s", i, l)
		}
	}
	if len(got) < len(lines) {
		t.Errorf("%d JSON lines, want at least %d", len(got), len(lines))
	}
	testenv.WaitFor(t, "the NMSG/UDP datagrams", func() bool {
		udpMu.Lock()
		defer udpMu.Unlock()
		return udpPayloads >= len(lines)
	})
	for _, want := range []string{
		fmt.Sprintf(`dnssensor_collector_consumer_stream_seq{durable="soc-json",kind="json"} %d`, len(conts)),
		`dnssensor_collector_consumer_running{durable="forward",kind="forward"} 1`,
		`dnssensor_collector_consumer_pending{durable="fanout-0",kind="udp"} 0`,
	} {
		if !strings.Contains(prom, want+"\n") {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	t.Logf("%d containers, %d records: forward %+v; JSON %d lines", len(conts), len(lines), kinds["forward"], len(got))
}
