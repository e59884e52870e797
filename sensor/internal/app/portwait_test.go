//go:build linux

package app

import (
	"context"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sie-europe/dnssensor/internal/health"
	"github.com/sie-europe/dnssensor/internal/pktbuild"
	"github.com/sie-europe/dnssensor/internal/testenv"
)

// TestCapturePortWaitedFor: sensord started with a capture port that does not exist yet waits for
// it, answering its health contract with a failing capture check that names the port, and
// captures once the port appears; SIGTERM while waiting is a clean stop. Before, it exited 1
// ("no such network interface") and gokrazy restarted it every second, so its health socket was
// missing most of the time: in QEMU the update's health gate took such a sensord for one that is
// not configured.
//
// It runs in a network namespace of its own (testenv.InOwnNetns).
func TestCapturePortWaitedFor(t *testing.T) {
	if !testenv.InOwnNetns(t) {
		return
	}
	dir := t.TempDir()
	cfg := filepath.Join(dir, "config.json")
	if err := os.WriteFile(cfg, []byte(`{"resolver": "192.0.2.53"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "h.sock")
	run := func() (context.CancelFunc, chan int, *syncBuffer) {
		ctx, cancel := context.WithCancel(context.Background())
		var stderr syncBuffer
		code := make(chan int, 1)
		go func() {
			code <- Main(ctx, []string{"-i", "portwait0", "-config", cfg, "-spool", filepath.Join(dir, "spool"), "-health", sock}, io.Discard, &stderr)
		}()
		return cancel, code, &stderr
	}
	capture := func(code chan int, stderr *syncBuffer) *health.Check {
		select {
		case c := <-code:
			t.Fatalf("sensord exited %d while its capture port was missing:\n%s", c, stderr.String())
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		rep, err := health.Get(ctx, sock)
		if err != nil {
			return nil
		}
		for _, c := range rep.Checks {
			if c.Name == "capture" {
				return c
			}
		}
		return nil
	}
	stopped := func(cancel context.CancelFunc, code chan int, stderr *syncBuffer) {
		t.Helper()
		cancel()
		select {
		case c := <-code:
			if c != 0 {
				t.Errorf("sensord stopped with %d, want 0:\n%s", c, stderr.String())
			}
		case <-time.After(testenv.Patience):
			t.Fatalf("sensord did not stop within %v", testenv.Patience)
		}
	}

	// Stopped while waiting.
	cancel, code, stderr := run()
	var c *health.Check
	testenv.WaitFor(t, "the capture check to say what it waits for", func() bool {
		c = capture(code, stderr)
		return c != nil && strings.Contains(c.Detail, "waiting for capture port portwait0")
	})
	if c.OK || c.Fix == "" {
		t.Errorf("capture check while waiting: %+v, want failing with a fix", c)
	}
	stopped(cancel, code, stderr)

	// The port appears: capture starts.
	cancel, code, stderr = run()
	testenv.WaitFor(t, "sensord to wait for portwait0", func() bool {
		c = capture(code, stderr)
		return c != nil && strings.Contains(c.Detail, "waiting for capture port portwait0")
	})
	for _, args := range [][]string{
		{"link", "add", "portwait0", "type", "veth", "peer", "name", "portwait1"},
		{"link", "set", "portwait1", "up"},
		{"link", "set", "portwait0", "up"},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v\n%s", args, err, out)
		}
	}
	testenv.WaitFor(t, "capture on portwait0 once it exists", func() bool {
		c = capture(code, stderr)
		return c != nil && c.OK && strings.Contains(c.Detail, "capturing on portwait0")
	})
	// The first frame's arrival time is exported, on the box's clock (an update's capture gap
	// is measured by it, ci/qemu-capture-gap). Sent again until seen: a veth carries frames only
	// once both ends have carrier, a moment after `ip link set up`.
	send := testenv.FrameSender(t, "portwait1")
	// A DNS query to the configured resolver: the capture's kernel filter passes DNS only.
	query := []byte{0x12, 0x34, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 7, 'e', 'x', 'a', 'm', 'p', 'l', 'e', 0, 0, 1, 0, 1}
	frame := pktbuild.AppendUDP([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0, 0, 0, 0, 1, 0x08, 0x00},
		netip.MustParseAddrPort("192.0.2.53:40000"), netip.MustParseAddrPort("198.51.100.1:53"), query)
	sent := time.Now()
	stamp := func(which string) (float64, bool) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		m, err := health.GetMetrics(ctx, sock)
		if err != nil {
			return 0, false
		}
		return m.Value("dnssensor_sensord_port_frame_timestamp_seconds", map[string]string{"port": "portwait0", "which": which})
	}
	if _, ok := stamp("first"); ok {
		t.Fatal("a first frame's time before any frame was sent")
	}
	testenv.WaitFor(t, "the first frame's arrival time in the metrics", func() bool {
		send(frame)
		_, ok := stamp("first")
		return ok
	})
	first, _ := stamp("first")
	last, _ := stamp("last")
	if lo, hi := float64(sent.UnixNano())/1e9, float64(time.Now().UnixNano())/1e9; first < lo || last < first || last > hi {
		t.Errorf("frame times first %.6f, last %.6f; want sent %.6f <= first <= last <= now %.6f", first, last, lo, hi)
	}
	stopped(cancel, code, stderr)
	if !strings.Contains(stderr.String(), "portwait0 appeared after") {
		t.Errorf("sensord's log does not say when the port appeared:\n%s", stderr.String())
	}
}
