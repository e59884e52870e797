package spool

import (
	"fmt"
	"log"
	"time"

	"github.com/sie-europe/dnssensor/nmsg"
)

// Defaults. The RAM tier holds at most about SegmentAge + SpillAge of
// data that a power cut can take (≤ 4 s by default, inside the 5 s the
// appliance promises).
const (
	DefaultRAMQuota    = 64 << 20
	DefaultDiskQuota   = 1 << 30
	DefaultSegmentSize = 1 << 20
	DefaultSegmentAge  = time.Second
	DefaultSpillAge    = 3 * time.Second
	// DefaultPollInterval: a waiting consumer lists two nearly empty
	// directories per poll (≈9 µs), but each timer wake-up costs
	// ≈200 µs of CPU in a VM; at 100 ms an idle consumer uses 0.35 % of
	// a core and adds ≤ 100 ms to the ≤ 1 s segment age.
	DefaultPollInterval = 100 * time.Millisecond
)

// Options configure both ends of a spool. Producer and consumer must agree
// on Dir and DiskDir; the other fields matter to the side that uses them.
type Options struct {
	// Dir is the RAM tier (tmpfs on the appliance, e.g. /run/spool).
	Dir string
	// DiskDir is the disk tier (/perm/spool). Empty means no disk tier:
	// nothing ever touches flash, and the RAM quota drops oldest-first.
	DiskDir string

	// RAMQuota and DiskQuota bound each tier's segment bytes.
	RAMQuota, DiskQuota int64
	// SpillAge moves a sealed segment the consumer has not taken to the
	// disk tier once it is this old, bounding what a power cut loses.
	SpillAge time.Duration

	// SegmentSize and SegmentAge seal the current segment once it would
	// exceed SegmentSize octets or once its first record was written
	// SegmentAge ago.
	SegmentSize int
	SegmentAge  time.Duration
	// Zlib compresses each NMSG container.
	Zlib bool

	// PollInterval is how often a waiting consumer looks for new
	// segments.
	PollInterval time.Duration

	// Logf receives rare events (quarantine, drops, spill failures);
	// nil means log.Printf.
	Logf func(format string, args ...any)

	now      func() time.Time
	lockWait time.Duration // how long Open waits for a predecessor's lock
}

func (o *Options) setDefaults() error {
	if o.Dir == "" {
		return fmt.Errorf("spool: no RAM tier directory")
	}
	if o.RAMQuota <= 0 {
		o.RAMQuota = DefaultRAMQuota
	}
	if o.DiskQuota <= 0 {
		o.DiskQuota = DefaultDiskQuota
	}
	if o.SpillAge <= 0 {
		o.SpillAge = DefaultSpillAge
	}
	if o.SegmentSize <= 0 {
		o.SegmentSize = DefaultSegmentSize
	}
	if o.SegmentSize < 4096 || o.SegmentSize > maxBody/2 {
		return fmt.Errorf("spool: segment size %d outside [4096, %d]", o.SegmentSize, maxBody/2)
	}
	if o.SegmentAge <= 0 {
		o.SegmentAge = DefaultSegmentAge
	}
	if o.PollInterval <= 0 {
		o.PollInterval = DefaultPollInterval
	}
	if o.Logf == nil {
		o.Logf = log.Printf
	}
	if o.lockWait <= 0 {
		o.lockWait = 5 * time.Second
	}
	if o.now == nil {
		o.now = time.Now
	}
	return nil
}

// containerSize is the NMSG container bound for a segment size.
func (o *Options) containerSize() int { return min(o.SegmentSize, nmsg.MaxContainerSize) }

// durableDir holds the ledger and the sequence reservation.
func (o *Options) durableDir() string {
	if o.DiskDir != "" {
		return o.DiskDir
	}
	return o.Dir
}
