package output_test

import (
	"bytes"
	"context"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/sie-europe/dnssensor/nmsg"
	"github.com/sie-europe/dnssensor/nmsg/dnsqr"
	"github.com/sie-europe/dnssensor/sensor/internal/output"
	"github.com/sie-europe/dnssensor/uplink/spool"
)

var env = output.Envelope{Source: 0xa1b2c3d4, HasSource: true, Operator: 7, HasOperator: true}

// record fills r as record n of about 300 octets encoded, as a busy resolver's transactions are.
func record(r *dnsqr.Record, n int) *dnsqr.Record {
	t := int64(1_700_000_000)*1e9 + int64(n)*1e6 + 123
	*r = dnsqr.Record{Type: dnsqr.UDPQueryResponse, QueryIP: netip.MustParseAddr("198.51.100.2"),
		ResponseIP: netip.MustParseAddr("192.0.2.10"), Proto: 17, QueryPort: uint16(1024 + n%60000), ResponsePort: 53, ID: uint16(n),
		HasQuestion: true, Qname: []byte("\x03www\x07example\x03com\x00"), Qtype: 1, Qclass: 1, HasRcode: true,
		QueryPackets: append(r.QueryPackets[:0], make([]byte, 60)), QueryTimes: append(r.QueryTimes[:0], t),
		ResponsePackets: append(r.ResponsePackets[:0], make([]byte, 180)), ResponseTimes: append(r.ResponseTimes[:0], t+2e6)}
	return r
}

func readPayloads(t testing.TB, b []byte) []nmsg.Payload {
	t.Helper()
	rd := nmsg.NewReader(bytes.NewReader(b), nmsg.ReaderOptions{})
	var out []nmsg.Payload
	for {
		p, err := rd.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		c := *p
		c.Data = bytes.Clone(p.Data)
		c.CRC = 0
		out = append(out, c)
	}
}

// sink keeps copies of the payloads it is given.
type sink struct {
	got    []nmsg.Payload
	closed bool
}

func (s *sink) WritePayload(p *nmsg.Payload) error {
	c := *p
	c.Data = bytes.Clone(p.Data)
	s.got = append(s.got, c)
	return nil
}

func (s *sink) Close() error { s.closed = true; return nil }

// TestPayloadsAsNMSG: the spool adapter hands over exactly the payloads the NMSG file writer
// writes (the record→payload code is one function for both).
func TestPayloadsAsNMSG(t *testing.T) {
	var buf bytes.Buffer
	nw, err := output.NewNMSG(&buf, env, false)
	if err != nil {
		t.Fatal(err)
	}
	var s sink
	pw := output.NewPayloads(&s, env)
	var r dnsqr.Record
	for i := range 50 {
		record(&r, i)
		if err := nw.Write(&r); err != nil {
			t.Fatal(err)
		}
		if err := pw.Write(&r); err != nil {
			t.Fatal(err)
		}
	}
	if err := nw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := pw.Close(); err != nil || !s.closed {
		t.Fatalf("Close: %v, sink closed %v", err, s.closed)
	}
	want := readPayloads(t, buf.Bytes())
	if len(want) != 50 {
		t.Fatalf("%d payloads in the NMSG file", len(want))
	}
	if d := cmp.Diff(want, s.got); d != "" {
		t.Errorf("adapter payloads differ from the NMSG writer's (-file +adapter):\n%s", d)
	}
}

func openSpool(t testing.TB) (spool.Options, *spool.Producer) {
	dir := t.TempDir()
	o := spool.Options{Dir: filepath.Join(dir, "ram"), SegmentAge: time.Hour, SpillAge: time.Hour, Logf: func(string, ...any) {}}
	if fi, err := os.Stat("/dev/shm"); err == nil && fi.IsDir() {
		d, err := os.MkdirTemp("/dev/shm", "outputbench")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(d) })
		o.Dir = filepath.Join(d, "ram")
	}
	p, err := spool.OpenProducer(o)
	if err != nil {
		t.Fatal(err)
	}
	return o, p
}

// TestPayloadsToSpoolNoAlloc: a record on its way into the spool's current segment allocates
// nothing (sensord writes every record it pairs this way).
func TestPayloadsToSpoolNoAlloc(t *testing.T) {
	_, p := openSpool(t)
	w := output.NewPayloads(p, env)
	defer w.Close()
	recs := make([]dnsqr.Record, 64)
	for i := range recs {
		record(&recs[i], i)
	}
	w.Write(&recs[0]) // the first write sizes the buffers
	i := 0
	// 200 records of ~300 octets stay inside the default 1 MiB segment, so no seal runs.
	if a := testing.AllocsPerRun(200, func() {
		if err := w.Write(&recs[i%len(recs)]); err != nil {
			t.Fatal(err)
		}
		i++
	}); a != 0 {
		t.Errorf("%v allocations per record", a)
	}
}

// BenchmarkPayloadsToSpool: sensord's spool path per record (encode, envelope, container,
// segment) while a consumer acks the sealed segments, as on a healthy link.
func BenchmarkPayloadsToSpool(b *testing.B) {
	o, p := openSpool(b)
	c, err := spool.OpenConsumer(o)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			s, err := c.Next(ctx)
			if err != nil {
				return
			}
			c.Ack(s)
		}
	}()
	w := output.NewPayloads(p, env)
	recs := make([]dnsqr.Record, 1024)
	for i := range recs {
		record(&recs[i], i)
	}
	b.ReportAllocs()
	b.SetBytes(int64(len(dnsqr.AppendProto(nil, &recs[0]))))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := w.Write(&recs[i%len(recs)]); err != nil {
			b.Fatal(err)
		}
	}
	p.Flush()
	b.StopTimer()
	cancel()
	<-done
	w.Close()
	c.Close()
}
