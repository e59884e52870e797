package status

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

// TestProcessOnPage: the JSON page carries statusd's own CPU time and resident set, read from
// /proc/self, and the CPU time grows with work done.
func TestProcessOnPage(t *testing.T) {
	fx := newFixture(t)
	hs := httptest.NewServer(fx.srv.Handler())
	defer hs.Close()
	get := func() *Process {
		req, _ := http.NewRequest("GET", hs.URL+"/", nil)
		req.SetBasicAuth("gokrazy", testPassword)
		req.Header.Set("Accept", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var p Page
		if err := json.NewDecoder(resp.Body).Decode(&p); err != nil {
			t.Fatal(err)
		}
		if p.Process == nil {
			t.Fatal("the JSON page has no process section")
		}
		return p.Process
	}
	first := get()
	if first.RSSBytes < 1<<20 || first.RSSBytes > 1<<34 {
		t.Errorf("rss_bytes %d is not a Go program's resident set", first.RSSBytes)
	}
	// Burn CPU until the kernel's 10 ms ticks must have counted some of it.
	for start := time.Now(); time.Since(start) < 200*time.Millisecond; {
	}
	if second := get(); second.CPUSeconds <= first.CPUSeconds {
		t.Errorf("cpu_seconds %g after 200 ms of work, %g before", second.CPUSeconds, first.CPUSeconds)
	}
}
