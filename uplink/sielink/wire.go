package sielink

import (
	"context"
	"errors"
	"io"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"

	"github.com/sie-europe/dnssensor/internal/logger"
)

const (
	// DefaultHeartbeat is the reference implementation's interval.
	DefaultHeartbeat = 30 * time.Second

	// DefaultMaxMessageSize caps a received message. A payload carries
	// one NMSG container of at most 1 MiB (nmsg.MaxContainerSize); twice
	// that leaves room for peers with larger containers without letting
	// one message pin much memory.
	DefaultMaxMessageSize = 2 << 20

	// DefaultHandshakeTimeout bounds the wait for the peer's first
	// message, whose heartbeat announcement is not known yet.
	DefaultHandshakeTimeout = 30 * time.Second

	// DefaultChannel is SIE channel 202, raw dnsqr (203 is dnstap).
	DefaultChannel = 202

	// logInterval is the least time between two log lines about the
	// same kind of bad input.
	logInterval = 10 * time.Second
)

var (
	// ErrHeartbeatTimeout ends a connection whose peer sent nothing
	// for 1.5 times the heartbeat interval it announced.
	ErrHeartbeatTimeout = errors.New("sielink: peer heartbeat timed out")
	// ErrShutdown ends a connection that the peer shut down; the
	// client answered Finished.
	ErrShutdown = errors.New("sielink: peer requested shutdown")
	// ErrFinished ends a connection whose peer sent Finished.
	ErrFinished = errors.New("sielink: peer finished")
	// ErrClosed is returned by Send after the connection ended.
	ErrClosed = errors.New("sielink: connection closed")
	// ErrTooLarge is returned by Send for a container that would exceed
	// the message size cap. Sending it would only make the peer drop
	// it (or the connection); the caller must drop and count it.
	ErrTooLarge = errors.New("sielink: container too large for one message")
	// ErrNotContainer is returned by Send for data that does not start
	// with an NMSG container header.
	ErrNotContainer = errors.New("sielink: not an NMSG container")
	// errOversize marks a received message above the cap; it was
	// discarded without buffering and the connection continues.
	errOversize = errors.New("sielink: received message above size cap")
	// errTextMessage marks a text WebSocket message, which sielink
	// never uses.
	errTextMessage = errors.New("sielink: received a text message")
)

// Logf is the logging function type (log.Printf fits).
type Logf = logger.Logf

// counter is a monotonic counter that is safe to bump from any
// goroutine.
type counter = atomic.Uint64

// readMessage reads one WebSocket message into buf (grown up to limit+1)
// and returns the filled slice and the possibly grown buffer. Messages
// above limit are drained without buffering and return errOversize; text
// messages are drained and return errTextMessage. Both leave the
// connection usable. Any other error ends the connection.
func readMessage(ctx context.Context, ws *websocket.Conn, buf []byte, limit int) (msg, newBuf []byte, err error) {
	typ, r, err := ws.Reader(ctx)
	if err != nil {
		return nil, buf, err
	}
	if typ != websocket.MessageBinary {
		if _, err := io.Copy(io.Discard, r); err != nil {
			return nil, buf, err
		}
		return nil, buf, errTextMessage
	}
	buf = buf[:0]
	for {
		if len(buf) == cap(buf) {
			if len(buf) > limit {
				if _, err := io.Copy(io.Discard, r); err != nil {
					return nil, buf, err
				}
				return nil, buf, errOversize
			}
			// Grow by doubling, but never beyond max+1: one octet past
			// the cap is enough to know the message is too large.
			n := min(max(2*cap(buf), 4096), limit+1)
			nb := make([]byte, len(buf), n)
			copy(nb, buf)
			buf = nb
		}
		n, err := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err == io.EOF {
			if len(buf) > limit {
				return nil, buf, errOversize
			}
			return buf, buf, nil
		}
		if err != nil {
			return nil, buf, err
		}
	}
}

// writeMessage encodes m into *buf and writes it as one binary message.
func writeMessage(ctx context.Context, ws *websocket.Conn, buf *[]byte, m *Message) error {
	*buf = AppendMessage((*buf)[:0], m)
	return ws.Write(ctx, websocket.MessageBinary, *buf)
}

func heartbeatMillis(d time.Duration) uint32 {
	ms := d.Milliseconds()
	switch {
	case ms <= 0:
		return 0
	case ms > 1<<32-1:
		return 1<<32 - 1
	}
	return uint32(ms)
}

// readDeadline is how long to wait for the next message from a peer
// that announced heartbeat ms: 1.5 times, as the reference does.
func readDeadline(ms uint32) time.Duration {
	d := time.Duration(ms) * time.Millisecond
	return d + d/2
}

func versionSupported(vs []uint32) bool {
	for _, v := range vs {
		if v == ProtocolVersion {
			return true
		}
	}
	return false
}

func fatalAlert(msg string) *Message {
	return &Message{
		ProtocolVersion: []uint32{ProtocolVersion},
		Type:            TypeAlert,
		Alert:           &Alert{Level: AlertFatalError, Message: msg},
	}
}
