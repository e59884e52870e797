package app

import (
	"flag"
	"fmt"
	"io"
	"log"
	"time"

	"github.com/sie-europe/dnssensor/uplink/spool"
)

// spoolOptions are the -spool flags: the hand-over to uplinkd.
type spoolOptions struct {
	Dir, DiskDir        string
	RAMQuota, DiskQuota int64
	SegmentSize         int
	SegmentAge          time.Duration
	SpillAge            time.Duration
}

func (s *spoolOptions) register(fs *flag.FlagSet) {
	fs.StringVar(&s.Dir, "spool", "", "hand sealed NMSG segments to uplinkd through the spool's RAM tier `DIR` (tmpfs, e.g. /run/spool)")
	fs.StringVar(&s.DiskDir, "spool-disk", "", "spool disk tier `DIR` (e.g. /perm/spool), written only while uplinkd is behind or down; empty: RAM only")
	fs.Int64Var(&s.RAMQuota, "spool-ram-quota", spool.DefaultRAMQuota, "octets the RAM tier may hold before it spills to disk (or, without -spool-disk, drops oldest first)")
	fs.Int64Var(&s.DiskQuota, "spool-disk-quota", spool.DefaultDiskQuota, "octets the disk tier may hold; beyond it the oldest segments are dropped and counted")
	fs.IntVar(&s.SegmentSize, "spool-segment-size", spool.DefaultSegmentSize, "seal a segment before it exceeds this many octets")
	fs.DurationVar(&s.SegmentAge, "spool-segment-age", spool.DefaultSegmentAge, "seal a segment this long after its first record")
	fs.DurationVar(&s.SpillAge, "spool-spill-age", spool.DefaultSpillAge, "move a sealed segment uplinkd has not taken to the disk tier after this long (bounds what a power cut loses)")
}

func (s *spoolOptions) finish() error {
	if s.Dir == "" {
		if s.DiskDir != "" {
			return fmt.Errorf("-spool-disk: needs -spool DIR (the RAM tier)")
		}
		return nil
	}
	if s.DiskDir == s.Dir {
		return fmt.Errorf("-spool-disk: must differ from -spool")
	}
	if s.SegmentSize < 4096 || s.SegmentSize > 64<<20 {
		return fmt.Errorf("-spool-segment-size: %d outside [4096, %d]", s.SegmentSize, 64<<20)
	}
	if s.SegmentAge <= 0 || s.SpillAge <= 0 || s.RAMQuota <= 0 || s.DiskQuota <= 0 {
		return fmt.Errorf("-spool-*: ages and quotas must be positive")
	}
	return nil
}

// open returns the spool producer; records reach it through output.Payloads, whose Close seals the
// last segment and moves the RAM tier to disk.
func (s *spoolOptions) open(zlib bool, stderr io.Writer) (*spool.Producer, error) {
	logger := log.New(stderr, "sensord: ", 0)
	return spool.OpenProducer(spool.Options{
		Dir: s.Dir, DiskDir: s.DiskDir,
		RAMQuota: s.RAMQuota, DiskQuota: s.DiskQuota,
		SegmentSize: s.SegmentSize, SegmentAge: s.SegmentAge, SpillAge: s.SpillAge,
		Zlib: zlib,
		Logf: logger.Printf,
	})
}

// spoolStats is the spool's part of the stats line.
func spoolStats(p *spool.Producer) string {
	if p == nil {
		return ""
	}
	s := p.Stats()
	return fmt.Sprintf(" spool_records=%d spool_segments=%d spool_spilled=%d spool_dropped_records=%d spool_quarantined=%d spool_rejected=%d",
		s.Records, s.Segments, s.Spilled, s.Dropped.Records, s.Quarantined.Segments, s.Rejected.Records)
}
