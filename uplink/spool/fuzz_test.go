package spool

import (
	"bytes"
	"hash/crc32"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// FuzzParseSegment feeds arbitrary files to the segment reader: it must
// never panic or over-allocate, and whatever it accepts must be exactly
// what the header describes, containers tiling the body.
func FuzzParseSegment(f *testing.F) {
	good := validImage(f, 42, 0, 2)
	f.Add(good)
	f.Add(good[:headerSize])
	f.Add(good[:len(good)-1])
	f.Add([]byte("DSPL"))
	// Intact checksums around bad framing, so the fuzzer starts past
	// the CRC checks it could not forge by mutation.
	f.Add(craft([]byte("NMSG\x00\x02\x00\x00\x00\x64short"), 1, 1))
	f.Add(craft(good[headerSize:], 1, 9))
	f.Add(craft(append(bytes.Clone(good[headerSize:]), "NMSG\x00\x02"...), 2, 2))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, conts, err := parseSegment(b, nil)
		if err != nil {
			return
		}
		if int64(len(b)) != headerSize+m.BodyLen || uint32(len(conts)) != m.Containers {
			t.Fatalf("accepted inconsistent segment %+v with %d containers", m, len(conts))
		}
		if !bytes.Equal(bytes.Join(conts, nil), b[headerSize:]) {
			t.Fatal("containers do not tile the body")
		}
		var h [headerSize]byte
		putHeader(h[:], m)
		if !bytes.Equal(h[:], b[:headerSize]) {
			t.Fatal("header does not re-encode identically")
		}
	})
}

// FuzzConsumerFile puts arbitrary bytes into the spool as a segment file:
// the consumer must quarantine it or deliver it, never crash, and never
// deliver anything the checks would reject.
func FuzzConsumerFile(f *testing.F) {
	f.Add(validImage(f, 1, 0, 2))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		o := testOpts(t, false)
		o.Logf = func(string, ...any) {}
		// A corrupt file is quarantined on the consumer's first look; the drain then waits two
		// poll intervals to see nothing more. At the default 100 ms that was 200 ms an input,
		// and the fuzzer made about 10 executions a second.
		o.PollInterval = time.Millisecond
		os.MkdirAll(o.Dir, 0o755)
		os.WriteFile(filepath.Join(o.Dir, segName(1)), b, 0o644)
		c := mustConsumer(t, o)
		ids, seqs := drain(t, c)
		if len(seqs) > 0 {
			if _, _, err := parseSegment(b, nil); err != nil {
				t.Fatalf("delivered a segment the parser rejects: %v", err)
			}
			_ = ids
			return
		}
		if g := mustLedger(t, o.Dir); g.Quarantined.Segments != 1 {
			t.Fatalf("undelivered file not counted: %+v", g)
		}
	})
}

// craft wraps body in a header with correct checksums.
func craft(body []byte, records, containers uint32) []byte {
	b := make([]byte, headerSize, headerSize+len(body))
	putHeader(b, Meta{Seq: 7, BodyLen: int64(len(body)), Records: records, Containers: containers,
		BodyCRC: crc32.Checksum(body, castagnoli)})
	return append(b, body...)
}
