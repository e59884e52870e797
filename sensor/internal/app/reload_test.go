//go:build linux

package app

import (
	"context"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sie-europe/dnssensor/internal/health"
)

// writeAtomically replaces path as statusd does: a temporary file renamed over it.
func writeAtomically(t *testing.T, path, content string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// TestConfigReload runs sensord as the image does, capturing on loopback, and rewrites its
// config file: an invalid file is refused (the check "configuration" red naming the key, the
// running configuration kept, nothing restarted); a valid one is applied within 5 s in-process
// (the health socket answers throughout, the new resolver's transactions become records, and
// -J continues the file). Needs root (AF_PACKET).
func TestConfigReload(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for AF_PACKET")
	}
	dir := t.TempDir()
	cfg := filepath.Join(dir, "config.json")
	writeAtomically(t, cfg, `{"resolver": "127.83.72.9", "rd": "0"}`)
	sock := filepath.Join(dir, "h.sock")
	js := filepath.Join(dir, "out.json")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stderr syncBuffer
	code := make(chan int, 1)
	go func() {
		code <- Main(ctx, []string{"-i", "lo", "-config", cfg, "-J", js, "-health", sock, "-block-timeout", "2ms",
			"-unsolicited-hold", "0"}, io.Discard, &stderr)
	}()
	check := func() (*health.Check, *health.Report) {
		rep, err := health.Get(context.Background(), sock)
		if err != nil {
			return nil, nil
		}
		for _, c := range rep.Checks {
			if c.Name == "configuration" {
				return c, rep
			}
		}
		t.Fatalf("no check \"configuration\": %+v", rep.Checks)
		return nil, nil
	}
	waitFor := func(what string, cond func(c *health.Check) bool) time.Duration {
		t.Helper()
		start := time.Now()
		for deadline := start.Add(time.Minute); ; time.Sleep(10 * time.Millisecond) {
			if c, _ := check(); c != nil && cond(c) {
				return time.Since(start)
			}
			select {
			case c := <-code:
				t.Fatalf("sensord exited %d: %s", c, stderr.String())
			default:
			}
			if time.Now().After(deadline) {
				c, _ := check()
				t.Fatalf("%s: never; check %+v; stderr %s", what, c, stderr.String())
			}
		}
	}
	waitFor("started", func(c *health.Check) bool { return c.OK })
	transaction := func(res string) {
		t.Helper()
		// The response comes from port 53 of the far side: bind it, or skip the records part.
		far, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.ParseIP("127.83.72.53"), Port: 53})
		if err != nil {
			t.Skipf("cannot bind port 53 on loopback: %v", err)
		}
		defer far.Close()
		q, err := net.DialUDP("udp4", &net.UDPAddr{IP: net.ParseIP(res), Port: 40053}, &net.UDPAddr{IP: net.ParseIP("127.83.72.53"), Port: 53})
		if err != nil {
			t.Fatal(err)
		}
		defer q.Close()
		msg := []byte{0x12, 0x34, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 7, 'r', 'e', 'l', 'o', 'a', 'd', 's', 0, 0, 1, 0, 1}
		q.Write(msg)
		resp := append([]byte(nil), msg...)
		resp[2] |= 0x80
		far.WriteToUDP(resp, &net.UDPAddr{IP: net.ParseIP(res), Port: 40053})
	}
	// The configuration check is green before the capture rings are open: send until the first
	// run has counted a response (a transaction sent earlier reaches no socket; seen in CI).
	responses := func() float64 {
		m, err := health.GetMetrics(context.Background(), sock)
		if err != nil {
			t.Fatal(err)
		}
		n, _ := m.Value("dnssensor_sensord_port_dns_messages_total", map[string]string{"qr": "response"})
		return n
	}
	for deadline := time.Now().Add(time.Minute); responses() == 0; {
		transaction("127.83.72.9")
		for wait := time.Now().Add(time.Second); responses() == 0 && time.Now().Before(wait); {
			time.Sleep(10 * time.Millisecond)
		}
		if time.Now().After(deadline) {
			t.Fatalf("the first run never counted a response: %s", stderr.String())
		}
	}

	// Invalid: refused, naming the key; the running configuration stays.
	writeAtomically(t, cfg, `{"resolver": "127.83.72.10", "rd": "2"}`)
	took := waitFor("refused", func(c *health.Check) bool { return !c.OK })
	c, rep := check()
	if !strings.Contains(c.Detail, "-rd") || c.Fix == "" || rep.FirstFailurePath[0] != "configuration" {
		t.Errorf("refusal: %+v (first failure %q)", c, rep.FirstFailurePath)
	}
	t.Logf("refused after %v: %s", took, c.Detail)
	writeAtomically(t, cfg, `{"resolver": "127.83.72.10", "bogus": 1}`)
	waitFor("refused again", func(c *health.Check) bool { return strings.Contains(c.Detail, `"bogus"`) })
	if strings.Contains(stderr.String(), "applied;") {
		t.Fatalf("an invalid file was applied: %s", stderr.String())
	}

	// Valid: applied in-process within 5 s.
	writeAtomically(t, cfg, `{"resolver": "127.83.72.10", "rd": "0"}`)
	took = waitFor("applied", func(c *health.Check) bool { return c.OK && strings.Contains(c.Detail, "1 reloads") })
	c, _ = check()
	t.Logf("applied after %v: %s", took, c.Detail)
	if took > 5*time.Second {
		t.Errorf("applied after %v, want within 5 s", took)
	}
	m, err := health.GetMetrics(context.Background(), sock)
	if err != nil {
		t.Fatal(err)
	}
	gap, _ := m.Value("dnssensor_sensord_reload_capture_gap_seconds", nil)
	applied, _ := m.Value("dnssensor_sensord_config_reloads_total", map[string]string{"result": "applied"})
	refused, _ := m.Value("dnssensor_sensord_config_reloads_total", map[string]string{"result": "refused"})
	t.Logf("capture gap %.6f s; reloads applied %v, refused %v", gap, applied, refused)
	if gap <= 0 || gap > 5 || applied != 1 || refused != 2 {
		t.Errorf("metrics: gap %v, applied %v, refused %v", gap, applied, refused)
	}
	// SIGTERM stops reading at once: send until the new run's reader has counted the response
	// (its counters start from zero; its rings may open after the health check turned green).
	for deadline := time.Now().Add(time.Minute); responses() == 0; {
		transaction("127.83.72.10")
		for wait := time.Now().Add(time.Second); responses() == 0 && time.Now().Before(wait); {
			time.Sleep(10 * time.Millisecond)
		}
		if time.Now().After(deadline) {
			t.Fatalf("the response never reached the new run: %s", stderr.String())
		}
	}
	cancel()
	if c := <-code; c != 0 {
		t.Fatalf("exit %d: %s", c, stderr.String())
	}
	out, err := os.ReadFile(js)
	if err != nil {
		t.Fatal(err)
	}
	for _, res := range []string{"127.83.72.9", "127.83.72.10"} {
		if !strings.Contains(string(out), `"query_ip":"`+res+`"`) {
			t.Errorf("no record of %s's transaction in -J (before and after the reload): %s\nstderr: %s", res, out, stderr.String())
		}
	}
}

// TestReloadLeavesDiscovery: the status page's "use this address" writes the resolver into the
// config file of a box in discovery mode; sensord leaves discovery within 5 s, runs the privacy
// self-test and makes records from then on. Needs root (AF_PACKET).
func TestReloadLeavesDiscovery(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for AF_PACKET")
	}
	dir := t.TempDir()
	cfg := filepath.Join(dir, "config.json")
	writeAtomically(t, cfg, `{"rd": "0"}`)
	sock := filepath.Join(dir, "h.sock")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stderr syncBuffer
	code := make(chan int, 1)
	go func() {
		code <- Main(ctx, []string{"-i", "lo", "-config", cfg, "-spool", filepath.Join(dir, "spool"), "-health", sock, "-block-timeout", "2ms"}, io.Discard, &stderr)
	}()
	roots := func() map[string]*health.Check {
		m := map[string]*health.Check{}
		if rep, err := health.Get(context.Background(), sock); err == nil {
			for _, c := range rep.Checks {
				m[c.Name] = c
			}
		}
		return m
	}
	wait := func(what string, cond func(map[string]*health.Check) bool) time.Duration {
		t.Helper()
		start := time.Now()
		for deadline := start.Add(time.Minute); !cond(roots()); time.Sleep(10 * time.Millisecond) {
			select {
			case c := <-code:
				t.Fatalf("sensord exited %d: %s", c, stderr.String())
			default:
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: never; %s", what, stderr.String())
			}
		}
		return time.Since(start)
	}
	wait("discovery", func(m map[string]*health.Check) bool { return m["resolver configured"] != nil })
	writeAtomically(t, cfg, `{"resolver": "127.83.71.1", "rd": "0"}`)
	took := wait("configured", func(m map[string]*health.Check) bool {
		return m["resolver configured"] == nil && m["privacy self-test"] != nil && m["privacy self-test"].OK
	})
	t.Logf("left discovery after %v", took)
	if took > 5*time.Second {
		t.Errorf("left discovery after %v, want within 5 s", took)
	}
	cancel()
	if c := <-code; c != 0 {
		t.Errorf("exit %d: %s", c, stderr.String())
	}
}
