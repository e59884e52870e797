// Package output writes base:dnsqr records as NMSG containers or as nmsgtool-style JSON lines.
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

func (o *NMSG) Write(r *dnsqr.Record) error {
	o.buf = dnsqr.AppendProto(o.buf[:0], r)
	t := r.Time()
	o.p = nmsg.Payload{
		Vid: dnsqr.VendorBase, Msgtype: dnsqr.MsgtypeDnsQR,
		TimeSec: t / 1e9, TimeNsec: uint32(t % 1e9), Data: o.buf,
		Source: o.env.Source, HasSource: o.env.HasSource,
		Operator: o.env.Operator, HasOperator: o.env.HasOperator,
		Group: o.env.Group, HasGroup: o.env.HasGroup,
	}
	return o.w.Write(&o.p)
}

// Close writes the last container.
func (o *NMSG) Close() error { return o.w.Close() }

// Stats returns the container writer's counters.
func (o *NMSG) Stats() nmsg.WriterStats { return o.w.Stats() }

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
