package collector

import (
	"bytes"
	"fmt"
	"io"

	"github.com/sie-europe/dnssensor/nmsg"
	"github.com/sie-europe/dnssensor/uplink/sielink"
	"github.com/sie-europe/dnssensor/uplink/spool"
)

// SpoolForwarder is the Forward handler that feeds the collector's own spool, which an uplinkd on
// the collector host ships on to SIE Europe: the same spool and supervisor as on the appliance,
// so the collector's onward link gets the same crash safety and loss accounting.
type SpoolForwarder struct {
	P *spool.Producer
}

// Deliver spools every payload of the container as it arrived (sensor's envelope and all). It fails
// only when the spool refuses data, which ends the sensor's session so the sensor resends.
func (f SpoolForwarder) Deliver(d *sielink.Delivery) error {
	rd := nmsg.NewReader(bytes.NewReader(d.Payload.Data), nmsg.ReaderOptions{})
	for {
		p, err := rd.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("forward: container from %s: %v", d.Sensor, err)
		}
		if err := f.P.WritePayload(p); err != nil {
			return fmt.Errorf("forward: %v", err)
		}
	}
}

// Flush seals the spool's current segment: a payload the spool took is in its producer's memory
// until then, and would die with the collector. The stream's forward consumer flushes before it
// acknowledges, so it acknowledges only what a restart could not lose.
func (f SpoolForwarder) Flush() error { return f.P.Flush() }

// flusher is a Forward handler that holds what it took in memory until Flush.
type flusher interface{ Flush() error }
