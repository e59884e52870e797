//go:build linux

package app

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sie-europe/dnssensor/internal/health"
)

// TestDiscoveryMode runs sensord as the image does (-i, -config, -spool, -health) with a config
// file that names no resolver, capturing on loopback: it runs instead of exiting 125, makes no
// record, says "resolver configured" red with the fix, and serves the busiest query source on
// /resolver-candidates.json in the documented shape. Needs root (AF_PACKET).
//
// With a wrong resolver configured the same query source is listed: the kernel filter lets
// anyone's queries to port 53 through for it (and the pipeline refuses them as not_resolver).
func TestDiscoveryMode(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for AF_PACKET")
	}
	t.Run("no resolver", func(t *testing.T) { candidatesOnLoopback(t, `{"rd": "0"}`, true) })
	t.Run("wrong resolver", func(t *testing.T) { candidatesOnLoopback(t, `{"resolver": "127.83.71.9"}`, false) })
}

func candidatesOnLoopback(t *testing.T, config string, discovery bool) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "config.json")
	if err := os.WriteFile(cfg, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "h.sock")
	spoolDir := filepath.Join(dir, "spool")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stderr syncBuffer
	code := make(chan int, 1)
	go func() {
		code <- Main(ctx, []string{"-i", "lo", "-config", cfg, "-spool", spoolDir, "-health", sock, "-block-timeout", "2ms"}, io.Discard, &stderr)
	}()
	// A source nobody else on this host uses: other tests may query port 53 on loopback too.
	src := &net.UDPAddr{IP: net.ParseIP("127.83.71.1")}
	conn, err := net.DialUDP("udp4", src, &net.UDPAddr{IP: net.ParseIP("127.83.71.2"), Port: 53})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	query := []byte{0x12, 0x34, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 7, 'e', 'x', 'a', 'm', 'p', 'l', 'e', 0, 0, 1, 0, 1}
	c := health.Client(sock)
	var doc struct {
		WindowSeconds int `json:"window_seconds"`
		Candidates    []struct {
			Addr    string `json:"addr"`
			Queries uint64 `json:"queries"`
		} `json:"candidates"`
	}
	found := false
	for deadline := time.Now().Add(time.Minute); !found; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("127.83.71.1 never listed: %+v; stderr %s", doc, stderr.String())
		}
		select {
		case c := <-code:
			t.Fatalf("sensord exited %d: %s", c, stderr.String())
		default:
		}
		conn.Write(query)
		resp, err := c.Get("http://unix" + candidatesPath)
		if err != nil {
			continue // not listening yet
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "application/json" {
			t.Fatalf("%s: %d %s", candidatesPath, resp.StatusCode, b)
		}
		if err := json.Unmarshal(b, &doc); err != nil || doc.WindowSeconds != 60 || doc.Candidates == nil || !bytes.HasPrefix(b, []byte(`{"window_seconds":60,"candidates":[`)) {
			t.Fatalf("%s: %s (%v)", candidatesPath, b, err)
		}
		for _, cd := range doc.Candidates {
			found = found || (cd.Addr == "127.83.71.1" && cd.Queries > 0)
		}
	}
	rep, err := health.Get(context.Background(), sock)
	if err != nil {
		t.Fatal(err)
	}
	roots := map[string]*health.Check{}
	for _, c := range rep.Checks {
		roots[c.Name] = c
	}
	if c := roots["configuration"]; c == nil || !c.OK {
		t.Errorf("configuration check: %+v", c)
	}
	if c := roots["resolver configured"]; discovery && (rep.OK || strings.Join(rep.FirstFailurePath, "/") != "resolver configured" || c.Fix == "") {
		t.Errorf("health: ok %v, first failure %q", rep.OK, rep.FirstFailurePath)
	}
	if c := roots["privacy self-test"]; discovery != (c == nil) {
		t.Errorf("privacy self-test check %+v in discovery=%v", c, discovery)
	}
	hb, _ := json.Marshal(rep)
	if bytes.Contains(hb, []byte("127.83.71.1")) {
		t.Errorf("a candidate address in /health.json, which travels to the collector: %s", hb)
	}
	cancel()
	if c := <-code; c != 0 {
		t.Errorf("exit %d after SIGTERM: %s", c, stderr.String())
	}
	if des, _ := os.ReadDir(spoolDir); discovery && len(des) != 0 {
		t.Errorf("discovery wrote to the spool: %v", des)
	}
	if strings.Contains(stderr.String(), "127.83.71.1") {
		t.Errorf("a candidate address in the log: %s", stderr.String())
	}
	t.Logf("%s", stderr.String())
}

// syncBuffer is a bytes.Buffer for a writer and a reader in different goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
