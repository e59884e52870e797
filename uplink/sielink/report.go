package sielink

import (
	"context"
	"fmt"
	"math"
	"strings"

	"google.golang.org/protobuf/encoding/protowire"
)

// A sensor's health report travels as a Data message whose Payload has PayloadType LogRecord
// and holds one HealthReport (protobuf, schema below) in Data: the protocol's own slot for a
// sensor's records that are not NMSG. It is not data: the client sends it outside the payload
// accounting (Sync, Unconfirmed), and the server hands it to its Reports, never to the Handler.
// A newer report supersedes an older one, so a report lost with a connection is not resent.
//
//	message HealthReport {              // dnssensor extension, proto2
//	  optional uint64 time_unix_ms = 1;          // the sensor's clock when it was made
//	  optional string sensor = 2;                // the session name it was made for
//	  optional string version = 3;               // the image (SBOM hash) or program version
//	  optional uint64 uptime_seconds = 4;        // of the box
//	  optional bool ok = 5;                      // every check of every daemon holds
//	  optional FailedCheck first_failure = 6;    // absent when ok
//	  optional double records_per_second = 7;    // captured (sensord), since the last report
//	  optional double delivered_per_second = 8;  // delivered by uplinkd, since the last report
//	  optional Loss loss = 9;                    // the spool's loss ledger, cumulative
//	  optional uint32 failing_checks = 10;       // how many checks fail in all
//	}
//	message FailedCheck {
//	  optional string daemon = 1; repeated string path = 2; optional string detail = 3;
//	  optional string fix = 4; optional uint64 since_unix_ms = 5;
//	}
//	message Loss { optional uint64 records = 1; optional uint64 segments = 2; optional uint64 bytes = 3; }
//
// Everything in it is a counter, a check name or an operator's sentence from the health
// contract (internal/health), which holds nothing identifying an end user.

// HealthReport is a sensor's health summary.
type HealthReport struct {
	TimeUnixMs    uint64       `json:"time_unix_ms"`
	Sensor        string       `json:"sensor"`
	Version       string       `json:"version"`
	UptimeSeconds uint64       `json:"uptime_seconds"`
	OK            bool         `json:"ok"`
	FirstFailure  *FailedCheck `json:"first_failure,omitempty"`
	// The rates are absent (nil) when not known yet: the first report after a start has no
	// earlier sample to take a rate from.
	RecordsPerSecond   *float64    `json:"records_per_second"`
	DeliveredPerSecond *float64    `json:"delivered_per_second"`
	Loss               *ReportLoss `json:"loss,omitempty"`
	FailingChecks      uint32      `json:"failing_checks"`
}

// FailedCheck is the first failing check of the box: the one to fix first.
type FailedCheck struct {
	Daemon      string   `json:"daemon"`
	Path        []string `json:"path"` // check names from the daemon's top-level check down
	Detail      string   `json:"detail"`
	Fix         string   `json:"fix"`
	SinceUnixMs uint64   `json:"since_unix_ms"`
}

// ReportLoss is the spool's loss ledger in total.
type ReportLoss struct {
	Records  uint64 `json:"records"`
	Segments uint64 `json:"segments"`
	Bytes    uint64 `json:"bytes"`
}

// Decoding limits of a report: it comes from the network like everything else.
const (
	maxReportString = 1024
	maxReportPath   = 16
)

// AppendHealthReport appends the encoding of r to b, fields in number order, zero values
// omitted.
func AppendHealthReport(b []byte, r *HealthReport) []byte {
	b = appendU64(b, 1, r.TimeUnixMs)
	b = appendStr(b, 2, r.Sensor)
	b = appendStr(b, 3, r.Version)
	b = appendU64(b, 4, r.UptimeSeconds)
	if r.OK {
		b = appendU64(b, 5, 1)
	}
	if f := r.FirstFailure; f != nil {
		var fb []byte
		fb = appendStr(fb, 1, f.Daemon)
		for _, p := range f.Path {
			fb = protowire.AppendTag(fb, 2, protowire.BytesType)
			fb = protowire.AppendString(fb, p)
		}
		fb = appendStr(fb, 3, f.Detail)
		fb = appendStr(fb, 4, f.Fix)
		fb = appendU64(fb, 5, f.SinceUnixMs)
		b = protowire.AppendTag(b, 6, protowire.BytesType)
		b = protowire.AppendBytes(b, fb)
	}
	for _, d := range []struct {
		num protowire.Number
		v   *float64
	}{{7, r.RecordsPerSecond}, {8, r.DeliveredPerSecond}} {
		if d.v != nil {
			b = protowire.AppendTag(b, d.num, protowire.Fixed64Type)
			b = protowire.AppendFixed64(b, math.Float64bits(*d.v))
		}
	}
	if l := r.Loss; l != nil {
		var lb []byte
		lb = appendU64(lb, 1, l.Records)
		lb = appendU64(lb, 2, l.Segments)
		lb = appendU64(lb, 3, l.Bytes)
		b = protowire.AppendTag(b, 9, protowire.BytesType)
		b = protowire.AppendBytes(b, lb)
	}
	b = appendU64(b, 10, uint64(r.FailingChecks))
	return b
}

func appendU64(b []byte, num protowire.Number, v uint64) []byte {
	if v == 0 {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.VarintType)
	return protowire.AppendVarint(b, v)
}

func appendStr(b []byte, num protowire.Number, s string) []byte {
	if s == "" {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendString(b, s)
}

// reportString is a received string: cut to maxReportString octets and made valid UTF-8 (a
// hostile sensor's text ends up in a web page and in JSON).
func reportString(d []byte) string {
	if len(d) > maxReportString {
		d = d[:maxReportString]
	}
	return strings.ToValidUTF8(string(d), "\uFFFD")
}

// DecodeHealthReport decodes b into r, overwriting it. Unknown fields are skipped; a known
// field with the wrong wire type, a rate that is negative or not finite, or a path longer than
// 16 checks is an error wrapping ErrMalformed. Strings are cut at 1024 octets.
func DecodeHealthReport(b []byte, r *HealthReport) error {
	*r = HealthReport{}
	for len(b) > 0 {
		f, rest, err := next(b)
		if err != nil {
			return err
		}
		b = rest
		switch f.num {
		case 1, 4, 5, 10:
			if err := f.want(protowire.VarintType); err != nil {
				return err
			}
		case 2, 3, 6, 9:
			if err := f.want(protowire.BytesType); err != nil {
				return err
			}
		case 7, 8:
			if err := f.want(protowire.Fixed64Type); err != nil {
				return err
			}
		}
		switch f.num {
		case 1:
			r.TimeUnixMs = f.val
		case 2:
			r.Sensor = reportString(f.data)
		case 3:
			r.Version = reportString(f.data)
		case 4:
			r.UptimeSeconds = f.val
		case 5:
			r.OK = f.val != 0
		case 6:
			r.FirstFailure = new(FailedCheck)
			if err := decodeFailedCheck(f.data, r.FirstFailure); err != nil {
				return err
			}
		case 7, 8:
			v := math.Float64frombits(f.val)
			if math.IsNaN(v) || math.IsInf(v, 0) || v < 0 {
				return malformed(fmt.Sprintf("report field %d: rate %v", f.num, v))
			}
			if f.num == 7 {
				r.RecordsPerSecond = &v
			} else {
				r.DeliveredPerSecond = &v
			}
		case 9:
			r.Loss = new(ReportLoss)
			if err := decodeReportLoss(f.data, r.Loss); err != nil {
				return err
			}
		case 10:
			r.FailingChecks = uint32(min(f.val, math.MaxUint32))
		}
	}
	return nil
}

func decodeFailedCheck(b []byte, c *FailedCheck) error {
	for len(b) > 0 {
		f, rest, err := next(b)
		if err != nil {
			return err
		}
		b = rest
		switch f.num {
		case 1, 2, 3, 4:
			if err := f.want(protowire.BytesType); err != nil {
				return err
			}
		case 5:
			if err := f.want(protowire.VarintType); err != nil {
				return err
			}
		}
		switch f.num {
		case 1:
			c.Daemon = reportString(f.data)
		case 2:
			if len(c.Path) >= maxReportPath {
				return malformed("report: check path too long")
			}
			c.Path = append(c.Path, reportString(f.data))
		case 3:
			c.Detail = reportString(f.data)
		case 4:
			c.Fix = reportString(f.data)
		case 5:
			c.SinceUnixMs = f.val
		}
	}
	return nil
}

func decodeReportLoss(b []byte, l *ReportLoss) error {
	for len(b) > 0 {
		f, rest, err := next(b)
		if err != nil {
			return err
		}
		b = rest
		if f.num >= 1 && f.num <= 3 {
			if err := f.want(protowire.VarintType); err != nil {
				return err
			}
		}
		switch f.num {
		case 1:
			l.Records = f.val
		case 2:
			l.Segments = f.val
		case 3:
			l.Bytes = f.val
		}
	}
	return nil
}

// Reporter receives the health reports of all sessions, on the session's goroutine (one call at
// a time per session). sensor is the authenticated session name; the report's own Sensor field
// is only what the sensor says.
type Reporter interface {
	Report(sensor string, r *HealthReport)
}

// SendReport writes r as a LogRecord payload on the configured channel. Unlike Send it is not
// counted as data: Sync, Unconfirmed and the possibly-lost counters are about payloads the
// sender must keep until confirmed, and a report is never kept (the next one supersedes it).
func (c *Conn) SendReport(ctx context.Context, r *HealthReport) error {
	p := Payload{Channel: c.cfg.Channel, PayloadType: PayloadLogRecord, Data: AppendHealthReport(nil, r)}
	m := Message{ProtocolVersion: versionList, Type: TypeData, Payload: &p}
	if MessageSize(&m) > c.cfg.MaxMessageSize {
		return ErrTooLarge
	}
	c.sendMu.Lock()
	defer c.sendMu.Unlock()
	if c.ended {
		return c.closedErr()
	}
	if err := writeMessage(ctx, c.ws, &c.sendBuf, &m); err != nil {
		err = fmt.Errorf("sielink: sending health report: %w", err)
		c.fail(err)
		return err
	}
	c.cnt.reportsSent.Add(1)
	return nil
}

// report hands a received health report to the server's Reports.
func (s *session) report(p *Payload) {
	var r HealthReport
	if err := DecodeHealthReport(p.Data, &r); err != nil {
		s.srv.cnt.malformed.Add(1)
		s.invalid("health report: %v", err)
		return
	}
	s.sc.mu.Lock()
	s.sc.s.Reports++
	s.sc.mu.Unlock()
	if s.srv.Reports != nil {
		s.srv.Reports.Report(s.sensor, &r)
	}
}
