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
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sie-europe/dnssensor/internal/testenv"
	"github.com/sie-europe/dnssensor/nmsg"
	"github.com/sie-europe/dnssensor/nmsg/dnsqr"
	"github.com/sie-europe/dnssensor/uplink/sielink"
)

// dnsqrContainers returns n base:dnsqr records in containers of sequence id id, and each
// record's nmsgtool -J line.
func dnsqrContainers(t testing.TB, id uint64, n int) ([][]byte, []string) {
	return dnsqrContainersSized(t, id, n, 4<<10)
}

// dnsqrContainersSized is dnsqrContainers with containers of at most size octets.
func dnsqrContainersSized(t testing.TB, id uint64, n, size int) ([][]byte, []string) {
	return dnsqrContainersOpts(t, n, nmsg.FileOptions{SequenceID: id, MaxSize: size})
}

// dnsqrContainersOpts is dnsqrContainers written with o.
func dnsqrContainersOpts(t testing.TB, n int, o nmsg.FileOptions) ([][]byte, []string) {
	var buf bytes.Buffer
	w, err := nmsg.NewFileWriter(&buf, o)
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
	udpAddr, udpPayloads := udpPayloadCounter(t)
	fwd := &flakyForward{fail: 3, got: map[string]int{}}
	mod := func(o *Options) {
		o.Store.Dir = archive
		o.Forward = fwd
		o.JetStream = &JetStreamOptions{FanOut: []FanOut{
			{UDP: udpAddr, MTU: 60000},
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
		return udpPayloads() >= len(lines)
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

// memForward is a forward that, like the spool, holds what it takes in memory until Flush; crash
// drops that memory, as the collector's death would. It refuses the container refuse while it is
// set.
type memForward struct {
	mu      sync.Mutex
	refuse  []byte
	offered int            // times refuse was offered
	mem     []string       // taken, not flushed
	durable map[string]int // flushed: container → times
	flushes int
}

func (f *memForward) Deliver(d *sielink.Delivery) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.refuse != nil && bytes.Equal(d.Payload.Data, f.refuse) {
		f.offered++
		return errors.New("forward spool refuses data")
	}
	f.mem = append(f.mem, string(d.Payload.Data))
	return nil
}

func (f *memForward) Flush() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, k := range f.mem {
		f.durable[k]++
	}
	f.mem, f.flushes = nil, f.flushes+1
	return nil
}

func (f *memForward) crash() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.mem, f.refuse = nil, nil
}

func (f *memForward) missing(conts [][]byte) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, c := range conts {
		if f.durable[string(c)] == 0 {
			n++
		}
	}
	return n
}

// TestConsumersNoLossAcrossRestart: the forward and the fan-outs acknowledge in batches, so an
// acknowledgement must never run ahead of what was handed on. The forward refuses a container a
// third into the stream while the pull has already delivered the next hundreds; the collector
// then stops and the forward loses what it held in memory (the spool's unsealed segment dies
// with a crashed collector). After a restart every container must reach the forward's durable
// part and every record the JSON lines: the messages delivered and never acknowledged come
// again only after AckWait, behind later ones, and an acknowledgement of a later one (AckAll)
// would cover them unseen; an acknowledgement before the forward's Flush would cover what the
// crash lost.
func TestConsumersNoLossAcrossRestart(t *testing.T) {
	dir := t.TempDir()
	archive := filepath.Join(dir, "nmsg")
	jsonFile := filepath.Join(dir, "fanout.jsonl")
	conts, lines := dnsqrContainersSized(t, 9, 3000, 512)
	refused := len(conts) / 3
	if len(conts)-refused <= 256 {
		t.Fatalf("%d containers: the test needs more than the pull's 256 beyond the refused one", len(conts))
	}
	fwd := &memForward{refuse: conts[refused], durable: map[string]int{}}
	mod := func(o *Options) {
		o.Store.Dir = archive
		o.Forward = fwd
		o.JetStream = &JetStreamOptions{NoArchive: true, FanOut: []FanOut{{Durable: "soc-json", JSONFile: jsonFile}}}
	}
	tc := startCollector(t, mod)
	sendAll(t, tc, "alpha", conts)
	testenv.WaitFor(t, "the forward to be offered the refused container twice", func() bool {
		fwd.mu.Lock()
		defer fwd.mu.Unlock()
		return fwd.offered >= 2
	})
	if err := tc.stop(); err != nil {
		t.Fatal(err)
	}
	fwd.crash()

	tc = startCollector(t, mod)
	testenv.WaitFor(t, "every container in the forward's durable part", func() bool { return fwd.missing(conts) == 0 })
	var st map[string]ConsumerStats
	testenv.WaitFor(t, "the consumers to reach the stream's end", func() bool {
		js := fetchSnapshot(t, tc.metrics).JetStream
		st = map[string]ConsumerStats{}
		for _, c := range js.Consumers {
			st[c.Kind] = c
			if c.StreamSeq != js.LastSeq || c.Pending != 0 {
				return false
			}
		}
		return len(st) == 2
	})
	if err := tc.stop(); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(jsonFile)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, l := range strings.Split(strings.TrimSuffix(string(b), "\n"), "\n") {
		seen[l] = true
	}
	for i, l := range lines {
		if !seen[l] {
			t.Fatalf("JSON line of record %d missing", i)
		}
	}
	if f := st["forward"]; f.Lost != 0 || f.GapFilled == 0 {
		t.Errorf("forward %+v: want the undelivered messages read from the stream, nothing lost", f)
	}
	fwd.mu.Lock()
	defer fwd.mu.Unlock()
	// Batches: far fewer flushes (each one an acknowledgement) than containers.
	if fwd.flushes >= len(conts)/4 {
		t.Errorf("%d flushes for %d containers: acknowledgements not batched", fwd.flushes, len(conts))
	}
	t.Logf("%d containers, refused #%d; forward %+v; %d flushes", len(conts), refused, st["forward"], fwd.flushes)
}

// TestConsumerAckPolicyChanged: a forward durable left by an earlier version (AckExplicit, a
// policy that cannot be updated) is created anew, resuming after what it had acknowledged: not
// from the stream's start, which would forward everything again. The next start opens the new
// one as it is.
func TestConsumerAckPolicyChanged(t *testing.T) {
	archive := filepath.Join(t.TempDir(), "nmsg")
	conts, _ := dnsqrContainers(t, 11, 1000)
	tc := startCollector(t, func(o *Options) {
		o.Store.Dir = archive
		o.JetStream = &JetStreamOptions{NoArchive: true}
	})
	sendAll(t, tc, "alpha", conts)
	if err := tc.stop(); err != nil {
		t.Fatal(err)
	}
	ctx := ctxT(t, 30*time.Second)
	b, err := openBus(ctx, JetStreamOptions{}, archive, nil)
	if err != nil {
		t.Fatal(err)
	}
	old := streamConsumerConfig("forward", "an earlier version's forward")
	old.AckPolicy = jetstream.AckExplicitPolicy
	cons, err := b.stream.CreateOrUpdateConsumer(ctx, old)
	if err != nil {
		t.Fatal(err)
	}
	half := len(conts) / 2
	batch, err := cons.Fetch(half)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for m := range batch.Messages() {
		if err := m.DoubleAck(ctx); err != nil {
			t.Fatal(err)
		}
		n++
	}
	b.Close()
	if n != half {
		t.Fatalf("fetched %d, want %d", n, half)
	}

	fwd := &flakyForward{got: map[string]int{}}
	mod := func(o *Options) {
		o.Store.Dir = archive
		o.Forward = fwd
		o.JetStream = &JetStreamOptions{NoArchive: true}
	}
	for round := 0; round < 2; round++ {
		tc = startCollector(t, mod)
		testenv.WaitFor(t, "the forward to reach the stream's end", func() bool {
			js := fetchSnapshot(t, tc.metrics).JetStream
			return len(js.Consumers) == 1 && js.Consumers[0].Running && js.Consumers[0].Pending == 0 &&
				(round > 0 || js.Consumers[0].StreamSeq == js.LastSeq)
		})
		if err := tc.stop(); err != nil {
			t.Fatal(err)
		}
	}
	if fwd.count() != len(conts)-half {
		t.Errorf("forwarded %d containers, want the %d not acknowledged before", fwd.count(), len(conts)-half)
	}
	for i, c := range conts[half:] {
		if fwd.got["alpha/"+string(c)] != 1 {
			t.Fatalf("container %d forwarded %d times, want once", half+i, fwd.got["alpha/"+string(c)])
		}
	}
	b, err = openBus(ctx, JetStreamOptions{}, archive, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	c, err := b.stream.Consumer(ctx, "forward")
	if err != nil {
		t.Fatal(err)
	}
	if p := c.CachedInfo().Config.AckPolicy; p != jetstream.AckAllPolicy {
		t.Errorf("forward consumer acknowledges %s, want all", p)
	}
}

// udpPayloadCounter listens for a fan-out's NMSG/UDP datagrams on loopback and counts the
// payloads they carry, until the test ends.
func udpPayloadCounter(t *testing.T) (addr string, payloads func() int) {
	udp, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { udp.Close() })
	var n atomic.Int64
	go func() {
		b := make([]byte, 65536)
		for {
			m, _, err := udp.ReadFrom(b)
			if err != nil {
				return
			}
			rd := nmsg.NewReader(bytes.NewReader(b[:m]), nmsg.ReaderOptions{})
			for {
				if _, err := rd.Next(); err != nil {
					break
				}
				n.Add(1)
			}
		}
	}()
	return udp.LocalAddr().String(), func() int { return int(n.Load()) }
}
