package collector

import (
	"context"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/sie-europe/dnssensor/internal/testenv"
)

// TestFleetBrowser loads the fleet page in Debian's headless chromium (chromedp; skipped with
// -short, and locally without chromium; a failure under CI=true) with three sensors on a virtual
// clock: one silent past -fleet-silent, one whose report names a failing check, one green. Each
// row must carry its state, the red ones first with why, the failing check with its fix; the
// stylesheet must apply (the page loads nothing else). A screenshot is kept
// ($ARTIFACTS_DIR/TestFleetBrowser/fleet.png in CI).
func TestFleetBrowser(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a browser")
	}
	path, err := exec.LookPath("chromium")
	testenv.Need(t, err == nil, "chromium not found (apt-get install chromium)")

	clk := &vclock{t: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}
	f := NewFleet(FleetOptions{Silent: 5 * time.Minute, now: clk.now}, "", []string{"site1-green", "site2-broken", "site3-silent"}, t.Logf)
	silent := greenReport()
	f.Report("site3-silent", silent)
	clk.add(10 * time.Minute)
	f.Report("site1-green", greenReport())
	f.Report("site2-broken", redReport())
	clk.add(30 * time.Second)
	hs := httptest.NewServer(f.Handler())
	defer hs.Close()

	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(path),
		// Root in CI: chromium refuses to run its sandbox as root.
		chromedp.NoSandbox, chromedp.Flag("disable-dev-shm-usage", true), chromedp.WindowSize(1280, 600))
	actx, cancelA := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancelA()
	ctx, cancelB := chromedp.NewContext(actx)
	defer cancelB()
	// Generous: chromium's first start on a loaded 2-core machine takes seconds.
	ctx, cancelT := context.WithTimeout(ctx, 3*time.Minute)
	defer cancelT()
	if err := chromedp.Do(ctx, chromedp.Navigate(hs.URL+"/"), chromedp.WaitVisible(chromedp.CSS("table.fleet"))); err != nil {
		t.Fatal(err)
	}
	type row struct{ Sensor, Class, State, Why, Check, Border string }
	rows, err := chromedp.Run(ctx, chromedp.Evaluate[[]row](`[...document.querySelectorAll("tr[data-sensor]")].map(tr => ({
		Sensor: tr.dataset.sensor, Class: tr.className,
		State: tr.querySelector(".state").textContent.trim(),
		Why: (tr.querySelector(".why") || {textContent: ""}).textContent.trim(),
		Check: tr.querySelector("td.check").textContent.trim(),
		Border: getComputedStyle(tr.querySelector("td")).borderLeftColor}))`))
	if err != nil {
		t.Fatal(err)
	}
	var order []string
	for _, r := range rows {
		order = append(order, r.Sensor+"="+r.Class)
	}
	if got, want := strings.Join(order, " "), "site2-broken=red site3-silent=red site1-green=green"; got != want {
		t.Errorf("rows %q, want %q", got, want)
	}
	for _, r := range rows {
		switch r.Sensor {
		case "site3-silent":
			if !strings.Contains(r.Why, "silent for 10m30s (more than 5m0s)") || r.Border != "rgb(204, 34, 34)" {
				t.Errorf("silent sensor: %+v", r)
			}
		case "site2-broken":
			if !strings.Contains(r.Check, "sensord: capture › port eth1 › frames on eth1") ||
				!strings.Contains(r.Check, "Fix: check the cable from the tap to eth1") ||
				!strings.Contains(r.Check, "failing since 2026-03-01 11:55:00 UTC") || r.Border != "rgb(204, 34, 34)" {
				t.Errorf("broken sensor: %+v", r)
			}
		case "site1-green":
			if r.State != "green" || r.Why != "" || r.Check != "–" || r.Border != "rgb(34, 170, 34)" {
				t.Errorf("green sensor: %+v", r)
			}
		}
	}
	summary, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS("#summary")))
	if err != nil {
		t.Fatal(err)
	}
	if summary != "2 red, 1 green, 3 sensors" {
		t.Errorf("summary %q", summary)
	}
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if d := os.Getenv("ARTIFACTS_DIR"); d != "" {
		dir = filepath.Join(d, t.Name())
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "fleet.png"), png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s", filepath.Join(dir, "fleet.png"))
}
