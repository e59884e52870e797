package sielink

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"

	"github.com/sie-europe/dnssensor/sensor/nmsg"
)

// Delivery is one payload received from a sensor.
type Delivery struct {
	Sensor string // from the API key, equal to the session path's name
	Remote string // the peer's address
	// Payload.Data aliases the session's read buffer: it is valid only
	// until Deliver returns. It has been checked to be exactly one
	// whole, decodable NMSG container.
	Payload *Payload
	Records int // NMSG payloads in the container
}

// Handler receives the payloads of all sessions. Deliver is called on
// the session's goroutine, one call at a time per session and
// concurrently across sessions; the session reads nothing while it
// runs, so a pong (Conn.Sync at the client) implies that Deliver has
// returned for every earlier payload. A Deliver error ends the session
// with a FatalError alert: the client then holds the payload as
// unconfirmed and sends it again later.
type Handler interface {
	Deliver(d *Delivery) error
}

// HandlerFunc adapts a function to Handler.
type HandlerFunc func(d *Delivery) error

func (f HandlerFunc) Deliver(d *Delivery) error { return f(d) }

// Server accepts sielink sessions at /session/<name> (mount it there or
// at the root). Set the exported fields before serving; they are not
// changed afterwards.
type Server struct {
	// Keys maps API keys to sensor names. A session is accepted only
	// when X-API-Key names the sensor of the path.
	Keys *Keys
	// Handler receives the payloads.
	Handler Handler
	// Heartbeat is our interval; default 30 s.
	Heartbeat time.Duration
	// HandshakeTimeout bounds the wait for the client's first
	// message; default 30 s.
	HandshakeTimeout time.Duration
	// MaxMessageSize caps received messages; default 2 MiB. Larger
	// messages are discarded while being read and counted.
	MaxMessageSize int
	// Logf receives rate-limited reports; nil discards.
	Logf Logf

	once     sync.Once
	mu       sync.Mutex
	sessions map[*session]struct{}
	sensors  map[string]*sensorCounters
	closing  bool
	wg       sync.WaitGroup
	cnt      serverCounters
	authLog  rateLog
	badLog   rateLog
}

type serverCounters struct {
	accepted, rejectedAuth, rejectedOther, handshakeFailed counter
	heartbeatTimeouts, shutdownsSent, finishedReceived     counter
	malformed, oversize, invalidContainers, unsupported    counter
	handlerErrors                                          counter
}

// ServerStats are a Server's counters.
type ServerStats struct {
	Accepted          uint64 `json:"accepted"`           // sessions past the handshake
	Active            int    `json:"active"`             // sessions now
	RejectedAuth      uint64 `json:"rejected_auth"`      // missing, unknown or wrong-sensor API keys
	RejectedOther     uint64 `json:"rejected_other"`     // bad path, shutting down, upgrade failed
	HandshakeFailed   uint64 `json:"handshake_failed"`   // no valid first message
	HeartbeatTimeouts uint64 `json:"heartbeat_timeouts"` // peers that went silent
	ShutdownsSent     uint64 `json:"shutdowns_sent"`     //
	FinishedReceived  uint64 `json:"finished_received"`  //
	Malformed         uint64 `json:"malformed"`          // messages that did not decode, text messages
	Oversize          uint64 `json:"oversize"`           // messages above MaxMessageSize
	InvalidContainers uint64 `json:"invalid_containers"` // Data that is not one valid NMSG container
	Unsupported       uint64 `json:"unsupported"`        // other payload or compression types
	HandlerErrors     uint64 `json:"handler_errors"`     //
}

// SensorStats are the counters of one sensor, over all its sessions.
type SensorStats struct {
	Sensor           string    `json:"sensor"`
	Sessions         int       `json:"sessions"` // active now
	SessionsTotal    uint64    `json:"sessions_total"`
	Payloads         uint64    `json:"payloads"` // valid containers delivered
	Bytes            uint64    `json:"bytes"`    // their octets
	Records          uint64    `json:"records"`  // NMSG payloads in them
	Invalid          uint64    `json:"invalid"`  // messages dropped as malformed or invalid
	LastSeen         time.Time `json:"last_seen"`
	LinkLossBytes    uint64    `json:"link_loss_bytes"`    // as reported by the sensor
	LinkLossPayloads uint64    `json:"link_loss_payloads"` //
	PathLossBytes    uint64    `json:"path_loss_bytes"`    //
	PathLossPayloads uint64    `json:"path_loss_payloads"` //
	RemoteAddr       string    `json:"remote_addr,omitempty"`
}

type sensorCounters struct {
	mu sync.Mutex
	s  SensorStats
}

func (srv *Server) init() {
	srv.once.Do(func() {
		srv.sessions = make(map[*session]struct{})
		srv.sensors = make(map[string]*sensorCounters)
		srv.authLog.logf = srv.Logf
		srv.badLog.logf = srv.Logf
	})
}

func (srv *Server) heartbeat() time.Duration {
	if srv.Heartbeat > 0 {
		return srv.Heartbeat
	}
	return DefaultHeartbeat
}

func (srv *Server) maxMessage() int {
	if srv.MaxMessageSize > 0 {
		return srv.MaxMessageSize
	}
	return DefaultMaxMessageSize
}

func (srv *Server) handshakeTimeout() time.Duration {
	if srv.HandshakeTimeout > 0 {
		return srv.HandshakeTimeout
	}
	return DefaultHandshakeTimeout
}

// ServeHTTP authenticates and runs one session; it returns when the
// session ends.
func (srv *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	srv.init()
	name, ok := strings.CutPrefix(r.URL.Path, "/session/")
	if !ok || !ValidSensorName(name) {
		srv.cnt.rejectedOther.Add(1)
		http.NotFound(w, r)
		return
	}
	key := r.Header.Get("X-API-Key")
	sensor, ok := srv.Keys.Lookup(key)
	switch {
	case key == "" || !ok:
		srv.cnt.rejectedAuth.Add(1)
		srv.authLog.printf("sielink: %s: refused session %q: unknown API key", r.RemoteAddr, name)
		http.Error(w, "unknown API key", http.StatusUnauthorized)
		return
	case sensor != name:
		srv.cnt.rejectedAuth.Add(1)
		srv.authLog.printf("sielink: %s: refused session %q: API key belongs to sensor %s", r.RemoteAddr, name, sensor)
		http.Error(w, "API key not valid for this sensor", http.StatusForbidden)
		return
	}
	srv.mu.Lock()
	closing := srv.closing
	if !closing {
		srv.wg.Add(1)
	}
	srv.mu.Unlock()
	if closing {
		srv.cnt.rejectedOther.Add(1)
		http.Error(w, "shutting down", http.StatusServiceUnavailable)
		return
	}
	defer srv.wg.Done()
	// Origin is not checked: the API key authenticates the client, and
	// sensors are not browsers that could be tricked into connecting.
	ws, err := websocket.Accept(w, r, &websocket.AcceptOptions{InsecureSkipVerify: true})
	if err != nil {
		srv.cnt.rejectedOther.Add(1)
		return
	}
	ws.SetReadLimit(-1)
	s := &session{
		srv:      srv,
		ws:       ws,
		sensor:   sensor,
		remote:   r.RemoteAddr,
		shutdown: make(chan struct{}),
		reasm:    nmsg.NewReassembler(nmsg.ReassemblerOptions{}),
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	defer s.cancel()
	if err := s.handshake(); err != nil {
		srv.cnt.handshakeFailed.Add(1)
		srv.badLog.printf("sielink: %s (%s): handshake: %v", r.RemoteAddr, sensor, err)
		ws.CloseNow()
		return
	}
	srv.cnt.accepted.Add(1)
	s.sc = srv.sensor(sensor)
	s.sc.mu.Lock()
	s.sc.s.Sessions++
	s.sc.s.SessionsTotal++
	s.sc.s.RemoteAddr = r.RemoteAddr
	s.sc.s.LastSeen = time.Now()
	s.sc.mu.Unlock()
	srv.mu.Lock()
	srv.sessions[s] = struct{}{}
	closing = srv.closing
	srv.mu.Unlock()
	if closing {
		s.requestShutdown()
	}
	s.run()
	srv.mu.Lock()
	delete(srv.sessions, s)
	srv.mu.Unlock()
	s.sc.mu.Lock()
	s.sc.s.Sessions--
	s.sc.mu.Unlock()
}

func (srv *Server) sensor(name string) *sensorCounters {
	srv.mu.Lock()
	defer srv.mu.Unlock()
	sc := srv.sensors[name]
	if sc == nil {
		sc = &sensorCounters{s: SensorStats{Sensor: name}}
		srv.sensors[name] = sc
	}
	return sc
}

// Shutdown stops accepting sessions, sends Shutdown on every session
// and waits for the clients' Finished (after which the session closes)
// until ctx ends; then it closes what is left. It returns ctx.Err() if
// it had to force sessions closed.
func (srv *Server) Shutdown(ctx context.Context) error {
	srv.init()
	srv.mu.Lock()
	srv.closing = true
	for s := range srv.sessions {
		s.requestShutdown()
	}
	srv.mu.Unlock()
	done := make(chan struct{})
	go func() {
		srv.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
	}
	srv.mu.Lock()
	for s := range srv.sessions {
		s.ws.CloseNow()
	}
	srv.mu.Unlock()
	<-done
	return ctx.Err()
}

// Stats returns the server's counters.
func (srv *Server) Stats() ServerStats {
	srv.init()
	srv.mu.Lock()
	active := len(srv.sessions)
	srv.mu.Unlock()
	c := &srv.cnt
	return ServerStats{
		Accepted:          c.accepted.Load(),
		Active:            active,
		RejectedAuth:      c.rejectedAuth.Load(),
		RejectedOther:     c.rejectedOther.Load(),
		HandshakeFailed:   c.handshakeFailed.Load(),
		HeartbeatTimeouts: c.heartbeatTimeouts.Load(),
		ShutdownsSent:     c.shutdownsSent.Load(),
		FinishedReceived:  c.finishedReceived.Load(),
		Malformed:         c.malformed.Load(),
		Oversize:          c.oversize.Load(),
		InvalidContainers: c.invalidContainers.Load(),
		Unsupported:       c.unsupported.Load(),
		HandlerErrors:     c.handlerErrors.Load(),
	}
}

// Sensors returns per-sensor counters, sorted by name, for every
// sensor that completed a handshake since the server started.
func (srv *Server) Sensors() []SensorStats {
	srv.init()
	srv.mu.Lock()
	scs := make([]*sensorCounters, 0, len(srv.sensors))
	for _, sc := range srv.sensors {
		scs = append(scs, sc)
	}
	srv.mu.Unlock()
	out := make([]SensorStats, 0, len(scs))
	for _, sc := range scs {
		sc.mu.Lock()
		out = append(out, sc.s)
		sc.mu.Unlock()
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Sensor < out[j].Sensor })
	return out
}

// session is one accepted connection. Its read loop runs on the
// ServeHTTP goroutine and owns it; a second goroutine sends heartbeats
// and the Shutdown request.
type session struct {
	srv            *Server
	ws             *websocket.Conn
	sensor, remote string
	sc             *sensorCounters
	ctx            context.Context
	cancel         context.CancelFunc
	peerHB         atomic.Uint32
	shutdownOnce   sync.Once
	shutdown       chan struct{}
	reasm          *nmsg.Reassembler
	rbuf           []byte
}

func (s *session) requestShutdown() {
	s.shutdownOnce.Do(func() { close(s.shutdown) })
}

func (s *session) handshake() error {
	ctx, cancel := context.WithTimeout(s.ctx, s.srv.handshakeTimeout())
	defer cancel()
	var buf []byte
	if err := writeMessage(ctx, s.ws, &buf, &Message{
		ProtocolVersion: []uint32{ProtocolVersion},
		Type:            TypeTopology,
		Topology:        &Topology{},
		Heartbeat:       heartbeatMillis(s.srv.heartbeat()),
	}); err != nil {
		return err
	}
	var msg []byte
	var err error
	msg, s.rbuf, err = readMessage(ctx, s.ws, s.rbuf, s.srv.maxMessage())
	if err != nil {
		return err
	}
	var m Message
	if err := DecodeMessage(msg, &m); err != nil {
		s.srv.cnt.malformed.Add(1)
		return err
	}
	if !versionSupported(m.ProtocolVersion) {
		writeMessage(ctx, s.ws, &buf, fatalAlert("protocol version 1 required"))
		return fmt.Errorf("client supports protocol versions %v", m.ProtocolVersion)
	}
	switch m.Type {
	case TypeTopology, TypeHeartbeat:
	default:
		writeMessage(ctx, s.ws, &buf, fatalAlert("topology expected first"))
		return fmt.Errorf("first message is %v", m.Type)
	}
	s.peerHB.Store(m.Heartbeat)
	return nil
}

func (s *session) run() {
	hbDone := make(chan struct{})
	go func() {
		defer close(hbDone)
		s.heartbeats()
	}()
	err := s.readLoop()
	switch {
	case err == nil:
		s.ws.Close(websocket.StatusNormalClosure, "")
	case errors.Is(err, ErrHeartbeatTimeout):
		s.srv.cnt.heartbeatTimeouts.Add(1)
	}
	if s.srv.Logf != nil {
		reason := "finished"
		if err != nil {
			reason = err.Error()
		}
		s.srv.Logf("sielink: %s (%s): session ended: %s", s.remote, s.sensor, reason)
	}
	s.cancel()
	s.ws.CloseNow()
	<-hbDone
}

func (s *session) heartbeats() {
	interval := s.srv.heartbeat()
	t := time.NewTicker(interval)
	defer t.Stop()
	hb := &Message{ProtocolVersion: []uint32{ProtocolVersion}, Type: TypeHeartbeat, Heartbeat: heartbeatMillis(interval)}
	var buf []byte
	shutdown := s.shutdown
	for {
		m := hb
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
		case <-shutdown:
			shutdown = nil
			m = &Message{ProtocolVersion: []uint32{ProtocolVersion}, Type: TypeShutdown}
			s.srv.cnt.shutdownsSent.Add(1)
		}
		ctx, cancel := context.WithTimeout(s.ctx, interval)
		writeMessage(ctx, s.ws, &buf, m)
		cancel()
	}
}

// readLoop returns nil when the client sent Finished.
func (s *session) readLoop() error {
	var msg []byte
	var m Message
	var err error
	max := s.srv.maxMessage()
	for {
		rctx, cancel := s.ctx, context.CancelFunc(func() {})
		if hb := s.peerHB.Load(); hb > 0 {
			rctx, cancel = context.WithTimeout(s.ctx, readDeadline(hb))
		}
		msg, s.rbuf, err = readMessage(rctx, s.ws, s.rbuf, max)
		timedOut := rctx.Err() != nil && s.ctx.Err() == nil
		cancel()
		switch {
		case errors.Is(err, errOversize):
			s.srv.cnt.oversize.Add(1)
			s.invalid("discarded a message above %d octets", max)
			continue
		case errors.Is(err, errTextMessage):
			s.srv.cnt.malformed.Add(1)
			s.invalid("discarded a text message")
			continue
		case timedOut:
			return ErrHeartbeatTimeout
		case err != nil:
			return err
		}
		if err := DecodeMessage(msg, &m); err != nil {
			s.srv.cnt.malformed.Add(1)
			s.invalid("%v", err)
			continue
		}
		if m.Heartbeat != 0 {
			s.peerHB.Store(m.Heartbeat)
		}
		switch m.Type {
		case TypeData:
			if err := s.data(m.Payload); err != nil {
				return err
			}
		case TypeFinished:
			s.srv.cnt.finishedReceived.Add(1)
			return nil
		case TypeShutdown:
			// The client wants no data from us, and we send none.
			var buf []byte
			ctx, cancel := context.WithTimeout(s.ctx, 5*time.Second)
			writeMessage(ctx, s.ws, &buf, &Message{ProtocolVersion: []uint32{ProtocolVersion}, Type: TypeFinished})
			cancel()
		case TypeAlert:
			if m.Alert != nil && m.Alert.Level == AlertFatalError {
				return m.Alert
			}
		}
		s.sc.mu.Lock()
		s.sc.s.LastSeen = time.Now()
		s.sc.mu.Unlock()
	}
}

func (s *session) invalid(format string, args ...any) {
	s.sc.mu.Lock()
	s.sc.s.Invalid++
	s.sc.mu.Unlock()
	s.srv.badLog.printf("sielink: %s (%s): "+format, append([]any{s.remote, s.sensor}, args...)...)
}

func (s *session) data(p *Payload) error {
	if p == nil {
		s.srv.cnt.malformed.Add(1)
		s.invalid("data message without payload")
		return nil
	}
	if p.PayloadType != PayloadNmsgContainer || p.CompressionType != CompressionNone {
		s.srv.cnt.unsupported.Add(1)
		s.invalid("payload type %d, compression %d not supported", p.PayloadType, p.CompressionType)
		return nil
	}
	records, err := s.validate(p.Data)
	if err != nil {
		s.srv.cnt.invalidContainers.Add(1)
		s.invalid("invalid NMSG container: %v", err)
		return nil
	}
	now := time.Now()
	s.sc.mu.Lock()
	st := &s.sc.s
	st.Payloads++
	st.Bytes += uint64(len(p.Data))
	st.Records += uint64(records)
	st.LastSeen = now
	if l := p.LinkLoss; l != nil {
		st.LinkLossBytes += l.Bytes
		st.LinkLossPayloads += l.Payloads
	}
	if l := p.PathLoss; l != nil {
		st.PathLossBytes += l.Bytes
		st.PathLossPayloads += l.Payloads
	}
	s.sc.mu.Unlock()
	if s.srv.Handler == nil {
		return nil
	}
	d := Delivery{Sensor: s.sensor, Remote: s.remote, Payload: p, Records: records}
	if err := s.srv.Handler.Deliver(&d); err != nil {
		s.srv.cnt.handlerErrors.Add(1)
		s.srv.badLog.printf("sielink: %s (%s): storing payload: %v", s.remote, s.sensor, err)
		var buf []byte
		ctx, cancel := context.WithTimeout(s.ctx, 5*time.Second)
		writeMessage(ctx, s.ws, &buf, fatalAlert("cannot store data"))
		cancel()
		return fmt.Errorf("handler: %w", err)
	}
	return nil
}

// validate checks that data is exactly one unfragmented NMSG container
// that decodes, and returns its number of payloads.
func (s *session) validate(data []byte) (int, error) {
	if len(data) < nmsg.HeaderSize || string(data[:4]) != "NMSG" {
		return 0, errors.New("no NMSG header")
	}
	// A fragment would be held by the reassembler, not delivered; a
	// sielink payload must carry whole containers.
	if data[4]&0x02 != 0 {
		return 0, errors.New("fragment container")
	}
	ps, err := s.reasm.Feed("", data, time.Now())
	if err != nil {
		return 0, err
	}
	return len(ps), nil
}
