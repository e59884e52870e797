package status

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
)

// GokrazyRestarter (re)starts a daemon through gokrazy's own HTTP API on its unix socket
// (/run/gokrazy-http.sock): POST /restart with the service's path. A service stopped because it
// exited 125 (not configured) is started; a running one is sent SIGTERM and restarted. gokrazy
// checks basic authentication (user "gokrazy", the device password) and a form token equal to its
// gokrazy_xsrf cookie: both are the client's to choose, so the request sets them alike.
type GokrazyRestarter struct {
	Socket   string
	Password []byte
	// Path maps a daemon to the service's program path (default /user/NAME, where gokrazy
	// installs programs).
	Path func(daemon string) string
}

func (g *GokrazyRestarter) Restart(ctx context.Context, daemon string) error {
	path := "/user/" + daemon
	if g.Path != nil {
		path = g.Path(daemon)
	}
	const token = "1147"
	form := url.Values{"path": {path}, "xsrftoken": {token}, "supervise": {"loop"}}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://gokrazy/restart", strings.NewReader(form.Encode()))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.AddCookie(&http.Cookie{Name: "gokrazy_xsrf", Value: token})
	req.SetBasicAuth("gokrazy", string(g.Password))
	c := &http.Client{
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", g.Socket)
		}, DisableKeepAlives: true},
		// gokrazy answers 303 to its service page: that is the success.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	resp, err := c.Do(req)
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
