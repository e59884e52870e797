package timesync

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sie-europe/dnssensor/internal/health"
	"github.com/sie-europe/dnssensor/internal/testenv"
)

func toNTP(t time.Time) uint64 {
	d := t.Sub(ntpEpoch)
	return uint64(d/time.Second)<<32 | uint64((d%time.Second)<<32/time.Second)
}

// fakeServer answers NTP requests on loopback as a server whose clock is off by the current
// offset; answer may rewrite each reply (hostile servers).
type fakeServer struct {
	addr   string
	mu     sync.Mutex
	offset time.Duration
	answer func(req, resp []byte) []byte
}

func startServer(t *testing.T) *fakeServer {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &fakeServer{addr: pc.LocalAddr().String()}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 512)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			if n < 48 {
				continue
			}
			s.mu.Lock()
			off, answer := s.offset, s.answer
			s.mu.Unlock()
			resp := make([]byte, 48)
			resp[0], resp[1] = 4<<3|4, 2
			binary.BigEndian.PutUint32(resp[4:8], 1<<12)  // root delay 62.5 ms
			binary.BigEndian.PutUint32(resp[8:12], 1<<10) // root dispersion 15.6 ms
			copy(resp[24:32], buf[40:48])
			now := toNTP(time.Now().Add(off))
			binary.BigEndian.PutUint64(resp[32:40], now)
			binary.BigEndian.PutUint64(resp[40:48], now)
			if answer != nil {
				resp = answer(buf[:n], resp)
			}
			pc.WriteTo(resp, from)
		}
	}()
	t.Cleanup(func() { pc.Close(); <-done })
	return s
}

func (s *fakeServer) set(off time.Duration, answer func(req, resp []byte) []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.offset, s.answer = off, answer
}

// recClock is the real time, never changed: what the daemon does to it is recorded.
type recClock struct {
	mu    sync.Mutex
	skew  time.Duration // added to Now, to age the health tree
	calls []string
	bound time.Duration // the last maximum error the kernel was told
}

func (c *recClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return time.Now().Add(c.skew)
}

func (c *recClock) rec(s string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.calls = append(c.calls, s)
	return nil
}

// Step and Slew record the adjustment rounded to 100 ms: the offset measured is the server's
// within half a round trip, which a loaded machine stretches to milliseconds.
func (c *recClock) Step(d time.Duration) error {
	return c.rec(fmt.Sprintf("step %v", d.Round(100*time.Millisecond)))
}

func (c *recClock) Slew(d time.Duration) error {
	return c.rec(fmt.Sprintf("slew %v", d.Round(100*time.Millisecond)))
}

func (c *recClock) SetSynced(maxErr, estErr time.Duration) error {
	c.mu.Lock()
	c.bound = maxErr
	c.mu.Unlock()
	return c.rec("synced")
}

func (c *recClock) take() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := c.calls
	c.calls = nil
	return out
}

// TestSyncStepsAndSlews: a clock 10 s off is stepped, one 90 ms off slewed, and each time the
// kernel is told the clock is synchronised, with a bound that includes the server's own distance
// (root delay/2 + root dispersion ≈ 47 ms here). The health tree goes green after the first
// synchronisation and red again when it is 4 polls old.
func TestSyncStepsAndSlews(t *testing.T) {
	srv := startServer(t)
	clk := &recClock{}
	dir := t.TempDir()
	d := &Daemon{Opts: &Options{ServersFile: filepath.Join(dir, "ntp.json"), Servers: []string{srv.addr}, Poll: 64 * time.Second, StepThreshold: 128 * time.Millisecond},
		Clock: clk, Logf: t.Logf}
	tree := d.tree()
	if r := tree.Evaluate(); r.OK {
		t.Errorf("healthy before any synchronisation: %+v", r.Checks)
	}

	srv.set(10*time.Second, nil)
	if err := d.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(clk.take(), ", "); got != "step 10s, synced" {
		t.Errorf("10 s off: %s", got)
	}
	// Root delay 62.5 ms / 2 + root dispersion 15.6 ms + 1 ms, plus half a loopback round trip.
	if clk.bound < 47*time.Millisecond || clk.bound > 100*time.Millisecond {
		t.Errorf("maximum error told to the kernel %v, want about 48 ms", clk.bound)
	}
	srv.set(-90*time.Millisecond, nil)
	if err := d.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(clk.take(), ", "); got != "slew -100ms, synced" {
		t.Errorf("90 ms behind: %s", got)
	}
	if r := tree.Evaluate(); !r.OK {
		t.Errorf("not healthy after synchronising: %+v", r.Checks[0].Children[0])
	}
	clk.mu.Lock()
	clk.skew = 5 * d.Opts.Poll
	clk.mu.Unlock()
	if r := tree.Evaluate(); r.OK || !strings.Contains(r.Checks[0].Children[0].Fix, "UDP port 123") {
		t.Errorf("healthy 5 polls after the last synchronisation: %+v", r.Checks[0].Children[0])
	}

	// netconfd's list wins over -servers: an unreachable server there means no synchronisation.
	if err := os.WriteFile(d.Opts.ServersFile, []byte(`{"source":"dhcp4","servers":["127.0.0.1:1"]}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := d.Sync(context.Background()); err == nil {
		t.Error("synchronised from -servers although ntp.json names other servers")
	}
	if calls := clk.take(); len(calls) != 0 {
		t.Errorf("clock changed without an answer: %v", calls)
	}
}

// TestQueryHostile: answers that must not set the clock.
func TestQueryHostile(t *testing.T) {
	srv := startServer(t)
	for _, c := range []struct {
		name   string
		answer func(req, resp []byte) []byte
		want   string
	}{
		{"kiss-o'-death", func(_, r []byte) []byte { r[1] = 0; copy(r[12:16], "RATE"); return r }, "kiss-o'-death"},
		{"unsynchronised server", func(_, r []byte) []byte { r[1] = 16; return r }, "not synchronised"},
		{"leap alarm", func(_, r []byte) []byte { r[0] |= 3 << 6; return r }, "not synchronised"},
		{"not a server", func(_, r []byte) []byte { r[0] = r[0]&^7 | 3; return r }, "not a server's"},
		{"sent before received", func(_, r []byte) []byte {
			binary.BigEndian.PutUint64(r[40:48], binary.BigEndian.Uint64(r[32:40])-1<<32)
			return r
		}, "impossible"},
		{"wrong cookie (forged or late)", func(_, r []byte) []byte { r[24] ^= 0xff; return r }, "deadline"},
		{"short", func(_, r []byte) []byte { return r[:40] }, "deadline"},
	} {
		srv.set(0, c.answer)
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		_, err := Query(ctx, srv.addr, time.Now)
		cancel()
		if err == nil || !strings.Contains(err.Error(), c.want) && !(c.want == "deadline" && errors.Is(err, os.ErrDeadlineExceeded)) {
			t.Errorf("%s: %v, want an error with %q", c.name, err, c.want)
		}
	}
}

// TestQueryChrony asks Debian's chronyd, run by the test on loopback with -x (it never touches
// this machine's clock), serving its local clock at stratum 8: the offset is that of a clock with
// itself.
func TestQueryChrony(t *testing.T) {
	if testing.Short() {
		t.Skip("runs chronyd")
	}
	testenv.NeedRoot(t, "chronyd binds an NTP port")
	bin, err := exec.LookPath("chronyd")
	if err != nil {
		bin, err = exec.LookPath("/usr/sbin/chronyd")
	}
	testenv.Need(t, err == nil, "chronyd not found (apt-get install chrony)")
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := pc.LocalAddr().(*net.UDPAddr).Port
	pc.Close()
	dir := t.TempDir()
	conf := filepath.Join(dir, "chrony.conf")
	os.WriteFile(conf, []byte(fmt.Sprintf("port %d\nbindaddress 127.0.0.1\ncmdport 0\nlocal stratum 8\nallow 127.0.0.1\npidfile %s\ndriftfile %s\n",
		port, filepath.Join(dir, "pid"), filepath.Join(dir, "drift"))), 0o644)
	cmd := exec.Command(bin, "-f", conf, "-d", "-x", "-U")
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait(); t.Logf("chronyd:\n%s", out.String()) })
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	var s Sample
	testenv.WaitFor(t, "chronyd to answer", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		defer cancel()
		s, err = Query(ctx, addr, time.Now)
		return err == nil
	})
	if s.Stratum != 8 || s.Offset > 50*time.Millisecond || s.Offset < -50*time.Millisecond || s.Delay > time.Second {
		t.Errorf("sample %+v", s)
	}

	// The daemon, with its health contract, synchronises from it (the clock recorded, never set).
	clk := &recClock{}
	sock := filepath.Join(dir, "health.sock")
	d := &Daemon{Opts: &Options{ServersFile: filepath.Join(dir, "none.json"), Servers: []string{addr}, Poll: 64 * time.Second,
		StepThreshold: 128 * time.Millisecond, Health: sock}, Clock: clk, Logf: t.Logf}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	testenv.WaitFor(t, "timed's health to say synchronised", func() bool {
		r, err := health.Get(context.Background(), sock)
		return err == nil && r.OK
	})
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if calls := clk.take(); len(calls) < 2 || calls[len(calls)-1] != "synced" {
		t.Errorf("clock calls %v", calls)
	}
}

func TestParseFlags(t *testing.T) {
	for _, args := range [][]string{{"-poll", "5s"}, {"-poll", "2h"}, {"-step-threshold", "2s"}, {"extra"}} {
		if _, err := ParseFlags(args, io.Discard); err == nil {
			t.Errorf("%q accepted", args)
		}
	}
	o, err := ParseFlags([]string{"-servers", "a, b,"}, io.Discard)
	if err != nil || strings.Join(o.Servers, "|") != "a|b" {
		t.Errorf("servers %v, %v", o, err)
	}
}
