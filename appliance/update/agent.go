// Package update is the box's update agent (appliance/cmd/updated): it pulls signed releases
// from a TUF repository (github.com/theupdateframework/go-tuf/v2: signatures, thresholds, root
// rotation, and the freeze, rollback and mix-and-match defences are the library's), writes them
// through gokrazy's local update API, test-boots the new root, and keeps it only when the health
// gate passes; otherwise gokrazy boots the old root again and the version is never retried
// automatically.
//
// The steps, each recorded in the state file before it starts (see the Phase constants):
//
//	old root:  check → writing (root; boot and MBR only when their hashes changed) →
//	           testboot (POST /update/testboot, /reboot)
//	new root:  gate (health gate until its deadline) → committing (POST /update/switch) → done
//	           or failed: recorded, POST /reboot, gokrazy boots the old root
//
// A test-booted system is told by gokrazy's kernel command line (gokrazy.try_boot_inactive=1):
// there, gokrazy's "inactive" partition is the one running, so the agent never writes a root.
package update

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/theupdateframework/go-tuf/v2/metadata"
	"github.com/theupdateframework/go-tuf/v2/metadata/config"
	"github.com/theupdateframework/go-tuf/v2/metadata/updater"

	"github.com/sie-europe/dnssensor/appliance/bootdev"
	"github.com/sie-europe/dnssensor/internal/gokrazyapi"
	"github.com/sie-europe/dnssensor/internal/tufrepo"
)

// Config configures the agent.
type Config struct {
	RepoURL     string // the TUF repository (metadata at its root, artefacts under targets/)
	Image       string // which image's releases to follow
	TrustedRoot []byte // the root.json baked into the image
	Dir         string // /perm/updated: state.json, tuf/ (the client's metadata)
	MachineID   string // staged rollout: a box installs a release when hash(MachineID) % 100 < rollout
	Device      *gokrazyapi.Client
	Daemons     []Daemon // read by the health gate

	Interval, Jitter time.Duration // between checks: Interval + a random part of Jitter
	Window           *Window       // nil: any time
	GateDeadline     time.Duration // the new root must pass the gate within this
	GateHold         time.Duration // ... and keep passing for this long (a daemon that dies after a minute fails)
	GatePoll         time.Duration // how often the gate reads the health sockets
	HealthTimeout    time.Duration // per health socket read
	// BaselineWait bounds how long a running daemon that does not answer is asked again before
	// the update (the baseline the gate holds the new root to).
	BaselineWait time.Duration

	HTTP *http.Client // artefact downloads; nil: a client with time-outs

	// FirmwareReboot restarts the box through its firmware (gokrazy's /reboot?kexec=off) for
	// every reboot the agent asks for, instead of gokrazy's default kexec: the image's hardware
	// profile decides (updated -reboot), as it does for a push (hardware.Profile.Reboot).
	FirmwareReboot bool

	// Machine facts, replaceable in tests.
	Now        func() time.Time                                 // nil: time.Now
	Sleep      func(ctx context.Context, d time.Duration) error // nil: a timer
	TestBooted func() (bool, error)                             // nil: /proc/cmdline
	BootID     func() (string, error)                           // nil: /proc/sys/kernel/random/boot_id
	Cmdline    func() (string, error)                           // nil: /proc/cmdline
	// RootPartitionSize is the size in bytes of a root partition (gokrazy's two are the same
	// size); nil: the running root's, from /proc/self/mountinfo and /sys. An error leaves the
	// check to gokrazy's write.
	RootPartitionSize func() (int64, error)
	// BootPartition opens the boot partition for reading (nil: partition 1 of the root's disk).
	BootPartition func() (io.ReadCloser, error)
	Logf          func(format string, args ...any)
}

// Agent runs the updates of one box.
type Agent struct {
	cfg Config

	mu sync.Mutex // guards st; never held across disk I/O (the page reads the state meanwhile)
	// saveMu orders the saves: a state file written to disk is never older than one before it.
	saveMu sync.Mutex
	st     *State
	now    chan struct{} // "update now"
}

// ErrStopped is returned by steps cut short by a simulated power cut (tests) or a context end.
var ErrStopped = errors.New("stopped")

// New loads the state.
func New(cfg Config) (*Agent, error) {
	if cfg.RepoURL == "" {
		return nil, errors.New("-repo is required (the TUF repository URL)")
	}
	if u, err := url.Parse(cfg.RepoURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("-repo %q: want http(s)://host/path", cfg.RepoURL)
	}
	if len(cfg.TrustedRoot) == 0 {
		return nil, errors.New("-trusted-root: empty (the image carries it at /etc/updated/root.json when built by gokr-packer publish or with -tuf-root)")
	}
	if cfg.Image == "" {
		return nil, errors.New("-image is required")
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Sleep == nil {
		cfg.Sleep = func(ctx context.Context, d time.Duration) error {
			t := time.NewTimer(d)
			defer t.Stop()
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-t.C:
				return nil
			}
		}
	}
	if cfg.TestBooted == nil {
		cfg.TestBooted = procTestBooted
	}
	if cfg.BootID == nil {
		cfg.BootID = procBootID
	}
	if cfg.Cmdline == nil {
		cfg.Cmdline = func() (string, error) {
			b, err := os.ReadFile("/proc/cmdline")
			return string(b), err
		}
	}
	if cfg.RootPartitionSize == nil {
		cfg.RootPartitionSize = runningRootSize
	}
	if cfg.BootPartition == nil {
		cfg.BootPartition = func() (io.ReadCloser, error) {
			dev, err := bootdev.Find("/proc/cmdline")
			if err != nil {
				return nil, fmt.Errorf("finding the boot partition: %w", err)
			}
			return os.Open(dev)
		}
	}
	if cfg.Logf == nil {
		cfg.Logf = log.Printf
	}
	if cfg.HTTP == nil {
		cfg.HTTP = &http.Client{Transport: &http.Transport{ResponseHeaderTimeout: time.Minute}}
	}
	if cfg.GateDeadline == 0 {
		cfg.GateDeadline = 5 * time.Minute
	}
	if cfg.GateHold < 0 {
		cfg.GateHold = 0
	}
	if cfg.GatePoll == 0 {
		cfg.GatePoll = 5 * time.Second
	}
	if cfg.HealthTimeout == 0 {
		cfg.HealthTimeout = 2 * time.Second
	}
	if cfg.BaselineWait == 0 {
		cfg.BaselineWait = time.Minute
	}
	if cfg.Interval == 0 {
		cfg.Interval = time.Hour
	}
	st, err := loadState(filepath.Join(cfg.Dir, "state.json"))
	if err != nil {
		return nil, err
	}
	return &Agent{cfg: cfg, st: st, now: make(chan struct{}, 1)}, nil
}

func procTestBooted() (bool, error) {
	b, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		return false, err
	}
	return strings.Contains(string(b), "gokrazy.try_boot_inactive=1"), nil
}

func procBootID() (string, error) {
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	return strings.TrimSpace(string(b)), err
}

// State returns a copy of the state (for the page and tests).
func (a *Agent) State() State {
	a.mu.Lock()
	defer a.mu.Unlock()
	b, _ := json.Marshal(a.st)
	var s State
	_ = json.Unmarshal(b, &s)
	return s
}

// update changes the state and writes it; the caller holds no lock. The state lock is released
// before the write: an fsync can take seconds on a busy card, and the health socket (the status
// page, with its time limit) must not wait for it.
func (a *Agent) update(f func(s *State)) error {
	a.saveMu.Lock()
	defer a.saveMu.Unlock()
	a.mu.Lock()
	f(a.st)
	b, err := json.MarshalIndent(a.st, "", "  ")
	a.mu.Unlock()
	if err != nil {
		return err
	}
	return saveState(filepath.Join(a.cfg.Dir, "state.json"), b)
}

// crashPoint is where tests cut the power: a step returns ErrStopped when it says so.
var crashPoint = func(string) bool { return false }

func (a *Agent) point(name string) error {
	if crashPoint(name) {
		return fmt.Errorf("%w at %s", ErrStopped, name)
	}
	return nil
}

// Pause stops automatic updates until Resume (an update already on its way finishes).
func (a *Agent) Pause(paused bool) error {
	return a.update(func(s *State) {
		s.Paused = paused
		what := "updates resumed"
		if paused {
			what = "updates paused"
		}
		s.AddEvent(a.cfg.Now().UTC(), 0, "%s", what)
	})
}

// UpdateNow asks the run loop for a check now, paused or outside the window.
func (a *Agent) UpdateNow() {
	select {
	case a.now <- struct{}{}:
	default:
	}
}

// Resume finishes or abandons what the state file says was under way when the agent last
// stopped (a restart, a power cut, the reboot into the test boot).
func (a *Agent) Resume(ctx context.Context) error {
	st := a.State()
	p := st.Pending
	tb, err := a.cfg.TestBooted()
	if err != nil {
		return fmt.Errorf("is this a test boot? %w", err)
	}
	if st.BootVerify != "" {
		a.verifyBoot()
	}
	if p == nil {
		if tb && st.BuildTimestamp == "" {
			a.cfg.Logf("test boot without an update of ours (a push?): leaving it to whoever asked for it")
		}
		return nil
	}
	running, err := a.cfg.Device.BuildTimestamp(ctx)
	if err != nil {
		return fmt.Errorf("asking gokrazy which build runs: %w", err)
	}
	bootID, err := a.cfg.BootID()
	if err != nil {
		return err
	}
	now := a.cfg.Now().UTC()
	switch p.Phase {
	case PhaseRestoring:
		return a.restoreBoot(ctx)
	case PhaseWriting:
		if p.BootSaved != nil {
			// The boot partition may be written (or half written): the old one goes back first.
			cause := fmt.Errorf("writing version %d was interrupted; starting again with the next check", p.Version)
			if err := a.abandon(ctx, cause); err != cause {
				return err
			}
			return nil
		}
		// The inactive partition is half written; nothing boots it. Start again with the next check.
		return a.update(func(s *State) {
			s.Pending = nil
			s.AddEvent(now, p.Version, "writing version %d was interrupted; starting again with the next check", p.Version)
		})
	case PhaseTestboot:
		switch {
		case tb && running == p.BuildTimestamp:
			if err := a.update(func(s *State) {
				s.Pending.Phase, s.Pending.GateStarted, s.Pending.Since = PhaseGate, now, now
				s.AddEvent(now, p.Version, "test boot of version %d: health gate started", p.Version)
			}); err != nil {
				return err
			}
			return a.gate(ctx)
		case tb:
			return a.fail(ctx, fmt.Sprintf("the test boot runs build %s, not %s", running, p.BuildTimestamp), true)
		case bootID == p.BootID:
			// The agent restarted before the reboot: ask again (idempotent).
			return a.testboot(ctx)
		case p.Attempts < 2:
			// A power cut may have come before gokrazy recorded the test boot request.
			a.cfg.Logf("version %d: back on the old root without a test boot; requesting it again", p.Version)
			return a.testboot(ctx)
		default:
			return a.fail(ctx, "the new root did not reach its health gate (it crashed or hung in the test boot, and gokrazy went back to the old root)", false)
		}
	case PhaseGate:
		if tb && running == p.BuildTimestamp {
			return a.gate(ctx) // the agent restarted inside the test boot: same deadline
		}
		return a.fail(ctx, "the test boot ended before its health gate decided (hang, watchdog reset or power cut)", false)
	case PhaseCommitting:
		if tb {
			return a.commit(ctx) // switch again: idempotent
		}
		if running == p.BuildTimestamp {
			return a.committed() // the switch landed, the record did not
		}
		return a.fail(ctx, "the switch to the new root did not take effect", false)
	}
	return fmt.Errorf("state.json: unknown phase %q", p.Phase)
}

// Check looks for a release and installs it: the whole way to the reboot into the test boot.
// force ignores pause and the maintenance window (update now).
func (a *Agent) Check(ctx context.Context, force bool) error {
	tb, err := a.cfg.TestBooted()
	if err != nil {
		return err
	}
	st := a.State()
	if st.Pending != nil {
		return nil // Resume's business
	}
	if tb && st.BuildTimestamp == "" {
		return nil // someone else's test boot (a push): not ours to touch
	}
	now := a.cfg.Now().UTC()
	if !force && st.Paused {
		return nil
	}
	if !force && a.cfg.Window != nil && !a.cfg.Window.Contains(now) {
		return nil
	}
	result, err := a.check(ctx, st, tb)
	_ = a.update(func(s *State) {
		s.LastCheck = now
		s.LastResult = result
		s.LastError = ""
		if err != nil {
			s.LastError = err.Error()
		}
	})
	if err != nil && !errors.Is(err, ErrStopped) {
		a.cfg.Logf("update check: %v", err)
	} else if result != "" && result != st.LastResult {
		a.cfg.Logf("update check: %s", result) // once per change: hourly "up to date" says nothing
	}
	return err
}

func (a *Agent) tufUpdater() (*updater.Updater, error) {
	metaDir := filepath.Join(a.cfg.Dir, "tuf")
	trusted := a.cfg.TrustedRoot
	// The newest root this box verified (after rotations) is a better start than the baked one;
	// go-tuf would otherwise overwrite it with the baked root and walk the chain again.
	if b, err := os.ReadFile(filepath.Join(metaDir, "root.json")); err == nil {
		if _, err := metadata.Root().FromBytes(b); err == nil {
			trusted = b
		}
	}
	cfg, err := config.New(a.cfg.RepoURL, trusted)
	if err != nil {
		return nil, err
	}
	cfg.LocalMetadataDir = metaDir
	cfg.LocalTargetsDir = filepath.Join(metaDir, "targets") // unused: artefacts stream to gokrazy
	if err := cfg.SetDefaultFetcherHTTPClient(a.cfg.HTTP); err != nil {
		return nil, err
	}
	up, err := updater.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("trusted root: %w", err)
	}
	up.UnsafeSetRefTime(a.cfg.Now().UTC()) // the agent's clock, so tests can move it
	return up, nil
}

func (a *Agent) check(ctx context.Context, st State, testBooted bool) (string, error) {
	up, err := a.tufUpdater()
	if err != nil {
		return "", a.explain(err)
	}
	if err := up.Refresh(); err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			return "", fmt.Errorf("repository %s unreachable (retried with back-off): %w", a.cfg.RepoURL, err)
		}
		return "", a.explain(fmt.Errorf("repository %s refused: %w", a.cfg.RepoURL, err))
	}
	targets := map[string]*metadata.TargetFiles{}
	for _, n := range []string{tufrepo.RootImg, tufrepo.BootImg, tufrepo.MBRImg} {
		tf, err := up.GetTargetInfo(tufrepo.TargetPath(a.cfg.Image, n))
		if err != nil {
			return "", fmt.Errorf("repository has no %s for %s: %w", n, a.cfg.Image, err)
		}
		targets[n] = tf
	}
	rel, ok := tufrepo.Latest(map[string]*metadata.TargetFiles{tufrepo.TargetPath(a.cfg.Image, tufrepo.RootImg): targets[tufrepo.RootImg]}, a.cfg.Image)
	if !ok || rel.Image != a.cfg.Image || rel.BuildTimestamp == "" {
		return "", fmt.Errorf("release metadata of %s is missing or damaged", a.cfg.Image)
	}
	running, err := a.cfg.Device.BuildTimestamp(ctx)
	if err != nil {
		return "", err
	}
	if bt, err := time.Parse(time.RFC3339, running); err == nil && a.cfg.Now().Before(bt) {
		// Expiry checks against a clock in the past would accept a frozen repository.
		return "", fmt.Errorf("the clock (%s) is behind the running build (%s): not set yet? (NTP)", a.cfg.Now().UTC().Format(time.RFC3339), running)
	}
	switch {
	case rel.BuildTimestamp == running:
		if st.Version != rel.Version {
			// Flashed with this release: adopt it, so older ones count as rollbacks from now on.
			_ = a.update(func(s *State) { s.Version, s.BuildTimestamp = rel.Version, rel.BuildTimestamp })
		}
		return fmt.Sprintf("up to date: version %d runs", rel.Version), nil
	case rel.Version < st.Version:
		return "", fmt.Errorf("refused version %d: older than the installed version %d (rollback)", rel.Version, st.Version)
	case rel.Version == st.Version:
		return fmt.Sprintf("up to date: version %d", rel.Version), nil
	}
	if f, ok := st.FailedVersion(rel.Version); ok {
		return fmt.Sprintf("version %d failed on %s (%s); not retried: publish a higher version", rel.Version, f.At.Format(time.RFC3339), f.Reason), nil
	}
	if b := Bucket(a.cfg.MachineID); b >= rel.Rollout {
		return fmt.Sprintf("version %d is rolled out to %d%% of boxes; this one is at %d%%", rel.Version, rel.Rollout, b), nil
	}
	if size, err := a.cfg.RootPartitionSize(); err == nil && size > 0 && targets[tufrepo.RootImg].Length > size {
		// gokrazy would write the partition full and fail at its end: refuse before the first
		// byte, and do not count it as the release failing on this box.
		return "", fmt.Errorf("refused version %d: its root image is %d bytes and does not fit the root partition (%d bytes): publish a smaller image, or reflash with larger root partitions",
			rel.Version, targets[tufrepo.RootImg].Length, size)
	}
	if testBooted {
		// A committed test boot still runs with the old command line, under which gokrazy's
		// "inactive" root is the running one: boot once more before writing anything.
		_ = a.update(func(s *State) {
			s.AddEvent(a.cfg.Now().UTC(), rel.Version, "version %d found; rebooting out of the committed test boot first", rel.Version)
		})
		a.reboot(ctx, false)
		return fmt.Sprintf("version %d found; rebooting before writing it", rel.Version), nil
	}
	return "", a.install(ctx, rel, targets, st)
}

// explain names a full /perm, where the TUF client keeps its metadata: nothing is changed and
// the next check tries again.
func (a *Agent) explain(err error) error {
	if errors.Is(err, syscall.ENOSPC) {
		return fmt.Errorf("%s is full, the update waits for room (what fills /perm? the spool's quota): %w", a.cfg.Dir, err)
	}
	return err
}

// Bucket places a machine in 0..99 for staged rollouts; the same boxes go first every time.
func Bucket(machineID string) int {
	h := sha256.Sum256([]byte("dnssensor-rollout\x00" + machineID))
	return int(binary.BigEndian.Uint64(h[:8]) % 100)
}

func (a *Agent) install(ctx context.Context, rel tufrepo.Custom, targets map[string]*metadata.TargetFiles, st State) error {
	now := a.cfg.Now().UTC()
	if err := a.update(func(s *State) {
		s.Pending = &Pending{Version: rel.Version, BuildTimestamp: rel.BuildTimestamp, Phase: PhaseWriting, Since: now}
		s.AddEvent(now, rel.Version, "installing version %d (build %s)", rel.Version, rel.BuildTimestamp)
	}); err != nil {
		return err
	}
	if err := a.point("writing"); err != nil {
		return err
	}
	if _, err := a.cfg.Device.Features(ctx); err != nil {
		return a.abandon(ctx, err)
	}
	if err := a.step("downloading and writing " + tufrepo.RootImg); err != nil {
		return err
	}
	if err := a.stream(ctx, targets[tufrepo.RootImg], "/update/root"); err != nil {
		return a.abandon(ctx, err)
	}
	if err := a.point("root written"); err != nil {
		return err
	}
	for _, w := range []struct {
		name, path string
		have       *string
	}{{tufrepo.BootImg, "/update/bootonly", &st.BootSHA256}, {tufrepo.MBRImg, "/update/mbr", &st.MBRSHA256}} {
		tf := targets[w.name]
		sum := hex.EncodeToString(tf.Hashes["sha256"])
		if sum == *w.have && !(w.name == tufrepo.BootImg && a.cmdlineWorn()) {
			continue
		}
		// Boot partition and MBR are written in place, not beside the running ones: verified in
		// full before the first byte goes out.
		if err := a.step("downloading " + w.name); err != nil {
			return err
		}
		data, err := a.download(ctx, tf)
		if err != nil {
			return a.abandon(ctx, err)
		}
		if w.name == tufrepo.BootImg {
			if err := a.saveBoot(int64(len(data)), st.BootSHA256); err != nil {
				if errors.Is(err, ErrStopped) {
					return err
				}
				return a.abandon(ctx, fmt.Errorf("keeping a copy of the boot partition before writing it: %w", err))
			}
		}
		if err := a.step("writing " + w.name); err != nil {
			return err
		}
		if _, err := a.cfg.Device.Put(ctx, w.path, strings.NewReader(string(data))); err != nil {
			return a.abandon(ctx, err)
		}
		if err := a.update(func(s *State) {
			if w.name == tufrepo.BootImg {
				s.BootSHA256 = sum
			} else {
				s.MBRSHA256 = sum
			}
		}); err != nil {
			return err
		}
		if err := a.point(w.name + " written"); err != nil {
			return err
		}
	}
	base, silent := a.takeBaseline(ctx)
	if err := a.update(func(s *State) {
		s.Pending.Baseline, s.Pending.Step = base, ""
		s.AddEvent(a.cfg.Now().UTC(), s.Pending.Version, "%s", baselineEvent(base, silent))
	}); err != nil {
		return err
	}
	return a.testboot(ctx)
}

// cmdlineWorn tells whether gokrazy's edits of earlier test boots are left on the command line.
// gokrazy edits cmdline.txt in place, inside the file's length (the packer leaves 64 bytes of
// room): a test boot appends " gokrazy.try_boot_inactive=1" (28 bytes), which the test-booted
// system turns into " gokrazy.switch_on_boot=1" and never removes. The third test boot's flag
// no longer fits, is cut off, and the box boots its old root instead (seen in QEMU: the third
// update failed as "the test boot runs the old build"). Writing the release's boot partition
// again gives a fresh command line (gokrazy's bootonly sets root= to the running root).
func (a *Agent) cmdlineWorn() bool {
	c, err := a.cfg.Cmdline()
	return err != nil || strings.Contains(c, "gokrazy.switch_on_boot=1")
}

// abandon drops a pending update that failed before the test boot: nothing boots the partial
// write, and the next check tries again (a download error is not the release's fault). A boot
// partition written (or half written) for it is restored first.
func (a *Agent) abandon(ctx context.Context, cause error) error {
	restore := false
	if err := a.update(func(s *State) {
		s.AddEvent(a.cfg.Now().UTC(), s.Pending.Version, "abandoned before the test boot: %v", cause)
		if s.Pending.BootSaved != nil {
			s.Pending.Phase, s.Pending.Outcome, restore = PhaseRestoring, "abandoned", true
			return
		}
		s.Pending = nil
	}); err != nil {
		return err
	}
	if restore {
		if err := a.restoreBoot(ctx); err != nil {
			return err
		}
	}
	return cause
}

// step records where the writing phase is.
func (a *Agent) step(what string) error {
	return a.update(func(s *State) { s.Pending.Step = what })
}

func (a *Agent) testboot(ctx context.Context) error {
	bootID, err := a.cfg.BootID()
	if err != nil {
		return err
	}
	now := a.cfg.Now().UTC()
	if err := a.update(func(s *State) {
		s.Pending.Phase, s.Pending.BootID, s.Pending.Since = PhaseTestboot, bootID, now
		s.Pending.Attempts++
	}); err != nil {
		return err
	}
	if err := a.point("testboot"); err != nil {
		return err
	}
	if err := a.cfg.Device.Post(ctx, "/update/testboot"); err != nil {
		return err // the next Resume (same boot) asks again
	}
	if err := a.point("reboot"); err != nil {
		return err
	}
	_ = a.update(func(s *State) {
		s.AddEvent(now, s.Pending.Version, "rebooting into a test boot of version %d", s.Pending.Version)
	})
	a.reboot(ctx, false)
	return nil
}

// gate runs the health gate in the test boot: it must pass before GateDeadline and then keep
// passing for GateHold.
func (a *Agent) gate(ctx context.Context) error {
	p := a.State().Pending
	deadline := p.GateStarted.Add(a.cfg.GateDeadline)
	var last string
	var passing time.Time // since when the gate passes without a break; zero: it does not
	for {
		if err := a.point("gate"); err != nil {
			return err
		}
		now := a.cfg.Now()
		last = gateOnce(ctx, a.cfg.Daemons, a.cfg.HealthTimeout, p.Baseline)
		switch {
		case last != "":
			passing = time.Time{}
		case passing.IsZero():
			passing = now
		}
		if !passing.IsZero() && now.Sub(passing) >= a.cfg.GateHold {
			return a.commit(ctx)
		}
		// The gate must start passing before the deadline, then hold without a break.
		if passing.IsZero() && !now.Before(deadline) {
			return a.fail(ctx, "health gate not passed within "+a.cfg.GateDeadline.String()+": "+last, true)
		}
		if err := a.cfg.Sleep(ctx, a.cfg.GatePoll); err != nil {
			return err
		}
	}
}

func (a *Agent) commit(ctx context.Context) error {
	if err := a.update(func(s *State) { s.Pending.Phase = PhaseCommitting }); err != nil {
		return err
	}
	if err := a.point("committing"); err != nil {
		return err
	}
	if err := a.cfg.Device.Post(ctx, "/update/switch"); err != nil {
		return err // Resume (still test-booted) switches again; a reboot instead rolls back
	}
	if err := a.point("switched"); err != nil {
		return err
	}
	return a.committed()
}

func (a *Agent) committed() error {
	now := a.cfg.Now().UTC()
	a.cfg.Logf("version %d committed", a.State().Pending.Version)
	if err := a.update(func(s *State) {
		s.Version, s.BuildTimestamp = s.Pending.Version, s.Pending.BuildTimestamp
		s.AddEvent(now, s.Pending.Version, "version %d committed", s.Pending.Version)
		s.Pending = nil
	}); err != nil {
		return err
	}
	_ = os.Remove(filepath.Join(a.cfg.Dir, bootCopyFile))
	return nil
}

// fail records the pending version as failed; reboot when running the test boot, so gokrazy
// boots the old root again.
func (a *Agent) fail(ctx context.Context, reason string, reboot bool) error {
	now := a.cfg.Now().UTC()
	var v int64
	restore := false
	if err := a.update(func(s *State) {
		v = s.Pending.Version
		s.Failed = append(s.Failed, Failure{Version: v, BuildTimestamp: s.Pending.BuildTimestamp, At: now, Reason: reason})
		s.AddEvent(now, v, "version %d failed: %s", v, reason)
		if s.Pending.BootSaved != nil {
			s.Pending.Phase, s.Pending.Outcome, restore = PhaseRestoring, "failed", true
			return
		}
		s.Pending = nil
	}); err != nil {
		return err
	}
	a.cfg.Logf("version %d failed: %s", v, reason)
	if restore {
		return a.restoreBoot(ctx) // and the reboot
	}
	if !reboot {
		return nil
	}
	if err := a.point("rollback"); err != nil {
		return err
	}
	a.reboot(ctx, false)
	return nil
}

// reboot asks gokrazy to restart the box: through the firmware when the profile says so or
// when the caller needs it (viaFirmware), else gokrazy's default. An error is only logged:
// gokrazy may close the connection as it goes down, and the state saved before the call tells
// the next start what to do either way.
func (a *Agent) reboot(ctx context.Context, viaFirmware bool) {
	path := "/reboot"
	if viaFirmware || a.cfg.FirmwareReboot {
		path += "?kexec=off"
	}
	if err := a.cfg.Device.Post(ctx, path); err != nil {
		a.cfg.Logf("reboot request: %v (gokrazy may have closed the connection going down)", err)
	}
}

// targetURL is where a consistent-snapshot repository keeps an artefact: targets/IMAGE/HASH.NAME.
func (a *Agent) targetURL(tf *metadata.TargetFiles) string {
	dir, name := filepath.Split(tf.Path)
	return strings.TrimRight(a.cfg.RepoURL, "/") + "/targets/" + dir + hex.EncodeToString(tf.Hashes["sha256"]) + "." + name
}

// openTarget starts a download of at most the signed length.
func (a *Agent) openTarget(ctx context.Context, tf *metadata.TargetFiles) (io.ReadCloser, error) {
	if len(tf.Hashes["sha256"]) != sha256.Size {
		return nil, fmt.Errorf("target %s has no SHA-256 in the signed metadata", tf.Path)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, a.targetURL(tf), nil)
	if err != nil {
		return nil, err
	}
	resp, err := a.cfg.HTTP.Do(req)
	if err != nil {
		return nil, fmt.Errorf("downloading %s: %w", tf.Path, err)
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		return nil, fmt.Errorf("downloading %s: %s", tf.Path, resp.Status)
	}
	return resp.Body, nil
}

func (a *Agent) download(ctx context.Context, tf *metadata.TargetFiles) ([]byte, error) {
	body, err := a.openTarget(ctx, tf)
	if err != nil {
		return nil, err
	}
	defer body.Close()
	data, err := io.ReadAll(io.LimitReader(body, tf.Length+1))
	if err != nil {
		return nil, fmt.Errorf("downloading %s: %w", tf.Path, err)
	}
	if err := tf.VerifyLengthHashes(data); err != nil {
		return nil, fmt.Errorf("target %s refused: it does not match its signed length and hash (tampered or damaged): %v", tf.Path, err)
	}
	return data, nil
}

// stream sends a target to gokrazy while hashing it: the root goes to the inactive partition,
// which nothing boots until the test boot, so it need not be held anywhere first. A stream that
// does not match the signed length and SHA-256 is refused before the test boot.
func (a *Agent) stream(ctx context.Context, tf *metadata.TargetFiles, path string) error {
	body, err := a.openTarget(ctx, tf)
	if err != nil {
		return err
	}
	defer body.Close()
	lim := io.LimitReader(body, tf.Length+1)
	sum, err := a.cfg.Device.Put(ctx, path, lim)
	if err != nil {
		return err
	}
	if want := hex.EncodeToString(tf.Hashes["sha256"]); sum != want {
		return fmt.Errorf("target %s refused: it does not match its signed SHA-256 (tampered or damaged): got %s, signed %s", tf.Path, sum, want)
	}
	return nil
}

// Run resumes, then checks every Interval (plus jitter) until ctx ends; UpdateNow checks at once.
func (a *Agent) Run(ctx context.Context) error {
	if err := a.Resume(ctx); err != nil {
		a.cfg.Logf("resuming: %v", err)
	}
	var r retry
	for {
		wait := r.next(a.cfg.Interval, a.State().LastError != "")
		if wait == a.cfg.Interval && a.cfg.Jitter > 0 {
			wait += rand.N(a.cfg.Jitter)
		}
		force := false
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		case <-a.now:
			t.Stop()
			force = true
		}
		if a.State().Pending != nil {
			if err := a.Resume(ctx); err != nil {
				a.cfg.Logf("resuming: %v", err)
			}
			continue
		}
		_ = a.Check(ctx, force)
	}
}

// retry is the run loop's wait after a check: the interval after a good one; after failures 1,
// 2, 4 … minutes, never more than the interval, so a box whose repository was away a moment
// catches up soon and a fleet whose repository is down does not poll it every minute for hours.
type retry struct{ backoff time.Duration }

func (r *retry) next(interval time.Duration, failed bool) time.Duration {
	if !failed {
		r.backoff = 0
		return interval
	}
	if r.backoff == 0 {
		r.backoff = time.Minute
	} else if r.backoff < interval {
		r.backoff *= 2
	}
	return min(r.backoff, interval)
}

// runningRootSize is the size of the partition mounted at / (gokrazy mounts its root
// partition's squashfs there directly).
func runningRootSize() (int64, error) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		// ID PARENT MAJOR:MINOR ROOT MOUNTPOINT ...
		f := strings.Fields(line)
		if len(f) < 5 || f[4] != "/" {
			continue
		}
		s, err := os.ReadFile("/sys/dev/block/" + f[2] + "/size")
		if err != nil {
			return 0, fmt.Errorf("root %s is not a block device: %w", f[2], err)
		}
		var sectors int64
		if _, err := fmt.Sscan(string(s), &sectors); err != nil {
			return 0, fmt.Errorf("/sys/dev/block/%s/size: %w", f[2], err)
		}
		return sectors * 512, nil // the kernel counts 512-byte sectors whatever the device's
	}
	return 0, errors.New("no mount at / in /proc/self/mountinfo")
}
