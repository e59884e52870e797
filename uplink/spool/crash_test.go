package spool

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/sie-europe/dnssensor/nmsg/dnsqr"
)

// TestCrashChild is the producer process of TestKillProducer: it writes
// records numbered round<<20 | i until it is killed.
func TestCrashChild(t *testing.T) {
	if os.Getenv("SPOOL_CRASH_CHILD") == "" {
		t.Skip("run by TestKillProducer")
	}
	round, _ := strconv.Atoi(os.Getenv("SPOOL_ROUND"))
	o := Options{
		Dir: os.Getenv("SPOOL_RAM"), DiskDir: os.Getenv("SPOOL_DISK"),
		SegmentSize: 16 << 10, SegmentAge: 20 * time.Millisecond, SpillAge: 30 * time.Millisecond,
		DiskQuota: 1 << 30,
		Logf:      func(string, ...any) {},
	}
	p, err := OpenProducer(o)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(3)
	}
	fmt.Println("ready")
	var r dnsqr.Record
	for i := uint32(0); i < 1<<20; i++ {
		if err := write(p, rec(&r, uint32(round)<<20|i)); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(4)
		}
		if i%50 == 0 {
			time.Sleep(100 * time.Microsecond)
		}
	}
	os.Exit(5) // never reached in time
}

// TestKillProducer kill -9s a producer process mid-write over and over
// while a consumer (which itself "crashes" now and then, dropping its
// held segments unacked) drains the spool. Checks: every delivered
// segment is intact, nothing is quarantined, and each producer run's
// records arrive as a gap-free prefix: only the unsealed tail of a run,
// which lived in the killed process's memory, may be missing.
func TestKillProducer(t *testing.T) {
	if testing.Short() {
		t.Skip("spawns processes")
	}
	o := testOpts(t, true)
	o.SegmentSize = 16 << 10
	o.SpillAge = 30 * time.Millisecond
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	rnd := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1))
	got := map[uint32][]uint32{} // round → ids in delivery order
	seen := map[uint64]bool{}
	dups := 0
	c := mustConsumer(t, o)
	consume := func(d time.Duration) {
		ctx, cancel := context.WithTimeout(context.Background(), d)
		defer cancel()
		for {
			s, err := c.Next(ctx)
			if err != nil {
				return
			}
			if rnd.IntN(20) == 0 {
				// Consumer crash: the segment is handed back unacked.
				c.Close()
				c, err = OpenConsumer(o)
				if err != nil {
					t.Fatal(err)
				}
				continue
			}
			ids := recordIDs(t, s)
			if err := c.Ack(s); err != nil {
				t.Fatal(err)
			}
			if seen[s.Seq] {
				// At-least-once: a restarted consumer may see a
				// segment again, whole and under the same Seq,
				// which is how downstream discards it.
				dups++
				continue
			}
			seen[s.Seq] = true
			for _, id := range ids {
				got[id>>20] = append(got[id>>20], id&(1<<20-1))
			}
		}
	}
	const rounds = 25
	for round := 0; round < rounds; round++ {
		cmd := exec.Command(exe, "-test.run=^TestCrashChild$", "-test.v")
		cmd.Env = append(os.Environ(), "SPOOL_CRASH_CHILD=1", "SPOOL_RAM="+o.Dir, "SPOOL_DISK="+o.DiskDir, fmt.Sprintf("SPOOL_ROUND=%d", round))
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		var ready [6]byte
		if _, err := out.Read(ready[:]); err != nil {
			t.Fatalf("round %d: child did not start: %v", round, err)
		}
		// Consume during part of the run only, so that kills also hit
		// spills to disk. The kill comes at a random time, but only
		// once the child has sealed something: on a loaded machine a
		// child may otherwise be killed before it ran at all.
		live := time.Duration(20+rnd.IntN(200)) * time.Millisecond
		deadline := time.Now().Add(30 * time.Second)
		if round%3 == 0 {
			before := sealedCount(t, o)
			time.Sleep(live)
			for sealedCount(t, o) == before && time.Now().Before(deadline) {
				time.Sleep(5 * time.Millisecond)
			}
		} else {
			consume(live)
			for len(got[uint32(round)]) == 0 && time.Now().Before(deadline) {
				consume(20 * time.Millisecond)
			}
		}
		cmd.Process.Signal(syscall.SIGKILL)
		cmd.Wait()
	}
	// A last, clean producer run cleans up temp files and seals nothing.
	p := mustProducer(t, o)
	p.Close()
	consume(500 * time.Millisecond)

	var total, lostTail int
	for round := uint32(0); round < rounds; round++ {
		ids := got[round]
		for i, id := range ids {
			if id != uint32(i) {
				t.Fatalf("round %d: record %d delivered as #%d: a sealed segment was lost or reordered", round, id, i)
			}
		}
		total += len(ids)
		if len(ids) == 0 {
			lostTail++
		}
	}
	if lostTail > rounds/3 {
		t.Errorf("%d of %d rounds delivered nothing", lostTail, rounds)
	}
	g := mustLedger(t, o.DiskDir)
	if g.Quarantined.Segments != 0 || g.Dropped.Segments != 0 {
		t.Errorf("ledger %+v: kill -9 must not damage or drop segments", g)
	}
	if dups > len(seen)/100+1 {
		t.Errorf("%d duplicate segments of %d", dups, len(seen))
	}
	t.Logf("%d rounds, %d records delivered, %d segments (%d duplicates by Seq), %d temp files of killed writers counted", rounds, total, len(seen), dups, g.TempFiles.Segments)
}

// sealedCount is the number of segment files in both tiers.
func sealedCount(t testing.TB, o Options) int {
	return len(segFiles(t, o.Dir)) + len(segFiles(t, o.DiskDir))
}
