package status

import (
	"context"
	"encoding/json"
	"fmt"
	"html"
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

	"github.com/sie-europe/dnssensor/appliance/update"
)

// realUpdated serves the real update agent's local API (appliance/update's Handler) on a unix
// socket, over a state file with a committed version, a failed one and some history; it records
// the actions that reached it.
func realUpdated(t *testing.T) (*update.Agent, string, func() []string) {
	t.Helper()
	dir := t.TempDir()
	at := time.Date(2026, 3, 1, 2, 0, 0, 0, time.UTC)
	st := update.State{Schema: update.StateSchema, Version: 2, BuildTimestamp: "2026-02-01T00:00:00Z",
		Failed:    []update.Failure{{Version: 3, BuildTimestamp: "2026-02-20T00:00:00Z", At: at, Reason: "health gate not passed within 5m0s: sensord: capture"}},
		LastCheck: at.Add(time.Hour), LastResult: "version 3 failed on 2026-03-01T02:00:00Z (…); not retried: publish a higher version",
		BootPartition: &update.BootRead{SHA256: "5e1f", Bytes: 100 << 20, At: at, Why: "first start after the restore"}}
	for i, what := range []string{"installing version 2", "version 2 committed", "installing version 3", "version 3 failed: health gate not passed"} {
		st.History = append(st.History, update.Event{At: at.Add(time.Duration(i-4) * time.Minute), What: what})
	}
	b, _ := json.Marshal(st)
	if err := os.WriteFile(filepath.Join(dir, "state.json"), b, 0o600); err != nil {
		t.Fatal(err)
	}
	a, err := update.New(update.Config{RepoURL: "http://127.0.0.1:1/", Image: "sensor-amd64", TrustedRoot: []byte("{}"), Dir: dir,
		Now: func() time.Time { return at.Add(2 * time.Hour) }})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var got []string
	h := a.Handler()
	sock := serveUnix(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost {
			mu.Lock()
			got = append(got, r.URL.Path)
			mu.Unlock()
		}
		h.ServeHTTP(w, r)
	}))
	return a, sock, func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), got...)
	}
}

// TestUpdatesSection: the page shows updated's state from its socket (installed version, the
// failed version with its reason, the last check, the history newest first, its health checks),
// in HTML and JSON; "Pause updates", "Resume updates" and "Update now" reach updated only with
// the page's XSRF token (without it, or with a wrong one, 403 and updated is not asked); GET is 405.
func TestUpdatesSection(t *testing.T) {
	a, sock, posted := realUpdated(t)
	fx := newFixture(t)
	fx.srv.UpdatedSocket = sock
	ts := httptest.NewServer(fx.srv.Handler())
	defer ts.Close()

	code, body := get(t, ts.URL+"/", testPassword, "application/json")
	var p Page
	if err := json.Unmarshal([]byte(body), &p); code != http.StatusOK || err != nil || p.Updates == nil {
		t.Fatalf("JSON page: %d %v\n%s", code, err, body)
	}
	u := p.Updates
	if u.State != "running" || u.Version != 2 || u.Paused || len(u.Failed) != 1 || u.Failed[0].Version != 3 ||
		len(u.History) != 4 || u.History[0].What != "version 3 failed: health gate not passed" || u.LastCheck.IsZero() ||
		u.BootPartition == nil || u.BootPartition.SHA256 != "5e1f" || u.BootPartition.Why != "first start after the restore" {
		t.Errorf("updates: %+v", u)
	}
	checks := map[string]bool{}
	for _, c := range u.Checks {
		checks[c.Name] = c.OK
	}
	if ok, found := checks["updates"]; !found || ok || !checks["repository"] {
		t.Errorf("updated's checks %v: want repository ok, updates failing (version 3 failed)", checks)
	}
	_, page := get(t, ts.URL+"/", testPassword, "")
	page = html.UnescapeString(page)
	for _, want := range []string{`<section id="updates">`, "Installed version</dt><dd>2 (built 2026-02-01T00:00:00Z)", "Failed: version 3",
		"sensord: capture", "Pause updates", `action="/updates/now"`, "version 2 committed"} {
		if !strings.Contains(page, want) {
			t.Errorf("HTML page lacks %q", want)
		}
	}
	if i, j := strings.Index(page, "version 3 failed: health"), strings.Index(page, "installing version 2"); i < 0 || j < i {
		t.Error("history not newest first")
	}
	tok := regexp.MustCompile(`action="/updates/pause">\s*<input type="hidden" name="xsrftoken" value="([0-9a-f]+)"`).FindStringSubmatch(page)
	if tok == nil {
		t.Fatal("no Pause updates form with a token")
	}

	for _, path := range []string{"/updates/pause", "/updates/now", "/updates/resume"} {
		if code, _ := postForm(t, ts.URL+path, nil, ""); code != http.StatusForbidden {
			t.Errorf("POST %s without a token: %d, want 403", path, code)
		}
		if code, _ := postForm(t, ts.URL+path, url.Values{"xsrftoken": {wrongToken(tok[1])}}, ""); code != http.StatusForbidden {
			t.Errorf("POST %s with a wrong token: %d, want 403", path, code)
		}
		if code, _ := get(t, ts.URL+path, testPassword, ""); code != http.StatusMethodNotAllowed {
			t.Errorf("GET %s: %d, want 405", path, code)
		}
	}
	if got := posted(); len(got) != 0 || a.State().Paused {
		t.Fatalf("refused requests reached updated: %v (paused %v)", got, a.State().Paused)
	}

	if code, _ := postForm(t, ts.URL+"/updates/pause", url.Values{"xsrftoken": {tok[1]}}, ""); code != http.StatusSeeOther {
		t.Errorf("pause: %d, want 303", code)
	}
	if !a.State().Paused {
		t.Error("updated not paused")
	}
	_, page = get(t, ts.URL+"/", testPassword, "")
	if !strings.Contains(page, "Resume updates") || !strings.Contains(page, "<dd>paused</dd>") {
		t.Error("the page does not show the pause")
	}
	for _, path := range []string{"/updates/resume", "/updates/now"} {
		if code, _ := postForm(t, ts.URL+path, url.Values{"xsrftoken": {tok[1]}}, ""); code != http.StatusSeeOther {
			t.Errorf("POST %s: %d, want 303", path, code)
		}
	}
	if a.State().Paused {
		t.Error("updated still paused")
	}
	if got := strings.Join(posted(), " "); got != "/pause /resume /update-now" {
		t.Errorf("updated was asked %q, want /pause /resume /update-now", got)
	}
	if !strings.Contains(fx.logs.String(), "update-now asked from the page") {
		t.Errorf("the action is not logged:\n%s", fx.logs.String())
	}
}

// TestUpdatesNotConfigured: updated stopped by gokrazy (exit 125: no repository or no trusted
// root) is "not configured" with the fix; one gokrazy keeps restarting is "not running"; the
// buttons are not offered and a POST says updated did not take it.
func TestUpdatesNotConfigured(t *testing.T) {
	fx := newFixture(t)
	fx.srv.UpdatedSocket = filepath.Join(socketDir(t), "updated.sock")
	var stopped atomic.Bool
	gk := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, `{"Services":[{"Path":"/user/updated","Stopped":%v,"Pid":0}]}`, stopped.Load())
	}))
	defer gk.Close()
	fx.srv.Services = &GokrazyServices{URL: gk.URL, Password: []byte(testPassword)}
	ts := httptest.NewServer(fx.srv.Handler())
	defer ts.Close()
	if u := fx.srv.Page(context.Background()).Updates; u == nil || u.State != "not running" {
		t.Errorf("restarting updated: %+v", u)
	}
	stopped.Store(true)
	u := fx.srv.Page(context.Background()).Updates
	if u == nil || u.State != "not configured" || !strings.Contains(u.Error, "Automatic updates") {
		t.Errorf("stopped updated: %+v", u)
	}
	_, page := get(t, ts.URL+"/", testPassword, "")
	if !strings.Contains(page, "updated not configured") || strings.Contains(page, "Pause updates") {
		t.Error("HTML page: want updated not configured and no buttons")
	}
	tok := fx.srv.xsrfToken()
	if code, _ := postForm(t, ts.URL+"/updates/now", url.Values{"xsrftoken": {tok}}, ""); code != http.StatusBadGateway {
		t.Errorf("update now without updated: %d, want 502", code)
	}
}

// TestIdentityReadsUpdatedState: the identity's "last update" comes from updated's own state file
// (it was read as another format, and showed "unreadable" on every box with updated): the newer
// of the last commit and the last failure.
func TestIdentityReadsUpdatedState(t *testing.T) {
	dir := t.TempDir()
	at := time.Date(2026, 3, 1, 2, 0, 0, 0, time.UTC)
	write := func(st update.State) *IdentitySource {
		st.Schema = update.StateSchema
		b, _ := json.Marshal(st)
		p := filepath.Join(dir, "state.json")
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return &IdentitySource{UpdateFile: p}
	}
	committed := update.State{Version: 2, History: []update.Event{{At: at, Version: 2, What: "installing version 2 (build x)"},
		{At: at.Add(time.Minute), Version: 2, What: "version 2 committed"}}}
	id := write(committed).Read(context.Background())
	if u := id.LastUpdate; u == nil || u.Result != "ok" || !u.Time.Equal(at.Add(time.Minute)) || id.UpdateNote != "" {
		t.Errorf("committed: %+v %q", u, id.UpdateNote)
	}
	failed := committed
	failed.Failed = []update.Failure{{Version: 3, At: at.Add(time.Hour), Reason: "health gate not passed"}}
	if u := write(failed).Read(context.Background()).LastUpdate; u == nil || u.Result != "rolled back" || !strings.Contains(u.Detail, "version 3: health gate not passed") {
		t.Errorf("failed: %+v", u)
	}
	if id := write(update.State{}).Read(context.Background()); id.LastUpdate != nil || id.UpdateNote != "no update yet" {
		t.Errorf("fresh state: %+v %q", id.LastUpdate, id.UpdateNote)
	}
}

// TestUpdatesOwnTimeLimit: a hung daemon uses up the page's time limit; updated, answering at
// once, is still read (it was asked after the others with what they left, and a loaded box
// showed it "not running" in QEMU).
func TestUpdatesOwnTimeLimit(t *testing.T) {
	_, sock, _ := realUpdated(t)
	fx := newFixture(t)
	fx.srv.UpdatedSocket = sock
	hung := filepath.Join(socketDir(t), "hung.sock")
	ln, err := net.Listen("unix", hung)
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
	fx.srv.Daemons[1].Socket = hung
	fx.srv.Timeout = time.Second
	if u := fx.page(t).Updates; u == nil || u.State != "running" || u.Version != 2 {
		t.Errorf("updated beside a hung daemon: %+v", u)
	}
}
