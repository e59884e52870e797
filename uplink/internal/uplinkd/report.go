package uplinkd

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"github.com/sie-europe/dnssensor/internal/health"
	"github.com/sie-europe/dnssensor/uplink/sielink"
)

// The health summary (sielink.HealthReport) tells the collector's fleet view how this box is:
// the first failing check of its health tree (sensord's checks first, being upstream, then
// uplinkd's), the records/s captured and delivered, the spool's loss ledger, version and uptime.
// It is made from the health contract only (check names, operator sentences, counters), which
// holds nothing identifying an end user; statusd's page is not read (it sits behind the device
// password and adds nothing the daemons do not serve themselves).

const (
	// DefaultReportInterval is Config.ReportInterval's default.
	DefaultReportInterval = 60 * time.Second
	// MinReportInterval bounds how often a summary may be configured to go out.
	MinReportInterval = time.Second
	// DefaultSensordHealth is Config.SensordHealth's default.
	DefaultSensordHealth = "/run/sensord/health.sock"
	// reportCheckEvery is how often the tree is looked at for a change of its first failure,
	// which is sent at once rather than at the next interval.
	reportCheckEvery = 5 * time.Second
	// reportAskTimeout bounds a question to sensord's socket.
	reportAskTimeout = 2 * time.Second
	// sbomFile is gokrazy's image description; its hash names the image (statusd shows it too).
	sbomFile = "/etc/gokrazy/sbom.json"
)

// reporter makes summaries. Only the report loop uses it.
type reporter struct {
	s        *Supervisor
	now      func() time.Time
	version  string
	uptime   func() uint64
	sensord  string // health socket; "none": no sensord on this host
	interval time.Duration

	// The counters at the last summary sent, for the rates.
	lastAt                   time.Time
	lastCaptured, lastAcked  uint64
	haveCaptured, haveAcked  bool
	capturedNow, ackedNow    uint64
	capturedKnown, ackedSeen bool
}

func newReporter(s *Supervisor) *reporter {
	start := time.Now()
	return &reporter{s: s, now: time.Now, version: boxVersion(sbomFile), sensord: s.cfg.SensordHealth,
		interval: s.cfg.ReportInterval.Duration,
		uptime: func() uint64 {
			if up, ok := boxUptime(); ok {
				return up
			}
			return uint64(time.Since(start).Seconds())
		}}
}

// boxVersion names what runs: gokrazy's SBOM hash of the image, else this program's build.
func boxVersion(sbom string) string {
	if b, err := os.ReadFile(sbom); err == nil {
		var d struct {
			Hash string `json:"sbom_hash"`
		}
		if json.Unmarshal(b, &d) == nil && d.Hash != "" {
			return "image " + d.Hash
		}
	}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	v := bi.Main.Version
	for _, st := range bi.Settings {
		if st.Key == "vcs.revision" && len(st.Value) >= 12 {
			v = st.Value[:12]
		}
	}
	return strings.TrimSpace(v + " " + bi.GoVersion)
}

// boxUptime reads the kernel's uptime.
func boxUptime() (uint64, bool) {
	b, err := os.ReadFile("/proc/uptime")
	if err != nil {
		return 0, false
	}
	f, _, _ := strings.Cut(string(b), " ")
	v, err := strconv.ParseFloat(f, 64)
	if err != nil || v < 0 {
		return 0, false
	}
	return uint64(v), true
}

// failures walks a report: the first failing check (as marked) and how many fail.
func failures(daemon string, r *health.Report) (*sielink.FailedCheck, uint32) {
	var first *sielink.FailedCheck
	var n uint32
	var walk func(cs []*health.Check, path []string)
	walk = func(cs []*health.Check, path []string) {
		for _, c := range cs {
			p := append(path[:len(path):len(path)], c.Name)
			if !c.OK {
				n++
				if c.FirstFailure && first == nil {
					first = &sielink.FailedCheck{Daemon: daemon, Path: p, Detail: health.Scrub(c.Detail), Fix: health.Scrub(c.Fix),
						SinceUnixMs: uint64(max(0, c.Since.UnixMilli()))}
				}
			}
			walk(c.Children, p)
		}
	}
	walk(r.Checks, nil)
	return first, n
}

// make builds the summary now, asking sensord's socket (bounded by ctx).
func (rp *reporter) make(ctx context.Context) *sielink.HealthReport {
	now := rp.now()
	r := &sielink.HealthReport{TimeUnixMs: uint64(now.UnixMilli()), Version: rp.version, UptimeSeconds: rp.uptime()}
	var firsts []*sielink.FailedCheck
	rp.capturedKnown = false
	if rp.sensord != "none" {
		actx, cancel := context.WithTimeout(ctx, reportAskTimeout)
		rep, err := health.Get(actx, rp.sensord)
		if err != nil {
			r.FailingChecks++
			firsts = append(firsts, &sielink.FailedCheck{Daemon: "sensord", Path: []string{"health socket"},
				Detail: health.Scrub("sensord does not answer: " + err.Error()),
				Fix:    "sensord is not running or not configured: see the status page and sensord's log", SinceUnixMs: uint64(now.UnixMilli())})
		} else {
			f, n := failures("sensord", rep)
			r.FailingChecks += n
			firsts = append(firsts, f)
			if doc, err := health.GetMetrics(actx, rp.sensord); err == nil {
				if v, ok := doc.Value("dnssensor_sensord_records_total", nil); ok {
					rp.capturedNow, rp.capturedKnown = uint64(v), true
				}
			}
		}
		cancel()
	}
	f, n := failures("uplinkd", rp.s.tree.Evaluate())
	r.FailingChecks += n
	firsts = append(firsts, f)
	for _, f := range firsts {
		if f != nil {
			r.FirstFailure = f
			break
		}
	}
	r.OK = r.FailingChecks == 0
	rp.ackedNow, rp.ackedSeen = rp.s.cons.Stats().Acked.Records, true
	if !rp.lastAt.IsZero() {
		if el := now.Sub(rp.lastAt).Seconds(); el > 0 {
			// A counter that went down was reset by a restart: no rate this time.
			if rp.capturedKnown && rp.haveCaptured && rp.capturedNow >= rp.lastCaptured {
				v := float64(rp.capturedNow-rp.lastCaptured) / el
				r.RecordsPerSecond = &v
			}
			if rp.haveAcked && rp.ackedNow >= rp.lastAcked {
				v := float64(rp.ackedNow-rp.lastAcked) / el
				r.DeliveredPerSecond = &v
			}
		}
	}
	if l, err := rp.s.cons.Loss(); err == nil {
		t := l.Total()
		r.Loss = &sielink.ReportLoss{Records: t.Records, Segments: t.Segments, Bytes: t.Bytes}
	}
	return r
}

// sent makes the counters of the summary just sent the base of the next rates.
func (rp *reporter) sent(at time.Time) {
	rp.lastAt = at
	rp.lastCaptured, rp.haveCaptured = rp.capturedNow, rp.capturedKnown
	rp.lastAcked, rp.haveAcked = rp.ackedNow, rp.ackedSeen
}

// stateKey identifies what the fleet view shows as the box's state: a change is sent at once.
func stateKey(r *sielink.HealthReport) string {
	if f := r.FirstFailure; f != nil {
		return f.Daemon + "/" + strings.Join(f.Path, "/")
	}
	return fmt.Sprint(r.OK)
}

// reportLoop sends a summary to every sielink destination that takes them: every interval, at
// once when the first failing check changes, and on each new connection (a collector that just
// restarted learns the state without waiting). A summary is not data: one that cannot be sent is
// not kept, the next one supersedes it.
func (s *Supervisor) reportLoop(ctx context.Context, rp *reporter) error {
	var dests []*sielinkDest
	for _, d := range s.dests {
		if sd, ok := d.(*sielinkDest); ok && (sd.cfg.HealthReports == nil || *sd.cfg.HealthReports) {
			dests = append(dests, sd)
		}
	}
	if len(dests) == 0 {
		return nil
	}
	sentOn := make(map[*sielinkDest]*sielink.Conn)
	var lastKey string
	var lastSent time.Time
	t := time.NewTicker(min(reportCheckEvery, rp.interval))
	defer t.Stop()
	for {
		r := rp.make(ctx)
		now := rp.now()
		key := stateKey(r)
		due := lastSent.IsZero() || now.Sub(lastSent) >= rp.interval || key != lastKey
		any := false
		for _, d := range dests {
			// Only a connection that is up now: a summary waits for none.
			cctx, cancel := context.WithCancel(ctx)
			cancel()
			c, err := d.client.Conn(cctx)
			if err != nil || (!due && sentOn[d] == c) {
				continue
			}
			rd := *r
			rd.Sensor = d.cfg.Sensor
			sctx, scancel := context.WithTimeout(ctx, 30*time.Second)
			err = c.SendReport(sctx, &rd)
			scancel()
			if err != nil {
				if ctx.Err() == nil {
					s.logf("uplinkd: %s: health summary: %v", d.cfg.Name, err)
				}
				continue
			}
			sentOn[d] = c
			any = true
		}
		if any {
			rp.sent(now)
			if due {
				lastSent, lastKey = now, key
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}
