package spool

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/sie-europe/dnssensor/internal/testenv"
)

// logBuf collects log lines for tests that check a report is not suppressed.
type logBuf struct {
	mu    sync.Mutex
	lines []string
	t     testing.TB
}

func (l *logBuf) logf(format string, args ...any) {
	s := fmt.Sprintf(format, args...)
	l.mu.Lock()
	l.lines = append(l.lines, s)
	l.mu.Unlock()
	l.t.Log(s)
}

func (l *logBuf) has(sub string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, s := range l.lines {
		if strings.Contains(s, sub) {
			return true
		}
	}
	return false
}

// TestForeignEntries: things in a tier that are named or shaped like segments but are not
// deliverable segment files — a symlink (here to a valid segment), a FIFO, a directory, valid
// segments under a wrong name — are moved to quarantine, logged and counted in the ledger, never
// ignored (they used to be skipped without a word: 3 valid segments neither shipped nor counted).
// A misnamed copy of a segment still in the spool is quarantined but lost nothing; files that
// are neither (an operator's notes, uplinkd's own state) are left alone.
func TestForeignEntries(t *testing.T) {
	o := testOpts(t, true)
	lb := &logBuf{t: t}
	o.Logf = lb.logf
	for _, d := range []string{o.Dir, o.DiskDir} {
		os.MkdirAll(d, 0o755)
	}
	outside := filepath.Join(t.TempDir(), "elsewhere")
	os.WriteFile(outside, validImage(t, 101, 10100, 10), 0o644)
	os.WriteFile(filepath.Join(o.Dir, segName(100)), validImage(t, 100, 10000, 10), 0o644)
	os.WriteFile(filepath.Join(o.DiskDir, segName(106)), validImage(t, 106, 10600, 10), 0o644)
	if err := os.Symlink(outside, filepath.Join(o.Dir, segName(101))); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(filepath.Join(o.Dir, segName(102)), 0o644); err != nil {
		t.Fatal(err)
	}
	os.Mkdir(filepath.Join(o.DiskDir, segName(103)), 0o755)
	img104, img105 := validImage(t, 104, 10400, 10), validImage(t, 105, 10500, 10)
	os.WriteFile(filepath.Join(o.Dir, "104.seg"), img104, 0o644)
	os.WriteFile(filepath.Join(o.DiskDir, segName(105)+".bak"), img105, 0o644)
	os.WriteFile(filepath.Join(o.DiskDir, "copy-of-100"), validImage(t, 100, 10000, 10), 0o644)
	os.WriteFile(filepath.Join(o.DiskDir, "notes.txt"), []byte("not a segment\n"), 0o644)
	os.WriteFile(filepath.Join(o.DiskDir, "uplinkd-reported.json"), []byte("{}\n"), 0o644)
	os.Mkdir(filepath.Join(o.DiskDir, "lost+found"), 0o755)

	c := mustConsumer(t, o)
	ids, _ := drain(t, c)
	if diff := cmp.Diff(append(seqRange(10000, 10), seqRange(10600, 10)...), ids); diff != "" {
		t.Errorf("delivered records (-want +got):\n%s", diff)
	}
	want := Counter{Segments: 5, Records: 20, Bytes: uint64(len(img104) + len(img105))}
	if got := mustLedger(t, o.DiskDir).Quarantined; got != want {
		t.Errorf("ledger quarantined %+v, want %+v (symlink, FIFO, directory: 1 segment each; two misnamed segments)", got, want)
	}
	if got := c.Stats().Quarantined; got != want {
		t.Errorf("consumer stats quarantined %+v, want %+v", got, want)
	}
	for _, name := range []string{segName(101), segName(102), segName(103), "104.seg", segName(105) + ".bak", "copy-of-100"} {
		if !lb.has(name) {
			t.Errorf("no log line names %s", name)
		}
	}
	var q []string
	for _, d := range []string{o.Dir, o.DiskDir} {
		des, _ := os.ReadDir(filepath.Join(d, quarantineDir))
		for _, de := range des {
			q = append(q, de.Name())
		}
		for _, n := range segFiles(t, d) {
			t.Errorf("%s still in %s", n, d)
		}
	}
	if len(q) != 6 {
		t.Errorf("quarantine holds %q, want 6 entries", q)
	}
	for _, keep := range []string{"notes.txt", "uplinkd-reported.json", "lost+found"} {
		if _, err := os.Lstat(filepath.Join(o.DiskDir, keep)); err != nil {
			t.Errorf("%s was touched: %v", keep, err)
		}
	}
	if _, err := os.Stat(outside); err != nil {
		t.Errorf("the symlink's target was touched: %v", err)
	}
}

// TestCloseWithDiskTierFailing: at shutdown the RAM tier must go to disk (a reboot empties tmpfs).
// When the disk tier cannot take it, the segments left behind are counted in the ledger
// (stranded), reported by a log line that no earlier report can rate-limit away, and Close fails
// so that sensord exits non-zero. It used to return nil with the message suppressed.
func TestCloseWithDiskTierFailing(t *testing.T) {
	o := testOpts(t, true)
	o.SpillAge = time.Millisecond
	lb := &logBuf{t: t}
	o.Logf = lb.logf
	p := mustProducer(t, o)
	p.mmu.Lock()
	p.writeDisk = func(string, uint64, []byte, bool) error { return syscall.ENOSPC }
	p.mmu.Unlock()
	// A first failed spill while running uses up the rate limit of its kind of message.
	writeN(t, p, 0, 20)
	p.Flush()
	testenv.WaitFor(t, "a failed spill", func() bool { return p.Stats().SpillErrors > 0 })
	writeN(t, p, 20, 30)
	err := p.Close()
	if err == nil || !strings.Contains(err.Error(), "RAM tier") {
		t.Errorf("Close = %v, want an error saying segments were left in the RAM tier", err)
	}
	var want Counter
	for _, n := range segFiles(t, o.Dir) {
		fi, _ := os.Stat(filepath.Join(o.Dir, n))
		want.Segments++
		want.Bytes += uint64(fi.Size())
	}
	want.Records = 50
	if want.Segments != 2 {
		t.Fatalf("%d segments in the RAM tier, want 2", want.Segments)
	}
	if got := mustLedger(t, o.DiskDir).Stranded; got != want {
		t.Errorf("ledger stranded %+v, want %+v", got, want)
	}
	if !lb.has("at shutdown") {
		t.Errorf("no un-rate-limited log line at shutdown")
	}
	// The segments stay where they are: without a reboot uplinkd still delivers them.
	c := mustConsumer(t, o)
	if ids, _ := drain(t, c); len(ids) != 50 {
		t.Errorf("%d records delivered from the RAM tier, want 50", len(ids))
	}
}

// TestCloseDropsAreReported: a disk quota that cannot take the RAM tier at shutdown drops
// segments (counted, as at any quota); the shutdown says so in a line of its own even when the
// drop messages were rate-limited.
func TestCloseDropsAreReported(t *testing.T) {
	o := testOpts(t, true)
	lb := &logBuf{t: t}
	o.Logf = lb.logf
	o.DiskQuota = 1000 // smaller than any segment
	p := mustProducer(t, o)
	p.logf("quota", "earlier message of the same kind")
	p.logf("drop", "earlier message of the same kind")
	writeN(t, p, 0, 20)
	p.Flush()
	writeN(t, p, 20, 20)
	p.Close()
	if got := mustLedger(t, o.DiskDir).Dropped; got.Segments != 2 || got.Records != 40 {
		t.Errorf("ledger dropped %+v, want 2 segments, 40 records", got)
	}
	if !lb.has("at shutdown") {
		t.Errorf("no un-rate-limited log line at shutdown")
	}
}
