package uplinkd

import (
	"github.com/sie-europe/dnssensor/nmsg"
	"github.com/sie-europe/dnssensor/nmsg/dnsqr"
	"github.com/sie-europe/dnssensor/uplink/spool"
)

// recordWriter spools records as base:dnsqr payloads, the way sensord's payload adapter does.
type recordWriter struct {
	p   *spool.Producer
	pl  nmsg.Payload
	buf []byte
}

func newRecordWriter(p *spool.Producer) *recordWriter { return &recordWriter{p: p} }

func (w *recordWriter) Write(r *dnsqr.Record) error {
	w.buf = dnsqr.Payload(&w.pl, w.buf, r)
	return w.p.WritePayload(&w.pl)
}

func (w *recordWriter) Close() error { return w.p.Close() }
