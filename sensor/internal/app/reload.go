package app

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sie-europe/dnssensor/internal/health"
)

// reloadPoll is how often the -config file is looked at. statusd replaces it atomically
// (rename), so a read never sees half a file; a second keeps a change well within the five
// seconds the status page promises, and costs one small read.
var reloadPoll = time.Second

// reloadState follows the -config file of a long-running sensord across reloads. A changed file
// that parses and validates is applied in-process: the running capture and pipeline are drained
// and closed as on SIGTERM (pending queries flushed as unanswered, the spool's segment sealed),
// then sensord runs again with the new options, the privacy self-test first. A file that does
// not validate is refused, the running configuration stays, and the health check
// "configuration" names the key at fault until a good file replaces it.
//
// In-process rather than exit 0 and a restart by gokrazy: the supervisor waits a second or more
// before restarting, the health socket would vanish meanwhile, and a Debian host's systemd unit
// would need the same policy; here the capture gap is the time between closing the old rings and
// opening the new ones (measured, reload_capture_gap_seconds).
type reloadState struct {
	path string
	args []string

	mu          sync.Mutex
	applied     []byte // the content the running options came from
	appliedAt   time.Time
	refused     []byte // the last refused content; nil: none since the last applied one
	refusedErr  error
	refusedAt   time.Time
	lastGap     time.Duration
	appliedN    atomic.Uint64
	refusedN    atomic.Uint64
	gapObserved atomic.Bool
}

// newReloadState watches path, whose content data gave the running options.
func newReloadState(path string, args []string, data []byte) *reloadState {
	return &reloadState{path: path, args: args, applied: data, appliedAt: time.Now()}
}

// watch polls the file until ctx ends, or until it holds a new configuration that validates,
// which it returns with the file's content.
func (r *reloadState) watch(ctx context.Context, logf func(string, ...any)) (*Options, []byte) {
	t := time.NewTicker(reloadPoll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil, nil
		case <-t.C:
		}
		data, err := os.ReadFile(r.path)
		r.mu.Lock()
		same := err == nil && (bytes.Equal(data, r.applied) || (r.refused != nil && bytes.Equal(data, r.refused)))
		r.mu.Unlock()
		if same {
			continue
		}
		o, err := r.parse(data, err)
		if err != nil {
			if data == nil {
				data = []byte{} // a missing file is refused once, not every poll
			}
			r.mu.Lock()
			r.refused, r.refusedErr, r.refusedAt = data, err, time.Now()
			r.mu.Unlock()
			r.refusedN.Add(1)
			logf("config %s changed but is refused, the running configuration stays: %v", r.path, err)
			continue
		}
		return o, data
	}
}

// parse validates a new file's content as Main would at start-up.
func (r *reloadState) parse(data []byte, readErr error) (*Options, error) {
	if readErr != nil {
		return nil, fmt.Errorf("-config: %v", readErr)
	}
	if why := notConfigured(r.args); why != "" {
		return nil, fmt.Errorf("-config: %s", why)
	}
	o, err := ParseFlags(r.args, io.Discard)
	if err != nil {
		return nil, err
	}
	return o, nil
}

// applied records that the content data is now running, the capture having stopped for gap.
func (r *reloadState) apply(data []byte, gap time.Duration, measured bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.applied, r.appliedAt, r.refused, r.refusedErr = data, time.Now(), nil, nil
	if measured {
		r.lastGap = gap
		r.gapObserved.Store(true)
	}
	r.appliedN.Add(1)
}

// probe is the health check "configuration".
func (r *reloadState) probe(time.Time) health.Result {
	r.mu.Lock()
	defer r.mu.Unlock()
	at := r.appliedAt.UTC().Format(time.RFC3339)
	if r.refusedErr != nil {
		return health.Result{OK: false,
			Detail: fmt.Sprintf("%s changed at %s but was refused: %v; the configuration applied at %s keeps running", r.path, r.refusedAt.UTC().Format(time.RFC3339), r.refusedErr, at),
			Fix:    "correct the setting named in the detail in " + r.path + " (or revert it to the previous file); sensord applies it within seconds"}
	}
	d := fmt.Sprintf("%s applied at %s (%d reloads since start)", r.path, at, r.appliedN.Load())
	if r.gapObserved.Load() {
		d += fmt.Sprintf("; the last reload stopped the capture for %v", r.lastGap.Round(time.Microsecond))
	}
	return health.Result{OK: true, Detail: d}
}

// watchable reports whether o is a long-running sensord whose -config file can be followed.
func watchable(o *Options) bool {
	return (len(o.Live.Ifaces) > 0 || o.Live.Dnstap != "") && o.Live.DnstapFile == ""
}

// runReloading runs sensord, and again with each new configuration the -config file gets, until
// ctx ends or a run fails.
func runReloading(ctx context.Context, o *Options, config string, args []string, stdout, stderr io.Writer) error {
	logf := func(format string, a ...any) { fmt.Fprintf(stderr, "sensord: "+format+"\n", a...) }
	data, err := os.ReadFile(config)
	if err != nil {
		return fmt.Errorf("-config: %v", err)
	}
	rs := newReloadState(config, args, data)
	for {
		o.reload = rs
		rctx, cancel := context.WithCancel(ctx)
		type next struct {
			o    *Options
			data []byte
		}
		found := make(chan next, 1)
		watched := make(chan struct{})
		go func() {
			defer close(watched)
			if n, d := rs.watch(rctx, logf); n != nil {
				found <- next{n, d}
				cancel() // drain and close this run
			}
		}()
		err := Run(rctx, o, stdout, stderr)
		cancel()
		<-watched
		if ctx.Err() != nil {
			return err
		}
		var n next
		select {
		case n = <-found:
		default:
			return err
		}
		if err != nil {
			return err
		}
		closedAt := o.Live.closedAt
		// The tracker of query sources carries over: its window is about the tap, not the
		// configuration.
		n.o.Health.cands.Store(o.Health.cands.Load())
		n.o.Health.now = o.Health.now
		n.o.selfTest.after = o.selfTest.after
		n.o.reloaded = true
		if len(n.o.Live.Ifaces) > 0 {
			n.o.Live.onOpen = func() {
				gap := time.Since(closedAt)
				rs.apply(n.data, gap, !closedAt.IsZero())
				logf("config %s applied; capture gap %v (rings closed → reopened)", config, gap.Round(time.Microsecond))
			}
		} else {
			// A dnstap socket: applied as the run starts.
			rs.apply(n.data, 0, false)
			logf("config %s applied", config)
		}
		o = n.o
	}
}
