// Package output writes base:dnsqr records as NMSG containers, as nmsgtool-style JSON lines, or as
// NMSG payloads to a payload sink (the spool, which takes payloads only).
package output

import (
	"bufio"
	"io"

	"github.com/sie-europe/dnssensor/nmsg"
	"github.com/sie-europe/dnssensor/nmsg/dnsqr"
)

// Writer is a record sink. Write copies what it needs before returning; Close flushes buffered
// output but does not close the underlying io.Writer.
type Writer interface {
	Write(r *dnsqr.Record) error
	Close() error
}

// Envelope is the NMSG payload header fields a sensor sets on every record.
type Envelope struct {
	Source, Operator, Group          uint32
	HasSource, HasOperator, HasGroup bool
}

// NMSG writes NMSG file containers (1 MiB, payload CRCs, optional zlib) as the C file output does.
type NMSG struct {
	w   *nmsg.FileWriter
	env Envelope
	buf []byte
	p   nmsg.Payload
}

// NewNMSG writes containers to w.
func NewNMSG(w io.Writer, env Envelope, zlib bool) (*NMSG, error) {
	fw, err := nmsg.NewFileWriter(w, nmsg.FileOptions{Zlib: zlib, CRC: true})
	if err != nil {
		return nil, err
	}
	return &NMSG{w: fw, env: env}, nil
}

// payload encodes r into buf (reused) and sets p to the base:dnsqr payload carrying it under env.
func payload(p *nmsg.Payload, buf []byte, env Envelope, r *dnsqr.Record) []byte {
	buf = dnsqr.Payload(p, buf, r)
	p.Source, p.HasSource = env.Source, env.HasSource
	p.Operator, p.HasOperator = env.Operator, env.HasOperator
	p.Group, p.HasGroup = env.Group, env.HasGroup
	return buf
}

func (o *NMSG) Write(r *dnsqr.Record) error {
	o.buf = payload(&o.p, o.buf, o.env, r)
	return o.w.Write(&o.p)
}

// Close writes the last container.
func (o *NMSG) Close() error { return o.w.Close() }

// Stats returns the container writer's counters.
func (o *NMSG) Stats() nmsg.WriterStats { return o.w.Stats() }

// PayloadSink takes NMSG payloads, copying each before WritePayload returns; *spool.Producer is
// one. Close ends the sink (the spool's seals the last segment and moves the RAM tier to disk).
type PayloadSink interface {
	WritePayload(p *nmsg.Payload) error
	Close() error
}

// Payloads is the record adapter of a payload sink: the spool carries any NMSG payload and knows
// nothing of base:dnsqr, so the sensor encodes its records here, as the NMSG writer does.
type Payloads struct {
	sink PayloadSink
	env  Envelope
	buf  []byte
	p    nmsg.Payload
}

// NewPayloads writes records to sink under env.
func NewPayloads(sink PayloadSink, env Envelope) *Payloads {
	return &Payloads{sink: sink, env: env}
}

func (o *Payloads) Write(r *dnsqr.Record) error {
	o.buf = payload(&o.p, o.buf, o.env, r)
	return o.sink.WritePayload(&o.p)
}

// Close closes the sink.
func (o *Payloads) Close() error { return o.sink.Close() }

// JSON writes one nmsgtool -J line per record.
type JSON struct {
	w   *bufio.Writer
	env Envelope
	buf []byte
}

// NewJSON writes lines to w.
func NewJSON(w io.Writer, env Envelope) *JSON {
	return &JSON{w: bufio.NewWriterSize(w, 256<<10), env: env}
}

func (o *JSON) Write(r *dnsqr.Record) error {
	o.buf = dnsqr.AppendJSON(o.buf[:0], dnsqr.PayloadInfo{Time: r.Time(), Source: o.env.Source, HasSource: o.env.HasSource}, r)
	o.buf = append(o.buf, '\n')
	_, err := o.w.Write(o.buf)
	return err
}

// Close flushes buffered lines.
func (o *JSON) Close() error { return o.w.Flush() }

// Multi sends every record to each writer; the first error is returned after all have been tried.
type Multi []Writer

func (m Multi) Write(r *dnsqr.Record) error {
	var first error
	for _, w := range m {
		if err := w.Write(r); err != nil && first == nil {
			first = err
		}
	}
	return first
}

func (m Multi) Close() error {
	var first error
	for _, w := range m {
		if err := w.Close(); err != nil && first == nil {
			first = err
		}
	}
	return first
}
