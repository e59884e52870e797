package update

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sigstore/sigstore/pkg/signature"
	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/sie-europe/dnssensor/internal/gokrazyapi"
	"github.com/sie-europe/dnssensor/internal/health"
	"github.com/sie-europe/dnssensor/internal/tufrepo"
)

const image = "sensor-amd64"

// clock is the tests' virtual time: the repository's signatures, the TUF client's expiry checks,
// the gate's deadline and its polling all read it.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func build(n int) string { return fmt.Sprintf("2026-02-%02dT00:00:00Z", n) }

// fakeDevice is gokrazy's update API with two root partitions and its test-boot rule: the
// command line names the active root; a test boot runs the other one once; in a test boot the
// "inactive" partition (the one PUT /update/root writes) is the running one.
type fakeDevice struct {
	t  *testing.T
	mu sync.Mutex

	roots        [2]string // the build each root partition holds
	active       int
	testbootFlag bool // gokrazy.try_boot_inactive=1 on the boot partition's command line
	testBooted   bool
	// worn counts gokrazy's leftovers on the command line (" gokrazy.switch_on_boot=1", 25
	// bytes each, one per test boot, never removed); cmdline.txt has 64 bytes of room, and a
	// test boot flag (28 bytes) that does not fit is cut off: the box boots its active root.
	worn    int
	running string
	bootID  int
	// part is the boot partition's bytes: the image written at its start, the command line
	// (cmdlineAt, rendered from active, worn and testbootFlag, parsed back from a raw write)
	// inside it, and a tail no image reaches; kernel is the image part the running system
	// booted from.
	part        []byte
	kernel      string
	mbr         string
	rebootAsked bool
	failMBR     bool // PUT /update/mbr answers 500
	calls       []string
}

const (
	partSize  = 512
	imageSize = 200 // bootImage's length; the command line lies inside it
	cmdlineAt = 128
)

// bootImage is a boot partition image whose kernel is called s.
func bootImage(s string) string { return s + strings.Repeat(".", imageSize-len(s)) }

func (d *fakeDevice) render() {
	c := fmt.Sprintf("root=%d worn=%d tb=%v", d.active, d.worn, d.testbootFlag)
	copy(d.part[cmdlineAt:cmdlineAt+64], c+strings.Repeat(" ", 64-len(c)))
}

// parse reads the command line back after a raw write of the partition.
func (d *fakeDevice) parse() {
	var tb bool
	if _, err := fmt.Sscanf(string(d.part[cmdlineAt:cmdlineAt+64]), "root=%d worn=%d tb=%v", &d.active, &d.worn, &tb); err != nil {
		d.t.Errorf("boot partition's command line unreadable after a raw write: %v", err)
	}
	d.testbootFlag = tb
}

// bootContent is the kernel the boot partition holds now.
func (d *fakeDevice) bootContent() string {
	return strings.TrimRight(string(d.part[:cmdlineAt]), ".")
}

func newDevice(t *testing.T, running string) (*fakeDevice, *gokrazyapi.Client) {
	d := &fakeDevice{t: t, roots: [2]string{running, ""}, running: running, mbr: "mbr v1", part: make([]byte, partSize)}
	for i := range d.part {
		d.part[i] = byte(i) // the tail: bytes no update writes
	}
	copy(d.part, bootImage("boot v1"))
	d.render()
	d.kernel = d.bootContent()
	srv := httptest.NewServer(d)
	t.Cleanup(srv.Close)
	c, err := gokrazyapi.New(srv.URL, "pw", nil)
	if err != nil {
		t.Fatal(err)
	}
	return d, c
}

func (d *fakeDevice) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if _, pw, _ := r.BasicAuth(); pw != "pw" {
		http.Error(w, "no", http.StatusUnauthorized)
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.calls = append(d.calls, r.Method+" "+r.URL.Path)
	if r.URL.RawQuery != "" {
		d.calls = append(d.calls, r.Method+" "+r.URL.Path+"?"+r.URL.RawQuery)
	}
	switch r.Method + " " + r.URL.Path {
	case "GET /":
		json.NewEncoder(w).Encode(map[string]string{"BuildTimestamp": d.running})
	case "GET /update/features":
		io.WriteString(w, "partuuid,updatehash,gpt,")
	case "PUT /update/root", "PUT /update/bootonly", "PUT /update/boot", "PUT /update/mbr":
		b, _ := io.ReadAll(r.Body)
		if r.URL.Path == "/update/mbr" && d.failMBR {
			http.Error(w, "write error", http.StatusInternalServerError)
			return
		}
		if strings.HasPrefix(r.URL.Path, "/update/boot") && len(b) > partSize {
			http.Error(w, "longer than the partition", http.StatusInternalServerError)
			return
		}
		switch r.URL.Path {
		case "/update/root":
			if d.testBooted {
				d.t.Errorf("PUT /update/root during a test boot: it would overwrite the running root")
			}
			d.roots[1-d.active] = strings.TrimPrefix(string(b), "root of ")
		case "/update/bootonly":
			copy(d.part, b)
			d.worn, d.testbootFlag = 0, false // a fresh cmdline.txt
			if d.testBooted {
				d.active = 1 - d.active // gokrazy points root= at the running root
			}
			d.render()
		case "/update/boot": // raw: the command line is what the bytes say
			copy(d.part, b)
			d.parse()
		default:
			d.mbr = string(b)
		}
		fmt.Fprintf(w, "%x", sha256sum(b))
	case "POST /update/testboot":
		d.testbootFlag = true
		d.render()
	case "POST /update/switch":
		d.active = 1 - d.active
		d.render()
	case "POST /reboot":
		d.rebootAsked = true
	default:
		http.NotFound(w, r)
	}
}

// powerCycle is a reboot or a power cut: what boots depends only on the disk.
func (d *fakeDevice) powerCycle() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.bootID++
	d.rebootAsked = false
	d.kernel = d.bootContent()
	defer d.render()
	if d.testbootFlag && 64-25*d.worn >= 28 {
		d.testbootFlag, d.testBooted, d.running = false, true, d.roots[1-d.active]
		d.worn++
		return
	}
	d.testbootFlag = false
	d.testBooted, d.running = false, d.roots[d.active]
}

// partSum is the boot partition's SHA-256, as the agent reports it.
func (d *fakeDevice) partSum() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return fmt.Sprintf("%x", sha256sum(d.part))
}

func (d *fakeDevice) readPart() (io.ReadCloser, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return io.NopCloser(bytes.NewReader(bytes.Clone(d.part))), nil
}

func (d *fakeDevice) count(call string) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	n := 0
	for _, c := range d.calls {
		if c == call {
			n++
		}
	}
	return n
}

func (d *fakeDevice) snapshot() (running string, testBooted, rebootAsked bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.running, d.testBooted, d.rebootAsked
}

// world is one box, one repository and one sensord health tree.
type world struct {
	t             *testing.T
	clk           *clock
	repo          *tufrepo.Repo
	repoURL       string
	trusted       []byte
	dev           *fakeDevice
	api           *gokrazyapi.Client
	dir           string
	capture       atomic.Bool   // sensord's "capture" check
	frames        atomic.Bool   // sensord's "frames on eth1"
	stall         atomic.Bool   // sensord accepts health reads but does not answer them
	healthTimeout time.Duration // the agents' HealthTimeout (0: the default)
	sock          string
	machine       string
	artefact      string
	firmware      bool // the agents' FirmwareReboot
}

func newWorld(t *testing.T) *world {
	w := &world{t: t, clk: &clock{t: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}, machine: "box-7"}
	for Bucket(w.machine) >= 50 { // rollout tests rely on a box in the first half
		w.machine += "x"
	}
	tmp := t.TempDir()
	w.dir, w.artefact = filepath.Join(tmp, "perm-updated"), filepath.Join(tmp, "art")
	keys, err := tufrepo.GenerateKeys(filepath.Join(tmp, "keys"), 2, 2)
	if err != nil {
		t.Fatal(err)
	}
	w.repo = &tufrepo.Repo{Dir: filepath.Join(tmp, "repo"), Keys: keys, Now: w.clk.Now}
	if err := w.repo.Init(); err != nil {
		t.Fatal(err)
	}
	if w.trusted, err = os.ReadFile(filepath.Join(w.repo.Dir, "root.json")); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(http.FileServer(http.Dir(w.repo.Dir)))
	t.Cleanup(srv.Close)
	w.repoURL = srv.URL
	w.dev, w.api = newDevice(t, build(1))
	w.capture.Store(true)
	w.frames.Store(true)
	sockDir, err := os.MkdirTemp("", "tuf-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	w.sock = filepath.Join(sockDir, "sensord.sock")
	tree := health.NewTree("sensord", w.clk.Now,
		health.NewNode("capture", func(time.Time) health.Result { return health.Result{OK: w.capture.Load(), Detail: "ports"} },
			health.NewNode("port eth1", health.Fixed(true, "up", ""),
				health.NewNode("frames on eth1", func(time.Time) health.Result { return health.Result{OK: w.frames.Load(), Detail: "frames"} }))))
	ln, err := health.ListenUnix(w.sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	h := (&health.Server{Daemon: "sensord", Tree: tree, Registry: health.NewRegistry(), Logf: t.Logf}).Handler()
	hs := &http.Server{Handler: http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		if w.stall.Load() {
			<-r.Context().Done() // running, but too busy to answer before the reader gives up
			return
		}
		h.ServeHTTP(rw, r)
	})}
	go func() {
		hs.Serve(ln)
		close(done)
	}()
	go func() {
		<-ctx.Done()
		hs.Close()
	}()
	t.Cleanup(func() { cancel(); <-done })
	return w
}

// publish releases version n (build n) with the given boot partition content.
func (w *world) publish(n int, rollout int, boot string) {
	w.t.Helper()
	if err := os.MkdirAll(w.artefact, 0o755); err != nil {
		w.t.Fatal(err)
	}
	files := map[string]string{}
	for name, content := range map[string]string{tufrepo.RootImg: "root of " + build(n), tufrepo.BootImg: bootImage(boot), tufrepo.MBRImg: "mbr v1", tufrepo.SBOM: "{}"} {
		p := filepath.Join(w.artefact, fmt.Sprintf("%d.%s", n, name))
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			w.t.Fatal(err)
		}
		files[name] = p
	}
	if err := w.repo.Publish(tufrepo.Release{Custom: tufrepo.Custom{Image: image, Version: int64(n), BuildTimestamp: build(n), Rollout: rollout}, Files: files}); err != nil {
		w.t.Fatal(err)
	}
}

// agent starts the update agent, as after a boot.
func (w *world) agent() *Agent {
	w.t.Helper()
	a, err := New(Config{
		RepoURL: w.repoURL, Image: image, TrustedRoot: w.trusted, Dir: w.dir, MachineID: w.machine,
		Device: w.api, Daemons: []Daemon{{"sensord", w.sock}, {"uplinkd", w.sock + ".absent"}},
		GateDeadline: 10 * time.Second, GateHold: 3 * time.Second, GatePoll: time.Second, HealthTimeout: w.healthTimeout,
		Now:   w.clk.Now,
		Sleep: func(ctx context.Context, d time.Duration) error { w.clk.Add(d); return ctx.Err() },
		TestBooted: func() (bool, error) {
			_, tb, _ := w.dev.snapshot()
			return tb, nil
		},
		BootID: func() (string, error) {
			w.dev.mu.Lock()
			defer w.dev.mu.Unlock()
			return fmt.Sprint(w.dev.bootID), nil
		},
		Cmdline: func() (string, error) {
			w.dev.mu.Lock()
			defer w.dev.mu.Unlock()
			return "root=PARTUUID=x/PARTNROFF=1" + strings.Repeat(" gokrazy.switch_on_boot=1", w.dev.worn), nil
		},
		BootPartition:  w.dev.readPart,
		FirmwareReboot: w.firmware,
		Logf:           w.t.Logf,
	})
	if err != nil {
		w.t.Fatal(err)
	}
	return a
}

// settle lives the box's life until nothing moves: boot, resume, check, reboot when asked; a
// step cut short by a simulated power cut power-cycles the box. It returns the last agent.
func (w *world) settle() *Agent {
	w.t.Helper()
	ctx := context.Background()
	for i := 0; i < 12; i++ {
		a := w.agent()
		err := a.Resume(ctx)
		if err == nil {
			if _, _, asked := w.dev.snapshot(); !asked {
				err = a.Check(ctx, true)
			}
		}
		if errors.Is(err, ErrStopped) {
			w.dev.powerCycle()
			continue
		}
		if _, _, asked := w.dev.snapshot(); asked {
			w.dev.powerCycle()
			continue
		}
		return a
	}
	w.t.Fatal("the box did not settle in 12 boots")
	return nil
}

func TestHappyPath(t *testing.T) {
	w := newWorld(t)
	w.publish(1, 100, "boot v1")
	w.publish(2, 100, "boot v2")
	a := w.settle()
	st := a.State()
	if running, _, _ := w.dev.snapshot(); running != build(2) {
		t.Fatalf("box runs %s, want %s committed", running, build(2))
	}
	if st.Version != 2 || st.Pending != nil || len(st.Failed) != 0 {
		t.Fatalf("state: %+v", st)
	}
	if w.dev.count("POST /update/testboot") != 1 || w.dev.count("POST /update/switch") != 1 {
		t.Errorf("calls: %v", w.dev.calls)
	}
	if got := w.dev.bootContent(); got != "boot v2" {
		t.Errorf("boot partition %q, want boot v2", got)
	}
	// The MBR held what version 2 carries already, but this agent had no record of it.
	if n := w.dev.count("PUT /update/mbr"); n != 1 {
		t.Errorf("MBR written %d times, want 1", n)
	}
	// Version 3 changes only the root: boot and MBR are not written again (on a command line
	// without marks of earlier test boots; with them the boot partition is: TestManyUpdates).
	w.dev.mu.Lock()
	w.dev.worn = 0
	w.dev.mu.Unlock()
	w.publish(3, 100, "boot v2")
	w.settle()
	if running, _, _ := w.dev.snapshot(); running != build(3) {
		t.Fatalf("box runs %s, want %s", running, build(3))
	}
	if w.dev.count("PUT /update/bootonly") != 1 || w.dev.count("PUT /update/mbr") != 1 || w.dev.count("PUT /update/root") != 2 {
		t.Errorf("boot or MBR rewritten though unchanged: %v", w.dev.calls)
	}
	if !strings.Contains(fmt.Sprint(w.agent().State().History), "version 3 committed") {
		t.Errorf("history lacks the commit: %v", w.agent().State().History)
	}
}

// TestManyUpdates: five releases in a row, the boot partition unchanged, are each test-booted
// and committed. gokrazy's test boots leave their marks on the command line, whose room runs
// out at the third: the boot partition is written again whenever the marks are there.
func TestManyUpdates(t *testing.T) {
	w := newWorld(t)
	w.publish(1, 100, "boot v1")
	for v := 2; v <= 6; v++ {
		w.publish(v, 100, "boot v2")
		a := w.settle()
		if running, _, _ := w.dev.snapshot(); running != build(v) {
			t.Fatalf("version %d: box runs %s; state %+v", v, running, a.State())
		}
	}
	if n := len(w.agent().State().Failed); n != 0 {
		t.Errorf("%d versions failed: %+v", n, w.agent().State().Failed)
	}
}

// resign replaces the targets metadata by mutate's result signed by signer (the real targets key
// or a wrong one), then snapshot and timestamp with the real keys: only what the test breaks is
// broken.
func (w *world) resign(mutate func(*metadata.Metadata[metadata.TargetsType]), signWith func(*metadata.Metadata[metadata.TargetsType])) {
	w.t.Helper()
	dir := w.repo.Dir
	ts, err := metadata.Timestamp().FromFile(filepath.Join(dir, "timestamp.json"))
	if err != nil {
		w.t.Fatal(err)
	}
	sv := ts.Signed.Meta["snapshot.json"].Version
	snap, err := metadata.Snapshot().FromFile(filepath.Join(dir, fmt.Sprintf("%d.snapshot.json", sv)))
	if err != nil {
		w.t.Fatal(err)
	}
	tv := snap.Signed.Meta["targets.json"].Version
	tg, err := metadata.Targets().FromFile(filepath.Join(dir, fmt.Sprintf("%d.targets.json", tv)))
	if err != nil {
		w.t.Fatal(err)
	}
	mutate(tg)
	tg.Signed.Version++
	tg.ClearSignatures()
	signWith(tg)
	if err := tg.ToFile(filepath.Join(dir, fmt.Sprintf("%d.targets.json", tg.Signed.Version)), true); err != nil {
		w.t.Fatal(err)
	}
	snap.Signed.Meta["targets.json"] = metadata.MetaFile(tg.Signed.Version)
	snap.Signed.Version++
	snap.ClearSignatures()
	if _, err := snap.Sign(signerOf(w.repo.Keys.Online[metadata.SNAPSHOT])); err != nil {
		w.t.Fatal(err)
	}
	if err := snap.ToFile(filepath.Join(dir, fmt.Sprintf("%d.snapshot.json", snap.Signed.Version)), true); err != nil {
		w.t.Fatal(err)
	}
	ts.Signed.Meta["snapshot.json"] = metadata.MetaFile(snap.Signed.Version)
	ts.Signed.Version++
	ts.ClearSignatures()
	if _, err := ts.Sign(signerOf(w.repo.Keys.Online[metadata.TIMESTAMP])); err != nil {
		w.t.Fatal(err)
	}
	if err := ts.ToFile(filepath.Join(dir, "timestamp.json"), true); err != nil {
		w.t.Fatal(err)
	}
}

// setVersion rewrites the custom metadata of the image's targets.
func setVersion(v int64, bt string) func(*metadata.Metadata[metadata.TargetsType]) {
	return func(tg *metadata.Metadata[metadata.TargetsType]) {
		b, _ := json.Marshal(tufrepo.Custom{Image: image, Version: v, BuildTimestamp: bt, Rollout: 100})
		raw := json.RawMessage(b)
		for _, tf := range tg.Signed.Targets {
			tf.Custom = &raw
		}
	}
}

func (w *world) checkRefused(want string) { w.t.Helper(); w.refused(want, false) }

// refused checks that a check refuses a release with want; streamed: the root was written to
// the inactive partition before its hash could be known (never test-booted).
func (w *world) refused(want string, streamed bool) {
	w.t.Helper()
	puts, tbs := w.dev.count("PUT /update/root"), w.dev.count("POST /update/testboot")
	a := w.agent()
	err := a.Check(context.Background(), true)
	if err == nil || !strings.Contains(err.Error(), want) {
		w.t.Fatalf("check: %v, want a refusal containing %q", err, want)
	}
	st := a.State()
	if st.Pending != nil || !strings.Contains(st.LastError, want) {
		w.t.Errorf("state after a refusal: pending %+v, last error %q", st.Pending, st.LastError)
	}
	if (!streamed && w.dev.count("PUT /update/root") != puts) || w.dev.count("POST /update/testboot") != tbs {
		w.t.Errorf("a refused release reached the device: %v", w.dev.calls)
	}
}

func TestWrongKeyRefused(t *testing.T) {
	w := newWorld(t)
	w.publish(1, 100, "boot v1")
	rogue, err := tufrepo.GenerateKeys(filepath.Join(t.TempDir(), "rogue"), 1, 1)
	if err != nil {
		t.Fatal(err)
	}
	w.resign(setVersion(5, build(5)), func(tg *metadata.Metadata[metadata.TargetsType]) {
		if _, err := tg.Sign(signerOf(rogue.Online[metadata.TARGETS])); err != nil {
			t.Fatal(err)
		}
	})
	w.checkRefused("not enough signatures")
}

func TestTamperedTargetRefused(t *testing.T) {
	w := newWorld(t)
	w.publish(1, 100, "boot v1")
	w.publish(2, 100, "boot v2")
	files, _ := filepath.Glob(filepath.Join(w.repo.Dir, "targets", image, "*.root.img"))
	for _, f := range files {
		b, _ := os.ReadFile(f)
		if strings.Contains(string(b), build(2)) {
			// Same length, other content: only the hash can tell.
			if err := os.WriteFile(f, []byte(strings.Replace(string(b), build(2), build(9), 1)), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	w.refused("does not match its signed SHA-256", true)
	if w.dev.count("POST /update/testboot") != 0 {
		t.Error("a tampered root was test-booted")
	}
}

func TestExpiredTimestampRefused(t *testing.T) {
	w := newWorld(t)
	w.publish(1, 100, "boot v1")
	w.publish(2, 100, "boot v2")
	// The repository (or someone between it and the box) keeps serving the same signed state:
	// once the timestamp expires the box must notice that it is frozen.
	w.clk.Add(tufrepo.DefaultExpiry.Timestamp + time.Minute)
	w.checkRefused("expired")
	if err := w.repo.Refresh(); err != nil { // publish -refresh
		t.Fatal(err)
	}
	w.settle()
	if running, _, _ := w.dev.snapshot(); running != build(2) {
		t.Fatalf("after publish -refresh the box runs %s, want %s", running, build(2))
	}
}

func TestRollbackRefused(t *testing.T) {
	w := newWorld(t)
	w.publish(1, 100, "boot v1")
	w.publish(2, 100, "boot v2")
	w.settle()
	if st := w.agent().State(); st.Version != 2 {
		t.Fatalf("version %d installed, want 2", st.Version)
	}
	// Version 1 signed again, in newer metadata, with the real keys.
	w.resign(setVersion(1, build(1)), func(tg *metadata.Metadata[metadata.TargetsType]) {
		if _, err := tg.Sign(signerOf(w.repo.Keys.Online[metadata.TARGETS])); err != nil {
			t.Fatal(err)
		}
	})
	w.checkRefused("rollback")
}

func TestOldMetadataRefused(t *testing.T) {
	w := newWorld(t)
	w.publish(1, 100, "boot v1")
	old, err := os.ReadFile(filepath.Join(w.repo.Dir, "timestamp.json"))
	if err != nil {
		t.Fatal(err)
	}
	w.publish(2, 100, "boot v2")
	if err := w.agent().Check(context.Background(), true); err != nil {
		t.Fatal(err)
	}
	w.dev.powerCycle()
	w.settle()
	// A mirror serves the timestamp of before version 2 (still valid): TUF's version check refuses it.
	if err := os.WriteFile(filepath.Join(w.repo.Dir, "timestamp.json"), old, 0o644); err != nil {
		t.Fatal(err)
	}
	w.checkRefused("timestamp")
}

func TestRolloutByMachineHash(t *testing.T) {
	n := 0
	for i := range 2000 {
		if Bucket(fmt.Sprintf("machine-%d", i)) < 30 {
			n++
		}
	}
	if n < 500 || n > 700 {
		t.Errorf("%d of 2000 machines in a 30%% rollout", n)
	}
	w := newWorld(t)
	w.publish(1, 100, "boot v1")
	w.publish(2, Bucket(w.machine), "boot v2") // just short of this box
	a := w.settle()
	if st := a.State(); !strings.Contains(st.LastResult, "rolled out") || w.dev.count("PUT /update/root") != 0 {
		t.Fatalf("a box outside the rollout installed: %q, %v", st.LastResult, w.dev.calls)
	}
	w.publish(3, Bucket(w.machine)+1, "boot v2")
	w.settle()
	if running, _, _ := w.dev.snapshot(); running != build(3) {
		t.Fatalf("a box inside the rollout runs %s, want %s", running, build(3))
	}
}

func TestFailedVersionNotRetried(t *testing.T) {
	w := newWorld(t)
	w.publish(1, 100, "boot v1")
	w.publish(2, 100, "boot v2")
	w.settle()
	w.publish(3, 100, "boot v2")
	w.capture.Store(false) // version 3's sensord cannot open its ports
	a := w.settle()
	st := a.State()
	if running, tb, _ := w.dev.snapshot(); running != build(2) || tb {
		t.Fatalf("box runs %s (test boot %v), want %s", running, tb, build(2))
	}
	if st.Version != 2 || len(st.Failed) != 1 || st.Failed[0].Version != 3 || !strings.Contains(st.Failed[0].Reason, "capture fails") {
		t.Fatalf("state: version %d, failed %+v", st.Version, st.Failed)
	}
	if w.dev.count("POST /update/switch") != 1 {
		t.Errorf("switch called %d times, want once (for version 2)", w.dev.count("POST /update/switch"))
	}
	w.capture.Store(true)
	puts := w.dev.count("PUT /update/root")
	a = w.settle()
	if w.dev.count("PUT /update/root") != puts || !strings.Contains(a.State().LastResult, "not retried") {
		t.Fatalf("failed version retried: %v, %q", w.dev.calls, a.State().LastResult)
	}
	w.publish(4, 100, "boot v2")
	w.settle()
	if running, _, _ := w.dev.snapshot(); running != build(4) {
		t.Fatalf("box runs %s, want %s", running, build(4))
	}
}

// TestRebootMethod: every reboot the agent asks for (into the test boot, and back after a failed
// gate) goes the way the image's profile says: kexec by default, through the firmware with
// FirmwareReboot (on the QEMU profile kexec is the slow way and the push takes the firmware).
func TestRebootMethod(t *testing.T) {
	for _, firmware := range []bool{false, true} {
		t.Run(fmt.Sprintf("firmware=%v", firmware), func(t *testing.T) {
			w := newWorld(t)
			w.firmware = firmware
			w.publish(1, 100, "boot v1")
			w.publish(2, 100, "boot v2")
			w.settle()
			w.publish(3, 100, "boot v2")
			w.capture.Store(false) // version 3 fails its gate: the rollback reboots too
			w.settle()
			if running, _, _ := w.dev.snapshot(); running != build(2) {
				t.Fatalf("box runs %s, want %s", running, build(2))
			}
			reboots, viaFirmware := w.dev.count("POST /reboot"), w.dev.count("POST /reboot?kexec=off")
			if reboots < 3 {
				t.Fatalf("%d reboots asked, want at least 3 (two test boots, one rollback): %v", reboots, w.dev.calls)
			}
			// Without FirmwareReboot only the reboot after the boot partition's restore goes
			// through the firmware (checkBootRestored says why).
			if firmware && viaFirmware != reboots || !firmware && reboots-viaFirmware < 3 {
				t.Errorf("%d of %d reboots through the firmware: %v", viaFirmware, reboots, w.dev.calls)
			}
		})
	}
}

// TestGateHold: a sensord that passes once and then fails (a crash a moment after start) does not
// get its root committed.
func TestGateHold(t *testing.T) {
	w := newWorld(t)
	w.publish(1, 100, "boot v1")
	w.publish(2, 100, "boot v2")
	if err := w.agent().Check(context.Background(), true); err != nil {
		t.Fatal(err)
	}
	w.dev.powerCycle()
	start := w.clk.Now()
	// Passing for the first 2 s of every 3 s: never the 3 s the hold asks for.
	w.capture.Store(true)
	a := w.agent()
	a.cfg.Sleep = func(ctx context.Context, d time.Duration) error {
		w.clk.Add(d)
		w.capture.Store(w.clk.Now().Sub(start)%(3*time.Second) < 2*time.Second)
		return nil
	}
	if err := a.Resume(context.Background()); err != nil {
		t.Fatal(err)
	}
	if st := a.State(); len(st.Failed) != 1 || st.Version == 2 {
		t.Fatalf("a flapping gate committed: %+v", st)
	}
}

// TestTrafficChecksCarriedOver: frames flowed before the update, so the new root must see them.
func TestTrafficChecksCarriedOver(t *testing.T) {
	w := newWorld(t)
	w.publish(1, 100, "boot v1")
	w.publish(2, 100, "boot v2")
	a := w.agent()
	if err := a.Check(context.Background(), true); err != nil {
		t.Fatal(err)
	}
	w.frames.Store(false) // the new root's capture opens but no frame arrives
	w.dev.powerCycle()
	a = w.settle()
	if st := a.State(); len(st.Failed) != 1 || !strings.Contains(st.Failed[0].Reason, "frames on eth1 passed before") {
		t.Fatalf("failed: %+v", st.Failed)
	}
}

// TestPowerLoss cuts the power at every recorded step of an update and boots again: the box
// always comes back on a complete root, the state file is consistent, and the update is
// finished, retried or abandoned as the step allows.
func TestPowerLoss(t *testing.T) {
	for _, tc := range []struct {
		point  string
		commit bool // version 2 ends up committed; else it is recorded as failed
	}{
		{"writing", true}, {"root written", true}, {"boot.img written", true}, {"mbr.img written", true},
		{"testboot", true}, {"reboot", true},
		{"gate", false},       // a cut during the test boot looks like a hang: back to the old root
		{"committing", false}, // before the switch reached the disk: the same
		{"switched", true},
	} {
		t.Run(strings.ReplaceAll(tc.point, " ", "_"), func(t *testing.T) {
			w := newWorld(t)
			w.publish(1, 100, "boot v1")
			w.publish(2, 100, "boot v2")
			fired := false
			crashPoint = func(p string) bool {
				if p == tc.point && !fired {
					fired = true
					return true
				}
				return false
			}
			defer func() { crashPoint = func(string) bool { return false } }()
			a := w.settle()
			if !fired {
				t.Fatalf("the update never reached %q", tc.point)
			}
			st := a.State()
			running, tb, _ := w.dev.snapshot()
			if st.Pending != nil || (tb && running != st.BuildTimestamp) {
				t.Fatalf("not settled: test boot %v of %s, state %+v", tb, running, st)
			}
			if tc.commit {
				if running != build(2) || st.Version != 2 {
					t.Fatalf("box runs %s, state version %d; want version 2 committed (history %v)", running, st.Version, st.History)
				}
			} else if running != build(1) || len(st.Failed) != 1 {
				t.Fatalf("box runs %s, failed %+v; want version 1 running and version 2 failed", running, st.Failed)
			}
		})
	}
}

func TestWindow(t *testing.T) {
	w, err := ParseWindow("22:00-04:00")
	if err != nil {
		t.Fatal(err)
	}
	at := func(h int) time.Time { return time.Date(2026, 1, 1, h, 30, 0, 0, time.UTC) }
	if !w.Contains(at(23)) || !w.Contains(at(3)) || w.Contains(at(12)) || w.Contains(at(4)) {
		t.Error("22:00-04:00 misplaced")
	}
	for _, bad := range []string{"2-5", "25:00-01:00", "02:00-02:00"} {
		if _, err := ParseWindow(bad); err == nil || !strings.Contains(err.Error(), "-window") {
			t.Errorf("ParseWindow(%q): %v", bad, err)
		}
	}
}

func TestOutsideWindowAndPaused(t *testing.T) {
	w := newWorld(t)
	w.publish(1, 100, "boot v1")
	w.publish(2, 100, "boot v2")
	a := w.agent()
	a.cfg.Window, _ = ParseWindow("02:00-03:00") // the clock says 12:00
	if err := a.Check(context.Background(), false); err != nil || w.dev.count("PUT /update/root") != 0 {
		t.Fatalf("outside the window: %v, %v", err, w.dev.calls)
	}
	a.cfg.Window = nil
	if err := a.Pause(true); err != nil {
		t.Fatal(err)
	}
	if err := w.agent().Check(context.Background(), false); err != nil || w.dev.count("PUT /update/root") != 0 {
		t.Fatalf("paused: %v, %v", err, w.dev.calls)
	}
	if err := w.agent().Check(context.Background(), true); err != nil || w.dev.count("PUT /update/root") != 1 {
		t.Fatalf("update now while paused: %v, %v", err, w.dev.calls)
	}
}

func sha256sum(b []byte) []byte { h := sha256.Sum256(b); return h[:] }

func signerOf(k ed25519.PrivateKey) signature.Signer {
	s, err := signature.LoadSigner(k, crypto.Hash(0))
	if err != nil {
		panic(err)
	}
	return s
}

// failAt cuts the power once at point p for the rest of the test.
func failAt(t *testing.T, p string) *bool {
	fired := new(bool)
	crashPoint = func(q string) bool {
		if q == p && !*fired {
			*fired = true
			return true
		}
		return false
	}
	t.Cleanup(func() { crashPoint = func(string) bool { return false } })
	return fired
}

// checkBootRestored: the box runs version 1 from the boot partition it had before version 2
// wrote its own, byte for byte, and says so on its page.
func (w *world) checkBootRestored(a *Agent, before string) {
	w.t.Helper()
	st := a.State()
	running, tb, _ := w.dev.snapshot()
	if running != build(1) || tb || st.Pending != nil {
		w.t.Fatalf("box runs %s (test boot %v), pending %+v; want version 1 and nothing pending (history %v)", running, tb, st.Pending, st.History)
	}
	if got := w.dev.partSum(); got != before {
		w.t.Fatalf("boot partition sha256 %s after the rollback, %s before the update (kernel %q)", got, before, w.dev.bootContent())
	}
	w.dev.mu.Lock()
	kernel := w.dev.kernel
	w.dev.mu.Unlock()
	if kernel != "boot v1" {
		w.t.Errorf("version 1 runs the kernel of %q: no reboot after the restore", kernel)
	}
	// A reboot after the restore goes through the firmware: gokrazy's kexec marks the FAT dirty.
	w.dev.mu.Lock()
	calls := w.dev.calls
	w.dev.mu.Unlock()
	restored := false
	for i, c := range calls {
		restored = (restored || c == "PUT /update/boot") && c != "PUT /update/bootonly"
		if restored && c == "POST /reboot" && (i+1 == len(calls) || calls[i+1] != "POST /reboot?kexec=off") {
			w.t.Errorf("a reboot through kexec after the restore: %v", calls)
		}
	}
	if st.BootPartition == nil || st.BootPartition.SHA256 != before {
		w.t.Errorf("state's boot partition %+v, want sha256 %s", st.BootPartition, before)
	}
	if _, err := os.Stat(filepath.Join(w.dir, bootCopyFile)); err == nil {
		w.t.Errorf("the saved boot partition is left in /perm after the rollback")
	}
	// The next update writes the boot partition again: the agent's record went back too.
	if st.BootSHA256 == fmt.Sprintf("%x", sha256sum([]byte(bootImage("boot v2")))) {
		w.t.Errorf("state says version 2's boot partition is written: %s", st.BootSHA256)
	}
}

// TestBootPartitionRestored: version 2 changes the boot partition (gokrazy writes it in place)
// and fails, each way it can; the box ends on version 1 with its old boot partition, byte for
// byte, and booted from it.
func TestBootPartitionRestored(t *testing.T) {
	for _, tc := range []struct {
		name   string
		prep   func(w *world)
		failed bool // version 2 recorded as failed (else abandoned, retried later)
	}{
		{"gate fails", func(w *world) { w.capture.Store(false) }, true},
		{"test boot hangs", func(w *world) { failAt(w.t, "gate") }, true},
		{"switch lost", func(w *world) { failAt(w.t, "committing") }, true},
		{"MBR write fails", func(w *world) { w.dev.failMBR = true }, false},
	} {
		t.Run(strings.ReplaceAll(tc.name, " ", "_"), func(t *testing.T) {
			w := newWorld(t)
			w.publish(1, 100, "boot v1")
			w.publish(2, 100, "boot v2")
			before := w.dev.partSum()
			tc.prep(w)
			a := w.settle()
			if tc.failed != (len(a.State().Failed) == 1) {
				t.Fatalf("failed %+v", a.State().Failed)
			}
			if w.dev.count("PUT /update/bootonly") == 0 {
				t.Fatal("version 2's boot partition was never written")
			}
			w.checkBootRestored(a, before)
			// After the reboot the partition is read again, from the disk.
			if bp := a.State().BootPartition; tc.failed && bp.Why != "first start after the restore" {
				t.Errorf("boot partition last read %q", bp.Why)
			}
		})
	}
}

// TestBootRestorePowerLoss cuts the power at each step of saving, writing and restoring the
// boot partition of a version whose gate fails: every time the box ends on version 1 with its
// old boot partition.
func TestBootRestorePowerLoss(t *testing.T) {
	for _, p := range []string{"boot saving", "boot saved", "boot recorded", "boot.img written", "gate", "restoring", "boot restored", "rollback"} {
		t.Run(strings.ReplaceAll(p, " ", "_"), func(t *testing.T) {
			w := newWorld(t)
			w.publish(1, 100, "boot v1")
			w.publish(2, 100, "boot v2")
			before := w.dev.partSum()
			w.capture.Store(false)
			fired := failAt(t, p)
			a := w.settle()
			if !*fired {
				t.Fatalf("the update never reached %q", p)
			}
			if st := a.State(); len(st.Failed) != 1 {
				t.Fatalf("failed %+v, want version 2 (history %v)", st.Failed, st.History)
			}
			w.checkBootRestored(a, before)
		})
	}
}

// TestBootCopyRefused: when /perm cannot hold the copy of the boot partition (full, or
// damaged), the boot partition is not written and the update is abandoned.
func TestBootCopyRefused(t *testing.T) {
	w := newWorld(t)
	w.publish(1, 100, "boot v1")
	w.publish(2, 100, "boot v2")
	before := w.dev.partSum()
	// A directory where the copy goes: writing it fails as on a full disk.
	if err := os.MkdirAll(filepath.Join(w.dir, bootCopyFile, "x"), 0o755); err != nil {
		t.Fatal(err)
	}
	a := w.agent()
	err := a.Check(context.Background(), true)
	if err == nil || !strings.Contains(err.Error(), "keeping a copy of the boot partition") {
		t.Fatalf("check: %v", err)
	}
	if w.dev.count("PUT /update/bootonly") != 0 || w.dev.partSum() != before {
		t.Fatalf("the boot partition was written without a copy: %v", w.dev.calls)
	}
	if st := a.State(); st.Pending != nil || w.dev.count("POST /update/testboot") != 0 {
		t.Fatalf("pending %+v", st.Pending)
	}
}

// TestBaselineAsksABusyDaemonAgain: the gate requires in the test boot the daemons that answered
// before the update. Before, one read timing out on the busy box (it had just written a root)
// left sensord out of the baseline, and a new root whose sensord never answered was committed:
// seen in QEMU, where the gate of a release whose sensord did not start named another daemon.
func TestBaselineAsksABusyDaemonAgain(t *testing.T) {
	w := newWorld(t)
	w.healthTimeout = 50 * time.Millisecond
	w.publish(1, 100, "boot v1")
	w.publish(2, 100, "boot v2")
	w.stall.Store(true)
	a := w.agent()
	busyUntil := w.clk.Now().Add(10 * time.Second)
	a.cfg.Sleep = func(ctx context.Context, d time.Duration) error {
		w.clk.Add(d)
		if !w.clk.Now().Before(busyUntil) {
			w.stall.Store(false)
		}
		return ctx.Err()
	}
	if err := a.Check(context.Background(), true); err != nil {
		t.Fatal(err)
	}
	st := a.State()
	if st.Pending == nil || !slices.Contains(st.Pending.Baseline.Daemons, "sensord") {
		t.Fatalf("baseline %+v, want sensord in it (it answered %v into the baseline)", st.Pending, 10*time.Second)
	}
	if e := baselineOf(st); !strings.Contains(e, "health gate baseline: sensord (capture/port eth1/frames on eth1)") {
		t.Errorf("history's baseline: %q, want sensord and its frames check named", e)
	}
	w.stall.Store(true) // the new root's sensord never answers
	w.dev.powerCycle()
	a = w.settle()
	if st := a.State(); st.Version == 2 || len(st.Failed) != 1 || !strings.Contains(st.Failed[0].Reason, "sensord does not answer") {
		t.Fatalf("version %d, failed %+v; want version 2 failed because sensord does not answer", st.Version, st.Failed)
	}
}

func baselineOf(st State) string {
	for _, e := range st.History {
		if strings.HasPrefix(e.What, "health gate baseline") {
			return e.What
		}
	}
	return ""
}

// TestBaselineNamesSilentDaemons: a daemon that is running but answers nothing within
// BaselineWait cannot be required after the update; the history says so.
func TestBaselineNamesSilentDaemons(t *testing.T) {
	w := newWorld(t)
	w.healthTimeout = 50 * time.Millisecond
	w.publish(1, 100, "boot v1")
	w.publish(2, 100, "boot v2")
	w.stall.Store(true)
	a := w.agent()
	start := w.clk.Now()
	if err := a.Check(context.Background(), true); err != nil {
		t.Fatal(err)
	}
	if d := w.clk.Now().Sub(start); d < a.cfg.BaselineWait {
		t.Errorf("baseline gave up after %v, want BaselineWait (%v)", d, a.cfg.BaselineWait)
	}
	st := a.State()
	if e := baselineOf(st); !strings.Contains(e, "none of the daemons answered") || !strings.Contains(e, "not required after it: sensord (") {
		t.Errorf("history's baseline: %q, want sensord named as not answering", e)
	}
}

// TestNotRunning: a daemon without a socket, or with a socket nobody listens on (a stopped
// daemon's leftover), is not running; the baseline does not wait for it.
func TestNotRunning(t *testing.T) {
	dir, err := os.MkdirTemp("", "tuf-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	stale := filepath.Join(dir, "stale.sock")
	ln, err := net.Listen("unix", stale)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
	for _, sock := range []string{filepath.Join(dir, "absent.sock"), stale} {
		_, err := health.Get(context.Background(), sock)
		if err == nil || !notRunning(err) {
			t.Errorf("%s: %v, want an error notRunning recognises", sock, err)
		}
	}
}
