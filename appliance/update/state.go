package update

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/google/renameio/v2"

	"github.com/sie-europe/dnssensor/appliance/update/updatestate"
)

// The state file's types are package updatestate's: statusd reads the same file.
type (
	State     = updatestate.State
	Pending   = updatestate.Pending
	BootRead  = updatestate.BootRead
	BootSaved = updatestate.BootSaved
	Failure   = updatestate.Failure
	Event     = updatestate.Event
	Baseline  = updatestate.Baseline
)

const (
	StateSchema     = updatestate.StateSchema
	PhaseWriting    = updatestate.PhaseWriting
	PhaseTestboot   = updatestate.PhaseTestboot
	PhaseGate       = updatestate.PhaseGate
	PhaseCommitting = updatestate.PhaseCommitting
	PhaseRestoring  = updatestate.PhaseRestoring
)

// bootCopyFile (in the agent's directory) is the boot partition's region an update overwrites,
// as it was before: gokrazy writes the boot partition in place and keeps no copy.
const bootCopyFile = "boot-prev.img"

func loadState(p string) (*State, error) {
	b, err := os.ReadFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		return &State{Schema: StateSchema}, nil
	}
	if err != nil {
		return nil, err
	}
	var s State
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("%s: %w (move it away to start over; the failed versions it lists would be retried)", p, err)
	}
	if s.Schema != StateSchema {
		return nil, fmt.Errorf("%s: schema %q, want %q", p, s.Schema, StateSchema)
	}
	return &s, nil
}

// saveState replaces the file atomically and durably (fsync of file and directory): after a
// power cut the file is the old state or the new one, never a mix.
func saveState(p string, b []byte) error {
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return err
	}
	if err := renameio.WriteFile(p, append(b, '\n'), 0o600); err != nil {
		return err
	}
	d, err := os.Open(filepath.Dir(p))
	if err != nil {
		return err
	}
	defer d.Close()
	return syncDir(d) // the rename itself
}

// syncDir is a test seam: a slow disk is simulated by blocking here.
var syncDir = func(d *os.File) error { return d.Sync() }
