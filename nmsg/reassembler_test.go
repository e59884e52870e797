package nmsg

import (
	"bytes"
	"compress/zlib"
	"encoding/binary"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// fragDatagram builds one fragment datagram by hand, so tests can send
// what no correct writer would.
func fragDatagram(flags byte, id, cur, last uint32, data []byte, crc *uint32) []byte {
	var c uint32
	if crc != nil {
		c = *crc
	}
	d := appendHeader(nil, flags|flagFragment, 0)
	d = appendFragment(d, id, cur, last, data, crc != nil, c)
	putHeader(d, flags|flagFragment, len(d)-HeaderSize)
	return d
}

// oneContainerBody returns an Nmsg body holding one payload.
func oneContainerBody(t *testing.T, data []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	fw, _ := NewFileWriter(&buf, FileOptions{CRC: true})
	p := testPayload(0, data)
	if err := fw.Write(&p); err != nil {
		t.Fatal(err)
	}
	fw.Close()
	return buf.Bytes()[HeaderSize:]
}

func TestReassemblerAdversarial(t *testing.T) {
	t0 := time.Unix(1700000000, 0)
	body := oneContainerBody(t, bytes.Repeat([]byte("x"), 2000))
	a, b := body[:1000], body[1000:]
	crc := payloadCRC(body)

	t.Run("duplicate and out of order", func(t *testing.T) {
		r := NewReassembler(ReassemblerOptions{})
		for _, d := range [][]byte{fragDatagram(0, 5, 1, 1, b, &crc), fragDatagram(0, 5, 1, 1, b, &crc)} {
			if ps, _ := r.Feed("s", d, t0); ps != nil {
				t.Fatal("payloads from an incomplete message")
			}
		}
		ps, err := r.Feed("s", fragDatagram(0, 5, 0, 1, a, &crc), t0)
		if err != nil || len(ps) != 1 || ps[0].CRC != CRCValid {
			t.Fatalf("%v %v", err, ps)
		}
		if c := r.Counters(); c.FragmentsDuplicate != 1 || c.Reassembled != 1 {
			t.Errorf("counters %+v", c)
		}
	})
	t.Run("keyed by source", func(t *testing.T) {
		r := NewReassembler(ReassemblerOptions{})
		r.Feed("s1", fragDatagram(0, 5, 0, 1, a, &crc), t0)
		if ps, _ := r.Feed("s2", fragDatagram(0, 5, 1, 1, b, &crc), t0); ps != nil {
			t.Fatal("fragments from two sources combined")
		}
		if r.Pending() != 2 {
			t.Fatalf("pending %d", r.Pending())
		}
	})
	t.Run("bad crc", func(t *testing.T) {
		r := NewReassembler(ReassemblerOptions{})
		bad := crc + 1
		r.Feed("s", fragDatagram(0, 5, 0, 1, a, &bad), t0)
		if ps, err := r.Feed("s", fragDatagram(0, 5, 1, 1, b, &bad), t0); err == nil || ps != nil {
			t.Fatal("bad crc accepted")
		}
		if c := r.Counters(); c.FragmentsBadCRC != 1 || r.Pending() != 0 {
			t.Errorf("counters %+v", c)
		}
	})
	t.Run("inconsistent", func(t *testing.T) {
		r := NewReassembler(ReassemblerOptions{})
		r.Feed("s", fragDatagram(0, 5, 0, 1, a, &crc), t0)
		for _, d := range [][]byte{
			fragDatagram(0, 5, 1, 2, b, &crc),        // different last
			fragDatagram(flagZlib, 5, 1, 1, b, &crc), // different flags
			fragDatagram(0, 5, 1, 1, b, nil),         // crc dropped
			fragDatagram(0, 6, 3, 1, b, nil),         // current > last
			fragDatagram(0, 6, 0, maxFragments, b, nil),
		} {
			if _, err := r.Feed("s", d, t0); err == nil {
				t.Error("inconsistent fragment accepted")
			}
		}
		if c := r.Counters(); c.FragmentsInconsistent != 5 {
			t.Errorf("counters %+v", c)
		}
	})
	t.Run("expiry", func(t *testing.T) {
		r := NewReassembler(ReassemblerOptions{})
		r.Feed("s", fragDatagram(0, 5, 0, 1, a, &crc), t0)
		r.Feed("s", fragDatagram(0, 6, 0, 1, a, &crc), t0.Add(20*time.Second))
		if n := r.Expire(t0.Add(31 * time.Second)); n != 1 || r.Pending() != 1 {
			t.Fatalf("expired %d, pending %d", n, r.Pending())
		}
		// The late fragment starts a new message instead of completing
		// the expired one.
		if ps, _ := r.Feed("s", fragDatagram(0, 5, 1, 1, b, &crc), t0.Add(32*time.Second)); ps != nil {
			t.Fatal("expired message completed")
		}
		if c := r.Counters(); c.ExpiredMessages != 1 {
			t.Errorf("counters %+v", c)
		}
	})
	t.Run("oversize", func(t *testing.T) {
		r := NewReassembler(ReassemblerOptions{MaxSize: 1500})
		r.Feed("s", fragDatagram(0, 5, 0, 1, a, &crc), t0)
		if _, err := r.Feed("s", fragDatagram(0, 5, 1, 1, b, &crc), t0); !errors.Is(err, ErrOversize) {
			t.Fatalf("err %v", err)
		}
		if c := r.Counters(); c.Oversize != 1 || r.Pending() != 0 {
			t.Errorf("counters %+v pending %d", c, r.Pending())
		}
	})
	t.Run("memory limits", func(t *testing.T) {
		r := NewReassembler(ReassemblerOptions{MaxPending: 4, MaxPendingBytes: 10000})
		for i := range uint32(100) {
			r.Feed("s", fragDatagram(0, i, 0, 1, a, &crc), t0.Add(time.Duration(i)*time.Millisecond))
			if r.Pending() > 4 || r.pending > 10000 {
				t.Fatalf("pending %d messages, %d octets", r.Pending(), r.pending)
			}
		}
		r2 := NewReassembler(ReassemblerOptions{MaxPendingBytes: 2500})
		for i := range uint32(100) {
			r2.Feed("s", fragDatagram(0, i, 0, 1, a, &crc), t0)
			if r2.pending > 2500 {
				t.Fatalf("pending %d octets", r2.pending)
			}
		}
		if r.Counters().EvictedMessages == 0 || r2.Counters().EvictedMessages == 0 {
			t.Error("nothing evicted")
		}
	})
	t.Run("datagram framing", func(t *testing.T) {
		r := NewReassembler(ReassemblerOptions{})
		good := appendHeader(nil, 0, len(body))
		good = append(good, body...)
		if ps, err := r.Feed("s", good, t0); err != nil || len(ps) != 1 {
			t.Fatal(err)
		}
		v1 := bytes.Clone(good)
		v1[5] = 1
		for _, tc := range []struct {
			d    []byte
			want error
		}{
			{v1, ErrBadVersion},
			{good[:5], ErrTruncated},
			{good[:len(good)-1], ErrTruncated},
			{append(bytes.Clone(good), 0), nil},
			{[]byte("NMSX\x00\x02\x00\x00\x00\x00"), ErrBadMagic},
		} {
			if _, err := r.Feed("s", tc.d, t0); err == nil || (tc.want != nil && !errors.Is(err, tc.want)) {
				t.Errorf("% x: err %v, want %v", tc.d[:min(len(tc.d), 10)], err, tc.want)
			}
		}
		c := r.Counters()
		if c.BadVersion != 1 || c.Truncated != 2 || c.BadLength != 1 || c.BadMagic != 1 {
			t.Errorf("counters %+v", c)
		}
	})
}

// TestZlibBomb checks that a compressed container cannot make the reader
// allocate or inflate beyond its cap, whatever length it announces.
func TestZlibBomb(t *testing.T) {
	var z bytes.Buffer
	zw := zlib.NewWriter(&z)
	zw.Write(make([]byte, 4<<20))
	zw.Close()
	for _, announced := range []uint32{4 << 20, 1000, 0xffffffff} {
		body := binary.BigEndian.AppendUint32(nil, announced)
		body = append(body, z.Bytes()...)
		d := appendHeader(nil, flagZlib, len(body))
		d = append(d, body...)
		r := NewReassembler(ReassemblerOptions{})
		if _, err := r.Feed("s", d, time.Time{}); err == nil {
			t.Errorf("announced %d: accepted", announced)
		}
		if cap(r.d.inflated) > MaxContainerSize {
			t.Errorf("announced %d: inflate buffer grew to %d", announced, cap(r.d.inflated))
		}
		c := r.Counters()
		if c.Oversize+c.BadZlib != 1 {
			t.Errorf("counters %+v", c)
		}
		// Streams take the same path.
		rd := NewReader(bytes.NewReader(d), ReaderOptions{})
		if _, err := rd.Next(); err == nil || errors.Is(err, io.EOF) {
			t.Errorf("stream: %v", err)
		}
	}
}

// TestReaderFragmentsInStream: a stream of fragment containers (what you
// get by saving captured datagrams to a file) still decodes.
func TestReaderFragmentsInStream(t *testing.T) {
	dir := corpusDir(t)
	b, err := os.ReadFile(filepath.Join(dir, "reference", "c-sock-fragments-mtu1280-zlib.bin"))
	if err != nil {
		t.Fatal(err)
	}
	ps, rd := readAll(t, b)
	if len(ps) != 3 || rd.Counters().Reassembled != 1 {
		t.Fatalf("%d payloads, counters %+v", len(ps), rd.Counters())
	}
}
