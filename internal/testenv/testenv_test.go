package testenv

import (
	"fmt"
	"testing"
	"time"
)

// recorder stands in for a test so that Need's verdict can be observed without ending this test.
type recorder struct {
	testing.TB
	verdict string
}

func (r *recorder) Helper() {}
func (r *recorder) Fatalf(format string, args ...any) {
	r.verdict = "fail: " + fmt.Sprintf(format, args...)
}
func (r *recorder) Skip(args ...any) { r.verdict = "skip: " + fmt.Sprint(args...) }

func TestNeed(t *testing.T) {
	for _, tc := range []struct {
		ci   string
		ok   bool
		want string
	}{
		{"true", false, "fail: CI=true and no corpus: a missing requirement is a failure in CI"},
		{"", false, "skip: no corpus"},
		{"true", true, ""},
		{"", true, ""},
	} {
		t.Setenv("CI", tc.ci)
		r := &recorder{TB: t}
		Need(r, tc.ok, "no %s", "corpus")
		if r.verdict != tc.want {
			t.Errorf("CI=%q ok=%v: got %q, want %q", tc.ci, tc.ok, r.verdict, tc.want)
		}
	}
}

func TestConformanceFromEnv(t *testing.T) {
	d := t.TempDir()
	t.Setenv("CONFORMANCE_DIR", d)
	if got, ok := FindConformance(); !ok || got != d {
		t.Fatalf("FindConformance() = %q, %v; want %q", got, ok, d)
	}
}

func TestCheckLeaksFindsALeak(t *testing.T) {
	defer func(p time.Duration) { Patience = p }(Patience)
	Patience = 300 * time.Millisecond
	stop := make(chan struct{})
	defer close(stop)
	r := &leakRecorder{TB: t}
	t.Run("leaky", func(t *testing.T) {
		r.TB = t
		CheckLeaks(r)
		go func() { <-stop }()
		// Cleanups registered on r run here, when the subtest ends.
	})
	if !r.failed {
		t.Error("CheckLeaks missed a goroutine that outlived its test")
	}
}

// leakRecorder records a failure instead of failing, and runs cleanups at the subtest's end.
type leakRecorder struct {
	testing.TB
	failed bool
}

func (r *leakRecorder) Helper()               {}
func (r *leakRecorder) Error(args ...any)     { r.failed = true }
func (r *leakRecorder) Errorf(string, ...any) { r.failed = true }
func (r *leakRecorder) Cleanup(f func())      { r.TB.Cleanup(f) }
