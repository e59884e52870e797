package app

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/sie-europe/dnssensor/internal/health"
	"github.com/sie-europe/dnssensor/nmsg/dnsqr"
	"github.com/sie-europe/dnssensor/sensor/internal/canary"
	"github.com/sie-europe/dnssensor/sensor/internal/pipeline"
)

// selfTestEvery is how often the privacy self-test runs again after start-up: a running
// process's code does not change, but its memory can be corrupted, and an hourly run costs a few
// milliseconds.
const selfTestEvery = time.Hour

// runSelfTest is the self-test; a seam for tests that need a run to fail.
var runSelfTest = canary.Run

// Self-test outcomes, the label of dnssensor_sensord_privacy_selftest_runs_total.
var selfTestKinds = []string{"pass", "leak", "no_records"}

// selfTestState is the privacy self-test's verdict for this run of sensord, and the gate that
// withholds every record once a run has failed. Safe for concurrent use.
type selfTestState struct {
	// after is the hourly timer; a seam for tests (virtual clock).
	after func(time.Duration) <-chan time.Time

	failed   atomic.Bool // sticky: a failed run is a defect of this build, not a passing mood
	withheld atomic.Uint64
	last     atomic.Pointer[canary.Result]
	failure  atomic.Pointer[canary.Result] // the first failed run
	at       atomic.Pointer[time.Time]     // when the last run finished
	runs     [3]atomic.Uint64              // by selfTestKinds
}

// check runs the self-test once with cfg and records the verdict.
func (s *selfTestState) check(cfg pipeline.Config, logf func(string, ...any)) {
	r := runSelfTest(cfg)
	now := time.Now()
	s.last.Store(&r)
	s.at.Store(&now)
	kind := 0
	switch r.Kind {
	case "":
	case "leak":
		kind = 1
	default:
		kind = 2
	}
	first := false
	if !r.OK {
		s.failure.CompareAndSwap(nil, &r)
		first = !s.failed.Swap(true)
	}
	s.runs[kind].Add(1) // last: a reader that sees the run sees its verdict
	switch {
	case r.OK:
		logf("privacy self-test passed in %v: %s", r.Took.Round(time.Microsecond), r.Summary())
	case first:
		logf("privacy self-test FAILED: %s; every record is withheld from now on (counted as dropped, stage output, reason privacy_selftest_failed)", r.Summary())
	default:
		logf("privacy self-test failed again: %s", r.Summary())
	}
}

// loop runs the self-test every selfTestEvery until ctx ends.
func (s *selfTestState) loop(ctx context.Context, cfg pipeline.Config, logf func(string, ...any)) {
	after := s.after
	if after == nil {
		after = time.After
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-after(selfTestEvery):
			s.check(cfg, logf)
		}
	}
}

// gate passes records to emit while no self-test has failed, and counts them as withheld after.
func (s *selfTestState) gate(emit pipeline.Emit) pipeline.Emit {
	return func(r *dnsqr.Record) error {
		if s.failed.Load() {
			s.withheld.Add(1)
			return nil
		}
		return emit(r)
	}
}

// err is the run's error when a self-test failed: records were withheld, and the exit status
// must say so.
func (s *selfTestState) err() error {
	if !s.failed.Load() {
		return nil
	}
	return fmt.Errorf("privacy self-test failed, %d records withheld: %s", s.withheld.Load(), s.failure.Load().Summary())
}

// statsPart is the self-test's part of the final stats line.
func (s *selfTestState) statsPart() string {
	if !s.failed.Load() {
		return ""
	}
	return fmt.Sprintf(" selftest_withheld=%d", s.withheld.Load())
}

// probe is the health check "privacy self-test".
func (s *selfTestState) probe(time.Time) health.Result {
	r := s.last.Load()
	if r == nil {
		return health.Result{OK: false, Detail: "the privacy self-test has not run yet", Fix: "wait for sensord's start-up to finish; if this stays, see sensord's log"}
	}
	at := s.at.Load().UTC().Format(time.RFC3339)
	if f := s.failure.Load(); f != nil {
		r = f
		fix := "this build of sensord lets client data through its scrubber: nothing is shipped until it is replaced; roll back to the previous image (or install a fixed one) and report this detail to SIE Europe"
		if r.Kind == "no_records" {
			fix = "the configuration drops the resolver's own transactions, so the privacy of what would be kept cannot be checked: fix -qname-exclude/-qname-include, -rd and -resolver; nothing is shipped until then"
		}
		return health.Result{OK: false,
			Detail: fmt.Sprintf("failed (last run %s): %s; %d records withheld", at, r.Summary(), s.withheld.Load()),
			Fix:    fix}
	}
	return health.Result{OK: true, Detail: fmt.Sprintf("passed (last run %s, %d runs, %v): %s",
		at, s.runs[0].Load(), r.Took.Round(time.Microsecond), r.Summary())}
}
