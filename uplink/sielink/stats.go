package sielink

// counters is shared by all connections of one Client.
type counters struct {
	dials, connects, reconnects             counter
	payloadsSent, bytesSent                 counter
	heartbeatsSent, heartbeatsReceived      counter
	alerts, malformed, oversize, unexpected counter
	syncs, reportsSent                      counter
	possiblyLostPayloads, possiblyLostBytes counter
}

// Stats are a client's counters since it was created.
type Stats struct {
	Dials              uint64 `json:"dials"`               // connection attempts
	Connects           uint64 `json:"connects"`            // attempts that reached Up
	Reconnects         uint64 `json:"reconnects"`          // Connects after the first
	PayloadsSent       uint64 `json:"payloads_sent"`       // Data messages written
	BytesSent          uint64 `json:"bytes_sent"`          // container octets in them
	HeartbeatsSent     uint64 `json:"heartbeats_sent"`     //
	HeartbeatsReceived uint64 `json:"heartbeats_received"` //
	Alerts             uint64 `json:"alerts"`              // Alert messages received, any level
	Malformed          uint64 `json:"malformed"`           // received messages that did not decode
	Oversize           uint64 `json:"oversize"`            // received messages above the cap, discarded
	Unexpected         uint64 `json:"unexpected"`          // Data or unknown message types received
	Syncs              uint64 `json:"syncs"`               // successful Syncs (pongs)
	ReportsSent        uint64 `json:"reports_sent"`        // health reports written (SendReport)
	// PossiblyLost counts payloads written but not confirmed by a Sync
	// when their connection ended: the upper bound of what drops lost.
	PossiblyLostPayloads uint64 `json:"possibly_lost_payloads"`
	PossiblyLostBytes    uint64 `json:"possibly_lost_bytes"`
}

func (c *counters) snapshot() Stats {
	return Stats{
		Dials:                c.dials.Load(),
		Connects:             c.connects.Load(),
		Reconnects:           c.reconnects.Load(),
		PayloadsSent:         c.payloadsSent.Load(),
		BytesSent:            c.bytesSent.Load(),
		HeartbeatsSent:       c.heartbeatsSent.Load(),
		HeartbeatsReceived:   c.heartbeatsReceived.Load(),
		Alerts:               c.alerts.Load(),
		Malformed:            c.malformed.Load(),
		Oversize:             c.oversize.Load(),
		Unexpected:           c.unexpected.Load(),
		Syncs:                c.syncs.Load(),
		ReportsSent:          c.reportsSent.Load(),
		PossiblyLostPayloads: c.possiblyLostPayloads.Load(),
		PossiblyLostBytes:    c.possiblyLostBytes.Load(),
	}
}

// Stats returns the connection's counters (shared with its Client, if
// it belongs to one).
func (c *Conn) Stats() Stats { return c.cnt.snapshot() }
