package update

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sie-europe/dnssensor/internal/health"
	"github.com/sie-europe/dnssensor/internal/health/healthtest"
)

func TestMainExitCodes(t *testing.T) {
	tmp := t.TempDir()
	none := filepath.Join(tmp, "none")
	file := func(name, content string) string {
		p := filepath.Join(tmp, name)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := file("good.json", `{"repository": "http://r.example/tuf", "interval": "2h", "window": "01:00-03:00"}`)
	badInterval := file("bad.json", `{"repository": "http://r.example/tuf", "interval": "5s"}`)
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		// No box configuration and no flag: not configured, which gokrazy leaves stopped.
		{[]string{"-config", none}, 125, "update.repository"},
		// The repository from the box configuration gets as far as the trusted root.
		{[]string{"-config", good, "-trusted-root", none}, 125, "-trusted-root"},
		{[]string{"-config", none, "-repo", "http://r", "-trusted-root", none}, 125, "-trusted-root"},
		{[]string{"-config", badInterval}, 2, "update.interval"},
		{[]string{"-config", none, "-repo", "http://r", "-window", "7-9"}, 2, "-window"},
		{[]string{"-config", none, "-repo", "http://r", "-reboot", "warm"}, 2, "-reboot"},
		{[]string{"-bogus"}, 2, "bogus"},
	} {
		var out, errb bytes.Buffer
		if code := Main(context.Background(), tc.args, &out, &errb); code != tc.code || !strings.Contains(errb.String(), tc.want) {
			t.Errorf("updated %v: exit %d (%s), want %d naming %s", tc.args, code, errb.String(), tc.code, tc.want)
		}
	}
}

func TestLocalAPI(t *testing.T) {
	w := newWorld(t)
	w.publish(1, 100, "boot v1")
	w.publish(2, 100, "boot v2")
	w.capture.Store(false)
	w.settle() // version 2 fails its gate
	a := w.agent()
	srv := httptest.NewServer(a.Handler())
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/health.json")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var rep health.Report
	if err := json.Unmarshal(body, &rep); err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusServiceUnavailable || strings.Join(rep.FirstFailurePath, "/") != "repository/updates" {
		t.Errorf("health: %d, first failure %v", resp.StatusCode, rep.FirstFailurePath)
	}
	healthtest.Check(t, health.HealthSchemaJSON, body)
	if resp, err := http.Post(srv.URL+"/pause", "", nil); err != nil || resp.StatusCode != http.StatusNoContent {
		t.Fatalf("POST /pause: %v %v", resp, err)
	}
	if !w.agent().State().Paused {
		t.Error("pause not recorded in state.json")
	}
	if resp, err := http.Get(srv.URL + "/pause"); err != nil || resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("GET /pause: %v %v, want 405", resp, err)
	}
	if resp, err := http.Post(srv.URL+"/update-now", "", nil); err != nil || resp.StatusCode != http.StatusAccepted {
		t.Fatalf("POST /update-now: %v %v", resp, err)
	}
	select {
	case <-a.now:
	default:
		t.Error("update now did not reach the run loop")
	}
}

// TestHealthDoesNotWaitForDisk: while a state save waits on the disk (an fsync on a busy card
// took seconds in QEMU), the health socket still answers: the status page, with its 2 s limit,
// showed updated "not running" after every check.
func TestHealthDoesNotWaitForDisk(t *testing.T) {
	w := newWorld(t)
	a := w.agent()
	entered, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	old := syncDir
	syncDir = func(d *os.File) error {
		once.Do(func() { close(entered) })
		<-release
		return d.Sync()
	}
	defer func() { syncDir = old }()
	paused := make(chan error, 1)
	go func() { paused <- a.Pause(true) }()
	<-entered
	srv := httptest.NewServer(a.Handler())
	defer srv.Close()
	answered := make(chan int, 1)
	go func() {
		resp, err := http.Get(srv.URL + "/health.json")
		if err != nil {
			answered <- 0
			return
		}
		resp.Body.Close()
		answered <- resp.StatusCode
	}()
	select {
	case code := <-answered:
		if code != http.StatusOK {
			t.Errorf("health during a save: %d", code)
		}
	case <-time.After(20 * time.Second):
		t.Error("the health socket waited for the disk")
	}
	close(release)
	if err := <-paused; err != nil {
		t.Fatal(err)
	}
	if !a.State().Paused {
		t.Error("pause not kept")
	}
}
