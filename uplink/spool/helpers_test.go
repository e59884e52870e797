package spool

import (
	"context"
	"errors"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/sie-europe/dnssensor/internal/testenv"
	"github.com/sie-europe/dnssensor/nmsg"
	"github.com/sie-europe/dnssensor/nmsg/dnsqr"
)

var (
	qpkt = make([]byte, 70)
	rpkt = make([]byte, 180)
)

// rec fills r as record number n; recID reads n back. Times advance 1 ms
// per record from a fixed base so that depth in seconds is checkable.
func rec(r *dnsqr.Record, n uint32) *dnsqr.Record {
	t := int64(1_700_000_000)*1e9 + int64(n)*1e6
	*r = dnsqr.Record{
		Type:    dnsqr.Type(1),
		QueryIP: netip.AddrFrom4([4]byte{192, 0, 2, 1}), ResponseIP: netip.AddrFrom4([4]byte{198, 51, 100, 7}),
		Proto: 17, QueryPort: 53000, ResponsePort: uint16(n >> 16), ID: uint16(n),
		QueryPackets: append(r.QueryPackets[:0], qpkt), QueryTimes: append(r.QueryTimes[:0], t),
		ResponsePackets: append(r.ResponsePackets[:0], rpkt), ResponseTimes: append(r.ResponseTimes[:0], t+5e6),
	}
	return r
}

// payload sets pl to r as the base:dnsqr payload that sensord's adapter (sensor/internal/output) makes; the
// spool takes any payload and these tests use records to check what comes out.
func payload(pl *nmsg.Payload, r *dnsqr.Record) *nmsg.Payload {
	dnsqr.Payload(pl, pl.Data, r)
	return pl
}

// write spools r.
func write(p *Producer, r *dnsqr.Record) error {
	var pl nmsg.Payload
	return p.WritePayload(payload(&pl, r))
}

func recID(r *dnsqr.Record) uint32 { return uint32(r.ResponsePort)<<16 | uint32(r.ID) }

func testOpts(t testing.TB, disk bool) Options {
	dir := t.TempDir()
	o := Options{
		Dir:         filepath.Join(dir, "ram"),
		SegmentSize: 16 << 10,
		SegmentAge:  time.Hour, // tests seal explicitly unless they test age
		SpillAge:    time.Hour,
		Logf:        t.Logf,
	}
	if disk {
		o.DiskDir = filepath.Join(dir, "disk")
	}
	return o
}

func mustProducer(t testing.TB, o Options) *Producer {
	t.Helper()
	p, err := OpenProducer(o)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func mustConsumer(t testing.TB, o Options) *Consumer {
	t.Helper()
	c, err := OpenConsumer(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func writeN(t testing.TB, p *Producer, from, n uint32) {
	t.Helper()
	var r dnsqr.Record
	for i := from; i < from+n; i++ {
		if err := write(p, rec(&r, i)); err != nil {
			t.Fatal(err)
		}
	}
}

// recordIDs decodes every record of a segment.
func recordIDs(t testing.TB, s *Segment) []uint32 {
	t.Helper()
	var ids []uint32
	rd := s.Reader()
	for {
		pl, err := rd.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("segment %d: %v", s.Seq, err)
		}
		if pl.CRC != nmsg.CRCValid {
			t.Fatalf("segment %d: payload CRC %v", s.Seq, pl.CRC)
		}
		r, err := dnsqr.Parse(pl.Data)
		if err != nil {
			t.Fatalf("segment %d: %v", s.Seq, err)
		}
		ids = append(ids, recID(r))
	}
	if len(ids) != int(s.Records) {
		t.Fatalf("segment %d: %d records, header says %d", s.Seq, len(ids), s.Records)
	}
	return ids
}

// drain takes and acks every segment the spool holds, returning the
// record ids and sequence numbers in delivery order.
func drain(t testing.TB, c *Consumer) (ids []uint32, seqs []uint64) {
	t.Helper()
	// It ends when the spool holds no segment any more (Depth reads the files), not after a quiet
	// spell: on a loaded machine a consumer's poll can take longer than any fixed gap (200 ms of
	// quiet, two poll intervals, made TestSpillAndBack fail at random). A segment that stays but
	// is never handed out ends the drain after testenv.Patience, and the caller's check fails.
	deadline := time.Now().Add(testenv.Patience)
	for {
		d, err := c.Depth()
		if err != nil {
			t.Fatal(err)
		}
		if d.Segments == 0 || time.Now().After(deadline) {
			return ids, seqs
		}
		// Two polls: Next looks once at the start and once after its poll interval, so a segment
		// quarantined on the first look ends this wait as soon as the second finds nothing.
		ctx, cancel := context.WithTimeout(context.Background(), 2*c.opts.PollInterval)
		s, err := c.Next(ctx)
		cancel()
		if errors.Is(err, context.DeadlineExceeded) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, recordIDs(t, s)...)
		seqs = append(seqs, s.Seq)
		if err := c.Ack(s); err != nil {
			t.Fatal(err)
		}
	}
}

func segFiles(t testing.TB, dir string) []string {
	t.Helper()
	des, err := os.ReadDir(dir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	var out []string
	for _, de := range des {
		if _, ok := parseSegName(de.Name()); ok {
			out = append(out, de.Name())
		}
	}
	return out
}

func seqRange(from, n uint32) []uint32 {
	out := make([]uint32, n)
	for i := range out {
		out[i] = from + uint32(i)
	}
	return out
}

func mustLedger(t testing.TB, dir string) Ledger {
	t.Helper()
	g, err := ReadLedger(dir)
	if err != nil {
		t.Fatal(err)
	}
	return g
}
