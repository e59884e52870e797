// Package testenv decides what a test does when the world it needs is missing: a corpus, a
// Debian tool, root, a loop device. On a developer's machine it skips with a message that says how
// to get what is missing; under CI=true it fails, because CI installs everything the tests need and
// a skip there would let a proof (byte compatibility, real traffic, image boots) vanish while the
// run stays green.
package testenv

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// InCI reports whether the tests run under CI (CI=true, as .ci/run is started).
func InCI() bool { return os.Getenv("CI") == "true" }

// Need skips t (locally) or fails it (in CI) with the message when ok is false.
func Need(t testing.TB, ok bool, format string, args ...any) {
	t.Helper()
	if ok {
		return
	}
	msg := fmt.Sprintf(format, args...)
	if InCI() {
		t.Fatalf("CI=true and %s: a missing requirement is a failure in CI", msg)
		return
	}
	t.Skip(msg)
}

// Missing skips t (locally) or fails it (in CI) because of err.
func Missing(t testing.TB, err error) {
	t.Helper()
	Need(t, err == nil, "%v", err)
}

// NeedRoot requires uid 0 (network namespaces, loop devices, tmpfs mounts).
func NeedRoot(t testing.TB, what string) {
	t.Helper()
	Need(t, os.Getuid() == 0, "%s needs root", what)
}

// Conformance returns the shared conformance corpus: $CONFORMANCE_DIR, or shared/conformance in
// the working directory or any parent, or beside any parent (../shared/conformance beside the
// checkout, as sessions and CI lay it out).
func Conformance(t testing.TB) string {
	t.Helper()
	d, ok := FindConformance()
	Need(t, ok, "conformance corpus not found (../shared/conformance beside the checkout, or $CONFORMANCE_DIR)")
	return d
}

// FindConformance is Conformance without a test, for benchmarks' and tools' own decisions.
func FindConformance() (string, bool) {
	if d := os.Getenv("CONFORMANCE_DIR"); d != "" {
		return d, true
	}
	wd, err := os.Getwd()
	if err != nil {
		return "", false
	}
	for d := wd; ; d = filepath.Dir(d) {
		for _, c := range []string{filepath.Join(d, "shared", "conformance"), filepath.Join(d, "..", "shared", "conformance")} {
			if fi, err := os.Stat(c); err == nil && fi.IsDir() {
				return filepath.Clean(c), true
			}
		}
		if filepath.Dir(d) == d {
			return "", false
		}
	}
}

// Patience is how long a test waits for a state it expects before calling it missing. The wait
// ends as soon as the state is reached, so a generous bound costs a passing test nothing, while a
// tight one (the 5 s bounds this replaces) failed on a loaded 2-core CI machine.
var Patience = 60 * time.Second

// WaitFor polls cond until it holds, and fails t naming what it waited for after Patience.
func WaitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(Patience)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", Patience, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// CheckLeaks fails t if goroutines started during the test are still running when it ends
// (after the test's other cleanups, given Patience to wind down). Goroutines that were running
// before the test started, such as those of parallel tests, are not counted.
func CheckLeaks(t testing.TB) {
	t.Helper()
	before := goleak.IgnoreCurrent()
	t.Cleanup(func() {
		// goleak.Find retries for about a second; a loaded machine can need longer to wind down.
		deadline := time.Now().Add(Patience)
		for {
			err := goleak.Find(before)
			if err == nil {
				return
			}
			if time.Now().After(deadline) {
				t.Errorf("goroutines leaked: %v", err)
				return
			}
		}
	})
}

// netnsChild names, in a re-executed test binary, the test it runs inside its own namespace.
const netnsChild = "DNSSENSOR_TEST_NETNS_CHILD"

// InOwnNetns runs the calling test again in a network namespace of its own: the test binary
// re-executed under unshare --net, running only this test. It returns true in that child, which
// then runs the test's body (make interfaces, capture on them: nothing reaches the host's
// network); in the parent it returns false after failing t if the child failed, with the child's
// output logged. Not in -short; needs root, unshare and ip.
func InOwnNetns(t *testing.T) bool {
	t.Helper()
	if os.Getenv(netnsChild) == t.Name() {
		return true
	}
	if testing.Short() {
		t.Skip("re-executes the test in a network namespace: not in -short")
	}
	NeedRoot(t, "a network namespace")
	for _, tool := range []string{"unshare", "ip"} {
		_, err := exec.LookPath(tool)
		Need(t, err == nil, "%s not found (apt-get install util-linux iproute2, see ci/deps)", tool)
	}
	cmd := exec.Command("unshare", "--net", os.Args[0], "-test.run=^"+regexp.QuoteMeta(t.Name())+"$", "-test.v")
	cmd.Env = append(os.Environ(), netnsChild+"="+t.Name())
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("in its own network namespace: %v\n%s", err, out)
	}
	t.Logf("%s", out)
	return false
}
