package status

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/sie-europe/dnssensor/appliance/update/updatestate"
	"github.com/sie-europe/dnssensor/internal/health"
)

// maxHistoryShown bounds the history the HTML page lists (the JSON page has all updated keeps).
const maxHistoryShown = 10

// Updates is the page's section on automatic updates, from updated's health socket: its health
// checks and its state document.
type Updates struct {
	// State is "running", "not configured" (gokrazy stopped it: no repository or no trusted
	// root) or "not running".
	State string `json:"state"`
	Error string `json:"error,omitempty"`
	// Checks are updated's health checks (repository → updates), depth first.
	Checks []*health.Check `json:"checks,omitempty"`
	// The rest is updated's /state.json.
	Version        int64                 `json:"version"`
	BuildTimestamp string                `json:"build_timestamp,omitempty"`
	Paused         bool                  `json:"paused"`
	Pending        *updatestate.Pending  `json:"pending,omitempty"`
	LastCheck      time.Time             `json:"last_check,omitzero"`
	LastResult     string                `json:"last_result,omitempty"`
	LastError      string                `json:"last_error,omitempty"`
	Failed         []updatestate.Failure `json:"failed,omitempty"`
	History        []updatestate.Event   `json:"history,omitempty"` // newest first
	// BootPartition is the boot partition's SHA-256 as updated last read it (before writing a
	// release's, after restoring the previous one, at the first start after that).
	BootPartition *updatestate.BootRead `json:"boot_partition,omitempty"`
	// Shown is the newest part of History, for the HTML page.
	Shown []updatestate.Event `json:"-"`
}

// updatesFix is what the page says when updated does not run.
const (
	updatesNotConfigured = "stopped by gokrazy: no update repository in the box configuration (Configuration → Automatic updates), or the image carries no trusted root (build it with gokr-packer -tuf-root)"
	updatesNotRunning    = "updated does not answer on its socket: see its log on gokrazy's page"
)

// readUpdates asks updated for its health and state.
func readUpdates(ctx context.Context, socket string) *Updates {
	u := &Updates{State: "running"}
	rep, err := health.Get(ctx, socket)
	if err != nil {
		u.State, u.Error = "not running", updatesNotRunning
		return u
	}
	u.Checks = flatten(rep.Checks)
	var doc updatestate.State
	if err := getUpdated(ctx, socket, &doc); err != nil {
		u.Error = err.Error()
		return u
	}
	if doc.Schema != updatestate.StateSchema {
		u.Error = fmt.Sprintf("updated's /state.json has schema %q, want %q", doc.Schema, updatestate.StateSchema)
		return u
	}
	u.Version, u.BuildTimestamp, u.Paused, u.Pending = doc.Version, doc.BuildTimestamp, doc.Paused, doc.Pending
	u.LastCheck, u.LastResult, u.LastError, u.Failed = doc.LastCheck, doc.LastResult, doc.LastError, doc.Failed
	u.BootPartition = doc.BootPartition
	for i := len(doc.History) - 1; i >= 0; i-- {
		u.History = append(u.History, doc.History[i])
	}
	u.Shown = u.History[:min(len(u.History), maxHistoryShown)]
	return u
}

// markUpdatesStopped: updated not answering because gokrazy stopped it (exit 125) is not
// configured. stopped is gokrazy's list of stopped services (nil: unknown).
func markUpdatesStopped(u *Updates, stopped map[string]bool) {
	if u.State == "not running" && stopped["/user/updated"] {
		u.State, u.Error = "not configured", updatesNotConfigured
	}
}

func flatten(cs []*health.Check) []*health.Check {
	var out []*health.Check
	for _, c := range cs {
		cc := *c
		cc.Children = nil
		out = append(out, &cc)
		out = append(out, flatten(c.Children)...)
	}
	return out
}

func getUpdated(ctx context.Context, socket string, v any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://unix/state.json", nil)
	if err != nil {
		return err
	}
	resp, err := health.Client(socket).Do(req)
	if err != nil {
		return fmt.Errorf("updated's /state.json: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("updated's /state.json: %s", resp.Status)
	}
	return json.NewDecoder(io.LimitReader(resp.Body, 4<<20)).Decode(v)
}

// updateAction relays a button of the page to updated (POST /update-now, /pause, /resume on
// its socket), then shows the page again.
func (s *Server) updateAction(path string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if s.UpdatedSocket == "" {
			http.Error(w, "statusd runs without updated's socket (-updated)", http.StatusNotFound)
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), s.timeout())
		defer cancel()
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://unix"+path, nil)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		resp, err := health.Client(s.UpdatedSocket).Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode/100 != 2 {
				err = fmt.Errorf("%s", resp.Status)
			}
		}
		if err != nil {
			s.logf("statusd: updated %s: %v", path, err)
			http.Error(w, "updated did not take it ("+err.Error()+"): see the Updates section of the page", http.StatusBadGateway)
			return
		}
		s.logf("statusd: updated %s asked from the page", strings.TrimPrefix(path, "/"))
		http.Redirect(w, r, "/#updates", http.StatusSeeOther)
	}
}
