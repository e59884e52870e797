// Package procprio lets the capture path start ahead of the other programs. At every boot the
// box starts all its programs at once; on a small or emulated CPU they share it evenly, and the
// capture waits for netconfd's management address and tap ports and for sensord's start behind
// the status page, the clock, the updater and the uplink starting beside them. A program whose
// image sets DNSSENSOR_START_NICE (images/*.json, "env") runs at that nice value from its first
// instructions until it calls EndBoost, once it has done its start's share of the capture path;
// then it runs at the nice it was started with. The images also start the programs off the
// capture path at a positive value (timed, updated, uplinkd at 10); they never call EndBoost, and
// MaxBoost ends theirs.
//
// Linux keeps the nice value per thread: setpriority(PRIO_PROCESS, tid) changes one thread, and
// a new thread takes its creator's. A Go program already runs several threads when main starts,
// so every thread in /proc/self/task is set, again until a pass finds none it had not set (one
// created meanwhile by a thread not yet set).
package procprio

import (
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Env is the variable StartBoost reads: the nice value (-20..19) to start at.
const Env = "DNSSENSOR_START_NICE"

// Set gives every thread of the process the nice value n.
func Set(n int) error {
	done := map[int]bool{}
	for {
		tids, err := threads()
		if err != nil {
			return err
		}
		fresh := false
		for _, tid := range tids {
			if done[tid] {
				continue
			}
			fresh = true
			// ESRCH: the thread ended between the listing and now.
			if err := unix.Setpriority(unix.PRIO_PROCESS, tid, n); err != nil && err != unix.ESRCH {
				return fmt.Errorf("nice %d for thread %d: %w", n, tid, err)
			}
			done[tid] = true
		}
		if !fresh {
			return nil
		}
	}
}

// Nice returns the nice value of the calling thread's process as /proc/self/stat shows it
// (the main thread's).
func Nice() (int, error) {
	b, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		return 0, err
	}
	return niceOf(b)
}

// niceOf reads the nice field (19th) of a /proc/…/stat line; the command name before it may hold
// spaces and parentheses, so the fields are counted from the last ')'.
func niceOf(stat []byte) (int, error) {
	s := string(stat)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("stat %q: no command name", s)
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 17 {
		return 0, fmt.Errorf("stat %q: %d fields after the name", s, len(f))
	}
	return strconv.Atoi(f[16])
}

func threads() ([]int, error) {
	ents, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return nil, err
	}
	tids := make([]int, 0, len(ents))
	for _, e := range ents {
		if tid, err := strconv.Atoi(e.Name()); err == nil {
			tids = append(tids, tid)
		}
	}
	return tids, nil
}

var boost struct {
	sync.Mutex
	on    bool
	after int // the nice to go back to
}

// StartBoost sets the process to the nice value in DNSSENSOR_START_NICE (getenv reads it), when
// that is set, until EndBoost. It returns what it did, for the program's log ("" when the
// variable is unset); a bad value or a refused change is an error, and the program runs on at
// the nice it has.
func StartBoost(getenv func(string) string) (string, error) {
	v := getenv(Env)
	if v == "" {
		return "", nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < -20 || n > 19 {
		return "", fmt.Errorf("%s=%q: want a nice value from -20 to 19", Env, v)
	}
	before, err := Nice()
	if err != nil {
		return "", err
	}
	boost.Lock()
	defer boost.Unlock()
	if err := Set(n); err != nil {
		Set(before) // the threads set so far go back
		return "", fmt.Errorf("%s=%d: %w", Env, n, err)
	}
	boost.on, boost.after = true, before
	// The bound is the rule that no program keeps its head start: one whose start never
	// reaches its EndBoost (a capture port that never appears, an input mode without the call)
	// would otherwise run ahead of the status page and the updater for as long as it runs.
	time.AfterFunc(MaxBoost, func() { EndBoost() })
	return fmt.Sprintf("starting at nice %d (%s), %d once started or after %v", n, Env, before, MaxBoost), nil
}

// Boost is a program's first call: StartBoost with the environment, its outcome on one line of
// stderr under the program's name (a refused value is logged and the program starts without a
// boost: a start at the wrong priority must not become no start at all).
func Boost(prog string, stderr io.Writer) {
	if msg, err := StartBoost(os.Getenv); err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", prog, err)
	} else if msg != "" {
		fmt.Fprintf(stderr, "%s: %s\n", prog, msg)
	}
}

// MaxBoost bounds a boost: EndBoost is called after it in any case.
var MaxBoost = 2 * time.Minute

// EndBoost puts the nice value StartBoost changed back; it does nothing without a boost, and
// only the first call after one counts (MaxBoost's call is one).
func EndBoost() error {
	boost.Lock()
	defer boost.Unlock()
	if !boost.on {
		return nil
	}
	boost.on = false
	return Set(boost.after)
}
