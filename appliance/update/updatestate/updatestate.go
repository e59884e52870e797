// Package updatestate is the update agent's state file, /perm/updated/state.json (schema
// "dnssensor.updated/v1"): written by updated (package update) and read by statusd, which shows
// it on the page without linking the agent and its TUF client. Standard library only.
package updatestate

import (
	"fmt"
	"time"
)

// StateSchema names the state file's format.
const StateSchema = "dnssensor.updated/v1"

// Phases of a pending update, in order. Each is recorded before the step it names starts, so
// a power cut anywhere leaves a phase that says what may be half done.
const (
	PhaseWriting    = "writing"    // root (then boot, MBR) going into the inactive partition
	PhaseTestboot   = "testboot"   // test boot requested, reboot into the new root
	PhaseGate       = "gate"       // running the new root once: the health gate decides
	PhaseCommitting = "committing" // gate passed, switching to the new root for good
	// PhaseRestoring: the update failed or was abandoned after its boot partition was written;
	// the copy kept in /perm goes back before anything else happens.
	PhaseRestoring = "restoring"
)

// State is /perm/updated/state.json: shared by the old and the new root, written atomically.
type State struct {
	Schema string `json:"schema"`
	// Version and BuildTimestamp are the installed release (0 and "": as flashed, not known yet).
	Version        int64  `json:"version"`
	BuildTimestamp string `json:"build_timestamp,omitempty"`
	// BootSHA256 and MBRSHA256 are what the boot partition and MBR hold as far as this agent
	// wrote them ("": unknown, written with the next update).
	BootSHA256 string `json:"boot_sha256,omitempty"`
	MBRSHA256  string `json:"mbr_sha256,omitempty"`
	// BootPartition is the whole boot partition as this agent last read it (before writing a
	// release's, after restoring it, and at the first start after a restore).
	BootPartition *BootRead `json:"boot_partition,omitempty"`
	// BootVerify is the boot that restored the boot partition and rebooted: the next boot reads
	// it again, from the disk rather than the page cache, and records what it found.
	BootVerify string    `json:"boot_verify,omitempty"`
	Pending    *Pending  `json:"pending,omitempty"`
	Failed     []Failure `json:"failed,omitempty"`
	Paused     bool      `json:"paused"`
	LastCheck  time.Time `json:"last_check,omitzero"`
	LastResult string    `json:"last_result,omitempty"`
	LastError  string    `json:"last_error,omitempty"`
	History    []Event   `json:"history,omitempty"`
}

// Pending is an update on its way.
type Pending struct {
	Version        int64     `json:"version"`
	BuildTimestamp string    `json:"build_timestamp"`
	Phase          string    `json:"phase"`
	Since          time.Time `json:"since"`
	BootID         string    `json:"boot_id,omitempty"` // the boot that requested the test boot
	Attempts       int       `json:"attempts,omitempty"`
	GateStarted    time.Time `json:"gate_started,omitzero"`
	Baseline       Baseline  `json:"baseline"`
	// Step is where the writing phase is (downloading and writing the root, downloading the
	// boot partition, keeping its copy, writing it, the MBR): for the page and the tests.
	Step string `json:"step,omitempty"`
	// BootSaved is set once the copy of the boot partition is durable in /perm and before the
	// boot partition is written: from then on, an update that does not commit restores it.
	BootSaved *BootSaved `json:"boot_saved,omitempty"`
	// Outcome is why the update ends while its boot partition is restored (phase restoring).
	Outcome string `json:"outcome,omitempty"`
}

// BootRead is one reading of the whole boot partition.
type BootRead struct {
	SHA256 string    `json:"sha256"`
	Bytes  int64     `json:"bytes"`
	At     time.Time `json:"at"`
	BootID string    `json:"boot_id,omitempty"`
	Why    string    `json:"why"`
}

// BootSaved describes the copy of the boot partition that updated keeps (boot-prev.img).
type BootSaved struct {
	SHA256 string `json:"sha256"` // of the copy (the region the update overwrites)
	Bytes  int64  `json:"bytes"`
	// PartitionSHA256 is the whole partition before the update: what the restore must give back.
	PartitionSHA256 string `json:"partition_sha256"`
	// BootID is the boot that wrote the new boot partition: a later boot ran its kernel.
	BootID string `json:"boot_id"`
	// RestoredBootID is the boot that restored the copy (a restart in the same boot must still
	// reboot: the running kernel is the release's).
	RestoredBootID string `json:"restored_boot_id,omitempty"`
	// PrevBootSHA256 is State.BootSHA256 before the update, put back with the partition.
	PrevBootSHA256 string `json:"prev_boot_sha256,omitempty"`
}

// Failure is a version that failed; it is never installed automatically again.
type Failure struct {
	Version        int64     `json:"version"`
	BuildTimestamp string    `json:"build_timestamp"`
	At             time.Time `json:"at"`
	Reason         string    `json:"reason"`
}

// Event is one line of the update history (the newest 50 are kept).
type Event struct {
	At      time.Time `json:"at"`
	Version int64     `json:"version,omitempty"`
	What    string    `json:"what"`
}

const maxHistory = 50

// AddEvent appends a line to the history, keeping the newest maxHistory.
func (s *State) AddEvent(now time.Time, version int64, format string, args ...any) {
	s.History = append(s.History, Event{At: now, Version: version, What: fmt.Sprintf(format, args...)})
	if len(s.History) > maxHistory {
		s.History = s.History[len(s.History)-maxHistory:]
	}
}

// FailedVersion returns the record of version's failure, if it failed.
func (s *State) FailedVersion(version int64) (Failure, bool) {
	for _, f := range s.Failed {
		if f.Version == version {
			return f, true
		}
	}
	return Failure{}, false
}

// Baseline is what the gate carries over from the running system: the daemons that answered
// and the traffic checks that passed.
type Baseline struct {
	Daemons []string            `json:"daemons"`
	Passed  map[string][]string `json:"passed,omitempty"` // daemon → check paths ("a/b/c")
}
