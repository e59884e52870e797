package update

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/sie-europe/dnssensor/internal/testenv"
	"github.com/sie-europe/dnssensor/internal/tufrepo"
)

// The list of what a box must survive, beyond the signature checks of agent_test.go:
// mixed metadata, a followed root rotation, an unreachable repository, a full /perm and a
// release that does not fit the root partition. Each ends refused or retried, shown in the state
// the page reads, and with nothing written to the device.

// untouched fails the test when the device saw a write or a test boot since calls.
func (w *world) untouched(calls int) {
	w.t.Helper()
	w.dev.mu.Lock()
	defer w.dev.mu.Unlock()
	for _, c := range w.dev.calls[calls:] {
		if strings.HasPrefix(c, "PUT ") || c == "POST /update/testboot" || c == "POST /update/switch" || c == "POST /reboot" {
			w.t.Errorf("the device was changed: %s (calls %v)", c, w.dev.calls[calls:])
		}
	}
}

func (w *world) calls() int {
	w.dev.mu.Lock()
	defer w.dev.mu.Unlock()
	return len(w.dev.calls)
}

// TestMixAndMatchRefused: a mirror serves metadata of two different repository states together.
// TUF's snapshot names the targets version (and the timestamp the snapshot version) the client
// must get; a file of another state under that name is refused.
func TestMixAndMatchRefused(t *testing.T) {
	for _, tc := range []struct{ role, want string }{
		{"targets", "bad version number"},
		{"snapshot", "bad version number"},
	} {
		t.Run(tc.role, func(t *testing.T) {
			w := newWorld(t)
			w.publish(1, 100, "boot v1")
			w.settle()
			w.publish(2, 100, "boot v2")
			// Serve the newest N.ROLE.json with the previous state's content: every signature on it
			// is valid, only the version tells it belongs to another state.
			files, _ := filepath.Glob(filepath.Join(w.repo.Dir, "*."+tc.role+".json"))
			newest, prev := 0, 0
			for _, f := range files {
				var n int
				if _, err := fmt.Sscanf(filepath.Base(f), "%d.", &n); err == nil && n > newest {
					newest, prev = n, newest
				} else if n > prev {
					prev = n
				}
			}
			if prev == 0 {
				t.Fatalf("no two versions of %s in %v", tc.role, files)
			}
			old, err := os.ReadFile(filepath.Join(w.repo.Dir, fmt.Sprintf("%d.%s.json", prev, tc.role)))
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(w.repo.Dir, fmt.Sprintf("%d.%s.json", newest, tc.role)), old, 0o644); err != nil {
				t.Fatal(err)
			}
			n := w.calls()
			w.checkRefused(tc.want)
			w.untouched(n)
			if st := w.agent().State(); st.Version != 1 {
				t.Errorf("installed version %d, want 1", st.Version)
			}
		})
	}
}

// TestRootRotationFollowed: the repository's keys are rotated (gokr-packer keys -rotate-from);
// a box that trusts only the baked root version 1 follows the chain, installs the release signed
// with the new keys, keeps the new root for its next start, and refuses what the old online keys
// sign from then on.
func TestRootRotationFollowed(t *testing.T) {
	w := newWorld(t)
	w.publish(1, 100, "boot v1")
	w.settle()
	oldKeys := w.repo.Keys
	next, err := tufrepo.GenerateKeys(filepath.Join(t.TempDir(), "keys2"), 2, 2)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.repo.Rotate(next); err != nil {
		t.Fatal(err)
	}
	w.publish(2, 100, "boot v2")
	w.settle()
	if running, _, _ := w.dev.snapshot(); running != build(2) {
		t.Fatalf("box runs %s after the rotation, want %s; state %+v", running, build(2), w.agent().State())
	}
	root, err := metadata.Root().FromFile(filepath.Join(w.dir, "tuf", "root.json"))
	if err != nil {
		t.Fatal(err)
	}
	if root.Signed.Version != 2 {
		t.Errorf("the box keeps root version %d, want 2 (the rotated one)", root.Signed.Version)
	}
	// The old targets key (say, stolen, the reason for the rotation) signs version 3.
	w.resign(setVersion(3, build(3)), func(tg *metadata.Metadata[metadata.TargetsType]) {
		if _, err := tg.Sign(signerOf(oldKeys.Online[metadata.TARGETS])); err != nil {
			t.Fatal(err)
		}
	})
	n := w.calls()
	w.checkRefused("not enough signatures")
	w.untouched(n)
}

// TestRepositoryUnreachable: no answer, then the connection dropped in the middle of the root
// download. Each check fails with the reason in the state, nothing is test-booted, and the next
// check after the repository is back installs the release.
func TestRepositoryUnreachable(t *testing.T) {
	w := newWorld(t)
	w.publish(1, 100, "boot v1")
	w.settle()
	w.publish(2, 100, "boot v2")
	files := http.FileServer(http.Dir(w.repo.Dir))
	var mode atomic.Int32 // 0 serve, 1 down, 2 cut root downloads short
	srv := httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		switch {
		case mode.Load() == 1:
			hj, _ := rw.(http.Hijacker)
			c, _, _ := hj.Hijack()
			c.Close()
		case mode.Load() == 2 && strings.HasSuffix(r.URL.Path, "."+tufrepo.RootImg):
			b, _ := os.ReadFile(filepath.Join(w.repo.Dir, filepath.FromSlash(r.URL.Path)))
			rw.Header().Set("Content-Length", fmt.Sprint(len(b)))
			rw.Write(b[:len(b)/2])
			hj, _ := rw.(http.Hijacker)
			c, buf, _ := hj.Hijack()
			buf.Flush()
			c.Close()
		default:
			files.ServeHTTP(rw, r)
		}
	}))
	t.Cleanup(srv.Close)
	w.repoURL = srv.URL

	mode.Store(1)
	n := w.calls()
	a := w.agent()
	if err := a.Check(context.Background(), true); err == nil {
		t.Fatal("a check against a repository that does not answer succeeded")
	}
	if st := a.State(); !strings.Contains(st.LastError, srv.URL+" unreachable") || st.Pending != nil {
		t.Errorf("state after an unreachable repository: last error %q, pending %+v (want the URL named, nothing pending)", st.LastError, st.Pending)
	}
	w.untouched(n)

	mode.Store(2)
	a = w.agent()
	if err := a.Check(context.Background(), true); err == nil {
		t.Fatal("a root download cut short was accepted")
	}
	st := a.State()
	if st.Pending != nil || st.LastError == "" || w.dev.count("POST /update/testboot") != 0 {
		t.Errorf("after a cut download: pending %+v, last error %q, calls %v", st.Pending, st.LastError, w.dev.calls)
	}
	if !strings.Contains(fmt.Sprint(st.History), "abandoned before the test boot") {
		t.Errorf("history does not say the install was abandoned: %v", st.History)
	}

	mode.Store(0)
	w.settle()
	if running, _, _ := w.dev.snapshot(); running != build(2) {
		t.Fatalf("box runs %s once the repository is back, want %s", running, build(2))
	}
	if st := w.agent().State(); st.LastError != "" || len(st.Failed) != 0 {
		t.Errorf("a network fault counted against the release: last error %q, failed %+v", st.LastError, st.Failed)
	}
}

// TestRetrySchedule: a failed check is retried after 1, 2, 4 … minutes, never later than the
// interval, and a good check goes back to the interval.
func TestRetrySchedule(t *testing.T) {
	var b retry
	interval := 20 * time.Minute
	var got []time.Duration
	for range 7 {
		got = append(got, b.next(interval, true))
	}
	want := []time.Duration{time.Minute, 2 * time.Minute, 4 * time.Minute, 8 * time.Minute, 16 * time.Minute, 20 * time.Minute, 20 * time.Minute}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("waits after failures: %v, want %v", got, want)
	}
	if d := b.next(interval, false); d != interval {
		t.Errorf("wait after a good check: %v, want the interval %v", d, interval)
	}
	if d := b.next(interval, true); d != time.Minute {
		t.Errorf("first wait after a new failure: %v, want 1m", d)
	}
}

// TestTargetLargerThanPartition: a release whose root does not fit the root partition is refused
// before a byte reaches the device (gokrazy would write the partition full and fail at its end),
// with the sizes on the page, and not recorded as failed: a smaller release may follow.
func TestTargetLargerThanPartition(t *testing.T) {
	w := newWorld(t)
	w.publish(1, 100, "boot v1")
	w.settle()
	w.publish(2, 100, "boot v2")
	size := int64(len("root of " + build(2)))
	a := w.agent()
	a.cfg.RootPartitionSize = func() (int64, error) { return size - 1, nil }
	n := w.calls()
	err := a.Check(context.Background(), true)
	if err == nil || !strings.Contains(err.Error(), "does not fit") {
		t.Fatalf("check: %v, want a refusal saying the root does not fit", err)
	}
	st := a.State()
	if !strings.Contains(st.LastError, fmt.Sprintf("%d bytes", size)) || !strings.Contains(st.LastError, fmt.Sprintf("%d bytes", size-1)) || st.Pending != nil || len(st.Failed) != 0 {
		t.Errorf("state: last error %q, pending %+v, failed %+v", st.LastError, st.Pending, st.Failed)
	}
	w.untouched(n)
	// The partition size unknown (not a block device, as in a container): gokrazy's own write
	// is the check, as before.
	a = w.agent()
	a.cfg.RootPartitionSize = func() (int64, error) { return 0, fmt.Errorf("no block device") }
	if err := a.Check(context.Background(), true); err != nil {
		t.Fatalf("check with the partition size unknown: %v", err)
	}
}

// TestPermFull: /perm full (the spool's neighbour filled it). The check cannot record its state
// and says so; nothing reaches the device while the state cannot be written, and the update
// goes through once there is room again.
func TestPermFull(t *testing.T) {
	testenv.NeedRoot(t, "a full /perm (a 1 MiB tmpfs)")
	w := newWorld(t)
	mnt := t.TempDir()
	if err := syscall.Mount("tmpfs", mnt, "tmpfs", 0, "size=1m"); err != nil {
		testenv.Missing(t, fmt.Errorf("mounting a tmpfs: %w", err))
	}
	t.Cleanup(func() { syscall.Unmount(mnt, syscall.MNT_DETACH) })
	w.dir = filepath.Join(mnt, "updated")
	w.publish(1, 100, "boot v1")
	w.settle()
	w.publish(2, 100, "boot v2")
	fill, err := os.Create(filepath.Join(mnt, "spool-fill"))
	if err != nil {
		t.Fatal(err)
	}
	chunk := make([]byte, 64<<10)
	for {
		if _, err := fill.Write(chunk); err != nil {
			break
		}
	}
	for _, sz := range []int{4096, 512, 64, 1} { // the last bytes too
		for {
			if _, err := fill.Write(chunk[:sz]); err != nil {
				break
			}
		}
	}
	fill.Close()
	n := w.calls()
	a := w.agent()
	err = a.Check(context.Background(), true)
	if err == nil || !strings.Contains(err.Error(), "no space") {
		t.Fatalf("check on a full /perm: %v, want the disk-full error", err)
	}
	if st := a.State(); !strings.Contains(st.LastError, "is full, the update waits for room") || st.Pending != nil {
		t.Errorf("state shown: last error %q, pending %+v", st.LastError, st.Pending)
	}
	w.untouched(n)
	if err := os.Remove(filepath.Join(mnt, "spool-fill")); err != nil {
		t.Fatal(err)
	}
	w.settle()
	if running, _, _ := w.dev.snapshot(); running != build(2) {
		t.Fatalf("box runs %s once /perm has room, want %s", running, build(2))
	}
}
