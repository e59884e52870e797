package dnstap

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
)

// Server accepts any number of dnstap writers on a socket and sends their resolver-side events to
// one channel. Each connection has its own goroutine, reader and decoder; a writer that breaks
// the protocol loses its connection, nobody else's.
type Server struct {
	Resolvers []netip.Prefix // nil: every resolver-side message
	// Allow lists the addresses TCP writers may connect from; nil takes any (a loopback or
	// unix socket, where the host or the socket's directory is the access control). A writer
	// outside it is closed before the handshake and counted, so nobody on the network can
	// inject records.
	Allow    []netip.Prefix
	MaxFrame int
	Stats    *Stats
	Logf     func(format string, args ...any)

	// Out receives batches of events; each batch and its messages belong to the receiver. A
	// send never blocks: when the receiver is behind, the batch is dropped and counted, so a
	// resolver is never slowed down by its sensor.
	Out chan<- []Event
}

// Listen opens a socket for "unix:/path" (a stale socket file is replaced) or "tcp:host:port".
func Listen(spec string) (net.Listener, error) {
	network, addr, ok := strings.Cut(spec, ":")
	if !ok || addr == "" {
		return nil, fmt.Errorf("%q: want unix:/path/to/socket or tcp:host:port", spec)
	}
	switch network {
	case "unix":
		if fi, err := os.Lstat(addr); err == nil && fi.Mode()&os.ModeSocket != 0 {
			os.Remove(addr)
		}
		ln, err := net.Listen("unix", addr)
		if err != nil {
			return nil, err
		}
		// The resolver usually runs as another user; the socket's directory is the access control.
		os.Chmod(addr, 0o666)
		return ln, nil
	case "tcp":
		return net.Listen("tcp", addr)
	}
	return nil, fmt.Errorf("%q: unknown socket type %q (unix or tcp)", spec, network)
}

// Serve accepts connections until ctx ends, then closes the listener and every connection and
// returns after their goroutines have finished.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	var wg sync.WaitGroup
	var mu sync.Mutex
	conns := map[net.Conn]struct{}{}
	stop := context.AfterFunc(ctx, func() {
		ln.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
	})
	defer stop()
	var err error
	for {
		c, aerr := ln.Accept()
		if aerr != nil {
			if ctx.Err() == nil {
				err = fmt.Errorf("accepting dnstap writers: %w", aerr)
			}
			break
		}
		if !s.allowed(c.RemoteAddr()) {
			if s.Stats.Refused.Add(1) <= 10 {
				s.logf("dnstap: writer %v refused: not in -dnstap-allow", c.RemoteAddr())
			}
			c.Close()
			continue
		}
		s.Stats.Conns.Add(1)
		mu.Lock()
		conns[c] = struct{}{}
		mu.Unlock()
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.serveConn(c); err != nil && ctx.Err() == nil {
				s.Stats.ConnErrors.Add(1)
				s.logf("dnstap: writer %v: %v", c.RemoteAddr(), err)
			}
			mu.Lock()
			delete(conns, c)
			mu.Unlock()
			c.Close()
		}()
	}
	ln.Close()
	wg.Wait()
	return err
}

func (s *Server) allowed(a net.Addr) bool {
	if s.Allow == nil {
		return true
	}
	ta, ok := a.(*net.TCPAddr)
	if !ok {
		return true // a unix socket: its directory's permissions decide
	}
	ap := ta.AddrPort().Addr().Unmap()
	for _, p := range s.Allow {
		if p.Contains(ap) {
			return true
		}
	}
	return false
}

func (s *Server) serveConn(c net.Conn) error {
	r := NewBidirectionalReader(c, s.MaxFrame)
	d := NewDecoder(s.Resolvers, s.Stats)
	var oversized uint64
	var evs []Event
	for {
		frame, err := r.Next()
		if r.Oversized != oversized {
			s.Stats.Oversized.Add(r.Oversized - oversized)
			oversized = r.Oversized
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		evs = d.Decode(frame, evs[:0])
		if len(evs) == 0 {
			continue
		}
		batch := make([]Event, len(evs))
		for i, e := range evs {
			e.Msg = append([]byte(nil), e.Msg...) // frame is reused by the next read
			batch[i] = e
		}
		select {
		case s.Out <- batch:
		default:
			s.Stats.QueueDropped.Add(uint64(len(batch)))
		}
	}
}

func (s *Server) logf(format string, args ...any) {
	if s.Logf != nil {
		s.Logf(format, args...)
	}
}

// ReadFile decodes a recorded (unidirectional) dnstap file and calls h for each event, in file
// order. A file cut inside a frame returns an error after every event before the damage.
func ReadFile(path string, resolvers []netip.Prefix, stats *Stats, h func(Event)) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	r := NewReader(f, 0)
	d := NewDecoder(resolvers, stats)
	defer func() { stats.Oversized.Add(r.Oversized) }()
	var evs []Event
	for {
		frame, err := r.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			if errors.Is(err, io.ErrUnexpectedEOF) {
				return fmt.Errorf("file truncated after %d frames: %w", r.Frames, err)
			}
			return err
		}
		evs = d.Decode(frame, evs[:0])
		for _, e := range evs {
			h(e)
		}
	}
}

// String is the dnstap part of the stats line.
func (s *Stats) String() string {
	return fmt.Sprintf("dnstap_frames=%d dnstap_resolver_queries=%d dnstap_resolver_responses=%d dnstap_port_repaired=%d dnstap_events=%d dnstap_client_dropped=%d dnstap_other=%d dnstap_not_resolver=%d dnstap_malformed=%d dnstap_oversized=%d dnstap_queue_dropped=%d dnstap_conns=%d dnstap_conn_errors=%d dnstap_refused=%d",
		s.Frames.Load(), s.Queries.Load(), s.Responses.Load(), s.PortRepaired.Load(), s.Events.Load(), s.Client.Load(), s.Other.Load(), s.NotResolver.Load(), s.Malformed.Load(),
		s.Oversized.Load(), s.QueueDropped.Load(), s.Conns.Load(), s.ConnErrors.Load(), s.Refused.Load())
}
