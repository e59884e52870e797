package procprio

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/sie-europe/dnssensor/internal/testenv"
)

// threadNices reads every thread's nice value.
func threadNices(t testing.TB) map[string]int {
	t.Helper()
	paths, err := filepath.Glob("/proc/self/task/*/stat")
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]int{}
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			continue // the thread ended
		}
		n, err := niceOf(b)
		if err != nil {
			t.Fatal(err)
		}
		m[filepath.Base(filepath.Dir(p))] = n
	}
	return m
}

func allAt(m map[string]int, n int) bool {
	for _, v := range m {
		if v != n {
			return false
		}
	}
	return len(m) > 0
}

// TestBoostEveryThread runs in a child process (the nice values it sets would outlive the test
// in this one): with DNSSENSOR_START_NICE=-5 every thread runs at -5 from StartBoost on, also
// threads created after it (each locked goroutine below needs a thread of its own), and after
// EndBoost every thread, those too, is back at the nice the process started with.
func TestBoostEveryThread(t *testing.T) {
	if os.Getenv("PROCPRIO_CHILD") == "1" {
		child(t)
		return
	}
	testenv.NeedRoot(t, "a negative nice value needs CAP_SYS_NICE")
	cmd := exec.Command(os.Args[0], "-test.run=^TestBoostEveryThread$", "-test.v")
	cmd.Env = append(os.Environ(), "PROCPRIO_CHILD=1", Env+"=-5")
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "child ok") {
		t.Fatalf("child: %v\n%s", err, out)
	}
}

func child(t *testing.T) {
	before, err := Nice()
	if err != nil {
		t.Fatal(err)
	}
	if before == -5 {
		t.Fatal("the child already runs at -5: nothing would be shown")
	}
	msg, err := StartBoost(os.Getenv)
	if err != nil || !strings.Contains(msg, "nice -5") {
		t.Fatalf("StartBoost = %q, %v", msg, err)
	}
	if m := threadNices(t); !allAt(m, -5) {
		t.Fatalf("after StartBoost: thread nices %v, want all -5", m)
	}
	release := make(chan struct{})
	started := make(chan struct{})
	const locked = 8
	for range locked {
		go func() {
			runtime.LockOSThread()
			started <- struct{}{}
			<-release
		}()
	}
	for range locked {
		<-started
	}
	m := threadNices(t)
	if len(m) < locked+1 || !allAt(m, -5) {
		t.Fatalf("threads created during the boost: nices %v, want %d or more, all -5", m, locked+1)
	}
	if err := EndBoost(); err != nil {
		t.Fatal(err)
	}
	if m := threadNices(t); !allAt(m, before) {
		t.Fatalf("after EndBoost: thread nices %v, want all %d", m, before)
	}
	if err := EndBoost(); err != nil { // a second call changes nothing
		t.Fatal(err)
	}
	close(release)
	fmt.Println("child ok")
}

// TestBoostBounded: a program that never calls EndBoost (its capture port never appears) is back
// at its own nice after MaxBoost. Before, it kept the head start for as long as it ran.
func TestBoostBounded(t *testing.T) {
	if os.Getenv("PROCPRIO_CHILD") == "bounded" {
		before, err := Nice()
		if err != nil {
			t.Fatal(err)
		}
		MaxBoost = 200 * time.Millisecond
		if _, err := StartBoost(os.Getenv); err != nil {
			t.Fatal(err)
		}
		if m := threadNices(t); !allAt(m, -5) {
			t.Fatalf("after StartBoost: thread nices %v, want all -5", m)
		}
		testenv.WaitFor(t, "the boost to end by itself", func() bool { return allAt(threadNices(t), before) })
		fmt.Println("child ok")
		return
	}
	testenv.NeedRoot(t, "a negative nice value needs CAP_SYS_NICE")
	cmd := exec.Command(os.Args[0], "-test.run=^TestBoostBounded$", "-test.v")
	cmd.Env = append(os.Environ(), "PROCPRIO_CHILD=bounded", Env+"=-5")
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "child ok") {
		t.Fatalf("child: %v\n%s", err, out)
	}
}

func TestStartBoostRefuses(t *testing.T) {
	for _, v := range []string{"x", "-21", "20", "1.5"} {
		_, err := StartBoost(func(string) string { return v })
		if err == nil || !strings.Contains(err.Error(), Env) {
			t.Errorf("%s=%q: err %v, want one naming the variable", Env, v, err)
		}
	}
	if msg, err := StartBoost(func(string) string { return "" }); msg != "" || err != nil {
		t.Errorf("unset: %q, %v; want nothing done", msg, err)
	}
	if err := EndBoost(); err != nil {
		t.Errorf("EndBoost without a boost: %v", err)
	}
}

func TestNiceOf(t *testing.T) {
	stat := "12 (a) b (c)) S 1 12 12 0 -1 4194560 100 0 0 0 5 3 0 0 39 19 4 0 77 0 0"
	if n, err := niceOf([]byte(stat)); err != nil || n != 19 {
		t.Errorf("niceOf = %d, %v; want 19", n, err)
	}
	if _, err := niceOf([]byte("12 (x) S 1")); err == nil {
		t.Error("a short line must be an error")
	}
}

// TestBoostLogs: a program's one call logs what it did under its name, a refused value too (the
// program then starts without a boost), and nothing when the image sets no boost.
func TestBoostLogs(t *testing.T) {
	var b strings.Builder
	t.Setenv(Env, "fast")
	Boost("sensord", &b)
	if !strings.HasPrefix(b.String(), "sensord: "+Env+`="fast"`) {
		t.Errorf("refused value logged as %q", b.String())
	}
	b.Reset()
	t.Setenv(Env, "")
	Boost("sensord", &b)
	if b.Len() != 0 {
		t.Errorf("no boost, but logged %q", b.String())
	}
}
