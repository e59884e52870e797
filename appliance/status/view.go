package status

import (
	"context"
	"time"
)

// addViews adds the sections beside the chain: the sampled counters, the identity, the recent
// log lines and statusd's own cost. Each is optional; the page renders without any of them.
func (s *Server) addViews(ctx context.Context, p *Page) {
	if s.Sampler != nil {
		p.Counters = s.Sampler.Counters(p.Time)
	}
	to := s.Timeout
	if to == 0 {
		to = 2 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, to)
	defer cancel()
	if s.Ident != nil {
		p.Identity = s.Ident.Read(ctx)
	}
	if s.LogLines > 0 {
		p.Logs = collectLogs(ctx, p.Daemons, s.LogLines)
	}
	if proc, err := readProcess(); err == nil {
		p.Process = proc
	}
}
