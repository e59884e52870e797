package nmsg

import (
	"bytes"
	stdzlib "compress/zlib"
	"encoding/binary"
	"errors"
	"io"
	"math"
	"math/rand/v2"
	"strconv"
	"testing"
	"time"

	gonmsg "github.com/farsightsec/go-nmsg"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/proto"
)

// detRand is a deterministic io.Reader standing in for crypto/rand.
type detRand struct{ r *rand.ChaCha8 }

func newDetRand(seed byte) io.Reader { return detRand{rand.NewChaCha8([32]byte{seed})} }

func (d detRand) Read(p []byte) (int, error) { return d.r.Read(p) }

func testPayload(i int, data []byte) Payload {
	return Payload{
		Vid: 1, Msgtype: 9,
		TimeSec: 1700000000 + int64(i), TimeNsec: uint32(i) * 1000,
		Data:      data,
		Source:    0x19721976,
		HasSource: true,
	}
}

func randomData(r *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// compressibleData looks like DNS traffic to zlib: repetitive with some
// noise.
func compressibleData(r *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		if r.IntN(8) == 0 {
			b[i] = byte(r.Uint32())
		} else {
			b[i] = "example.com.\x00\x01\x00\x01"[i%16]
		}
	}
	return b
}

type capture struct {
	dgrams [][]byte
}

func (c *capture) send(b []byte) error {
	c.dgrams = append(c.dgrams, bytes.Clone(b))
	return nil
}

// checkDatagrams checks the limits every datagram must respect and
// returns the number of fragment datagrams.
func checkDatagrams(t *testing.T, dgrams [][]byte, mtu int) int {
	t.Helper()
	frags := 0
	for i, d := range dgrams {
		if len(d) > mtu {
			t.Errorf("datagram %d: %d octets exceeds MTU %d", i, len(d), mtu)
		}
		h, err := parseHeader(d)
		if err != nil {
			t.Fatalf("datagram %d: %v", i, err)
		}
		if int(h.length) != len(d)-HeaderSize {
			t.Errorf("datagram %d: length %d, carries %d", i, h.length, len(d)-HeaderSize)
		}
		if h.flags&flagFragment == 0 {
			continue
		}
		frags++
		var fr fragment
		if err := parseFragment(d[HeaderSize:], &fr); err != nil {
			t.Fatalf("datagram %d: %v", i, err)
		}
		if len(fr.data) == 0 {
			t.Errorf("datagram %d: empty fragment %d/%d", i, fr.current, fr.last)
		}
	}
	return frags
}

func TestDatagramRoundTrip(t *testing.T) {
	for _, mtu := range []int{1280, 512, 8192, MinMTU} {
		for _, z := range []bool{false, true} {
			for _, crc := range []bool{false, true} {
				name := "mtu" + strconv.Itoa(mtu)
				if z {
					name += "-zlib"
				}
				if crc {
					name += "-crc"
				}
				t.Run(name, func(t *testing.T) { testDatagramRoundTrip(t, mtu, z, crc) })
			}
		}
	}
}

func testDatagramRoundTrip(t *testing.T, mtu int, z, crc bool) {
	r := rand.New(rand.NewPCG(uint64(mtu), 1))
	var want []Payload
	for i, n := range []int{0, 1, 50, 300, 1200, 3000, 9000, 40000, 100, 2} {
		var d []byte
		if i%2 == 0 {
			d = compressibleData(r, n)
		} else {
			d = randomData(r, n)
		}
		want = append(want, testPayload(i, d))
	}
	want = append(want, Payload{Vid: 2, Msgtype: 1, TimeSec: -5}) // absent data, negative time
	var c capture
	dw, err := NewDatagramWriter(c.send, DatagramOptions{MTU: mtu, Zlib: z, CRC: crc, Rand: newDetRand(1)})
	if err != nil {
		t.Fatal(err)
	}
	for i := range want {
		if err := dw.Write(&want[i]); err != nil {
			t.Fatal(err)
		}
	}
	if err := dw.Flush(); err != nil {
		t.Fatal(err)
	}
	frags := checkDatagrams(t, c.dgrams, mtu)
	if frags == 0 {
		t.Error("no fragments: the test does not exercise fragmentation")
	}
	st := dw.Stats()
	if st.Payloads != uint64(len(want)) || st.Datagrams != uint64(len(c.dgrams)) || st.Fragments != uint64(frags) {
		t.Errorf("stats %+v, %d datagrams, %d fragments", st, len(c.dgrams), frags)
	}
	if z && st.Compressed == 0 {
		t.Error("zlib on but nothing compressed")
	}

	// Deliver in reverse order within each fragmented message by
	// reversing the whole list: containers then arrive out of order too,
	// which receivers must tolerate.
	rs := NewReassembler(ReassemblerOptions{})
	var got []Payload
	now := time.Unix(1700000000, 0)
	for i := len(c.dgrams) - 1; i >= 0; i-- {
		ps, err := rs.Feed("198.51.100.7:5353", c.dgrams[i], now)
		if err != nil {
			t.Fatalf("datagram %d: %v", i, err)
		}
		for j := range ps {
			got = append(got, clonePayload(&ps[j]))
		}
	}
	if rs.Pending() != 0 {
		t.Errorf("%d messages incomplete", rs.Pending())
	}
	// Reversal reverses container order; restore it by sorting on the
	// unique TimeSec.
	sortByTime(got)
	sortByTime(want)
	wantStatus := CRCAbsent
	if crc {
		wantStatus = CRCValid
	}
	for i := range want {
		want[i].CRC = wantStatus
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("payloads differ (-want +got):\n%s", diff)
	}
	if cn := rs.Counters(); cn.Containers != st.Containers {
		t.Errorf("decoded %d containers, wrote %d", cn.Containers, st.Containers)
	}
	checkSequences(t, c.dgrams, st.Containers)
}

func sortByTime(ps []Payload) {
	for i := 1; i < len(ps); i++ {
		for j := i; j > 0 && ps[j].TimeSec < ps[j-1].TimeSec; j-- {
			ps[j], ps[j-1] = ps[j-1], ps[j]
		}
	}
}

// checkSequences reassembles in order and checks sequence numbers run
// 0, 1, 2… under one sequence_id.
func checkSequences(t *testing.T, dgrams [][]byte, n uint64) {
	t.Helper()
	rs := NewReassembler(ReassemblerOptions{})
	var seqs []uint32
	var ids []uint64
	for _, d := range dgrams {
		if _, err := rs.Feed("x", d, time.Time{}); err != nil {
			t.Fatal(err)
		}
		// The decoder keeps the last container it parsed.
		h, _ := parseHeader(d)
		if h.flags&flagFragment == 0 || rs.Pending() == 0 {
			seqs = append(seqs, rs.d.c.sequence)
			ids = append(ids, rs.d.c.seqID)
		}
	}
	if uint64(len(seqs)) != n {
		t.Fatalf("%d containers, want %d", len(seqs), n)
	}
	for i := range seqs {
		if seqs[i] != uint32(i) || ids[i] != ids[0] {
			t.Fatalf("container %d: sequence %d id %#x, first id %#x", i, seqs[i], ids[i], ids[0])
		}
	}
}

// TestDatagramExactMultiple writes single payloads whose (possibly
// compressed) body is an exact multiple of the fragment size, the case
// the C writer gets wrong by never sending the last fragment.
func TestDatagramExactMultiple(t *testing.T) {
	for _, mtu := range []int{1280, 512} {
		for _, z := range []bool{false, true} {
			name := "mtu" + strconv.Itoa(mtu)
			if z {
				name += "-zlib"
			}
			t.Run(name, func(t *testing.T) {
				fragsz := mtu - HeaderSize - fragOverhead
				r := rand.New(rand.NewPCG(7, uint64(mtu)))
				limit := 2*fragsz + 40000
				base := randomData(r, limit)
				if z {
					// A compressible head on random data makes the
					// zlib body grow one octet per octet of payload,
					// so an exact multiple turns up within fragsz
					// tries.
					clear(base[:400])
				}
				var c capture
				dw, err := NewDatagramWriter(c.send, DatagramOptions{MTU: mtu, Zlib: z, CRC: true, Rand: newDetRand(2)})
				if err != nil {
					t.Fatal(err)
				}
				found := false
				for n := 2 * fragsz; n < limit && !found; n++ {
					p := testPayload(1, base[:n])
					c.dgrams = c.dgrams[:0]
					if err := dw.Write(&p); err != nil {
						t.Fatal(err)
					}
					dw.Flush()
					var fr fragment
					last := c.dgrams[len(c.dgrams)-1]
					if last[4]&flagFragment == 0 {
						continue
					}
					if err := parseFragment(last[HeaderSize:], &fr); err != nil {
						t.Fatal(err)
					}
					if len(fr.data) != fragsz || (z && last[4]&flagZlib == 0) {
						continue
					}
					found = true
					checkDatagrams(t, c.dgrams, mtu)
					if int(fr.last)+1 != len(c.dgrams) || len(c.dgrams) < 2 {
						t.Fatalf("%d datagrams, last = %d", len(c.dgrams), fr.last)
					}
					rs := NewReassembler(ReassemblerOptions{})
					var got []Payload
					for _, d := range c.dgrams {
						ps, err := rs.Feed("s", d, time.Time{})
						if err != nil {
							t.Fatal(err)
						}
						got = append(got, ps...)
					}
					p.CRC = CRCValid
					if diff := cmp.Diff([]Payload{p}, got); diff != "" {
						t.Fatalf("(-want +got):\n%s", diff)
					}
				}
				if !found {
					t.Fatal("no payload size gave an exact multiple of the fragment size")
				}
			})
		}
	}
}

func TestAppendPayloadMatchesProto(t *testing.T) {
	u := proto.Uint32
	cases := []Payload{
		{},
		{Vid: 1, Msgtype: 9, TimeSec: 1700000000, TimeNsec: 123456789, Data: []byte("abc")},
		{Vid: 1, Msgtype: 9, TimeSec: -1, TimeNsec: math.MaxUint32, Data: []byte{}},
		{Vid: math.MaxUint32, Msgtype: math.MaxUint32, TimeSec: math.MinInt64, Data: bytes.Repeat([]byte{0xff}, 300),
			Source: 0x19721976, HasSource: true, Operator: 0, HasOperator: true, Group: math.MaxUint32, HasGroup: true},
		{Vid: 2, Msgtype: 3, TimeSec: math.MaxInt64, Group: 7, HasGroup: true},
	}
	for i, p := range cases {
		m := &gonmsg.NmsgPayload{
			Vid: u(p.Vid), Msgtype: u(p.Msgtype), TimeSec: proto.Int64(p.TimeSec), TimeNsec: u(p.TimeNsec),
			Payload: p.Data,
		}
		if p.HasSource {
			m.Source = u(p.Source)
		}
		if p.HasOperator {
			m.Operator = u(p.Operator)
		}
		if p.HasGroup {
			m.Group = u(p.Group)
		}
		want, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		got := AppendPayload([]byte("prefix"), &p)
		if !bytes.Equal(got[6:], want) || string(got[:6]) != "prefix" {
			t.Errorf("case %d: got % x\nwant % x", i, got[6:], want)
		}
		if PayloadSize(&p) != len(want) {
			t.Errorf("case %d: PayloadSize %d, encoded %d", i, PayloadSize(&p), len(want))
		}
		var back Payload
		if err := ParsePayload(want, &back); err != nil {
			t.Fatalf("case %d: %v", i, err)
		}
		if diff := cmp.Diff(p, back); diff != "" {
			t.Errorf("case %d: parse (-want +got):\n%s", i, diff)
		}
	}
	buf := make([]byte, 0, 1024)
	if n := testing.AllocsPerRun(100, func() { buf = AppendPayload(buf[:0], &cases[3]) }); n != 0 {
		t.Errorf("AppendPayload allocates %v times", n)
	}
}

// TestContainerMatchesProto decodes a FileWriter container with the
// generated go-nmsg types, an independent protobuf implementation.
func TestContainerMatchesProto(t *testing.T) {
	var buf bytes.Buffer
	fw, _ := NewFileWriter(&buf, FileOptions{CRC: true})
	var ps []Payload
	for i := range 5 {
		ps = append(ps, testPayload(i, bytes.Repeat([]byte{byte(i)}, i*100)))
		fw.Write(&ps[i])
	}
	fw.Close()
	var m gonmsg.Nmsg
	if err := proto.Unmarshal(buf.Bytes()[HeaderSize:], &m); err != nil {
		t.Fatal(err)
	}
	if len(m.Payloads) != 5 || len(m.PayloadCrcs) != 5 || m.Sequence != nil {
		t.Fatalf("%d payloads, %d crcs, sequence %v", len(m.Payloads), len(m.PayloadCrcs), m.Sequence)
	}
	for i, p := range m.Payloads {
		if !bytes.Equal(p.Payload, ps[i].Data) || p.GetTimeSec() != ps[i].TimeSec || p.GetSource() != ps[i].Source {
			t.Errorf("payload %d differs", i)
		}
		if m.PayloadCrcs[i] != payloadCRC(ps[i].Data) {
			t.Errorf("crc %d differs", i)
		}
	}
	// Re-marshalling with the generated code gives the same body:
	// protobuf-go, like protobuf-c, writes proto2 repeated scalars
	// unpacked and fields in number order.
	again, _ := proto.MarshalOptions{Deterministic: true}.Marshal(&m)
	if !bytes.Equal(again, buf.Bytes()[HeaderSize:]) {
		t.Error("protobuf-go re-encoding differs")
	}
}

func TestFileWriterLimits(t *testing.T) {
	for _, z := range []bool{false, true} {
		var buf bytes.Buffer
		const max = 4096
		fw, err := NewFileWriter(&buf, FileOptions{MaxSize: max, Zlib: z, CRC: true})
		if err != nil {
			t.Fatal(err)
		}
		r := rand.New(rand.NewPCG(3, 3))
		var want []Payload
		for i := range 200 {
			p := testPayload(i, randomData(r, r.IntN(600)))
			if err := fw.Write(&p); err != nil {
				t.Fatal(err)
			}
			want = append(want, p)
		}
		big := testPayload(0, make([]byte, max))
		if err := fw.Write(&big); !errors.Is(err, ErrTooLarge) {
			t.Fatalf("oversize payload: %v", err)
		}
		if err := fw.Close(); err != nil {
			t.Fatal(err)
		}
		if err := fw.Write(&want[0]); !errors.Is(err, ErrClosed) {
			t.Errorf("write after close: %v", err)
		}
		// Walk the containers: none above MaxSize.
		b := buf.Bytes()
		n := 0
		for len(b) > 0 {
			l := HeaderSize + int(binary.BigEndian.Uint32(b[6:]))
			if l > max {
				t.Errorf("container of %d octets", l)
			}
			b = b[l:]
			n++
		}
		if st := fw.Stats(); st.Containers != uint64(n) || n < 10 || st.Bytes != uint64(buf.Len()) {
			t.Errorf("%d containers, stats %+v", n, st)
		}
		got, _ := readAll(t, buf.Bytes())
		for i := range want {
			want[i].CRC = CRCValid
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Fatalf("zlib %v: (-want +got):\n%s", z, diff)
		}
	}
	if _, err := NewFileWriter(io.Discard, FileOptions{MaxSize: MaxContainerSize + 1}); err == nil {
		t.Error("MaxSize above the readers' cap accepted")
	}
	if _, err := NewDatagramWriter(func([]byte) error { return nil }, DatagramOptions{MTU: 100}); err == nil {
		t.Error("MTU 100 accepted")
	}
}

func TestWriterAllocs(t *testing.T) {
	for _, z := range []bool{false, true} {
		fw, _ := NewFileWriter(io.Discard, FileOptions{Zlib: z, CRC: true, MaxSize: 64 << 10})
		p := testPayload(1, compressibleData(rand.New(rand.NewPCG(1, 1)), 400))
		// Warm up through several containers so buffers reach their
		// steady-state size, then measure across container boundaries.
		for range 1000 {
			fw.Write(&p)
		}
		if n := testing.AllocsPerRun(1000, func() { fw.Write(&p) }); n != 0 {
			t.Errorf("FileWriter.Write (zlib %v): %v allocations per payload", z, n)
		}
	}
	for _, z := range []bool{false, true} {
		dw, _ := NewDatagramWriter(func([]byte) error { return nil }, DatagramOptions{CRC: true, Zlib: z, Rand: newDetRand(3)})
		p := testPayload(1, randomData(rand.New(rand.NewPCG(2, 2)), 3000)) // always fragmented
		for range 10 {
			dw.Write(&p)
		}
		// Every Write here compresses, borrowing the deflate state.
		if z && raceEnabled {
			continue
		}
		if n := testing.AllocsPerRun(100, func() { dw.Write(&p) }); n != 0 {
			t.Errorf("DatagramWriter.Write (zlib %v): %v allocations per payload", z, n)
		}
	}
}

// TestFileSequence: with a SequenceID, every container carries it and a sequence counting from 0,
// the reader still returns every payload, and containers stay within MaxSize.
func TestFileSequence(t *testing.T) {
	for _, zlib := range []bool{false, true} {
		var buf bytes.Buffer
		fw, err := NewFileWriter(&buf, FileOptions{CRC: true, Zlib: zlib, MaxSize: 4096, SequenceID: 0xfeedface12345678})
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 100; i++ {
			if err := fw.Write(&Payload{Vid: 1, Msgtype: 9, TimeSec: int64(i), Data: bytes.Repeat([]byte{byte(i)}, 300)}); err != nil {
				t.Fatal(err)
			}
		}
		fw.Close()
		b := buf.Bytes()
		var want uint32
		for len(b) > 0 {
			n := HeaderSize + int(binary.BigEndian.Uint32(b[6:10]))
			if n > 4096 {
				t.Errorf("container of %d octets over MaxSize", n)
			}
			id, seq, ok := ContainerSequence(b[:n])
			if !ok || id != 0xfeedface12345678 || seq != want {
				t.Fatalf("zlib=%v container %d: id %x seq %d ok %v", zlib, want, id, seq, ok)
			}
			want++
			b = b[n:]
		}
		rd := NewReader(bytes.NewReader(buf.Bytes()), ReaderOptions{})
		n := 0
		for {
			if _, err := rd.Next(); err != nil {
				break
			}
			n++
		}
		if n != 100 || want < 2 {
			t.Errorf("zlib=%v: %d payloads read from %d containers", zlib, n, want)
		}
	}
	if _, _, ok := ContainerSequence([]byte("NMSG\x00\x02\x00\x00\x00\x00")); ok {
		t.Error("empty container reported a sequence")
	}
}

// TestContainerSequenceNoAllocs: the collector reads a container's sequence for each publish
// to the stream and each archived container. Reading it must not collect the container's
// payloads: a 64 KiB container of 250 payloads cost nine slice growths per call, about a tenth
// of the collector's CPU on the JetStream path (BenchmarkSensorsToArchive).
func TestContainerSequenceNoAllocs(t *testing.T) {
	var buf bytes.Buffer
	fw, err := NewFileWriter(&buf, FileOptions{CRC: true, MaxSize: 64 << 10, SequenceID: 7})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 250; i++ {
		if err := fw.Write(&Payload{Vid: 1, Msgtype: 9, Data: make([]byte, 200)}); err != nil {
			t.Fatal(err)
		}
	}
	fw.Close()
	c := buf.Bytes()
	c = c[:HeaderSize+int(binary.BigEndian.Uint32(c[6:10]))]
	if id, seq, ok := ContainerSequence(c); !ok || id != 7 || seq != 0 {
		t.Fatalf("ContainerSequence: %d %d %v", id, seq, ok)
	}
	if n := testing.AllocsPerRun(10, func() { ContainerSequence(c) }); n != 0 {
		t.Errorf("ContainerSequence allocates %v times per call, want 0", n)
	}
	// A zlib container (sensord -z) is inflated to reach its sequence: with a decoder of its
	// own per call that was 66 allocations and 107 KB (the inflater's state and the body).
	buf.Reset()
	fw, err = NewFileWriter(&buf, FileOptions{Zlib: true, MaxSize: 64 << 10, SequenceID: 8})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 250; i++ {
		if err := fw.Write(&Payload{Vid: 1, Msgtype: 9, Data: bytes.Repeat([]byte{byte(i)}, 200)}); err != nil {
			t.Fatal(err)
		}
	}
	fw.Close()
	z := buf.Bytes()
	z = z[:HeaderSize+int(binary.BigEndian.Uint32(z[6:10]))]
	if z[4]&flagZlib == 0 {
		t.Fatal("container not compressed")
	}
	if id, seq, ok := ContainerSequence(z); !ok || id != 8 || seq != 0 {
		t.Fatalf("ContainerSequence of a zlib container: %d %d %v", id, seq, ok)
	}
	if n := testing.AllocsPerRun(10, func() { ContainerSequence(z) }); n > 0 && !raceEnabled {
		t.Errorf("ContainerSequence of a zlib container allocates %v times per call, want 0", n)
	}
}

// TestReassemblerSequence: the sequence fields of the container Feed last decoded, so that a
// receiver that validates a container does not inflate it a second time to read them.
func TestReassemblerSequence(t *testing.T) {
	for _, z := range []bool{false, true} {
		var buf bytes.Buffer
		fw, err := NewFileWriter(&buf, FileOptions{Zlib: z, MaxSize: 4 << 10, SequenceID: 9})
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 100; i++ {
			if err := fw.Write(&Payload{Vid: 1, Msgtype: 9, Data: bytes.Repeat([]byte{byte(i)}, 100)}); err != nil {
				t.Fatal(err)
			}
		}
		fw.Close()
		r := NewReassembler(ReassemblerOptions{})
		b := buf.Bytes()
		for want := uint32(0); len(b) > 0; want++ {
			n := HeaderSize + int(binary.BigEndian.Uint32(b[6:10]))
			if _, err := r.Feed("", b[:n], time.Time{}); err != nil {
				t.Fatal(err)
			}
			if id, seq, ok := r.Sequence(); !ok || id != 9 || seq != want {
				t.Fatalf("zlib %v: Sequence %d %d %v, want 9 %d", z, id, seq, ok, want)
			}
			b = b[n:]
		}
		var plain bytes.Buffer
		fw, _ = NewFileWriter(&plain, FileOptions{Zlib: z})
		fw.Write(&Payload{Vid: 1, Msgtype: 9, Data: []byte("x")})
		fw.Close()
		if _, err := r.Feed("", plain.Bytes(), time.Time{}); err != nil {
			t.Fatal(err)
		}
		if _, _, ok := r.Sequence(); ok {
			t.Errorf("zlib %v: a container without sequence fields reports one", z)
		}
		if _, err := r.Feed("", []byte("NMSG\x00\x02\x00\x00\x00\x01\xff"), time.Time{}); err == nil {
			t.Fatal("a malformed container was accepted")
		}
		if _, _, ok := r.Sequence(); ok {
			t.Errorf("zlib %v: a container that failed reports a sequence", z)
		}
	}
}

// TestZlibStdlibInflates checks the zlib bodies the writers produce with
// the standard library's inflater, an implementation independent of the
// one that wrote them: each body is BE32 uncompressed length + one zlib
// stream that inflates to exactly the container the writer would have
// sent uncompressed, and that generated protobuf code parses.
func TestZlibStdlibInflates(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 7))
	var ps []Payload
	for i := range 500 {
		ps = append(ps, testPayload(i, compressibleData(r, 50+r.IntN(1500))))
	}
	containers := func(z bool) [][]byte {
		var buf bytes.Buffer
		fw, err := NewFileWriter(&buf, FileOptions{Zlib: z, CRC: true, MaxSize: 8 << 10})
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
		return splitDatagrams(t, buf.Bytes())
	}
	plain, zipped := containers(false), containers(true)
	if len(plain) != len(zipped) || len(plain) < 10 {
		t.Fatalf("%d plain containers, %d compressed", len(plain), len(zipped))
	}
	n := 0
	for i, c := range zipped {
		if c[4] != flagZlib {
			t.Fatalf("container %d: flags %#x", i, c[4])
		}
		body := c[HeaderSize:]
		zr, err := stdzlib.NewReader(bytes.NewReader(body[4:]))
		if err != nil {
			t.Fatalf("container %d: %v", i, err)
		}
		got, err := io.ReadAll(zr) // verifies the Adler-32 trailer at EOF
		if err != nil {
			t.Fatalf("container %d: %v", i, err)
		}
		if ulen := binary.BigEndian.Uint32(body); int(ulen) != len(got) {
			t.Errorf("container %d: announces %d octets, inflates to %d", i, ulen, len(got))
		}
		if !bytes.Equal(got, plain[i][HeaderSize:]) {
			t.Fatalf("container %d: inflated body differs from the uncompressed container", i)
		}
		var m gonmsg.Nmsg
		if err := proto.Unmarshal(got, &m); err != nil {
			t.Fatalf("container %d: %v", i, err)
		}
		n += len(m.Payloads)
	}
	if n != len(ps) {
		t.Errorf("%d payloads, want %d", n, len(ps))
	}

	// Datagrams: small containers, compressed one by one.
	dgrams := func(z bool) [][]byte {
		var c capture
		dw, err := NewDatagramWriter(c.send, DatagramOptions{MTU: 8192, Zlib: z, CRC: true, Rand: newDetRand(5)})
		if err != nil {
			t.Fatal(err)
		}
		for i := range 50 {
			if err := dw.Write(&ps[i]); err != nil {
				t.Fatal(err)
			}
		}
		if err := dw.Flush(); err != nil {
			t.Fatal(err)
		}
		return c.dgrams
	}
	plain, zipped = dgrams(false), dgrams(true)
	if len(plain) != len(zipped) || len(plain) < 3 {
		t.Fatalf("%d plain datagrams, %d compressed", len(plain), len(zipped))
	}
	for i, d := range zipped {
		if d[4] != flagZlib {
			t.Fatalf("datagram %d: flags %#x", i, d[4])
		}
		zr, err := stdzlib.NewReader(bytes.NewReader(d[HeaderSize+4:]))
		if err != nil {
			t.Fatalf("datagram %d: %v", i, err)
		}
		got, err := io.ReadAll(zr)
		if err != nil || !bytes.Equal(got, plain[i][HeaderSize:]) {
			t.Fatalf("datagram %d: inflated body differs from the uncompressed datagram (%v)", i, err)
		}
	}
}

// TestReaderInflatesStdlib reads containers compressed by the standard
// library at every kind of level (stored, Huffman only, fast, best), as
// other writers (go-nmsg, the collector) produce them.
func TestReaderInflatesStdlib(t *testing.T) {
	r := rand.New(rand.NewPCG(8, 8))
	var body []byte
	var want []Payload
	for i := range 60 {
		p := testPayload(i, compressibleData(r, 10+r.IntN(1500)))
		p.CRC = CRCValid
		want = append(want, p)
		body = append(body, tag(1, wtBytes))
		body = binary.AppendUvarint(body, uint64(PayloadSize(&p)))
		body = AppendPayload(body, &p)
	}
	for i := range want {
		body = append(body, tag(2, wtVarint))
		body = binary.AppendUvarint(body, uint64(payloadCRC(want[i].Data)))
	}
	for _, level := range []int{stdzlib.HuffmanOnly, stdzlib.NoCompression, stdzlib.BestSpeed, stdzlib.DefaultCompression, stdzlib.BestCompression} {
		var z bytes.Buffer
		z.Write(binary.BigEndian.AppendUint32(nil, uint32(len(body))))
		zw, _ := stdzlib.NewWriterLevel(&z, level)
		zw.Write(body)
		zw.Close()
		c := appendHeader(nil, flagZlib, z.Len())
		c = append(c, z.Bytes()...)
		got, rd := readAll(t, append(c, c...))
		if len(got) != 2*len(want) {
			t.Fatalf("level %d: %d payloads, want %d", level, len(got), 2*len(want))
		}
		for i, g := range got {
			w := want[i%len(want)]
			if !bytes.Equal(g.Data, w.Data) || g.TimeSec != w.TimeSec || g.TimeNsec != w.TimeNsec || g.CRC != w.CRC {
				t.Fatalf("level %d: payload %d differs", level, i)
			}
		}
		if cnt := rd.Counters(); cnt.Containers != 2 || cnt.BadZlib != 0 {
			t.Errorf("level %d: counters %+v", level, cnt)
		}
	}
}

// TestReaderRejectsBadZlib: every way a zlib body can disagree with itself
// drops that container (counted as BadZlib) and the stream goes on.
func TestReaderRejectsBadZlib(t *testing.T) {
	p := testPayload(1, compressibleData(rand.New(rand.NewPCG(9, 9)), 2000))
	var buf bytes.Buffer
	fw, _ := NewFileWriter(&buf, FileOptions{Zlib: true})
	fw.Write(&p)
	fw.Close()
	good := buf.Bytes()
	if good[4] != flagZlib {
		t.Fatal("test container is not compressed")
	}
	body := func(c []byte) []byte { return c[HeaderSize:] }
	for _, tc := range []struct {
		name string
		bad  func(c []byte) []byte
	}{
		{"adler32", func(c []byte) []byte { c[len(c)-1] ^= 1; return c }},
		{"announces more", func(c []byte) []byte {
			binary.BigEndian.PutUint32(body(c), binary.BigEndian.Uint32(body(c))+1)
			return c
		}},
		{"announces less", func(c []byte) []byte {
			binary.BigEndian.PutUint32(body(c), binary.BigEndian.Uint32(body(c))-1)
			return c
		}},
		{"truncated stream", func(c []byte) []byte {
			c = c[:len(c)-6]
			putHeader(c, flagZlib, len(c)-HeaderSize)
			return c
		}},
		{"bad zlib header", func(c []byte) []byte { body(c)[4] = 0x77; return c }},
		{"no length", func(c []byte) []byte {
			c = c[:HeaderSize+3]
			putHeader(c, flagZlib, 3)
			return c
		}},
	} {
		stream := append(tc.bad(bytes.Clone(good)), good...)
		rd := NewReader(bytes.NewReader(stream), ReaderOptions{})
		if _, err := rd.Next(); !errors.Is(err, ErrBadZlib) {
			t.Errorf("%s: %v, want ErrBadZlib", tc.name, err)
		}
		if got, err := rd.Next(); err != nil || !bytes.Equal(got.Data, p.Data) {
			t.Errorf("%s: the next container: %v", tc.name, err)
		}
		if c := rd.Counters(); c.BadZlib != 1 || c.Containers != 1 {
			t.Errorf("%s: counters %+v", tc.name, c)
		}
	}
}
