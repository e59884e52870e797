// Package netnstest builds the little networks netconf's tests run in: named network namespaces
// joined by veth pairs, made with iproute2 so that what the test builds is what an administrator
// would type, and removed when the test ends. Code under test runs inside a namespace by
// re-executing the test binary there (Child), never by switching a thread's namespace inside the
// test process: the Go scheduler may move the rest of the test onto that thread.
package netnstest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sie-europe/dnssensor/internal/testenv"
)

// NeedTools skips (locally) or fails (CI) t unless it runs as root and every tool is on PATH.
// Under -short it skips: these tests start servers and re-executed daemons (the short tier is
// for tests that do not; the full run has them).
func NeedTools(t testing.TB, tools ...string) {
	t.Helper()
	if testing.Short() {
		t.Skip("network namespace test with real servers: not in -short")
	}
	testenv.NeedRoot(t, "network namespaces")
	for _, tool := range tools {
		_, err := exec.LookPath(tool)
		testenv.Need(t, err == nil, "%s not found (apt-get install it, see ci/deps)", tool)
	}
}

// Run runs a command and fails t with its output if it fails.
func Run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// In runs a command inside namespace ns.
func In(t testing.TB, ns, name string, args ...string) string {
	t.Helper()
	return Run(t, "ip", append([]string{"netns", "exec", ns, name}, args...)...)
}

// Netns creates the namespace name (removing a stale one a killed run left) with lo up, and
// removes it at the end of the test.
func Netns(t testing.TB, name string) string {
	t.Helper()
	_ = exec.Command("ip", "netns", "del", name).Run()
	Run(t, "ip", "netns", "add", name)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	Run(t, "ip", "-n", name, "link", "set", "lo", "up")
	return name
}

// Veth creates a veth pair with end a in namespace nsA and end b in nsB, both down.
func Veth(t testing.TB, a, nsA, b, nsB string) {
	t.Helper()
	Run(t, "ip", "link", "add", a, "netns", nsA, "type", "veth", "peer", "name", b, "netns", nsB)
}

// Sysctl writes value to /proc/sys/<path> inside ns (path like net/ipv6/conf/eth0/disable_ipv6;
// written by the shell, so the tests do not need procps).
func Sysctl(t testing.TB, ns, path, value string) {
	t.Helper()
	In(t, ns, "sh", "-c", `echo "$1" > "/proc/sys/$2"`, "sh", value, path)
}

// Capture is a running tcpdump that counts the frames an interface receives.
type Capture struct {
	cmd    *exec.Cmd
	mu     sync.Mutex
	frames []string
	done   chan struct{}
}

// StartCapture starts tcpdump on iface in ns for frames arriving there (-Q in: what the far end
// of the link sent), and returns once tcpdump says it is listening.
func StartCapture(t testing.TB, ns, iface string) *Capture {
	t.Helper()
	cmd := exec.Command("ip", "netns", "exec", ns, "tcpdump", "-i", iface, "-Q", "in", "-n", "-e", "-l", "-vv")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &Capture{cmd: cmd, done: make(chan struct{})}
	listening := make(chan struct{})
	var errLines bytes.Buffer
	var errMu sync.Mutex
	go func() {
		sc := bufio.NewScanner(stderr)
		once := sync.Once{}
		for sc.Scan() {
			errMu.Lock()
			errLines.WriteString(sc.Text() + "\n")
			errMu.Unlock()
			if strings.Contains(sc.Text(), "listening on") {
				once.Do(func() { close(listening) })
			}
		}
	}()
	go func() {
		defer close(c.done)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			line := sc.Text()
			if strings.TrimSpace(line) == "" {
				continue
			}
			// -vv continues a frame's description on indented lines.
			c.mu.Lock()
			if strings.HasPrefix(line, " ") || strings.HasPrefix(line, "\t") {
				if n := len(c.frames); n > 0 {
					c.frames[n-1] += "\n" + line
				}
			} else {
				c.frames = append(c.frames, line)
			}
			c.mu.Unlock()
		}
	}()
	t.Cleanup(func() { c.stop() })
	select {
	case <-listening:
	case <-time.After(testenv.Patience):
		errMu.Lock()
		defer errMu.Unlock()
		t.Fatalf("tcpdump on %s in %s did not start listening: %s", iface, ns, errLines.String())
	}
	return c
}

func (c *Capture) stop() {
	if c.cmd.ProcessState == nil {
		_ = c.cmd.Process.Signal(os.Interrupt)
		<-c.done
		_ = c.cmd.Wait()
	}
}

// Stop ends the capture and returns the frames seen, one description each.
func (c *Capture) Stop() []string {
	c.stop()
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.frames...)
}

// Frames returns the frames seen so far.
func (c *Capture) Frames() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.frames...)
}

// ChildEnv names the environment variable that tells a re-executed test binary which child to be.
const ChildEnv = "NETNSTEST_CHILD"

// Child runs the test binary again inside ns as child name (the test's TestMain dispatches on
// ChildEnv with RunChild), with extra environment, and returns its stdout. The child's stderr goes
// to the test log.
func Child(ctx context.Context, t testing.TB, ns, name string, env ...string) ([]byte, error) {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", ns, exe)
	cmd.Env = append(append(os.Environ(), ChildEnv+"="+name), env...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if stderr.Len() > 0 {
		t.Logf("child %s in %s:\n%s", name, ns, stderr.String())
	}
	return out, err
}

// StartChild is Child without waiting: it returns the running command, whose stdout and stderr
// are written to out (which must be safe for concurrent use if read while running).
func StartChild(t testing.TB, ns, name string, out io.Writer, env ...string) *exec.Cmd {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("ip", "netns", "exec", ns, exe)
	cmd.Env = append(append(os.Environ(), ChildEnv+"="+name), env...)
	cmd.Stdout = out
	cmd.Stderr = out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	return cmd
}

// RunChild is called from TestMain: when this process is a child it runs children[name] and exits
// with its result (0, or 1 after printing the error); otherwise it returns.
func RunChild(children map[string]func() (any, error)) {
	name := os.Getenv(ChildEnv)
	if name == "" {
		return
	}
	f, ok := children[name]
	if !ok {
		fmt.Fprintf(os.Stderr, "unknown child %q\n", name)
		os.Exit(2)
	}
	v, err := f()
	if v != nil {
		_ = json.NewEncoder(os.Stdout).Encode(v)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Exit(0)
}

// SyncBuffer is a bytes.Buffer safe for a child's writes and the test's reads.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
