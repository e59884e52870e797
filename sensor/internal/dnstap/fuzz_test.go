package dnstap

import (
	"bytes"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	pb "github.com/dnstap/golang-dnstap"

	"github.com/sie-europe/dnssensor/internal/testenv"
	"github.com/sie-europe/dnssensor/nmsg/dnsqr"
	"github.com/sie-europe/dnssensor/sensor/internal/pipeline"
)

// FuzzStream feeds arbitrary bytes through the Frame Streams reader, the dnstap decoder and the
// pipeline: nothing may panic, every event must be a resolver-side message, and the reader must
// make progress (no frame is returned twice without reading).
func FuzzStream(f *testing.F) {
	var buf bytes.Buffer
	w, _ := NewWriter(&buf)
	for _, fr := range exchange(f, 7) {
		w.Write(fr)
	}
	w.Close()
	f.Add(buf.Bytes())
	f.Add(buf.Bytes()[:40])
	if b, err := os.ReadFile(filepath.Join(testenv.Conformance(f), "dnstap", "dnstap-input-data")); err == nil {
		f.Add(b)
	}
	rs, as := netip.AddrPortFrom(res4, 1), netip.AddrPortFrom(auth4, 53)
	var b2 bytes.Buffer
	w, _ = NewWriter(&b2)
	w.Write(frame(f, pb.Message_RESOLVER_RESPONSE, rs, as, 1, []byte{1, 2}, []byte{3}))
	f.Add(b2.Bytes())

	f.Fuzz(func(t *testing.T, in []byte) {
		p, err := pipeline.New(pipeline.Config{Resolvers: AllAddresses, AllowWideResolver: true, RD: -1}, func(*dnsqr.Record) error { return nil })
		if err != nil {
			t.Fatal(err)
		}
		st := &Stats{}
		r := NewReader(bytes.NewReader(in), 4096)
		d := NewDecoder(nil, st)
		var evs []Event
		for i := 0; ; i++ {
			fr, err := r.Next()
			if err != nil {
				if err == io.EOF && r.Frames == 0 && len(in) < 12 {
					t.Fatalf("clean end without a START frame (%d octets)", len(in))
				}
				break
			}
			if len(fr) > 4096 {
				t.Fatalf("frame of %d octets beyond the limit", len(fr))
			}
			if i > len(in) {
				t.Fatal("more frames than input octets")
			}
			evs = d.Decode(fr, evs[:0])
			for _, e := range evs {
				if !e.Src.IsValid() || !e.Dst.IsValid() {
					t.Fatalf("event with invalid address: %+v", e)
				}
				p.Message(e.Time, e.TCP, e.Src, e.Dst, e.Msg)
			}
		}
		p.Flush()
	})
}
