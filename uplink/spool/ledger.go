package spool

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/google/renameio/v2"
)

// Counter is an amount of lost data.
type Counter struct {
	Segments uint64 `json:"segments"`
	Records  uint64 `json:"records"`
	Bytes    uint64 `json:"bytes"`
}

func (c *Counter) add(o Counter) {
	c.Segments += o.Segments
	c.Records += o.Records
	c.Bytes += o.Bytes
}

// Ledger is the durable record of everything the spool lost, cumulative
// since the spool was created. Both processes add to it; the consumer
// reports it upstream (sielink linkLoss). Bytes are segment file sizes
// except for Rejected, where they are encoded record sizes.
type Ledger struct {
	// Dropped: sealed segments deleted oldest-first because the disk
	// tier's quota (or, without a disk tier, the RAM tier's) was full or
	// the disk tier could not be written.
	Dropped Counter `json:"dropped"`
	// Quarantined: damaged segments moved to a quarantine directory.
	// Records is what the header claimed when the header itself was
	// intact, else 0.
	Quarantined Counter `json:"quarantined"`
	// TempFiles: half-written segments of a crashed writer, removed at
	// start-up. Their record counts are unknown (0).
	TempFiles Counter `json:"temp_files"`
	// Rejected: records the producer could not put into a segment
	// (too large for a container, or the RAM tier could not be written).
	Rejected Counter `json:"rejected"`
	// Stranded: segments the producer could not move to the disk tier
	// when it closed (the disk failed or was full), left in the RAM
	// tier, where the next reboot takes them. Counted when the producer
	// closes, since nothing durable can follow them; if the RAM tier
	// survives (only the process restarted) they are still delivered,
	// and the count overstates the loss by them: the ledger errs on the
	// side of reporting.
	Stranded Counter `json:"stranded"`
	// Updated is when the ledger was last written.
	Updated time.Time `json:"updated"`
}

// Total sums every reason.
func (g Ledger) Total() Counter {
	var t Counter
	t.add(g.Dropped)
	t.add(g.Quarantined)
	t.add(g.TempFiles)
	t.add(g.Rejected)
	t.add(g.Stranded)
	return t
}

// ledger is a handle on the ledger file. Updates are read-modify-write
// under an flock so that producer and consumer never lose each other's
// counts; the file is replaced atomically so a reader never sees half of
// it.
type ledger struct {
	dir  string
	logf func(string, ...any)
	now  func() time.Time
}

// ReadLedger returns the ledger of the spool whose durable directory is
// dir (the disk tier, or the RAM tier when there is none). A spool that
// never lost anything has no ledger file and returns the zero Ledger.
func ReadLedger(dir string) (Ledger, error) {
	var g Ledger
	b, err := os.ReadFile(filepath.Join(dir, ledgerFile))
	if errors.Is(err, os.ErrNotExist) {
		return g, nil
	}
	if err != nil {
		return g, err
	}
	if err := json.Unmarshal(b, &g); err != nil {
		return g, fmt.Errorf("spool: ledger %s: %w", filepath.Join(dir, ledgerFile), err)
	}
	return g, nil
}

func (l *ledger) withLock(fn func()) {
	f, err := os.OpenFile(filepath.Join(l.dir, ledgerLock), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		l.logf("spool: ledger lock: %v", err)
		fn()
		return
	}
	defer f.Close()
	for {
		err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX)
		if err != syscall.EINTR {
			break
		}
	}
	if err != nil {
		l.logf("spool: ledger lock: %v", err)
	}
	fn()
}

// add applies fn to the ledger and writes it durably. A failure is
// logged, not returned: losing the count must not stop the data path,
// and the caller has no better place to put it.
func (l *ledger) add(fn func(*Ledger)) {
	l.withLock(func() {
		g, err := ReadLedger(l.dir)
		if err != nil {
			// A damaged ledger is replaced rather than blocking
			// every future count; the damage is logged.
			l.logf("spool: %v; starting a new ledger", err)
			g = Ledger{}
		}
		fn(&g)
		g.Updated = l.now().UTC()
		b, _ := json.MarshalIndent(g, "", "  ")
		b = append(b, '\n')
		if err := renameio.WriteFile(filepath.Join(l.dir, ledgerFile), b, 0o644, renameio.WithTempDir(l.dir)); err != nil {
			l.logf("spool: writing ledger: %v", err)
			return
		}
		if err := syncDir(l.dir); err != nil {
			l.logf("spool: syncing ledger directory: %v", err)
		}
	})
}
