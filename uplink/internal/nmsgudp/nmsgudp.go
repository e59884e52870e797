// Package nmsgudp sends NMSG payloads as UDP datagrams the way classic nmsg relays and
// `nmsgtool -l` expect: containers no larger than the MTU (1280 by default), sequence numbers with a
// random sequence id, fragmentation of larger containers, optional zlib, and an optional rate limit.
//
// UDP has no delivery guarantee, so a send error never stops the sender: an ICMP port unreachable
// from a collector that is restarting surfaces as ECONNREFUSED on a later send, which is counted
// and the datagram counted as lost, exactly like a datagram dropped on the way.
package nmsgudp

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/sie-europe/dnssensor/nmsg"
)

// Config configures a Sender.
type Config struct {
	Addr string                                       // host:port of the receiver
	MTU  int                                          // UDP payload bound; 0 = 1280, use 8192 on jumbo-frame LANs
	Zlib bool                                         // compress containers
	Rate int                                          // datagrams per second at most; 0 = unlimited
	Dial func(network, addr string) (net.Conn, error) // seam for tests; nil = net.Dial
}

// Stats are cumulative counters, safe to read concurrently.
type Stats struct {
	Payloads  atomic.Uint64
	Datagrams atomic.Uint64
	Bytes     atomic.Uint64
	Refused   atomic.Uint64 // ECONNREFUSED: the receiver's port was closed (ICMP unreachable)
	SendErrs  atomic.Uint64 // other send errors (each loses one datagram)
	BadInput  atomic.Uint64 // segment bytes that were not NMSG containers (the rest is still sent)
}

// Sender owns one UDP socket. Not safe for concurrent Send calls.
type Sender struct {
	cfg   Config
	conn  net.Conn
	w     *nmsg.DatagramWriter
	ctx   context.Context
	next  time.Time
	Stats Stats
}

// New opens the socket.
func New(cfg Config) (*Sender, error) {
	dial := cfg.Dial
	if dial == nil {
		dial = net.Dial
	}
	c, err := dial("udp", cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("nmsg/udp %s: %w", cfg.Addr, err)
	}
	s := &Sender{cfg: cfg, conn: c, ctx: context.Background()}
	s.w, err = nmsg.NewDatagramWriter(s.send, nmsg.DatagramOptions{MTU: cfg.MTU, Zlib: cfg.Zlib, CRC: true})
	if err != nil {
		c.Close()
		return nil, err
	}
	return s, nil
}

// send is the DatagramWriter's output: pace, write, count. It returns only ctx errors, so the
// writer's container is dropped only when the caller is shutting down.
func (s *Sender) send(d []byte) error {
	if s.cfg.Rate > 0 {
		now := time.Now()
		if s.next.After(now) {
			t := time.NewTimer(s.next.Sub(now))
			select {
			case <-s.ctx.Done():
				t.Stop()
				return s.ctx.Err()
			case <-t.C:
			}
		} else {
			s.next = now
		}
		s.next = s.next.Add(time.Second / time.Duration(s.cfg.Rate))
	}
	if _, err := s.conn.Write(d); err != nil {
		if errors.Is(err, syscall.ECONNREFUSED) {
			s.Stats.Refused.Add(1)
		} else {
			s.Stats.SendErrs.Add(1)
		}
		return nil
	}
	s.Stats.Datagrams.Add(1)
	s.Stats.Bytes.Add(uint64(len(d)))
	return nil
}

// SendContainers re-packs every payload of the NMSG containers in data (a spool segment, or a
// file) into datagrams and sends them, flushing at the end. Payloads whose containers do not
// parse are skipped and counted; a cancelled ctx stops it with ctx's error.
func (s *Sender) SendContainers(ctx context.Context, data []byte) error {
	s.ctx = ctx
	defer func() { s.ctx = context.Background() }()
	rd := nmsg.NewReader(bytes.NewReader(data), nmsg.ReaderOptions{})
	for {
		p, err := rd.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			if errors.Is(err, nmsg.ErrMalformed) || errors.Is(err, nmsg.ErrBadZlib) {
				s.Stats.BadInput.Add(1)
				continue
			}
			s.Stats.BadInput.Add(1)
			break // framing is lost: the rest of the segment cannot be read
		}
		if err := s.w.Write(p); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return err
		}
		s.Stats.Payloads.Add(1)
	}
	if err := s.w.Flush(); err != nil && ctx.Err() != nil {
		return ctx.Err()
	}
	return ctx.Err()
}

// Close closes the socket.
func (s *Sender) Close() error { return s.conn.Close() }
