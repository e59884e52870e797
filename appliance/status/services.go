package status

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"time"
)

// GokrazyServices reads which of gokrazy's services are stopped on purpose: gokrazy stops a
// program that exited with status 125 (the daemons' "not configured") or 0, and restarts any
// other. Its JSON status says only "Stopped", not why, so a stopped daemon whose socket does not
// answer is "not configured" (it is waiting for its configuration, not failing), while one that
// gokrazy keeps restarting is "not running".
type GokrazyServices struct {
	URL      string // gokrazy's page, http://127.0.0.1/
	Password []byte
}

// Stopped returns the paths (/user/sensord) of the services gokrazy has stopped; nil when it
// cannot tell.
func (g *GokrazyServices) Stopped(ctx context.Context) map[string]bool {
	if g == nil || g.URL == "" {
		return nil
	}
	var doc struct {
		Services []struct {
			Path    string
			Stopped bool
		}
	}
	if getGokrazyJSON(ctx, g.URL, g.Password, &doc) != nil {
		return nil
	}
	out := map[string]bool{}
	for _, s := range doc.Services {
		if s.Stopped {
			out[s.Path] = true
		}
	}
	return out
}

// markStopped turns "not running" into "not configured" for the daemons gokrazy stopped.
func markStopped(ds []*DaemonStatus, stopped map[string]bool) {
	for _, d := range ds {
		if d.State == "not running" && stopped["/user/"+d.Name] {
			d.State = "not configured"
			d.Error = "stopped by gokrazy after it exited with status 125 (waiting for its configuration) or 0: set it up on the configuration page"
		}
	}
}

// getGokrazyJSON reads gokrazy's status page as JSON (it needs the device password) into v,
// within a second.
func getGokrazyJSON(ctx context.Context, url string, password []byte, v any) error {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "application/json")
	req.SetBasicAuth("gokrazy", string(password))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("gokrazy: %s", resp.Status)
	}
	return json.NewDecoder(io.LimitReader(resp.Body, 4<<20)).Decode(v)
}
