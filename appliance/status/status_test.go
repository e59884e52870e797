package status

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sie-europe/dnssensor/internal/health"
)

// fakeDaemon serves the health contract on a temporary unix socket, with checks whose results the
// test sets.
type fakeDaemon struct {
	name, socket string
	mu           sync.Mutex
	fail         map[string]string // check name → fix, for the failing ones
	dns          *prometheus.CounterVec
}

func (f *fakeDaemon) probe(name string) health.Probe {
	return func(time.Time) health.Result {
		f.mu.Lock()
		defer f.mu.Unlock()
		if fix, bad := f.fail[name]; bad {
			return health.Result{OK: false, Detail: name + " does not hold", Fix: fix}
		}
		return health.Result{OK: true, Detail: name + " holds"}
	}
}

func (f *fakeDaemon) setFail(name, fix string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fail[name] = fix
}

// socketDir is short: a unix socket's path must fit in 108 bytes, and t.TempDir's may not.
func socketDir(t *testing.T) string {
	d, err := os.MkdirTemp("", "stat")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

func startFake(t *testing.T, dir, name string, build func(f *fakeDaemon) []*health.Node) *fakeDaemon {
	t.Helper()
	f := &fakeDaemon{name: name, socket: filepath.Join(dir, name+".sock"), fail: map[string]string{}}
	reg := prometheus.NewRegistry()
	if name == "sensord" {
		f.dns = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "dnssensor_sensord_port_dns_messages_total", Help: "DNS messages"}, []string{"port", "qr"})
		reg.MustRegister(f.dns)
		for _, p := range []string{"eth1", "eth2"} {
			f.dns.WithLabelValues(p, "query").Add(10)
			f.dns.WithLabelValues(p, "response").Add(9)
		}
	}
	ln, err := health.ListenUnix(f.socket)
	if err != nil {
		t.Fatal(err)
	}
	srv := &health.Server{Daemon: name, Tree: health.NewTree(name, time.Now, build(f)...), Registry: reg, Logf: t.Logf}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); srv.Serve(ctx, ln) }()
	t.Cleanup(func() { cancel(); <-done })
	return f
}

// sensordTree and uplinkdTree have the shape and names of the real daemons' trees
// (sensor/internal/app/health.go, uplink/internal/uplinkd/health.go).
func sensordTree(f *fakeDaemon) []*health.Node {
	n := func(name string, ch ...*health.Node) *health.Node { return health.NewNode(name, f.probe(name), ch...) }
	port := func(p string) *health.Node {
		return n("port "+p, n("frames on "+p, n("DNS on "+p)), n("kernel drops on "+p))
	}
	return []*health.Node{n("privacy self-test"), n("capture", port("eth1"), port("eth2"),
		n("resolver transactions", n("pairs", n("output", n("spool")))))}
}

func uplinkdTree(f *fakeDaemon) []*health.Node {
	n := func(name string, ch ...*health.Node) *health.Node { return health.NewNode(name, f.probe(name), ch...) }
	return []*health.Node{n("spool", n("destination sie", n("delivering to sie")), n("loss ledger"))}
}

const testPassword = "correct horse battery"

type fixture struct {
	sensord, uplinkd *fakeDaemon
	srv              *Server
	clock            *fakeClock
	logs             *strings.Builder
}

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func newFixture(t *testing.T) *fixture {
	dir := socketDir(t)
	fx := &fixture{clock: &fakeClock{t: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}, logs: &strings.Builder{}}
	fx.sensord = startFake(t, dir, "sensord", sensordTree)
	fx.uplinkd = startFake(t, dir, "uplinkd", uplinkdTree)
	var mu sync.Mutex
	fx.srv = &Server{
		Daemons: []Daemon{{Name: "sensord", Socket: fx.sensord.socket}, {Name: "uplinkd", Socket: fx.uplinkd.socket},
			{Name: "netconfd", Socket: filepath.Join(dir, "netconfd.sock"), Optional: true}},
		Known:    knownDaemons,
		Password: []byte(testPassword),
		Timeout:  10 * time.Second,
		Limiter:  NewLimiter(fx.clock.Now),
		Logf: func(format string, a ...any) {
			mu.Lock()
			defer mu.Unlock()
			fmt.Fprintf(fx.logs, format+"\n", a...)
		},
	}
	return fx
}

func (fx *fixture) page(t *testing.T) *Page {
	t.Helper()
	return fx.srv.Page(context.Background())
}

func stage(t *testing.T, p *Page, name string) *Node {
	t.Helper()
	for _, n := range p.Chain {
		if n.Name == name {
			return n
		}
	}
	t.Fatalf("no stage %q in the chain", name)
	return nil
}

// TestChainOrder: the chain has the links, top-down, and with every daemon check passing
// they are green except the clock, which nobody checks yet: unknown, not green.
func TestChainOrder(t *testing.T) {
	fx := newFixture(t)
	p := fx.page(t)
	var names []string
	for _, n := range p.Chain {
		names = append(names, n.Name)
		want := OK
		if n.Name == stageClock {
			want = Unknown
		}
		if n.State != want {
			t.Errorf("%s: %s (%s), want %s", n.Name, n.State, n.Detail, want)
		}
	}
	if strings.Join(names, "|") != strings.Join(stages, "|") {
		t.Errorf("chain %q, want %q", names, stages)
	}
	if p.OK {
		t.Error("page OK with the clock unknown")
	}
	if p.FirstFailurePath != nil {
		t.Errorf("first failure %q with nothing failing", p.FirstFailurePath)
	}
	// Each daemon check sits under its link.
	for st, check := range map[string]string{stageInput: "port eth2", stageFrames: "kernel drops on eth1", stageDNS: "DNS on eth2",
		stageResolver: "resolver transactions", stagePairs: "pairs", stagePrivacy: "privacy self-test", stageSpool: "loss ledger", stageUplink: "delivering to sie"} {
		found := false
		for _, c := range stage(t, p, st).Children {
			found = found || c.Name == check
		}
		if !found {
			t.Errorf("%s is not under %q", check, st)
		}
	}
}

// TestFirstFailureMarked: of several failures, the most upstream one is marked, with its fix;
// a failure further down is red but not marked.
// TestPrivacySelfTestRed: sensord's failed self-test turns its link red with sensord's fix, and
// is the first failure when everything upstream of it is green.
func TestPrivacySelfTestRed(t *testing.T) {
	fx := newFixture(t)
	fx.sensord.setFail("privacy self-test", "roll back the image")
	p := fx.page(t)
	if want := []string{stagePrivacy, "privacy self-test"}; strings.Join(p.FirstFailurePath, "|") != strings.Join(want, "|") {
		t.Fatalf("first failure %q, want %q", p.FirstFailurePath, want)
	}
	if n := stage(t, p, stagePrivacy); n.State != Fail || n.Fix != "roll back the image" {
		t.Errorf("privacy self-test: %s, fix %q", n.State, n.Fix)
	}
}

func TestFirstFailureMarked(t *testing.T) {
	fx := newFixture(t)
	fx.sensord.setFail("pairs", "pair fix")
	fx.uplinkd.setFail("destination sie", "reach sie")
	fx.sensord.setFail("frames on eth2", "check the cable of eth2")
	p := fx.page(t)
	if want := []string{stageFrames, "frames on eth2"}; strings.Join(p.FirstFailurePath, "|") != strings.Join(want, "|") {
		t.Fatalf("first failure %q, want %q", p.FirstFailurePath, want)
	}
	fr := stage(t, p, stageFrames)
	if fr.State != Fail || fr.Fix != "check the cable of eth2" {
		t.Errorf("frames: %s, fix %q", fr.State, fr.Fix)
	}
	marked := 0
	var walk func(ns []*Node)
	walk = func(ns []*Node) {
		for _, n := range ns {
			if n.FirstFailure {
				marked++
				if n.Name != "frames on eth2" {
					t.Errorf("%s marked first", n.Name)
				}
			}
			walk(n.Children)
		}
	}
	walk(p.Chain)
	if marked != 1 {
		t.Errorf("%d nodes marked first, want 1", marked)
	}
	if s := stage(t, p, stagePairs); s.State != Fail {
		t.Errorf("pairs %s, want fail", s.State)
	}
	if s := stage(t, p, stageUplink); s.State != Fail || s.Fix != "reach sie" {
		t.Errorf("uplink %s fix %q", s.State, s.Fix)
	}
}

// TestOnlyQueries: a tap that delivers one direction shows queries without responses, and the
// page says so in those words.
func TestOnlyQueries(t *testing.T) {
	fx := newFixture(t)
	fx.sensord.dns.Reset()
	fx.sensord.dns.WithLabelValues("eth1", "query").Add(50)
	fx.sensord.dns.WithLabelValues("eth2", "response").Add(0)
	p := fx.page(t)
	n := stage(t, p, stageBoth)
	if n.State != Fail || !strings.HasPrefix(n.Fix, "only queries: the tap delivers one direction") || !n.FirstFailure {
		t.Errorf("both directions: %s first=%v fix %q", n.State, n.FirstFailure, n.Fix)
	}
}

// TestNotRunningNotConfigured: a listed daemon whose socket is absent is "not running" and turns
// its links red with a fix; a known daemon not listed is "not configured" and its links unknown;
// an optional daemon without a socket is left out.
func TestNotRunningNotConfigured(t *testing.T) {
	fx := newFixture(t)
	fx.srv.Daemons = []Daemon{{Name: "sensord", Socket: filepath.Join(socketDir(t), "gone.sock")},
		{Name: "netconfd", Socket: filepath.Join(socketDir(t), "netconfd.sock"), Optional: true}}
	p := fx.page(t)
	states := map[string]string{}
	for _, d := range p.Daemons {
		states[d.Name] = d.State
	}
	if states["sensord"] != "not running" || states["uplinkd"] != "not configured" {
		t.Errorf("daemons %v", states)
	}
	if _, ok := states["netconfd"]; ok {
		t.Errorf("optional netconfd without a socket shown: %v", states)
	}
	in := stage(t, p, stageInput)
	if in.State != Fail || !in.FirstFailure || !strings.Contains(in.Detail, "sensord is not running") || in.Fix == "" {
		t.Errorf("tap ports: %s first=%v %q fix %q", in.State, in.FirstFailure, in.Detail, in.Fix)
	}
	if up := stage(t, p, stageUplink); up.State != Unknown || !strings.Contains(up.Detail, "not configured") {
		t.Errorf("uplink: %s %q", up.State, up.Detail)
	}
	// The page renders, too.
	ts := httptest.NewServer(fx.srv.Handler())
	defer ts.Close()
	if code, body := get(t, ts.URL+"/", testPassword, "text/html"); code != 200 || !strings.Contains(body, "not configured") {
		t.Errorf("GET /: %d\n%s", code, body)
	}
}

func get(t *testing.T, u, pw, accept string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest("GET", u, nil)
	if pw != "" {
		req.SetBasicAuth("gokrazy", pw)
	}
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestJSONByAccept: one handler, HTML for a browser and the same page as JSON for
// Accept: application/json.
func TestJSONByAccept(t *testing.T) {
	fx := newFixture(t)
	fx.sensord.setFail("DNS on eth1", "the tap sits on the wrong link")
	ts := httptest.NewServer(fx.srv.Handler())
	defer ts.Close()

	code, body := get(t, ts.URL+"/", testPassword, "application/json")
	if code != 200 {
		t.Fatalf("JSON: %d %s", code, body)
	}
	var p Page
	if err := json.Unmarshal([]byte(body), &p); err != nil {
		t.Fatalf("JSON: %v\n%s", err, body)
	}
	if p.Schema != PageSchema || strings.Join(p.FirstFailurePath, "|") != stageDNS+"|DNS on eth1" {
		t.Errorf("JSON: schema %q first failure %q", p.Schema, p.FirstFailurePath)
	}
	// The daemons' counters are relayed: a script on the management network reads them here.
	var relayed float64 = -1
	for _, d := range p.Daemons {
		if d.Name == "sensord" && d.Metrics != nil {
			relayed, _ = d.Metrics.Value("dnssensor_sensord_port_dns_messages_total", map[string]string{"qr": "query"})
		}
	}
	if relayed != 20 {
		t.Errorf("JSON: sensord's queries counter relayed as %v, want 20", relayed)
	}

	code, body = get(t, ts.URL+"/", testPassword, "text/html,application/xhtml+xml,application/json;q=0.9")
	if code != 200 || !strings.Contains(body, "<!DOCTYPE html>") || !strings.Contains(body, "Fix first: the tap sits on the wrong link") {
		t.Errorf("HTML: %d\n%s", code, body)
	}
	if strings.Contains(body, "http://") || strings.Contains(body, "https://") {
		t.Errorf("HTML refers to an external asset:\n%s", body)
	}
	if code, css := get(t, ts.URL+"/assets/status.css", testPassword, ""); code != 200 || !strings.Contains(css, "body") {
		t.Errorf("stylesheet: %d", code)
	}
}

// TestPasswordRequired: nothing is served without the device password, and neither the password
// nor a wrong attempt is echoed in the answer or the log.
func TestPasswordRequired(t *testing.T) {
	fx := newFixture(t)
	ts := httptest.NewServer(fx.srv.Handler())
	defer ts.Close()
	for _, path := range []string{"/", "/status.json", "/assets/status.css"} {
		if code, _ := get(t, ts.URL+path, "", ""); code != http.StatusUnauthorized {
			t.Errorf("%s without password: %d, want 401", path, code)
		}
	}
	code, body := get(t, ts.URL+"/", "correct horse battery!", "")
	if code != http.StatusUnauthorized {
		t.Errorf("wrong password: %d, want 401", code)
	}
	_, page := get(t, ts.URL+"/", testPassword, "")
	_, js := get(t, ts.URL+"/", testPassword, "application/json")
	for what, s := range map[string]string{"401 body": body, "page": page, "JSON": js, "log": fx.logs.String()} {
		if strings.Contains(s, "horse") {
			t.Errorf("%s echoes a password:\n%s", what, s)
		}
	}
}

// TestLoginRateLimit: after 5 failures an address is refused even with the right password,
// until 5 minutes (virtual) have passed; other addresses are not affected.
func TestLoginRateLimit(t *testing.T) {
	fx := newFixture(t)
	h := fx.srv.Handler()
	try := func(remote, pw string) int {
		req := httptest.NewRequest("GET", "/", nil)
		req.RemoteAddr = remote
		req.SetBasicAuth("gokrazy", pw)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		return rec.Code
	}
	for i := range 5 {
		if code := try("192.0.2.7:4000", "guess"); code != http.StatusUnauthorized {
			t.Fatalf("failure %d: %d, want 401", i+1, code)
		}
		fx.clock.Advance(10 * time.Second)
	}
	if code := try("192.0.2.7:4001", testPassword); code != http.StatusTooManyRequests {
		t.Errorf("right password after 5 failures: %d, want 429", code)
	}
	if code := try("192.0.2.8:4000", testPassword); code != http.StatusOK {
		t.Errorf("another address: %d, want 200", code)
	}
	// An IPv6 host cannot escape by changing its address within its /64.
	for i := range 5 {
		try("[2001:db8::"+string(rune('1'+i))+"]:80", "guess")
	}
	if code := try("[2001:db8::ff]:80", testPassword); code != http.StatusTooManyRequests {
		t.Errorf("another address of the same /64: %d, want 429", code)
	}
	// The last failure was 10 s ago; the window runs from it.
	fx.clock.Advance(5*time.Minute - 11*time.Second)
	if code := try("192.0.2.7:4002", testPassword); code != http.StatusTooManyRequests {
		t.Errorf("just before the window ends: %d, want 429", code)
	}
	fx.clock.Advance(time.Second)
	if code := try("192.0.2.7:4003", testPassword); code != http.StatusOK {
		t.Errorf("after the window: %d, want 200", code)
	}
}

// TestXSRF: an action without the page's token is refused (403), with it accepted; GET on an
// action is refused.
func TestXSRF(t *testing.T) {
	fx := newFixture(t)
	ts := httptest.NewServer(fx.srv.Handler())
	defer ts.Close()
	noRedirect := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	post := func(form url.Values) int {
		req, _ := http.NewRequest("POST", ts.URL+"/refresh", strings.NewReader(form.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.SetBasicAuth("gokrazy", testPassword)
		resp, err := noRedirect.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := post(nil); code != http.StatusForbidden {
		t.Errorf("POST without token: %d, want 403", code)
	}
	if code := post(url.Values{"xsrftoken": {wrongToken(fx.srv.xsrfToken())}}); code != http.StatusForbidden {
		t.Errorf("POST with a wrong token: %d, want 403", code)
	}
	_, body := get(t, ts.URL+"/", testPassword, "")
	m := regexp.MustCompile(`name="xsrftoken" value="([0-9a-f]+)"`).FindStringSubmatch(body)
	if m == nil {
		t.Fatalf("no token in the page:\n%s", body)
	}
	if code := post(url.Values{"xsrftoken": {m[1]}}); code != http.StatusSeeOther {
		t.Errorf("POST with the page's token: %d, want 303", code)
	}
	if code, _ := get(t, ts.URL+"/refresh", testPassword, ""); code != http.StatusMethodNotAllowed {
		t.Errorf("GET /refresh: %d, want 405", code)
	}
}

// wrongToken is tok with its first digit changed: wrong for certain. A fixed prefix such as "00"
// is the right token whenever the random key makes the token start with it (1 run in 256: it
// failed TestXSRF in a fresh-clone CI run).
func wrongToken(tok string) string {
	first := "0"
	if tok[0] == '0' {
		first = "1"
	}
	return first + tok[1:]
}

func TestWrongToken(t *testing.T) {
	for _, tok := range []string{"00ab", "0fab", "a0ab", "ffff"} {
		if w := wrongToken(tok); w == tok || len(w) != len(tok) {
			t.Errorf("wrongToken(%q) = %q", tok, w)
		}
	}
}

// TestListenAddrs: only literal addresses; the unspecified ones only with the flag that names the
// risk.
func TestListenAddrs(t *testing.T) {
	for _, a := range []string{"0.0.0.0:8080", "[::]:8080", ":8080", "statusd.local:8080", "198.51.100.10", ""} {
		if _, err := ListenAddrs(a, false); err == nil {
			t.Errorf("-listen %q accepted", a)
		} else if !strings.Contains(err.Error(), "-listen") {
			t.Errorf("-listen %q: error %q does not name the flag", a, err)
		}
	}
	for _, a := range []string{"0.0.0.0:8080", "[::]:8080"} {
		if _, err := ListenAddrs(a, true); err != nil {
			t.Errorf("-listen %q with -listen-unspecified-exposes-every-port: %v", a, err)
		}
	}
	got, err := ListenAddrs("198.51.100.10:8080, [2001:db8::10]:8080", false)
	if err != nil || len(got) != 2 {
		t.Errorf("management addresses: %q, %v", got, err)
	}
}

// TestMainRefusesBadFlags: statusd exits 2 naming the flag.
func TestMainRefusesBadFlags(t *testing.T) {
	pw := filepath.Join(t.TempDir(), "pw")
	os.WriteFile(pw, []byte(testPassword+"\n"), 0o600)
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"-listen", "0.0.0.0:80", "-password-file", pw}, "-listen-unspecified-exposes-every-port"},
		{[]string{"-listen", "127.0.0.1:0", "-password-file", filepath.Join(t.TempDir(), "none")}, "-password-file"},
		{[]string{"-listen", "127.0.0.1:0", "-password-file", pw, "-daemons", "a/b"}, "-daemons"},
		{[]string{"-listen", "127.0.0.1:0", "-password-file", pw, "-sample-every", "100ms"}, "-sample-every"},
		{[]string{"-listen", "127.0.0.1:0", "-password-file", pw, "-log-lines", "-1"}, "-log-lines"},
	} {
		var stderr strings.Builder
		if code := Main(context.Background(), c.args, io.Discard, &stderr); code != 2 || !strings.Contains(stderr.String(), c.want) {
			t.Errorf("%q: exit %d, %q; want 2 naming %s", c.args, code, stderr.String(), c.want)
		}
	}
}

// TestHungDaemon: a daemon that accepts and never answers costs the page its timeout, not the
// page itself; it shows as not running.
func TestHungDaemon(t *testing.T) {
	fx := newFixture(t)
	sock := filepath.Join(socketDir(t), "hung.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close() // held open, unanswered, until the test ends
		}
	}()
	fx.srv.Daemons[1].Socket = sock
	fx.srv.Timeout = 300 * time.Millisecond
	p := fx.page(t)
	for _, d := range p.Daemons {
		if d.Name == "uplinkd" && d.State != "not running" {
			t.Errorf("hung uplinkd: %s", d.State)
		}
	}
	if s := stage(t, p, stageInput); s.State != OK {
		t.Errorf("tap ports %s with sensord answering", s.State)
	}
	if s := stage(t, p, stageUplink); s.State != Fail {
		t.Errorf("uplink %s with uplinkd hung", s.State)
	}
}

// TestStoppedIsNotConfigured: a daemon whose socket does not answer is "not configured" when
// gokrazy has stopped it (it exited 125, waiting for its configuration), and "not running" while
// gokrazy keeps restarting it. gokrazy's status JSON is served by a fake with its field names.
func TestStoppedIsNotConfigured(t *testing.T) {
	fx := newFixture(t)
	gone := filepath.Join(socketDir(t), "gone.sock")
	fx.srv.Daemons = []Daemon{{Name: "sensord", Socket: gone}, {Name: "uplinkd", Socket: fx.uplinkd.socket}}
	var stopped atomic.Bool
	gk := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if u, p, ok := r.BasicAuth(); !ok || u != "gokrazy" || p != testPassword || r.Header.Get("Accept") != "application/json" {
			http.Error(w, "no", http.StatusUnauthorized)
			return
		}
		fmt.Fprintf(w, `{"BuildTimestamp":"x","Services":[{"Path":"/user/sensord","Stopped":%v,"Pid":0},{"Path":"/user/uplinkd","Stopped":false,"Pid":42}]}`, stopped.Load())
	}))
	defer gk.Close()
	fx.srv.Services = &GokrazyServices{URL: gk.URL, Password: []byte(testPassword)}
	state := func() (string, *Node) {
		p := fx.page(t)
		for _, d := range p.Daemons {
			if d.Name == "sensord" {
				return d.State, stage(t, p, stageInput)
			}
		}
		t.Fatal("no sensord on the page")
		return "", nil
	}
	if st, in := state(); st != "not running" || in.State != Fail {
		t.Errorf("restarting sensord: %s, tap ports %s %q", st, in.State, in.Detail)
	}
	stopped.Store(true)
	if st, in := state(); st != "not configured" || in.State != Unknown || !strings.Contains(in.Detail, "not configured") {
		t.Errorf("stopped sensord: %s, tap ports %s %q", st, in.State, in.Detail)
	}
	// A gokrazy that cannot be asked changes nothing.
	fx.srv.Services = &GokrazyServices{URL: gk.URL, Password: []byte("wrong")}
	if st, _ := state(); st != "not running" {
		t.Errorf("gokrazy unreadable: %s", st)
	}
}
