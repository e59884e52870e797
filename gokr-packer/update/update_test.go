package update

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sie-europe/dnssensor/internal/testenv"
)

// fakeDevice speaks the part of gokrazy's update API the client uses.
type fakeDevice struct {
	mu        sync.Mutex
	running   string            // build timestamp answered on GET /
	next      string            // what runs after /reboot
	written   map[string][]byte // path -> body
	calls     []string
	badHash   bool // echo a wrong hash
	rollback  bool // come back with the old build
	features  string
	rebooting int      // GET / fails this many times after /reboot
	reboots   []string // the form of every POST /reboot, encoded
}

func (d *fakeDevice) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if u, p, ok := r.BasicAuth(); !ok || u != "gokrazy" || p != "pw" {
		http.Error(w, "no", http.StatusUnauthorized)
		return
	}
	d.calls = append(d.calls, r.Method+" "+r.URL.Path)
	switch {
	case r.Method == http.MethodGet && r.URL.Path == "/":
		if d.rebooting > 0 {
			d.rebooting--
			http.Error(w, "starting", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintf(w, `{"BuildTimestamp":%q,"Services":[]}`, d.running)
	case r.URL.Path == "/update/features":
		io.WriteString(w, d.features)
	case r.Method == http.MethodPut && strings.HasPrefix(r.URL.Path, "/update/"):
		b, _ := io.ReadAll(r.Body)
		d.written[r.URL.Path] = b
		h := sha256.Sum256(b)
		if d.badHash {
			h[0] ^= 1
		}
		io.WriteString(w, hex.EncodeToString(h[:]))
	case r.Method == http.MethodPost && (r.URL.Path == "/update/switch" || r.URL.Path == "/update/testboot"):
	case r.Method == http.MethodPost && r.URL.Path == "/reboot":
		if err := r.ParseForm(); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		d.reboots = append(d.reboots, r.Form.Encode())
		if !d.rollback {
			d.running = d.next
		}
		d.rebooting = 2
	default:
		http.Error(w, "unexpected "+r.Method+" "+r.URL.Path, http.StatusBadRequest)
	}
}

func setup(t *testing.T) (*fakeDevice, *httptest.Server, Options) {
	t.Helper()
	dir := t.TempDir()
	files := map[string]string{"root": "root bytes", "boot": "boot bytes", "mbr": strings.Repeat("m", 446)}
	for n, c := range files {
		if err := os.WriteFile(filepath.Join(dir, n+".img"), []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	d := &fakeDevice{running: "v1", next: "v2", written: map[string][]byte{}, features: "partuuid,updatehash,gpt,"}
	srv := httptest.NewServer(d)
	t.Cleanup(srv.Close)
	return d, srv, Options{
		Device: srv.URL, Password: "pw",
		RootImg: filepath.Join(dir, "root.img"), BootImg: filepath.Join(dir, "boot.img"), MBRImg: filepath.Join(dir, "mbr.img"),
		BuildTimestamp: "v2", StateFile: filepath.Join(dir, "state.json"),
		Timeout: 5 * time.Second, PollInterval: 10 * time.Millisecond,
	}
}

func TestPush(t *testing.T) {
	d, _, o := setup(t)
	res, err := Push(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	if !res.PushedRoot || !res.PushedBoot || !res.PushedMBR || res.OldBuildTimestamp != "v1" {
		t.Errorf("first push: %+v", res)
	}
	want := "GET /,GET /update/features,PUT /update/root,PUT /update/bootonly,PUT /update/mbr,POST /update/switch,POST /reboot"
	if got := strings.Join(d.calls, ","); !strings.HasPrefix(got, want) {
		t.Errorf("calls:\n got %s\nwant %s,GET /...", got, want)
	}
	if string(d.written["/update/root"]) != "root bytes" {
		t.Errorf("root written: %q", d.written["/update/root"])
	}

	// Second push, same boot and MBR: only the root goes over the wire.
	d.calls, d.next, o.BuildTimestamp = nil, "v3", "v3"
	o.Testboot = true
	res, err = Push(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	if !res.PushedRoot || res.PushedBoot || res.PushedMBR {
		t.Errorf("second push: %+v", res)
	}
	got := strings.Join(d.calls, ",")
	if !strings.Contains(got, "POST /update/testboot") || !strings.HasSuffix(got, "POST /update/switch") {
		t.Errorf("test boot must end with a switch once the new build answers: %s", got)
	}
}

// TestFirmwareReboot: gokrazy reboots by kexec unless the form says kexec=off; the client asks
// for that only when told to (the qemu-amd64 profile, where kexec is the slow way).
func TestFirmwareReboot(t *testing.T) {
	d, _, o := setup(t)
	if _, err := Push(context.Background(), o); err != nil {
		t.Fatal(err)
	}
	d.next, o.BuildTimestamp, o.FirmwareReboot = "v3", "v3", true
	if _, err := Push(context.Background(), o); err != nil {
		t.Fatal(err)
	}
	if want := []string{"", "kexec=off"}; strings.Join(d.reboots, "|") != strings.Join(want, "|") {
		t.Errorf("POST /reboot forms %q, want %q (kexec by default, then through the firmware)", d.reboots, want)
	}
}

// TestRebootAnswerLost: the device goes down without answering POST /reboot (netconfd removed
// the address the request came in on); the push goes on polling after RebootWait and succeeds
// once the new build answers, instead of waiting out the transport's header time-out.
func TestRebootAnswerLost(t *testing.T) {
	d, srv, o := setup(t)
	lost := make(chan struct{})
	t.Cleanup(func() { close(lost) }) // before the server's Close, which waits for handlers
	srv.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		d.ServeHTTP(w, r)
		if r.URL.Path == "/reboot" {
			<-lost // no header leaves before the handler returns
		}
	})
	o.RebootWait = 100 * time.Millisecond
	done := make(chan error, 1)
	go func() {
		_, err := Push(context.Background(), o)
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(testenv.Patience):
		t.Fatalf("push still waiting for the answer to POST /reboot after %v", testenv.Patience)
	}
}

func TestPushErrors(t *testing.T) {
	for _, tc := range []struct {
		name   string
		mutate func(d *fakeDevice, o *Options)
		want   string
	}{
		{"wrong password", func(d *fakeDevice, o *Options) { o.Password = "x" }, "wrong password"},
		{"hash mismatch", func(d *fakeDevice, o *Options) { d.badHash = true }, "device wrote data with SHA-256"},
		{"old device", func(d *fakeDevice, o *Options) { d.features = "partuuid," }, "updatehash"},
		{"same build", func(d *fakeDevice, o *Options) { o.BuildTimestamp = "v1" }, "already runs"},
		{"rollback", func(d *fakeDevice, o *Options) { d.rollback = true; o.Timeout = 300 * time.Millisecond }, "rolled back"},
		{"bad URL", func(d *fakeDevice, o *Options) { o.Device = "127.0.0.1:80" }, "want http://"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, _, o := setup(t)
			tc.mutate(d, &o)
			_, err := Push(context.Background(), o)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Push = %v, want error containing %q", err, tc.want)
			}
		})
	}
}

func TestDeviceKey(t *testing.T) {
	if got := DeviceKey("http://[::1]:8080/"); got != "http___1_8080" {
		t.Errorf("DeviceKey = %q", got)
	}
}
