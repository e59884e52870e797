package app

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/sie-europe/dnssensor/internal/health"
	"github.com/sie-europe/dnssensor/sensor/internal/candidates"
	"github.com/sie-europe/dnssensor/sensor/internal/decode"
	"github.com/sie-europe/dnssensor/sensor/internal/pipeline"
)

// candidatesPath is the health socket's document of resolver candidates: the top query sources
// of the last minute. Served on the local socket only and never part of /health.json, whose
// reports travel to the collector: the addresses may be clients'.
const candidatesPath = "/resolver-candidates.json"

// candidatesDoc is that document.
type candidatesDoc struct {
	WindowSeconds int                    `json:"window_seconds"`
	Candidates    []candidates.Candidate `json:"candidates"`
}

// serveCandidates answers candidatesPath from the tracker (none: an empty list, so a reader
// needs no special case for dnstap or file input).
func (h *healthOptions) serveCandidates(now func() time.Time) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		doc := candidatesDoc{WindowSeconds: int(candidates.Window / time.Second), Candidates: []candidates.Candidate{}}
		if t := h.cands.Load(); t != nil {
			doc.Candidates = t.Top(5, now().UnixNano())
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		json.NewEncoder(w).Encode(doc)
	})
}

// discardSink takes the frames of discovery mode: counted, never paired, no record made.
type discardSink struct{ frames uint64 }

func (d *discardSink) Frame(decode.LinkType, int64, []byte, int) { d.frames++ }
func (d *discardSink) Idle(int64)                                {}
func (d *discardSink) Flush()                                    {}
func (d *discardSink) Stats() pipeline.Stats                     { return pipeline.Stats{Frames: d.frames} }

// runDiscovery captures on the interfaces without a resolver: every IP frame is read (the
// kernel filter has no address to keep), the per-port counters and the candidate tracker count,
// and nothing is written; the health tree says what to configure.
func runDiscovery(ctx context.Context, o *Options, stderr io.Writer) error {
	fmt.Fprintf(stderr, "sensord: no resolver configured: discovery mode, capturing on %v to suggest the resolver's addresses (the status page, or %s on the health socket); no records are made until \"resolver\" is set in the config file\n",
		o.Live.Ifaces, candidatesPath)
	var sink frameSink = &discardSink{}
	sink, err := o.Health.start(ctx, o, sink, nil, stderr)
	if err != nil {
		return err
	}
	defer o.Health.stop()
	defer func() {
		extra := ""
		if o.Live.extra != nil {
			extra = o.Live.extra()
		}
		fmt.Fprintf(stderr, "sensord: discovery: frames=%d candidate_queries=%d%s\n", sink.Stats().Frames, o.Health.cands.Load().Counted.Load(), extra)
	}()
	return runLive(ctx, o, sink, nil, stderr)
}

// discoveryCheck is the tree's first root in discovery mode: always red, since no record can be
// made, with the fix. It names no address: /health.json travels to the collector.
func discoveryCheck() *health.Node {
	return health.NewNode("resolver configured", health.Fixed(false,
		"no resolver configured: sensord captures in discovery mode and makes no records",
		`set "resolver" in sensord's config file (/perm/sensord/config.json on the box) to the resolver's upstream addresses as the tap sees them; the status page lists the busiest sources of DNS queries of the last minute, usually the resolver, to pick from`))
}
