package status

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// GokrazyRestarter (re)starts a daemon through gokrazy's own HTTP API on its unix socket
// (/run/gokrazy-http.sock): POST /restart with the service's path. A service stopped because it
// exited 125 (not configured) is started; a running one is sent SIGTERM. gokrazy does not start
// it again by itself: a process that exits 0 is "exited successfully, stopping", and our daemons
// exit 0 on SIGTERM, so a restarted uplinkd stayed stopped after a change on /config. Restart
// therefore follows the service (GET /status?path=, JSON) until it has started again, and asks
// once more when gokrazy stopped it. gokrazy checks basic authentication (user "gokrazy", the
// device password) and a form token equal to its gokrazy_xsrf cookie: both are the client's to
// choose, so the request sets them alike.
type GokrazyRestarter struct {
	Socket   string
	Password []byte
	// Path maps a daemon to the service's program path (default /user/NAME, where gokrazy
	// installs programs).
	Path func(daemon string) string
	// Wait bounds how long a running service may take to stop and start again (default 60 s:
	// uplinkd may finish a delivery for its 20 s shutdown_grace first).
	Wait time.Duration
}

// gokrazyService is what gokrazy's JSON status says of one service.
type gokrazyService struct {
	Stopped   bool
	StartTime time.Time
	Pid       int
}

func (g *GokrazyRestarter) client() *http.Client {
	return &http.Client{
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", g.Socket)
		}, DisableKeepAlives: true},
		// gokrazy answers 303 to its service page: that is the success.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

func (g *GokrazyRestarter) post(ctx context.Context, path string) error {
	const token = "1147"
	form := url.Values{"path": {path}, "xsrftoken": {token}, "supervise": {"loop"}}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://gokrazy/restart", strings.NewReader(form.Encode()))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.AddCookie(&http.Cookie{Name: "gokrazy_xsrf", Value: token})
	req.SetBasicAuth("gokrazy", string(g.Password))
	resp, err := g.client().Do(req)
	if err != nil {
		return fmt.Errorf("gokrazy: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusSeeOther && resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 256))
		return fmt.Errorf("gokrazy: restart %s: %s: %s", path, strconv.Quote(resp.Status), strings.TrimSpace(string(b)))
	}
	return nil
}

func (g *GokrazyRestarter) status(ctx context.Context, path string) (*gokrazyService, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://gokrazy/status?path="+url.QueryEscape(path), nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/json")
	req.SetBasicAuth("gokrazy", string(g.Password))
	resp, err := g.client().Do(req)
	if err != nil {
		return nil, fmt.Errorf("gokrazy: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 256))
		return nil, fmt.Errorf("gokrazy: status of %s: %s: %s", path, strconv.Quote(resp.Status), strings.TrimSpace(string(b)))
	}
	var st gokrazyService
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return nil, fmt.Errorf("gokrazy: status of %s: %v", path, err)
	}
	return &st, nil
}

// Restart starts daemon, or stops and starts it when it runs, and returns once gokrazy has
// started it (or will, for one that was stopped).
func (g *GokrazyRestarter) Restart(ctx context.Context, daemon string) error {
	path := "/user/" + daemon
	if g.Path != nil {
		path = g.Path(daemon)
	}
	before, err := g.status(ctx, path)
	if err != nil {
		return err
	}
	if err := g.post(ctx, path); err != nil {
		return err
	}
	if before.Stopped {
		return nil // gokrazy starts it within its next second
	}
	wait := g.Wait
	if wait == 0 {
		wait = time.Minute
	}
	deadline := time.Now().Add(wait)
	for {
		st, err := g.status(ctx, path)
		if err != nil {
			return err
		}
		switch {
		case st.StartTime.After(before.StartTime):
			return nil // started again (an exit other than 0 is restarted by gokrazy)
		case st.Stopped:
			// It exited 0 after the SIGTERM and gokrazy left it stopped: this start is ours.
			return g.post(ctx, path)
		case time.Now().After(deadline):
			return fmt.Errorf("gokrazy: %s did not stop within %v of the restart request", path, wait)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}
