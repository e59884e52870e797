package status

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sie-europe/dnssensor/internal/testenv"
)

// lockedBuffer is a writer Main and the test share.
type lockedBuffer struct {
	mu sync.Mutex
	b  []byte
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.b = append(l.b, p...)
	return len(p), nil
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return string(l.b)
}

// TestMainStopsWithPageInFlight: SIGTERM (ctx) while a page is being composed ends statusd at
// once, the page answered with what it has, rather than after the daemons' time limit or the
// server's shutdown grace. gokrazy stops every service before a reboot and waits for the last;
// statusd serving a poll of its page while the daemons it asks go down held every update's
// reboot for its 2 s grace (ci/qemu-update-test's capture gap: "all services shut down" 2.0 s
// after SIGTERM with the page polled, 0.5 s without).
func TestMainStopsWithPageInFlight(t *testing.T) {
	dir := t.TempDir()
	pw := filepath.Join(dir, "pw")
	if err := os.WriteFile(pw, []byte("secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// A daemon that accepts and never answers: the page waits for it.
	sock := filepath.Join(dir, "sensord.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	asked := make(chan struct{}, 16)
	go func() {
		var held []net.Conn
		defer func() {
			for _, c := range held {
				c.Close()
			}
		}()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			held = append(held, c)
			go func() {
				// The page asks /health.json; the sampler, also running, asks /metrics.json.
				line, _ := bufio.NewReader(c).ReadString('\n')
				if strings.Contains(line, "/health.json") {
					asked <- struct{}{}
				}
			}()
		}
	}()

	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	var stdout lockedBuffer
	exited := make(chan int, 1)
	go func() {
		exited <- Main(ctx, []string{"-listen", "127.0.0.1:0", "-password-file", pw,
			"-daemons", "sensord=" + sock + ",uplinkd=" + filepath.Join(dir, "absent.sock"), "-optional", "",
			"-gokrazy-url", "", "-updated", "", "-timeout", "10m", "-sample-every", "1h"}, &stdout, io.Discard)
	}()
	serving := regexp.MustCompile(`serving on (http://\S+)`)
	testenv.WaitFor(t, "statusd to serve", func() bool { return serving.MatchString(stdout.String()) })
	url := serving.FindStringSubmatch(stdout.String())[1]

	answered := make(chan error, 1)
	go func() {
		req, _ := http.NewRequest(http.MethodGet, url, nil)
		req.SetBasicAuth("any", "secret")
		req.Header.Set("Accept", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
		}
		answered <- err
	}()
	select {
	case <-asked:
	case <-time.After(testenv.Patience):
		t.Fatal("the page never asked sensord")
	}

	start := time.Now()
	stop()
	var code int
	select {
	case code = <-exited:
	case <-time.After(testenv.Patience):
		t.Fatal("statusd did not exit after ctx ended")
	}
	took := time.Since(start)
	// The page in flight must have been answered: the old code gave up on it after its 2 s
	// shutdown grace and returned with the request still waiting on sensord, which never
	// answers here. The answer is awaited, not looked for at once: statusd writes it before it
	// returns, but the client's goroutine reads it a moment later (a check without waiting
	// failed 1 run in about 60 on a quiet machine).
	select {
	case err := <-answered:
		if err != nil {
			t.Errorf("the page in flight: %v", err)
		}
	case <-time.After(testenv.Patience):
		t.Errorf("statusd returned after %v and the page request was still unanswered %v later", took, testenv.Patience)
	}
	if code != 0 {
		t.Errorf("exit code %d, want 0", code)
	}
	t.Logf("statusd exited %v after ctx ended", took)
}
