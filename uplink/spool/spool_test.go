package spool

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/sie-europe/dnssensor/internal/testenv"
	"github.com/sie-europe/dnssensor/nmsg/dnsqr"
)

func TestPublishConsumeOrder(t *testing.T) {
	for _, zlib := range []bool{false, true} {
		t.Run(map[bool]string{false: "plain", true: "zlib"}[zlib], func(t *testing.T) {
			o := testOpts(t, true)
			o.Zlib = zlib
			p := mustProducer(t, o)
			c := mustConsumer(t, o)
			writeN(t, p, 0, 1000)
			if err := p.Flush(); err != nil {
				t.Fatal(err)
			}
			ids, seqs := drain(t, c)
			if diff := cmp.Diff(seqRange(0, 1000), ids); diff != "" {
				t.Errorf("records (-want +got):\n%s", diff)
			}
			if len(seqs) < 10 {
				t.Errorf("%d segments of 16 KiB for 1000 records of ~300 octets, want ≥ 10", len(seqs))
			}
			if !slices.IsSorted(seqs) || len(slices.Compact(slices.Clone(seqs))) != len(seqs) {
				t.Errorf("sequences not strictly increasing: %v", seqs)
			}
			if err := p.Close(); err != nil {
				t.Fatal(err)
			}
			if s := p.Stats(); s.Records != 1000 || s.Spilled != 0 {
				t.Errorf("stats %+v, want 1000 records, 0 spilled", s)
			}
		})
	}
}

func TestSizeBound(t *testing.T) {
	o := testOpts(t, false)
	o.SegmentSize = 8 << 10
	p := mustProducer(t, o)
	writeN(t, p, 0, 500)
	p.Close()
	des, _ := os.ReadDir(o.Dir)
	n := 0
	for _, de := range des {
		if _, ok := parseSegName(de.Name()); !ok {
			continue
		}
		n++
		info, _ := de.Info()
		if info.Size() > int64(o.SegmentSize) {
			t.Errorf("%s: %d octets, above the %d bound", de.Name(), info.Size(), o.SegmentSize)
		}
		if info.Size() < int64(o.SegmentSize)/2 && n < len(des)-5 {
			t.Errorf("%s: %d octets, sealed too early", de.Name(), info.Size())
		}
	}
	if n < 500*300/(8<<10) {
		t.Errorf("%d segments", n)
	}
}

func TestAgeBound(t *testing.T) {
	t.Run("timer", func(t *testing.T) {
		o := testOpts(t, false)
		o.SegmentAge = 50 * time.Millisecond
		p := mustProducer(t, o)
		defer p.Close()
		c := mustConsumer(t, o)
		writeN(t, p, 0, 3)
		start := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		s, err := c.Next(ctx)
		if err != nil {
			t.Fatalf("no segment sealed by age: %v", err)
		}
		if d := time.Since(start); d > 500*time.Millisecond {
			t.Errorf("sealed after %v, want about 50ms", d)
		}
		if s.Records != 3 {
			t.Errorf("%d records, want 3", s.Records)
		}
	})
	t.Run("write", func(t *testing.T) {
		o := testOpts(t, false)
		now := time.Unix(1_700_000_000, 0)
		var clock atomic.Int64
		clock.Store(now.UnixNano())
		o.now = func() time.Time { return time.Unix(0, clock.Load()) }
		o.SegmentAge = time.Second
		p := mustProducer(t, o)
		defer p.Close()
		writeN(t, p, 0, 2)
		clock.Add(int64(999 * time.Millisecond))
		writeN(t, p, 2, 1)
		if got := segFiles(t, o.Dir); len(got) != 0 {
			t.Fatalf("sealed before the age bound: %v", got)
		}
		clock.Add(int64(time.Millisecond))
		writeN(t, p, 3, 1) // seals 0..2, starts a segment with 3
		if got := segFiles(t, o.Dir); len(got) != 1 {
			t.Fatalf("segments %v, want one", got)
		}
	})
}

func TestRestartResume(t *testing.T) {
	o := testOpts(t, true)
	p := mustProducer(t, o)
	for i := uint32(0); i < 5; i++ {
		writeN(t, p, i*10, 10)
		p.Flush()
	}
	p.Close() // moves everything to disk
	if n := len(segFiles(t, o.DiskDir)); n != 5 {
		t.Fatalf("%d segments on disk after Close, want 5", n)
	}
	c, err := OpenConsumer(o)
	if err != nil {
		t.Fatal(err)
	}
	var got []uint32
	for i := 0; i < 3; i++ {
		s, err := c.Next(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, recordIDs(t, s)...)
		if i < 2 {
			c.Ack(s)
		}
		// The third is held but not acked when the consumer dies.
	}
	c.Close()

	// A new consumer resumes from the oldest unacked; a new producer
	// continues above every earlier sequence.
	p = mustProducer(t, o)
	writeN(t, p, 50, 10)
	p.Flush()
	c = mustConsumer(t, o)
	ids, seqs := drain(t, c)
	got = append(got[:20], ids...)
	if diff := cmp.Diff(seqRange(0, 60), got); diff != "" {
		t.Errorf("records (-want +got):\n%s", diff)
	}
	if seqs[len(seqs)-1] <= seqs[len(seqs)-2] {
		t.Errorf("sequence after restart %d not above %d", seqs[len(seqs)-1], seqs[len(seqs)-2])
	}
	p.Close()

	// An emptied spool still never reuses a sequence number.
	last := seqs[len(seqs)-1]
	p = mustProducer(t, o)
	writeN(t, p, 60, 1)
	p.Flush()
	_, seqs = drain(t, c)
	if len(seqs) != 1 || seqs[0] <= last {
		t.Errorf("after draining and restarting: sequences %v, want one above %d", seqs, last)
	}
	p.Close()
}

func TestReleaseRedelivers(t *testing.T) {
	o := testOpts(t, false)
	p := mustProducer(t, o)
	defer p.Close()
	c := mustConsumer(t, o)
	for i := uint32(0); i < 3; i++ {
		writeN(t, p, i, 1)
		p.Flush()
	}
	s0, _ := c.Next(context.Background())
	s1, _ := c.Next(context.Background())
	c.Release(s0)
	c.Ack(s1)
	ids, _ := drain(t, c)
	if diff := cmp.Diff([]uint32{0, 2}, ids); diff != "" {
		t.Errorf("after Release (-want +got):\n%s", diff)
	}
}

// TestSpillAndBack runs on a virtual clock: with a real one, a consumer on a loaded machine that
// took a fresh segment later than SpillAge saw it spilled (the spool right, the test wrong:
// "spilled 10 → 12 while the consumer keeps up" at load 20).
func TestSpillAndBack(t *testing.T) {
	o := testOpts(t, true)
	o.SpillAge = 50 * time.Millisecond
	var clock atomic.Int64
	clock.Store(time.Unix(1_700_000_000, 0).UnixNano())
	o.now = func() time.Time { return time.Unix(0, clock.Load()) }
	p := mustProducer(t, o)
	defer p.Close()

	// Outage: nobody consumes; everything moves to disk once older than SpillAge.
	for i := uint32(0); i < 10; i++ {
		writeN(t, p, i*10, 10)
		p.Flush()
	}
	clock.Add(int64(2 * o.SpillAge))
	testenv.WaitFor(t, "RAM tier to spill", func() bool { return len(segFiles(t, o.Dir)) == 0 })
	if n := len(segFiles(t, o.DiskDir)); n != 10 {
		t.Fatalf("%d segments on disk, want 10", n)
	}
	c := mustConsumer(t, o)
	d, err := c.Depth()
	if err != nil {
		t.Fatal(err)
	}
	if d.Segments != 10 || d.Records != 100 || d.DiskSegments != 10 || d.RAMSegments != 0 {
		t.Errorf("depth %+v", d)
	}
	if want := time.Unix(1_700_000_000, 0); !d.Oldest.Equal(want) {
		t.Errorf("oldest record %v, want %v", d.Oldest, want)
	}

	// Recovery: the consumer drains disk first, then new data flows
	// through RAM only.
	spilled := p.Stats().Spilled
	writeN(t, p, 100, 10)
	p.Flush()
	ids, _ := drain(t, c)
	if diff := cmp.Diff(seqRange(0, 110), ids); diff != "" {
		t.Errorf("records (-want +got):\n%s", diff)
	}
	for i := uint32(0); i < 5; i++ {
		writeN(t, p, 110+i, 1)
		p.Flush()
		clock.Add(int64(o.SpillAge / 10)) // taken well within SpillAge
		ids, _ := drain(t, c)
		if len(ids) != 1 {
			t.Fatalf("got %v", ids)
		}
	}
	// One segment nobody takes, then time passes: its spill shows that the maintenance ran
	// after the clock moved, and it must be the only one (everything else was taken).
	writeN(t, p, 115, 1)
	p.Flush()
	clock.Add(int64(3 * o.SpillAge))
	testenv.WaitFor(t, "the untaken segment to spill", func() bool { return p.Stats().Spilled > spilled })
	if s := p.Stats().Spilled; s != spilled+1 {
		t.Errorf("spilled %d → %d while the consumer keeps up, want one more (the untaken segment)", spilled, s)
	}
	if ids, _ := drain(t, c); fmt.Sprint(ids) != "[115]" {
		t.Errorf("after the spill the consumer got %v, want [115]", ids)
	}
	if n := len(segFiles(t, o.DiskDir)); n != 0 {
		t.Errorf("%d segments left on disk", n)
	}
}

func TestRAMQuotaSpills(t *testing.T) {
	o := testOpts(t, true)
	o.RAMQuota = 64 << 10
	p := mustProducer(t, o)
	defer p.Close()
	for i := uint32(0); i < 20; i++ {
		writeN(t, p, i*50, 50)
		p.Flush()
	}
	testenv.WaitFor(t, "RAM tier under quota", func() bool {
		var sum int64
		for _, n := range segFiles(t, o.Dir) {
			fi, _ := os.Stat(filepath.Join(o.Dir, n))
			if fi != nil {
				sum += fi.Size()
			}
		}
		return sum <= o.RAMQuota
	})
	c := mustConsumer(t, o)
	ids, _ := drain(t, c)
	if diff := cmp.Diff(seqRange(0, 1000), ids); diff != "" {
		t.Errorf("records (-want +got):\n%s", diff)
	}
}

func TestDiskQuotaDropsOldest(t *testing.T) {
	o := testOpts(t, true)
	o.SpillAge = time.Millisecond
	p := mustProducer(t, o)
	// Learn a segment's size, then allow exactly 4 on disk.
	writeN(t, p, 0, 20)
	p.Flush()
	testenv.WaitFor(t, "first spill", func() bool { return len(segFiles(t, o.DiskDir)) == 1 })
	fi, err := os.Stat(filepath.Join(o.DiskDir, segFiles(t, o.DiskDir)[0]))
	if err != nil {
		t.Fatal(err)
	}
	p.Close()
	total := p.Stats().SpilledBytes
	o.DiskQuota = 4*fi.Size() + fi.Size()/2
	p = mustProducer(t, o)
	for i := uint32(1); i < 10; i++ {
		writeN(t, p, i*20, 20)
		p.Flush()
		testenv.WaitFor(t, "spill", func() bool { return len(segFiles(t, o.Dir)) == 0 })
	}
	p.Close()
	total += p.Stats().SpilledBytes
	c := mustConsumer(t, o)
	d, err := c.Depth()
	if err != nil {
		t.Fatal(err)
	}

	g := mustLedger(t, o.DiskDir)
	want := Counter{Segments: 6, Records: 120, Bytes: total - d.Bytes}
	if g.Dropped != want {
		t.Errorf("ledger dropped %+v, want %+v", g.Dropped, want)
	}
	if s := p.Stats().Dropped; s != want {
		t.Errorf("stats dropped %+v, want %+v", s, want)
	}
	ids, _ := drain(t, c)
	if diff := cmp.Diff(seqRange(120, 80), ids); diff != "" {
		t.Errorf("survivors are not the newest (-want +got):\n%s", diff)
	}
	if l, _ := c.Loss(); l.Total().Records+uint64(len(ids)) != 200 {
		t.Errorf("delivered %d + lost %d ≠ 200 written", len(ids), l.Total().Records)
	}
}

func TestDropSkipsHeldSegment(t *testing.T) {
	o := testOpts(t, false)
	o.RAMQuota = 4000 // no disk tier: one 10-record segment fits, two do not
	p := mustProducer(t, o)
	c := mustConsumer(t, o)
	writeN(t, p, 0, 10)
	p.Flush()
	s, err := c.Next(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	writeN(t, p, 10, 10)
	p.Flush()
	testenv.WaitFor(t, "drop", func() bool { return p.Stats().Dropped.Segments == 1 })
	// The held segment survives and is not counted as lost.
	if got := recordIDs(t, s); !slices.Equal(got, seqRange(0, 10)) {
		t.Errorf("held segment holds %v", got)
	}
	if err := c.Ack(s); err != nil {
		t.Fatal(err)
	}
	p.Close()
	g := mustLedger(t, o.Dir)
	if g.Dropped.Records != 10 {
		t.Errorf("dropped %+v, want the 10 records of the second segment", g.Dropped)
	}
}

func TestNoDiskTierWithoutQuota(t *testing.T) {
	o := testOpts(t, false)
	o.SpillAge = time.Millisecond
	p := mustProducer(t, o)
	writeN(t, p, 0, 10)
	p.Flush()
	time.Sleep(50 * time.Millisecond)
	p.Close()
	c := mustConsumer(t, o)
	if ids, _ := drain(t, c); len(ids) != 10 {
		t.Errorf("got %d records; a RAM-only spool must not drop by age", len(ids))
	}
}

// TestHealthyLinkNoDiskWrites runs producer and consumer at a steady rate
// and checks that the disk tier is never written after Open: no segment
// ever appears there, nothing is spilled, the ledger is never written.
func TestHealthyLinkNoDiskWrites(t *testing.T) {
	o := testOpts(t, true)
	o.SegmentAge = 20 * time.Millisecond
	// The product's spill age: a consumer that keeps up acks within it. (200 ms made a consumer
	// stalled by a loaded machine under the race detector look slow.)
	o.SpillAge = DefaultSpillAge
	p := mustProducer(t, o)
	c := mustConsumer(t, o)
	before := dirState(t, o.DiskDir)

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan []uint32)
	go func() {
		var ids []uint32
		defer func() { done <- ids }()
		for {
			s, err := c.Next(ctx)
			if err != nil {
				return
			}
			ids = append(ids, recordIDs(t, s)...)
			c.Ack(s)
		}
	}()
	stop := time.Now().Add(1500 * time.Millisecond)
	var r dnsqr.Record
	var n uint32
	for time.Now().Before(stop) {
		for i := 0; i < 20; i++ { // 20 records per ms: a busy sensor
			write(p, rec(&r, n))
			n++
		}
		if len(segFiles(t, o.DiskDir)) != 0 {
			t.Fatal("a segment reached the disk tier while the consumer keeps up")
		}
		time.Sleep(time.Millisecond)
	}
	p.Flush()
	testenv.WaitFor(t, "consumer to catch up", func() bool { return len(segFiles(t, o.Dir)) == 0 })
	cancel()
	ids := <-done
	if s := p.Stats(); s.Spilled != 0 {
		t.Errorf("spilled %d segments with a healthy link", s.Spilled)
	}
	if after := dirState(t, o.DiskDir); !cmp.Equal(before, after) {
		t.Errorf("disk tier changed (-before +after):\n%s", cmp.Diff(before, after))
	}
	if diff := cmp.Diff(seqRange(0, n), ids); diff != "" {
		t.Errorf("records (-want +got):\n%s", diff)
	}
	p.Close()
}

// dirState lists names, sizes and modification times.
func dirState(t testing.TB, dir string) map[string]string {
	m := map[string]string{}
	filepath.Walk(dir, func(path string, info os.FileInfo, err error) error {
		if err == nil {
			m[path] = info.ModTime().String() + " " + string(rune(info.Size()))
		}
		return nil
	})
	return m
}

func TestTempCleanup(t *testing.T) {
	o := testOpts(t, true)
	p := mustProducer(t, o)
	p.Close()
	for _, d := range []string{o.Dir, o.DiskDir} {
		if err := os.WriteFile(filepath.Join(d, "."+segName(7)+"12345"), make([]byte, 1000), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	os.WriteFile(filepath.Join(o.DiskDir, ".loss.json999"), []byte("{"), 0o644)
	// An interrupted spill of a segment still in RAM lost nothing.
	os.WriteFile(filepath.Join(o.Dir, segName(8)), validImage(t, 8, 0, 1), 0o644)
	os.WriteFile(filepath.Join(o.DiskDir, "."+segName(8)+"777"), make([]byte, 500), 0o644)
	p = mustProducer(t, o)
	defer p.Close()
	for _, d := range []string{o.Dir, o.DiskDir} {
		des, _ := os.ReadDir(d)
		for _, de := range des {
			if de.Name()[0] == '.' {
				t.Errorf("temp file %s left in %s", de.Name(), d)
			}
		}
	}
	g := mustLedger(t, o.DiskDir)
	if want := (Counter{Segments: 2, Bytes: 2000}); g.TempFiles != want {
		t.Errorf("temp files %+v, want %+v", g.TempFiles, want)
	}
	if s := p.Stats().TempFiles; s.Segments != 2 {
		t.Errorf("stats temp files %+v", s)
	}
}

func TestOneProducerOneConsumer(t *testing.T) {
	o := testOpts(t, true)
	p := mustProducer(t, o)
	defer p.Close()
	o2 := o
	o2.lockWait = 50 * time.Millisecond
	if _, err := OpenProducer(o2); err == nil {
		t.Fatal("second producer opened the spool")
	}
	c := mustConsumer(t, o)
	_ = c
	if _, err := OpenConsumer(o2); err == nil {
		t.Fatal("second consumer opened the spool")
	}
}
