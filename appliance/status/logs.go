package status

import (
	"context"
	"sync"

	"github.com/sie-europe/dnssensor/internal/health"
)

// DaemonLog is the last lines of one daemon's log (its /log.json, scrubbed by the daemon; statusd
// scrubs them again with the same rule, so a daemon that did not is still covered for the
// patterns).
type DaemonLog struct {
	Daemon  string           `json:"daemon"`
	Error   string           `json:"error,omitempty"`
	Evicted uint64           `json:"evicted,omitempty"`
	Lines   []health.LogLine `json:"lines"`
}

// defaultLogLines is how many lines of each daemon the page shows.
const defaultLogLines = 50

// collectLogs asks every running daemon for its last n lines, concurrently.
func collectLogs(ctx context.Context, ds []*DaemonStatus, n int) []DaemonLog {
	var out []DaemonLog
	for _, d := range ds {
		if d.Socket != "" && d.State == "running" {
			out = append(out, DaemonLog{Daemon: d.Name, Lines: []health.LogLine{}})
		}
	}
	var wg sync.WaitGroup
	for i := range out {
		wg.Go(func() {
			l := &out[i]
			var sock string
			for _, d := range ds {
				if d.Name == l.Daemon {
					sock = d.Socket
				}
			}
			doc, err := health.GetLog(ctx, sock, n)
			if err != nil {
				l.Error = err.Error()
				return
			}
			l.Evicted = doc.Evicted
			for _, line := range doc.Lines {
				line.Text = health.Scrub(line.Text)
				l.Lines = append(l.Lines, line)
			}
		})
	}
	wg.Wait()
	return out
}
