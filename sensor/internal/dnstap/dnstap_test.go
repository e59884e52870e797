package dnstap

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	pb "github.com/dnstap/golang-dnstap"
	"github.com/miekg/dns"
	"google.golang.org/protobuf/proto"

	"github.com/sie-europe/dnssensor/internal/testenv"
	"github.com/sie-europe/dnssensor/nmsg/dnsqr"
	"github.com/sie-europe/dnssensor/sensor/internal/conformance"
	"github.com/sie-europe/dnssensor/sensor/internal/pipeline"
)

var (
	res4   = netip.MustParseAddr("198.51.100.2")
	auth4  = netip.MustParseAddr("192.0.2.10")
	client = netip.MustParseAddr("10.53.0.7")
)

func dnsMsg(t testing.TB, id uint16, name string, resp bool) []byte {
	m := new(dns.Msg)
	m.SetQuestion(name, dns.TypeA)
	m.Id, m.Response = id, resp
	m.RecursionDesired = false
	b, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// frame builds one dnstap message of type typ between q (the querier) and r.
func frame(t testing.TB, typ pb.Message_Type, q, r netip.AddrPort, sec uint64, qm, rm []byte) []byte {
	fam, proto_ := pb.SocketFamily_INET, pb.SocketProtocol_UDP
	if q.Addr().Is6() {
		fam = pb.SocketFamily_INET6
	}
	qp, rp := uint32(q.Port()), uint32(r.Port())
	ns := uint32(5000)
	m := &pb.Message{Type: &typ, SocketFamily: &fam, SocketProtocol: &proto_,
		QueryAddress: q.Addr().AsSlice(), ResponseAddress: r.Addr().AsSlice(), QueryPort: &qp, ResponsePort: &rp}
	if qm != nil {
		m.QueryMessage, m.QueryTimeSec, m.QueryTimeNsec = qm, &sec, &ns
	}
	if rm != nil {
		rs := sec + 1
		m.ResponseMessage, m.ResponseTimeSec, m.ResponseTimeNsec = rm, &rs, &ns
	}
	dt := pb.Dnstap_MESSAGE
	b, err := proto.Marshal(&pb.Dnstap{Type: &dt, Message: m})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// exchange is one resolver transaction plus one client exchange, as a resolver logs them.
func exchange(t testing.TB, id uint16) [][]byte {
	rs, as := netip.AddrPortFrom(res4, 40000+id), netip.AddrPortFrom(auth4, 53)
	cs, ls := netip.AddrPortFrom(client, 50000), netip.AddrPortFrom(netip.MustParseAddr("10.53.0.1"), 53)
	return [][]byte{
		frame(t, pb.Message_CLIENT_QUERY, cs, ls, 1700000000, dnsMsg(t, 1, "secret.user.example.", false), nil),
		frame(t, pb.Message_RESOLVER_QUERY, rs, as, 1700000000, dnsMsg(t, id, "www.example.", false), nil),
		frame(t, pb.Message_RESOLVER_RESPONSE, rs, as, 1700000000, nil, dnsMsg(t, id, "www.example.", true)),
		frame(t, pb.Message_CLIENT_RESPONSE, cs, ls, 1700000000, nil, dnsMsg(t, 1, "secret.user.example.", true)),
	}
}

func TestFileRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	w, err := NewWriter(&buf)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range exchange(t, 7) {
		w.Write(f)
	}
	w.Write(make([]byte, DefaultMaxFrame+1)) // skipped, counted
	w.Write([]byte{0xff, 0xff})              // not protobuf
	for _, f := range exchange(t, 8) {
		w.Write(f)
	}
	w.Close()
	path := filepath.Join(t.TempDir(), "x.fstrm")
	os.WriteFile(path, buf.Bytes(), 0o644)

	var st Stats
	var evs []Event
	if err := ReadFile(path, nil, &st, func(e Event) { evs = append(evs, e) }); err != nil {
		t.Fatal(err)
	}
	if len(evs) != 4 {
		t.Fatalf("got %d events, want 4 (two resolver transactions)", len(evs))
	}
	for _, e := range evs {
		if e.Src.Addr() == client || e.Dst.Addr() == client {
			t.Errorf("client message became an event: %+v", e)
		}
	}
	if evs[0].Time != 1700000000e9+5000 || evs[1].Time != 1700000001e9+5000 {
		t.Errorf("times %d %d not taken from the dnstap message", evs[0].Time, evs[1].Time)
	}
	if evs[1].Src.Addr() != auth4 || evs[1].Dst.Addr() != res4 {
		t.Errorf("response not oriented authority→resolver: %v→%v", evs[1].Src, evs[1].Dst)
	}
	if st.Client.Load() != 4 || st.Oversized.Load() != 1 || st.Malformed.Load() != 1 || st.Events.Load() != 4 {
		t.Errorf("stats: %s", st.String())
	}

	// Cut inside a frame: the events before the damage are kept, then an error.
	cut := filepath.Join(t.TempDir(), "cut.fstrm")
	os.WriteFile(cut, buf.Bytes()[:len(buf.Bytes())-30], 0o644)
	n := 0
	err = ReadFile(cut, nil, &Stats{}, func(Event) { n++ })
	if !errors.Is(err, io.ErrUnexpectedEOF) || n != 4 {
		t.Errorf("truncated file: err=%v events=%d, want ErrUnexpectedEOF after 4 (the cut is in the last client frame)", err, n)
	}
}

func TestResolverFilter(t *testing.T) {
	var st Stats
	d := NewDecoder([]netip.Prefix{netip.MustParsePrefix("203.0.113.0/24")}, &st)
	var evs []Event
	for _, f := range exchange(t, 1) {
		evs = d.Decode(f, evs)
	}
	if len(evs) != 0 || st.NotResolver.Load() != 2 {
		t.Errorf("messages of another resolver kept: %d events, stats %s", len(evs), st.String())
	}
}

func TestResponseCarryingQuery(t *testing.T) {
	// Writers that log only RESOLVER_RESPONSE with the query inside: both messages are used.
	rs, as := netip.AddrPortFrom(res4, 40000), netip.AddrPortFrom(auth4, 53)
	f := frame(t, pb.Message_RESOLVER_RESPONSE, rs, as, 1700000000, dnsMsg(t, 3, "a.example.", false), dnsMsg(t, 3, "a.example.", true))
	evs := NewDecoder(nil, &Stats{}).Decode(f, nil)
	if len(evs) != 2 || evs[0].Src != rs || evs[1].Src != as {
		t.Fatalf("got %+v", evs)
	}
	// A writer that also logs RESOLVER_QUERY: the embedded query would pair twice, so it is not used.
	d := NewDecoder(nil, &Stats{})
	evs = d.Decode(frame(t, pb.Message_RESOLVER_QUERY, rs, as, 1700000000, dnsMsg(t, 3, "a.example.", false), nil), nil)
	evs = d.Decode(f, evs)
	if len(evs) != 2 {
		t.Fatalf("got %d events, want query + response", len(evs))
	}
}

// Several writers at once on a real socket, each with the bidirectional handshake; one writer
// sends garbage in the middle and the others are unaffected.
func TestServerSeveralWriters(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "dnstap.sock")
	ln, err := Listen("unix:" + sock)
	if err != nil {
		t.Fatal(err)
	}
	out := make(chan []Event, 1024)
	st := &Stats{}
	srv := &Server{Stats: st, Out: out, Logf: t.Logf}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- srv.Serve(ctx, ln) }()

	const writers, perWriter = 4, 50
	var wg sync.WaitGroup
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.Dial("unix", sock)
			if err != nil {
				t.Error(err)
				return
			}
			defer c.Close()
			fw, err := NewBidirectionalWriter(c)
			if err != nil {
				t.Error(err)
				return
			}
			for i := 0; i < perWriter; i++ {
				for _, f := range exchange(t, uint16(w*perWriter+i)) {
					fw.Write(f)
				}
				if i == 10 {
					fw.Write(make([]byte, DefaultMaxFrame+10)) // oversized: skipped, connection kept
					fw.Write([]byte("not a protobuf"))
				}
			}
			if err := fw.Close(); err != nil {
				t.Errorf("writer %d: no FINISH: %v", w, err)
			}
		}()
	}
	// A writer that breaks the protocol loses only its own connection.
	bad, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	bad.Write([]byte{0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff})
	wg.Wait()

	got := 0
	deadline := time.After(5 * time.Second)
	for got < writers*perWriter*2 {
		select {
		case b := <-out:
			for _, e := range b {
				if e.Src.Addr() == client || e.Dst.Addr() == client {
					t.Fatal("client message on the output")
				}
			}
			got += len(b)
		case <-deadline:
			t.Fatalf("got %d events, want %d; %s", got, writers*perWriter*2, st.String())
		}
	}
	bad.Close()
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if st.Oversized.Load() != writers || st.Malformed.Load() != writers || st.Conns.Load() != writers+1 {
		t.Errorf("stats: %s", st.String())
	}
}

// The conformance file: 56 frames, 27 RESOLVER_RESPONSE. Every resolver transaction becomes a
// record, and nothing of the two CLIENT_* messages (127.0.0.1) leaves.
func TestConformanceFile(t *testing.T) {
	path := filepath.Join(conformance.Dir(t), "dnstap", "dnstap-input-data")
	if _, err := os.Stat(path); err != nil {
		testenv.Need(t, false, "%s absent: %v", path, err)
	}
	var recs []*dnsqr.Record
	p, err := pipeline.New(pipeline.Config{Resolvers: AllAddresses, AllowWideResolver: true, RD: -1}, func(r *dnsqr.Record) error {
		rec, err := dnsqr.Parse(dnsqr.AppendProto(nil, r))
		if err != nil {
			t.Fatal(err)
		}
		recs = append(recs, rec)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	var st Stats
	err = ReadFile(path, nil, &st, func(e Event) {
		if !p.Message(e.Time, e.TCP, e.Src, e.Dst, e.Msg) {
			t.Errorf("event refused: %+v", e)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	p.Flush()
	if st.Frames.Load() != 56 || st.Client.Load() != 2 || st.Events.Load() != 54 || st.Responses.Load() != 27 {
		t.Errorf("stats: %s", st.String())
	}
	paired := map[dnsqr.Type]int{}
	for _, r := range recs {
		paired[r.Type]++
		if len(r.QueryPackets) != 1 || len(r.ResponsePackets) != 1 {
			t.Errorf("record %v id %d: %d query / %d response packets, want 1/1", r.Type, r.ID, len(r.QueryPackets), len(r.ResponsePackets))
		}
		loop := netip.MustParseAddr("127.0.0.1")
		if r.QueryIP == loop || r.ResponseIP == loop {
			t.Errorf("client address in a record: %+v", r)
		}
		for _, b := range append(append([][]byte{}, r.QueryPackets...), r.ResponsePackets...) {
			if bytes.Contains(b, []byte{127, 0, 0, 1}) {
				t.Errorf("client address in a stored packet of record id %d", r.ID)
			}
		}
	}
	if len(recs) != 27 || paired[dnsqr.UDPQueryResponse]+paired[dnsqr.TCP] != 27 {
		t.Errorf("records by type %v, want 27 transactions (UDP_QUERY_RESPONSE + TCP)", paired)
	}
	t.Logf("records by type: %v; %s", paired, st.String())
}

func TestControlFrameErrors(t *testing.T) {
	for name, in := range map[string][]byte{
		"data before START": {0, 0, 0, 4, 1, 2, 3, 4},
		"huge control":      {0, 0, 0, 0, 0, 0, 0x10, 0},
		"wrong type":        append([]byte{0, 0, 0, 0, 0, 0, 0, 30, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 18}, "protobuf:other.Foo"...),
		"field overrun":     {0, 0, 0, 0, 0, 0, 0, 12, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 99},
	} {
		_, err := NewReader(bytes.NewReader(in), 0).Next()
		if !errors.Is(err, ErrProtocol) {
			t.Errorf("%s: err = %v, want ErrProtocol", name, err)
		}
	}
	// START without content types is accepted (fstrm allows it), and so is EOF between frames.
	in := []byte{0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0, 2}
	if _, err := NewReader(bytes.NewReader(in), 0).Next(); err != io.EOF {
		t.Errorf("bare START then EOF: %v", err)
	}
}

// A response logged with another socket's query port (unbound 1.17) is given its query's port.
func TestQueryPortRepaired(t *testing.T) {
	st := &Stats{}
	d := NewDecoder(nil, st)
	as := netip.AddrPortFrom(auth4, 53)
	evs := d.Decode(frame(t, pb.Message_RESOLVER_QUERY, netip.AddrPortFrom(res4, 45664), as, 1700000000, dnsMsg(t, 9, "a.example.", false), nil), nil)
	evs = d.Decode(frame(t, pb.Message_RESOLVER_RESPONSE, netip.AddrPortFrom(res4, 28754), as, 1700000000, nil, dnsMsg(t, 9, "a.example.", true)), evs)
	if len(evs) != 2 || evs[1].Dst.Port() != 45664 || st.PortRepaired.Load() != 1 {
		t.Fatalf("response not repaired: %+v, %s", evs, st.String())
	}
}
