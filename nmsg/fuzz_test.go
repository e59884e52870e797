package nmsg

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/sie-europe/dnssensor/internal/testenv"
)

var corpusSeeds = []string{
	"nmsg/nmsg-dnsqr-tests/test1-dnsqr.nmsg",
	"nmsg/generic-tests/dnsqr2.nmsg",
	"nmsg/payload-crc32c-tests/test_crc32c_incorrect.nmsg",
	"nmsg/nmsg-dnstap-tests/test1-dnstap.nmsg",
	"reference/c-sock-fragments-mtu1280.bin",
	"reference/c-sock-fragments-mtu1280-zlib.bin",
	"reference/c-sock-fragments-exact-multiple-missing-last.bin",
	"reference/go-v0.2.0-fragments-empty-last.bin",
	"reference/go-v0.2.0-fragments-zlib.bin",
}

// addSeeds adds the corpus files when present (fuzzing must not need
// them) plus literal seeds that reach each branch of the header parser.
func addSeeds(f *testing.F) {
	if dir, ok := testenv.FindConformance(); ok {
		for _, rel := range corpusSeeds {
			if b, err := os.ReadFile(filepath.Join(dir, filepath.FromSlash(rel))); err == nil {
				f.Add(b)
			}
		}
	}
	var zbuf bytes.Buffer
	fw, _ := NewFileWriter(&zbuf, FileOptions{Zlib: true, CRC: true})
	p := testPayload(1, bytes.Repeat([]byte("abcd"), 100))
	fw.Write(&p)
	fw.Close()
	f.Add(zbuf.Bytes())
	var c capture
	dw, _ := NewDatagramWriter(c.send, DatagramOptions{MTU: MinMTU, CRC: true, Rand: newDetRand(9)})
	dw.Write(&p)
	dw.Flush()
	f.Add(bytes.Join(c.dgrams, nil))
	f.Add([]byte{})
	f.Add([]byte("NMSG"))
	f.Add([]byte("NMSG\x00\x02\x00\x00\x00\x00"))
	f.Add([]byte("NMSG\x01\x02\x00\x00\x00\x04\x00\x00\xff\xff"))
	f.Add([]byte("NMSG\x02\x02\x00\x00\x00\x08\x08\x01\x10\x00\x18\x00\x22\x00"))
	f.Add([]byte("NMSG\x00\x01\x00\x00\x00\x00"))
	f.Add([]byte("NMSG\x00\x02\xff\xff\xff\xff"))
}

func FuzzReader(f *testing.F) {
	addSeeds(f)
	f.Fuzz(func(t *testing.T, in []byte) {
		const max = 64 << 10
		rd := NewReader(bytes.NewReader(in), ReaderOptions{MaxSize: max})
		for range 10000 {
			p, err := rd.Next()
			if err != nil {
				if rd.err != nil {
					break // sticky
				}
				continue // skipped container
			}
			// Decoded payloads re-encode and parse back identically.
			enc := AppendPayload(nil, p)
			var q Payload
			if err := ParsePayload(enc, &q); err != nil {
				t.Fatalf("re-encoded payload does not parse: %v", err)
			}
			if !bytes.Equal(q.Data, p.Data) || q.TimeSec != p.TimeSec || q.Source != p.Source {
				t.Fatal("payload round trip differs")
			}
		}
		if cap(rd.body) > max || cap(rd.d.inflated) > max {
			t.Fatalf("buffers grew past the cap: body %d, inflated %d", cap(rd.body), cap(rd.d.inflated))
		}
		if rd.reasm != nil && rd.reasm.pending > defaultMaxPendingBytes {
			t.Fatalf("reassembly holds %d octets", rd.reasm.pending)
		}
	})
}

func FuzzReassembler(f *testing.F) {
	addSeeds(f)
	f.Fuzz(func(t *testing.T, in []byte) {
		const max = 64 << 10
		r := NewReassembler(ReassemblerOptions{MaxSize: max, MaxPendingBytes: 256 << 10, MaxPending: 16})
		now := time.Unix(1700000000, 0)
		// Split as the corpus files are stored; when a header lies,
		// feed the rest as one datagram so garbage reaches Feed too.
		for i := 0; len(in) > 0; i++ {
			n := len(in)
			if h, err := parseHeader(in); err == nil && uint64(h.length) <= uint64(len(in)-HeaderSize) {
				n = HeaderSize + int(h.length)
			}
			src := "a"
			if i%3 == 2 {
				src = "b"
			}
			ps, _ := r.Feed(src, in[:n], now)
			for i := range ps {
				if ps[i].CRC > CRCInvalid {
					t.Fatal("bad CRC status")
				}
			}
			in = in[n:]
			now = now.Add(7 * time.Second)
		}
		if r.pending > 256<<10 || r.Pending() > 16 || cap(r.d.inflated) > max || len(r.asm) > max {
			t.Fatalf("limits exceeded: %d octets, %d messages, inflated %d, asm %d",
				r.pending, r.Pending(), cap(r.d.inflated), len(r.asm))
		}
		r.Expire(now.Add(time.Hour))
		if r.Pending() != 0 || r.pending != 0 {
			t.Fatalf("after expiry: %d messages, %d octets", r.Pending(), r.pending)
		}
	})
}
