package status

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"html"
	"io/fs"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sie-europe/dnssensor/appliance/boxconfig"
	"github.com/sie-europe/dnssensor/internal/health"
	"github.com/sie-europe/dnssensor/internal/testenv"
)

type restarts struct {
	mu sync.Mutex
	d  []string
}

func (r *restarts) restart(_ context.Context, d string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.d = append(r.d, d)
	return nil
}

func (r *restarts) list() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return strings.Join(r.d, ",")
}

// configFixture is a status page with a configuration on a temporary /perm, already holding a
// good box configuration.
func configFixture(t *testing.T) (*fixture, *httptest.Server, *restarts) {
	fx := newFixture(t)
	rs := &restarts{}
	l := boxconfig.Layout{Perm: t.TempDir()}
	good := `{"sensor": {"resolver": "192.0.2.53", "rd": "0"}, "uplink": {"destinations": [{"type": "sielink", "url": "wss://sie.example.net", "sensor": "s1", "api_key": "the-first-key"}]}, "network": {}}`
	if _, err := boxconfig.CheckAndApply(l, []byte(good)); err != nil {
		t.Fatal(err)
	}
	fx.srv.Config = &Config{Layout: l, Restart: rs.restart}
	ts := httptest.NewServer(fx.srv.Handler())
	t.Cleanup(ts.Close)
	return fx, ts, rs
}

func postForm(t *testing.T, u string, form url.Values, accept string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest("POST", u, strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	req.SetBasicAuth("gokrazy", testPassword)
	c := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var b strings.Builder
	buf := make([]byte, 4096)
	for {
		n, err := resp.Body.Read(buf)
		b.Write(buf[:n])
		if err != nil {
			break
		}
	}
	return resp.StatusCode, b.String()
}

func snapshotDir(t *testing.T, dir string) map[string]string {
	t.Helper()
	m := map[string]string{}
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() {
			b, _ := os.ReadFile(p)
			m[p] = string(b) + "|" + fi.Mode().String()
		}
		return nil
	})
	return m
}

func sameFiles(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// everyFieldWrongForm has every field of the form wrong.
func everyFieldWrongForm(tok string) url.Values {
	return url.Values{
		"xsrftoken":                      {tok},
		"sensor.resolver":                {"192.0.2.1,not-an-ip"},
		"sensor.authoritative":           {"also-not-an-ip"},
		"sensor.rd":                      {"2"},
		"sensor.qname-exclude":           {"a..b"},
		"sensor.qname-include":           {"c..d"},
		"uplink.destinations[0].was":     {"sielink0"},
		"uplink.destinations[0].url":     {"https://sie.example.net"},
		"uplink.destinations[0].sensor":  {""},
		"uplink.destinations[0].channel": {"two hundred"},
		"uplink.destinations[0].api_key": {"two words"},
		"network.static.address":         {"198.51.100.10"},
		"network.static.gateway":         {"bad"},
		"network.static.address6":        {"192.0.2.7/24"},
		"network.static.gateway6":        {"nope"},
		"network.static.dns":             {"x"},
		"network.static.ntp":             {"y"},
		"update.repository":              {"ftp://tuf.example.net"},
		"update.interval":                {"5s"},
		"update.window":                  {"02:00"},
	}
}

// TestConfigEveryFieldWrong: a form with every field wrong gets one message per field, shown
// next to that field (JSON: one error per key), and the files on /perm stay the same, byte for
// byte; no daemon is restarted.
func TestConfigEveryFieldWrong(t *testing.T) {
	fx, ts, rs := configFixture(t)
	before := snapshotDir(t, fx.srv.Config.Layout.Perm)
	tok := fx.srv.xsrfToken()
	code, body := postForm(t, ts.URL+"/config", everyFieldWrongForm(tok), "application/json")
	if code != http.StatusUnprocessableEntity {
		t.Fatalf("POST: %d, want 422\n%s", code, body)
	}
	var doc struct {
		Errors []boxconfig.FieldError `json:"errors"`
	}
	if err := json.Unmarshal([]byte(body), &doc); err != nil {
		t.Fatal(err)
	}
	per := map[string]int{}
	for _, e := range doc.Errors {
		per[e.Key]++
	}
	want := []string{"sensor.resolver", "sensor.authoritative", "sensor.rd", "sensor.qname-exclude", "sensor.qname-include",
		"uplink.destinations[0].url", "uplink.destinations[0].sensor", "uplink.destinations[0].channel", "uplink.destinations[0].api_key",
		"network.static.address", "network.static.gateway", "network.static.address6", "network.static.gateway6",
		"network.static.dns[0]", "network.static.ntp[0]", "update.repository", "update.interval", "update.window"}
	for _, k := range want {
		if per[k] != 1 {
			t.Errorf("%s: %d messages, want 1", k, per[k])
		}
	}
	if len(doc.Errors) != len(want) {
		t.Errorf("%d messages, want %d: %v", len(doc.Errors), len(want), doc.Errors)
	}
	// The HTML page puts each next to its field.
	code, page := postForm(t, ts.URL+"/config", everyFieldWrongForm(tok), "")
	if code != http.StatusUnprocessableEntity {
		t.Fatalf("POST (HTML): %d", code)
	}
	fieldRe := regexp.MustCompile(`(?s)<div class="field bad"><label for="([^"]+)">.*?</div>`)
	bad := map[string]string{}
	for _, m := range fieldRe.FindAllStringSubmatch(page, -1) {
		bad[html.UnescapeString(m[1])] = m[0]
	}
	for _, k := range want {
		base, _, _ := strings.Cut(k, "[0]")
		if strings.HasPrefix(k, "uplink") {
			base = k
		}
		if f, ok := bad[base]; !ok || !strings.Contains(f, `class="fix"`) {
			t.Errorf("field %s not marked with its message", base)
		}
	}
	if strings.Contains(page, "two words") {
		t.Error("the API key typed is echoed back")
	}
	if after := snapshotDir(t, fx.srv.Config.Layout.Perm); !sameFiles(before, after) {
		t.Errorf("a refused form changed /perm:\nbefore %v\nafter  %v", before, after)
	}
	if rs.list() != "" {
		t.Errorf("restarted %q for a refused form", rs.list())
	}
}

// TestConfigXSRF: the form and the resolver button without the page's token are refused (403)
// and change nothing.
func TestConfigXSRF(t *testing.T) {
	fx, ts, rs := configFixture(t)
	before := snapshotDir(t, fx.srv.Config.Layout.Perm)
	good := url.Values{"sensor.resolver": {"192.0.2.99"}}
	for _, path := range []string{"/config", "/config/resolver", "/config/revert"} {
		for _, tok := range []string{"", wrongToken(fx.srv.xsrfToken())} {
			form := url.Values{"addr": {"192.0.2.99"}}
			for k, v := range good {
				form[k] = v
			}
			if tok != "" {
				form.Set("xsrftoken", tok)
			}
			if code, _ := postForm(t, ts.URL+path, form, ""); code != http.StatusForbidden {
				t.Errorf("POST %s with token %q: %d, want 403", path, tok, code)
			}
		}
	}
	if after := snapshotDir(t, fx.srv.Config.Layout.Perm); !sameFiles(before, after) {
		t.Error("a refused POST changed /perm")
	}
	if rs.list() != "" {
		t.Errorf("restarted %q", rs.list())
	}
}

// TestConfigApplied: a good change is saved (daemons' files and the box file), the daemons it
// affects are restarted (sensord too, as it does not answer here: a stopped one must be started),
// and the API key is never shown back, only its fingerprint.
func TestConfigApplied(t *testing.T) {
	fx, ts, rs := configFixture(t)
	l := fx.srv.Config.Layout
	_, page := get(t, ts.URL+"/config", testPassword, "")
	if !strings.Contains(page, `value="192.0.2.53"`) || !strings.Contains(page, "set (sha256:") || strings.Contains(page, "the-first-key") {
		t.Fatalf("form does not show the configuration in force (or shows the key):\n%s", page)
	}
	form := url.Values{
		"xsrftoken":                      {fx.srv.xsrfToken()},
		"sensor.resolver":                {"192.0.2.54, 2001:db8::53"},
		"sensor.rd":                      {"0"},
		"sensor.zero-resolver":           {"true"},
		"uplink.destinations[0].was":     {"sielink0"},
		"uplink.destinations[0].url":     {"wss://sie.example.net"},
		"uplink.destinations[0].sensor":  {"s1"},
		"uplink.destinations[0].channel": {"202"},
		"uplink.destinations[0].api_key": {"the-second-key"},
		"network.static.dns":             {"198.51.100.53"},
	}
	code, body := postForm(t, ts.URL+"/config", form, "")
	if code != http.StatusOK || !strings.Contains(body, `id="saved"`) {
		t.Fatalf("POST: %d\n%s", code, body)
	}
	if strings.Contains(body, "the-second-key") {
		t.Error("the new API key is echoed back")
	}
	sensor, _ := os.ReadFile(l.SensorFile())
	var m map[string]any
	if err := json.Unmarshal(sensor, &m); err != nil || m["resolver"] != "192.0.2.54, 2001:db8::53" || m["zero-resolver"] != true {
		t.Errorf("sensord's file: %s (%v)", sensor, err)
	}
	if key, _ := os.ReadFile(l.APIKeyFile("sielink0")); string(key) != "the-second-key\n" {
		t.Errorf("API key file %q", key)
	}
	if nc, _ := os.ReadFile(l.NetworkFile()); !strings.Contains(string(nc), "198.51.100.53") {
		t.Errorf("netconfd's file: %s", nc)
	}
	if got := rs.list(); got != "uplinkd,sensord" {
		t.Errorf("restarted %q, want uplinkd,sensord (netconfd re-reads its file)", got)
	}
	// One click goes back: the previous resolver, and uplinkd's old file (the key is its file's).
	code, _ = postForm(t, ts.URL+"/config/revert", url.Values{"xsrftoken": {fx.srv.xsrfToken()}}, "")
	if sensor, _ := os.ReadFile(l.SensorFile()); code != http.StatusOK || !strings.Contains(string(sensor), `"resolver": "192.0.2.53"`) {
		t.Errorf("revert: %d, sensord's file %s", code, sensor)
	}
	code, _ = postForm(t, ts.URL+"/config/revert", url.Values{"xsrftoken": {fx.srv.xsrfToken()}}, "")
	if sensor, _ := os.ReadFile(l.SensorFile()); code != http.StatusOK || !strings.Contains(string(sensor), "192.0.2.54") {
		t.Errorf("revert of the revert: %d, sensord's file %s", code, sensor)
	}
	rs.mu.Lock()
	rs.d = nil
	rs.mu.Unlock()
	// The same form again changes nothing and restarts nothing.
	form.Del("uplink.destinations[0].api_key")
	code, body = postForm(t, ts.URL+"/config", form, "")
	if code != http.StatusOK || !strings.Contains(body, "nothing changed") || rs.list() != "" {
		t.Errorf("unchanged form: %d, restarts %q", code, rs.list())
	}
}

// TestResolverSuggestions: with no DNS from the configured resolver, the page shows the
// addresses sensord saw sending queries (its /resolver-candidates.json), each with a button that
// makes it the resolver; the button's change is checked and saved like the form's. A running
// sensord is not restarted: it reloads its file.
func TestResolverSuggestions(t *testing.T) {
	fx, ts, rs := configFixture(t)
	dir := socketDir(t)
	sock := filepath.Join(dir, "sensord.sock")
	f := &fakeDaemon{name: "sensord", socket: sock, fail: map[string]string{"resolver transactions": "check -resolver"}}
	hs := &health.Server{Daemon: "sensord", Tree: health.NewTree("sensord", time.Now, sensordTree(f)...), Registry: prometheus.NewRegistry(), Logf: t.Logf}
	mux := http.NewServeMux()
	mux.Handle("/", hs.Handler())
	mux.HandleFunc("GET /resolver-candidates.json", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(`{"window_seconds":60,"candidates":[{"addr":"192.0.2.1","queries":123},{"addr":"2001:db8::35","queries":7}]}`))
	})
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: mux}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	fx.srv.Daemons[0].Socket = sock
	fx.srv.Config.SensordSocket = sock

	_, page := get(t, ts.URL+"/config", testPassword, "")
	for _, want := range []string{`id="suggestions"`, "192.0.2.1", "123 queries", "2001:db8::35", `action="/config/resolver"`, "Use this resolver"} {
		if !strings.Contains(page, want) {
			t.Errorf("page lacks %q", want)
		}
	}
	code, body := postForm(t, ts.URL+"/config/resolver", url.Values{"xsrftoken": {fx.srv.xsrfToken()}, "addr": {"192.0.2.1"}}, "")
	if code != http.StatusOK {
		t.Fatalf("use this resolver: %d\n%s", code, body)
	}
	sensor, _ := os.ReadFile(fx.srv.Config.Layout.SensorFile())
	if !strings.Contains(string(sensor), `"resolver": "192.0.2.1"`) {
		t.Errorf("sensord's file: %s", sensor)
	}
	if rs.list() != "" {
		t.Errorf("restarted %q; a running sensord reloads its file", rs.list())
	}
	// Once the resolver's DNS flows, no suggestion is shown.
	f.mu.Lock()
	delete(f.fail, "resolver transactions")
	f.mu.Unlock()
	if _, page := get(t, ts.URL+"/config", testPassword, ""); strings.Contains(page, `id="suggestions"`) {
		t.Error("suggestions shown with DNS from the configured resolver")
	}
	if strings.Contains(fx.logs.String(), "192.0.2.1") {
		t.Errorf("a suggested address reached the log:\n%s", fx.logs.String())
	}
}

// TestGokrazyRestart: the restart request is what gokrazy's /restart handler accepts: POST, basic
// authentication as "gokrazy", the form token equal to the gokrazy_xsrf cookie, the program path.
func TestGokrazyRestart(t *testing.T) {
	sock := filepath.Join(socketDir(t), "gokrazy.sock")
	g := &fakeGokrazy{t: t, svc: map[string]*gokrazyService{
		"/user/uplinkd": {StartTime: time.Now().Add(-time.Hour), Pid: 100},
		"/user/sensord": {Stopped: true, Pid: 101}, // exited 125: not configured
	}}
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: g}
	go srv.Serve(ln)
	defer srv.Close()
	r := &GokrazyRestarter{Socket: sock, Password: []byte(testPassword)}
	for _, exit0 := range []bool{true, false} {
		g.setExit0(exit0)
		since := g.started("/user/uplinkd")
		if err := r.Restart(context.Background(), "uplinkd"); err != nil {
			t.Fatalf("Restart (exit 0 on SIGTERM: %v): %v", exit0, err)
		}
		testenv.WaitFor(t, "uplinkd started again", func() bool { return g.running("/user/uplinkd") && g.started("/user/uplinkd").After(since) })
	}
	if err := r.Restart(context.Background(), "sensord"); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, "sensord started", func() bool { return g.running("/user/sensord") })
	r.Password = []byte("wrong")
	if err := r.Restart(context.Background(), "uplinkd"); err == nil {
		t.Error("a refused restart is not an error")
	}
}

// fakeGokrazy answers as gokrazy's init does (supervise.go): /restart of a stopped service
// clears its stopped flag and starts it; of a running one sends SIGTERM, and a process that then
// exits 0 is "exited successfully, stopping": stopped until asked again. Our daemons exit 0 on
// SIGTERM, so a restart of a running uplinkd left it stopped until statusd asked once more.
type fakeGokrazy struct {
	t     *testing.T
	mu    sync.Mutex
	svc   map[string]*gokrazyService
	exit0 bool
}

func (g *fakeGokrazy) setExit0(v bool) { g.mu.Lock(); g.exit0 = v; g.mu.Unlock() }

func (g *fakeGokrazy) running(path string) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return !g.svc[path].Stopped && g.svc[path].Pid > 0
}

func (g *fakeGokrazy) started(path string) time.Time {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.svc[path].StartTime
}

// later runs f a moment later, as gokrazy's supervisor does what a request asked.
func (g *fakeGokrazy) later(f func(s *gokrazyService), s *gokrazyService) {
	time.AfterFunc(30*time.Millisecond, func() {
		g.mu.Lock()
		defer g.mu.Unlock()
		f(s)
	})
}

func (g *fakeGokrazy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	u, p, ok := r.BasicAuth()
	if !ok || u != "gokrazy" || p != testPassword {
		http.Error(w, "refused", http.StatusUnauthorized)
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	s := g.svc[r.FormValue("path")]
	if s == nil {
		http.Error(w, "service not found", http.StatusNotFound)
		return
	}
	start := func(s *gokrazyService) { s.Pid++; s.StartTime = time.Now() }
	switch {
	case r.Method == "GET" && r.URL.Path == "/status" && strings.Contains(r.Header.Get("Accept"), "application/json"):
		json.NewEncoder(w).Encode(s)
	case r.Method == "POST" && r.URL.Path == "/restart":
		if c, err := r.Cookie("gokrazy_xsrf"); err != nil || c.Value != r.FormValue("xsrftoken") || r.FormValue("supervise") != "loop" {
			http.Error(w, "XSRF token mismatch", http.StatusForbidden)
			return
		}
		if s.Stopped {
			s.Stopped = false
			g.later(start, s)
		} else {
			exit0 := g.exit0
			g.later(func(s *gokrazyService) {
				if exit0 {
					s.Stopped = true // exited successfully, stopping
					return
				}
				g.later(start, s) // any other exit: started again after its second
			}, s)
		}
		http.Redirect(w, r, "/status?path="+url.QueryEscape(r.FormValue("path")), http.StatusSeeOther)
	default:
		http.Error(w, "unexpected "+r.Method+" "+r.URL.String(), http.StatusBadRequest)
	}
}

// TestProvisionedShown: what the provisioning at start did, a refusal with its lines, is on the
// configuration page.
func TestProvisionedShown(t *testing.T) {
	fx, ts, _ := configFixture(t)
	fx.srv.Config.Provisioned = &ProvisionResult{Summary: "provisioning: dnssensor.json on the boot partition was refused",
		Errors: []string{`sensor.rd: "2" is not 0, 1 or any`}}
	_, page := get(t, ts.URL+"/config", testPassword, "")
	if !strings.Contains(page, `id="provisioned"`) || !strings.Contains(page, "sensor.rd: &#34;2&#34; is not 0, 1 or any") {
		t.Errorf("page does not show the provisioning's outcome:\n%s", page)
	}
}

// TestReloadingSensordNotRestarted: a running sensord reloads its file as soon as it changes,
// and its health socket may not answer while it does. statusd asked whether sensord runs after
// writing the file, so in QEMU it took a reloading sensord for a stopped one and restarted it
// (gokrazy then left it stopped: its exit 0 after SIGTERM). It must ask before writing.
func TestReloadingSensordNotRestarted(t *testing.T) {
	fx, ts, rs := configFixture(t)
	sock := filepath.Join(socketDir(t), "sensord.sock")
	before, err := os.ReadFile(fx.srv.Config.Layout.SensorFile())
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.Fatal(err)
	}
	f := &fakeDaemon{name: "sensord", socket: sock, fail: map[string]string{}}
	hs := &health.Server{Daemon: "sensord", Tree: health.NewTree("sensord", time.Now, sensordTree(f)...), Registry: prometheus.NewRegistry(), Logf: t.Logf}
	h := hs.Handler()
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if now, _ := os.ReadFile(fx.srv.Config.Layout.SensorFile()); !bytes.Equal(now, before) {
			// Reloading: the connection ends without an answer.
			if c, _, err := http.NewResponseController(w).Hijack(); err == nil {
				c.Close()
			}
			return
		}
		h.ServeHTTP(w, r)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	fx.srv.Daemons[0].Socket = sock
	fx.srv.Config.SensordSocket = sock

	code, body := postForm(t, ts.URL+"/config/resolver", url.Values{"xsrftoken": {fx.srv.xsrfToken()}, "addr": {"192.0.2.7"}}, "")
	if code != http.StatusOK {
		t.Fatalf("use this resolver: %d\n%s", code, body)
	}
	if now, _ := os.ReadFile(fx.srv.Config.Layout.SensorFile()); bytes.Equal(now, before) {
		t.Fatal("sensord's file unchanged")
	}
	if rs.list() != "" || !strings.Contains(body, "sensord reloads it within seconds") {
		t.Errorf("restarted %q; want none, and the page saying sensord reloads it", rs.list())
	}
}
