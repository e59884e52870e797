package nmsg

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/sie-europe/dnssensor/internal/testenv"
)

// corpusDir is the shared conformance corpus (internal/testenv: skipped locally without it, a
// failure under CI=true).
func corpusDir(t testing.TB) string {
	t.Helper()
	return testenv.Conformance(t)
}

func readCorpus(t testing.TB, rel string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(corpusDir(t), filepath.FromSlash(rel)))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// splitDatagrams splits captured datagrams that were stored back to back,
// using each header's length.
func splitDatagrams(t testing.TB, b []byte) [][]byte {
	t.Helper()
	var out [][]byte
	for len(b) > 0 {
		if len(b) < HeaderSize {
			t.Fatalf("trailing %d octets", len(b))
		}
		n := HeaderSize + int(binary.BigEndian.Uint32(b[6:10]))
		if n > len(b) {
			t.Fatalf("datagram of %d octets, only %d left", n, len(b))
		}
		out = append(out, b[:n:n])
		b = b[n:]
	}
	return out
}

// readAll reads every payload of a stream, deep-copying them.
func readAll(t testing.TB, b []byte) ([]Payload, *Reader) {
	t.Helper()
	rd := NewReader(bytes.NewReader(b), ReaderOptions{})
	var out []Payload
	for {
		p, err := rd.Next()
		if err == io.EOF {
			return out, rd
		}
		if err != nil {
			t.Fatalf("after %d payloads: %v", len(out), err)
		}
		out = append(out, clonePayload(p))
	}
}

func clonePayload(p *Payload) Payload {
	c := *p
	if p.Data != nil {
		c.Data = bytes.Clone(p.Data)
	}
	return c
}

func TestCorpusRewriteByteIdentical(t *testing.T) {
	want := readCorpus(t, "nmsg/nmsg-dnsqr-tests/test1-dnsqr.nmsg")
	ps, rd := readAll(t, want)
	if len(ps) != 5 {
		t.Fatalf("got %d payloads, want 5", len(ps))
	}
	c := rd.Counters()
	if c.Containers != 1 || c.CRCValid != 5 || c.CRCInvalid != 0 {
		t.Fatalf("counters %+v", c)
	}
	for i, p := range ps {
		if p.Vid != 1 || p.Msgtype != 9 || !p.HasSource || p.Source != 0x19721976 {
			t.Errorf("payload %d: vid %d msgtype %d source %#x", i, p.Vid, p.Msgtype, p.Source)
		}
	}
	var buf bytes.Buffer
	fw, err := NewFileWriter(&buf, FileOptions{CRC: true})
	if err != nil {
		t.Fatal(err)
	}
	for i := range ps {
		if err := fw.Write(&ps[i]); err != nil {
			t.Fatal(err)
		}
	}
	if err := fw.Close(); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf.Bytes(), want) {
		t.Fatalf("rewrite differs: got %d octets, want %d\n%s", buf.Len(), len(want), firstDiff(buf.Bytes(), want))
	}
	st := fw.Stats()
	if st.Containers != 1 || st.Payloads != 5 || st.Bytes != uint64(len(want)) {
		t.Errorf("stats %+v", st)
	}
}

func firstDiff(a, b []byte) string {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			lo := max(0, i-8)
			return fmt.Sprintf("first difference at %d: got % x, want % x", i, a[lo:min(len(a), i+8)], b[lo:min(len(b), i+8)])
		}
	}
	return fmt.Sprintf("lengths %d and %d, one a prefix of the other", len(a), len(b))
}

func TestCorpusGeneric(t *testing.T) {
	for _, tc := range []struct {
		file string
		n    int
	}{
		{"nmsg/generic-tests/dnsqr.nmsg", 32},
		{"nmsg/generic-tests/dnsqr2.nmsg", 5},
		{"nmsg/nmsg-dnsqr-tests/test1-dnsqr.nmsg", 5},
	} {
		t.Run(filepath.Base(tc.file), func(t *testing.T) {
			ps, rd := readAll(t, readCorpus(t, tc.file))
			if len(ps) != tc.n {
				t.Fatalf("got %d payloads, want %d", len(ps), tc.n)
			}
			for i, p := range ps {
				if p.Vid != 1 || p.Msgtype != 9 {
					t.Errorf("payload %d: vid %d msgtype %d, want 1/9", i, p.Vid, p.Msgtype)
				}
				if len(p.Data) == 0 {
					t.Errorf("payload %d: no data", i)
				}
			}
			if c := rd.Counters(); c.Payloads != uint64(tc.n) || c.CRCInvalid != 0 {
				t.Errorf("counters %+v", c)
			}
		})
	}
}

func TestCorpusCRC(t *testing.T) {
	for _, tc := range []struct {
		file             string
		status           CRCStatus
		valid, invalid   uint64
		wantInvalidCount bool
	}{
		{"test_crc32c_absent.nmsg", CRCAbsent, 0, 0, false},
		{"test_crc32c_correct.nmsg", CRCValid, 1, 0, false},
		{"test_crc32c_incorrect.nmsg", CRCInvalid, 0, 1, true},
	} {
		t.Run(tc.file, func(t *testing.T) {
			ps, rd := readAll(t, readCorpus(t, "nmsg/payload-crc32c-tests/"+tc.file))
			if len(ps) == 0 {
				t.Fatal("no payloads")
			}
			for i, p := range ps {
				if p.CRC != tc.status {
					t.Errorf("payload %d: CRC %v, want %v", i, p.CRC, tc.status)
				}
			}
			c := rd.Counters()
			n := uint64(len(ps))
			if c.CRCValid != tc.valid*n || c.CRCInvalid != tc.invalid*n {
				t.Errorf("counters %+v", c)
			}
		})
	}
}

// TestCorpusCRCRewrite checks the CRC encoding, not just the check: the
// correct file re-encoded with CRCs on is byte-identical, and the absent
// one with CRCs off.
func TestCorpusCRCRewrite(t *testing.T) {
	for _, tc := range []struct {
		file string
		crc  bool
	}{
		{"test_crc32c_absent.nmsg", false},
		{"test_crc32c_correct.nmsg", true},
	} {
		t.Run(tc.file, func(t *testing.T) {
			want := readCorpus(t, "nmsg/payload-crc32c-tests/"+tc.file)
			ps, _ := readAll(t, want)
			var buf bytes.Buffer
			fw, err := NewFileWriter(&buf, FileOptions{CRC: tc.crc})
			if err != nil {
				t.Fatal(err)
			}
			for i := range ps {
				if err := fw.Write(&ps[i]); err != nil {
					t.Fatal(err)
				}
			}
			if err := fw.Close(); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(buf.Bytes(), want) {
				t.Fatalf("rewrite differs: %s", firstDiff(buf.Bytes(), want))
			}
		})
	}
}

func feedAll(t testing.TB, r *Reassembler, dgrams [][]byte, now time.Time) ([]Payload, []error) {
	t.Helper()
	var out []Payload
	var errs []error
	for _, d := range dgrams {
		ps, err := r.Feed("192.0.2.1:8430", d, now)
		if err != nil {
			errs = append(errs, err)
		}
		for i := range ps {
			out = append(out, clonePayload(&ps[i]))
		}
	}
	return out, errs
}

func TestCorpusDatagrams(t *testing.T) {
	t0 := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		file    string
		want    int
		expired uint64
	}{
		{"c-sock-fragments-mtu1280.bin", 3, 0},
		{"c-sock-fragments-mtu1280-zlib.bin", 3, 0},
		{"c-sock-fragments-exact-multiple-missing-last.bin", 2, 1},
		{"go-v0.2.0-fragments-empty-last.bin", 1, 0},
		{"go-v0.2.0-fragments-zlib.bin", 3, 0},
	} {
		t.Run(tc.file, func(t *testing.T) {
			dgrams := splitDatagrams(t, readCorpus(t, "reference/"+tc.file))
			r := NewReassembler(ReassemblerOptions{})
			ps, errs := feedAll(t, r, dgrams, t0)
			c := r.Counters()
			t.Logf("%d datagrams -> %d payloads, errors %v, pending %d, counters %+v", len(dgrams), len(ps), errs, r.Pending(), c)
			if len(ps) != tc.want {
				t.Fatalf("got %d payloads, want %d", len(ps), tc.want)
			}
			if len(errs) != 0 || c.FragmentsBadCRC != 0 || c.CRCValid != uint64(tc.want) {
				t.Errorf("errors %v, counters %+v", errs, c)
			}
			for i, p := range ps {
				if p.Vid != 1 || p.Msgtype != 9 || len(p.Data) == 0 {
					t.Errorf("payload %d: vid %d msgtype %d len %d", i, p.Vid, p.Msgtype, len(p.Data))
				}
				if p.CRC == CRCInvalid {
					t.Errorf("payload %d: bad CRC", i)
				}
			}
			if tc.expired == 0 && r.Pending() != 0 {
				t.Errorf("%d messages left incomplete", r.Pending())
			}
			// Just inside the timeout nothing expires; past it, the
			// incomplete message goes and is counted.
			r.Expire(t0.Add(defaultTimeout))
			if got := r.Counters().ExpiredMessages; got != 0 {
				t.Errorf("expired %d messages before the timeout", got)
			}
			if _, err := r.Feed("192.0.2.1:8430", []byte("junk"), t0.Add(defaultTimeout+time.Second)); err == nil {
				t.Error("junk accepted")
			}
			if got := r.Counters().ExpiredMessages; got != tc.expired {
				t.Errorf("expired %d messages, want %d", got, tc.expired)
			}
			if r.Pending() != 0 {
				t.Errorf("%d messages still pending after expiry", r.Pending())
			}
		})
	}
}

// TestCorpusDatagramsDetail pins facts about the C writer's datagrams
// that the DatagramWriter mirrors: the fragment crc covers the whole
// reassembled body and is repeated in every fragment, and containers
// carry sequence numbers.
func TestCorpusDatagramsDetail(t *testing.T) {
	dgrams := splitDatagrams(t, readCorpus(t, "reference/c-sock-fragments-mtu1280.bin"))
	var frags, crcs int
	var whole []byte
	var crc uint32
	for _, d := range dgrams {
		if len(d) > 1280 {
			t.Errorf("datagram of %d octets exceeds the MTU", len(d))
		}
		h, err := parseHeader(d)
		if err != nil {
			t.Fatal(err)
		}
		if h.flags&flagFragment == 0 {
			var c container
			if err := parseNmsg(d[HeaderSize:], &c); err != nil {
				t.Fatal(err)
			}
			if !c.hasSeq || !c.hasSeqID {
				t.Errorf("container without sequence fields")
			}
			continue
		}
		var fr fragment
		if err := parseFragment(d[HeaderSize:], &fr); err != nil {
			t.Fatal(err)
		}
		frags++
		if fr.hasCRC {
			crcs++
			if crcs > 1 && fr.crc != crc {
				t.Errorf("fragment crc %#x differs from earlier %#x", fr.crc, crc)
			}
			crc = fr.crc
		}
		whole = append(whole, fr.data...)
	}
	if got := payloadCRC(whole); crcs == 0 || got != crc {
		t.Errorf("fragment crc %#x, crc of the reassembled body %#x", crc, got)
	}
	t.Logf("%d datagrams, %d fragments, %d with crc", len(dgrams), frags, crcs)
	if frags == 0 {
		t.Fatal("expected fragments in this capture")
	}
}

func TestReaderErrors(t *testing.T) {
	var good bytes.Buffer
	fw, _ := NewFileWriter(&good, FileOptions{CRC: true})
	p := Payload{Vid: 1, Msgtype: 9, TimeSec: 1700000000, TimeNsec: 5, Data: []byte("hello")}
	fw.Write(&p)
	fw.Close()
	g := good.Bytes()

	check := func(name string, in []byte, wantErr error, wantPayloads int, count func(Counters) uint64) {
		t.Run(name, func(t *testing.T) {
			rd := NewReader(bytes.NewReader(in), ReaderOptions{})
			n := 0
			var err error
			for {
				var p *Payload
				p, err = rd.Next()
				if err != nil {
					break
				}
				_ = p
				n++
			}
			if !errors.Is(err, wantErr) {
				t.Errorf("err %v, want %v", err, wantErr)
			}
			if n != wantPayloads {
				t.Errorf("%d payloads, want %d", n, wantPayloads)
			}
			if count != nil && count(rd.Counters()) != 1 {
				t.Errorf("counter not incremented: %+v", rd.Counters())
			}
			// Sticky.
			if _, err2 := rd.Next(); !errors.Is(err2, wantErr) {
				t.Errorf("second Next: %v", err2)
			}
		})
	}
	check("empty", nil, io.EOF, 0, nil)
	check("good", g, io.EOF, 1, nil)
	check("truncated header", g[:5], ErrTruncated, 0, func(c Counters) uint64 { return c.Truncated })
	check("truncated body", g[:len(g)-1], io.ErrUnexpectedEOF, 0, func(c Counters) uint64 { return c.Truncated })
	check("second truncated", append(bytes.Clone(g), g[:12]...), ErrTruncated, 1, nil)
	bad := bytes.Clone(g)
	bad[0] = 'X'
	check("bad magic", bad, ErrBadMagic, 0, func(c Counters) uint64 { return c.BadMagic })
	bad = bytes.Clone(g)
	bad[5] = 1
	check("bad version", bad, ErrBadVersion, 0, func(c Counters) uint64 { return c.BadVersion })
	bad = bytes.Clone(g)
	binary.BigEndian.PutUint32(bad[6:], MaxContainerSize+1)
	check("oversize", bad, ErrOversize, 0, func(c Counters) uint64 { return c.Oversize })

	// A container whose protobuf is garbage is skipped, not fatal.
	junk := appendHeader(nil, 0, 3)
	junk = append(junk, 0x0a, 0x05, 0x00)
	stream := append(append(bytes.Clone(junk), g...), g...)
	rd := NewReader(bytes.NewReader(stream), ReaderOptions{})
	if _, err := rd.Next(); !errors.Is(err, ErrMalformed) {
		t.Fatalf("want ErrMalformed, got %v", err)
	}
	for i := 0; i < 2; i++ {
		if p, err := rd.Next(); err != nil || string(p.Data) != "hello" || p.CRC != CRCValid {
			t.Fatalf("after malformed container: %v %+v", err, p)
		}
	}
	if _, err := rd.Next(); err != io.EOF {
		t.Fatalf("want EOF, got %v", err)
	}
	if c := rd.Counters(); c.Malformed != 1 || c.Payloads != 2 {
		t.Errorf("counters %+v", c)
	}
}
