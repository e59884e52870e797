package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sie-europe/dnssensor/internal/health"
	"github.com/sie-europe/dnssensor/internal/testenv"
)

// The test binary runs as uplinkd itself when this variable is set, so the test exercises the
// command as gokrazy starts it.
const asUplinkd = "UPLINKD_TEST_AS_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(asUplinkd) != "" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func spoolCheck(sock string) *health.Check {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	rep, err := health.Get(ctx, sock)
	if err != nil {
		return nil
	}
	for _, c := range rep.Checks {
		if c.Name == "spool" {
			return c
		}
	}
	return nil
}

// TestAnswersWhileSpoolMissing: a release whose sensord does not start never creates the spool.
// uplinkd must still answer its health contract, with the reason, so the status page and the
// update's health gate can name the fault; before, it waited 30 s without a socket and exited,
// and the gate reported only that uplinkd did not answer. Once sensord creates the spool,
// uplinkd goes on to deliver, and SIGTERM stops it cleanly in either state.
func TestAnswersWhileSpoolMissing(t *testing.T) {
	dir := t.TempDir()
	spool := filepath.Join(dir, "spool")
	sock := filepath.Join(dir, "uplinkd.sock")
	cfg := filepath.Join(dir, "uplinkd.json")
	if err := os.WriteFile(cfg, fmt.Appendf(nil, `{"spool": {"dir": %q}, "destinations": [{"type": "nmsg-udp", "addr": "127.0.0.1:9"}]}`, spool), 0o644); err != nil {
		t.Fatal(err)
	}
	start := func() (*exec.Cmd, chan error) {
		cmd := exec.Command(os.Args[0], "-config", cfg, "-health", sock)
		cmd.Env = append(os.Environ(), asUplinkd+"=1")
		var stderr strings.Builder
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		t.Cleanup(func() {
			cmd.Process.Kill()
			<-exited
			exited <- nil
			if t.Failed() {
				t.Logf("uplinkd's stderr:\n%s", stderr.String())
			}
		})
		return cmd, exited
	}
	stop := func(cmd *exec.Cmd, exited chan error) {
		t.Helper()
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-exited:
			exited <- err
			if err != nil {
				t.Errorf("uplinkd after SIGTERM: %v, want exit status 0", err)
			}
		case <-time.After(testenv.Patience):
			t.Fatalf("uplinkd did not stop within %v of SIGTERM", testenv.Patience)
		}
	}
	running := func(exited chan error) bool {
		select {
		case err := <-exited:
			exited <- err
			t.Fatalf("uplinkd exited while the spool was missing: %v", err)
		default:
		}
		return true
	}

	cmd, exited := start()
	var c *health.Check
	testenv.WaitFor(t, "uplinkd to answer on its health socket while the spool is missing", func() bool {
		c = spoolCheck(sock)
		return running(exited) && c != nil
	})
	if c.OK || !strings.Contains(c.Detail, "spool.dir") || !strings.Contains(c.Detail, spool) || !strings.Contains(c.Fix, "sensord") {
		t.Errorf("spool check while the spool is missing: ok=%v detail %q fix %q; want failing, naming spool.dir, %s and sensord", c.OK, c.Detail, c.Fix, spool)
	}
	stop(cmd, exited)
	if _, err := os.Lstat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("health socket after SIGTERM: %v, want it removed", err)
	}

	cmd, exited = start()
	testenv.WaitFor(t, "uplinkd to answer again", func() bool { return running(exited) && spoolCheck(sock) != nil })
	if err := os.Mkdir(spool, 0o755); err != nil { // sensord starts
		t.Fatal(err)
	}
	testenv.WaitFor(t, "the spool check to pass once the spool exists", func() bool {
		c = spoolCheck(sock)
		return running(exited) && c != nil && c.OK
	})
	stop(cmd, exited)
}
