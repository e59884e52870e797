package status

import (
	"context"
	"encoding/base64"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"

	"github.com/sie-europe/dnssensor/internal/testenv"
)

// browser starts Debian's headless chromium for the test (skipped locally without it, a failure
// under CI=true) and returns a chromedp context that sends auth, if set, as basic credentials on
// every request (headless chromium has no login dialog).
func browser(t *testing.T, auth string) context.Context {
	t.Helper()
	// Generous: chromium's first start on a loaded 2-core machine takes seconds.
	return browserFor(t, auth, 3*time.Minute)
}

// browserFor is browser with the session's whole time budget given.
func browserFor(t *testing.T, auth string, budget time.Duration) context.Context {
	t.Helper()
	if testing.Short() {
		t.Skip("starts a browser")
	}
	path, err := exec.LookPath("chromium")
	testenv.Need(t, err == nil, "chromium not found (apt-get install chromium)")
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(path),
		// Root in CI: chromium refuses to run its sandbox as root.
		chromedp.NoSandbox, chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.WindowSize(420, 1400)) // a phone's width
	actx, cancelA := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelB := chromedp.NewContext(actx)
	ctx, cancelT := context.WithTimeout(ctx, budget)
	t.Cleanup(func() { cancelT(); cancelB(); cancelA() })
	if err := chromedp.Do(ctx); err != nil { // starts the browser
		t.Fatalf("starting chromium: %v", err)
	}
	if auth != "" {
		hdr := network.Headers{"Authorization": "Basic " + base64.StdEncoding.EncodeToString([]byte(auth))}
		if _, err := chromedp.Call(ctx, network.Enable, network.EnableParams{}); err != nil {
			t.Fatal(err)
		}
		if _, err := chromedp.Call(ctx, network.SetExtraHTTPHeaders, network.SetExtraHTTPHeadersParams{Headers: hdr}); err != nil {
			t.Fatal(err)
		}
	}
	return ctx
}

// artefacts is where screenshots go: $ARTIFACTS_DIR/<test> when set (CI keeps them), else the
// test's temporary directory.
func artefacts(t *testing.T) string {
	dir := t.TempDir()
	if d := os.Getenv("ARTIFACTS_DIR"); d != "" {
		dir = filepath.Join(d, t.Name())
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func screenshot(t *testing.T, ctx context.Context, dir, name string) {
	t.Helper()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatalf("screenshot %s: %v", name, err)
	}
	if err := os.WriteFile(filepath.Join(dir, name+".png"), png, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestBrowser drives the page in a real browser: logged in, the chain's links green (the
// clock grey, never green, when nothing checks it); one check of
// sensord broken, "Refresh health now" (the form's POST with its XSRF token) shows that link
// red and its failing check first, with the fix; the same form without its token is refused; a wrong password gets
// nothing. Screenshots of each state are kept.
func TestBrowser(t *testing.T) {
	fx := newFixture(t)
	hs := httptest.NewServer(fx.srv.Handler())
	defer hs.Close()
	dir := artefacts(t)

	states := func(ctx context.Context) map[string]string {
		got, err := chromedp.Run(ctx, chromedp.Evaluate[map[string]string](`Object.fromEntries([...document.querySelectorAll("ol.chain > li")].map(li =>
			[li.querySelector("strong").textContent.trim(), li.className]))`))
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	text := func(ctx context.Context, sel string) string {
		s, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(sel)))
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	const refresh = `form[action="/refresh"] button`

	ctx := browser(t, "gokrazy:"+testPassword)
	if err := chromedp.Do(ctx, chromedp.Navigate(hs.URL+"/"), chromedp.WaitVisible(chromedp.CSS("ol.chain"))); err != nil {
		t.Fatal(err)
	}
	got := states(ctx)
	if len(got) != len(stages) {
		t.Errorf("the page shows %d links, want %d: %v", len(got), len(stages), got)
	}
	for name, class := range got {
		want := "ok"
		if name == stageClock { // the fixture has no clock to read
			want = "unknown"
		}
		if class != want {
			t.Errorf("link %q has class %q, want %q", name, class, want)
		}
	}
	screenshot(t, ctx, dir, "1-all-green")

	fx.sensord.setFail("frames on eth1", "check the cable from the tap to eth1")
	if err := chromedp.Do(ctx, chromedp.Click(chromedp.CSS(refresh)), chromedp.WaitVisible(chromedp.CSS("ol.chain li.first"))); err != nil {
		t.Fatal(err)
	}
	if got := states(ctx)[stageFrames]; got != "fail" {
		t.Errorf("frames link has class %q, want %q", got, "fail")
	}
	// The first failure is the check under the link, with its fix.
	if fix := text(ctx, "ol.chain li.first > .fix"); !strings.Contains(fix, "Fix first: check the cable from the tap to eth1") {
		t.Errorf("first fix %q", fix)
	}
	screenshot(t, ctx, dir, "2-frames-red")

	// The same form with its token taken away: refused.
	if err := chromedp.Do(ctx, chromedp.Evaluate[chromedp.Void](`document.querySelector('form[action="/refresh"] input[name="xsrftoken"]').remove()`)); err != nil {
		t.Fatal(err)
	}
	resp, err := chromedp.RunResponse(ctx, chromedp.Click(chromedp.CSS(refresh)))
	if err != nil {
		t.Fatal(err)
	}
	if resp.Status != http.StatusForbidden {
		t.Errorf("POST without XSRF token: status %d, want 403", resp.Status)
	}
	if body := text(ctx, "body"); strings.Contains(body, "Refresh health now") {
		t.Errorf("POST without XSRF token shows the page: %q", body)
	}
	screenshot(t, ctx, dir, "3-no-xsrf")

	// A wrong password: the page is not shown.
	bad := browser(t, "gokrazy:wrong")
	// Chromium reports a 401 to credentials it sent as a failed load.
	resp, err = chromedp.Run(bad, chromedp.NavigateResponse(hs.URL+"/"))
	switch {
	case err != nil && strings.Contains(err.Error(), "ERR_INVALID_AUTH_CREDENTIALS"):
	case err != nil:
		t.Fatal(err)
	case resp.Status != http.StatusUnauthorized:
		t.Errorf("wrong password: status %d, want 401", resp.Status)
	}
	if html, err := chromedp.Run(bad, chromedp.OuterHTML(chromedp.CSS("html"))); err != nil || strings.Contains(html, `class="chain"`) {
		t.Errorf("wrong password shows the chain (%v):\n%s", err, html)
	}
	screenshot(t, bad, dir, "4-wrong-password")
	t.Logf("screenshots in %s", dir)
}
