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

	"github.com/sie-europe/dnssensor/internal/logger"
	"github.com/sie-europe/dnssensor/nmsg"
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
	// SequenceID and Sequence are the container's NMSG sequence fields, read while it was
	// validated (from inside a zlib body too, which is inflated only once); HasSequence is
	// false when it carries none.
	SequenceID  uint64
	Sequence    uint32
	HasSequence bool
	// Duplicate is set by a Handler that recognised the payload as one it already stored (a
	// resend after a broken connection), so that what it carries (linkLoss) is not counted twice.
	Duplicate bool
}

// Handler receives the payloads of all sessions. Deliver is called on
// the session's goroutine, one call at a time per session and
// concurrently across sessions; the session reads nothing while it
// runs, so a pong (Conn.Sync at the client) implies that Deliver has
// returned for every earlier payload. A Deliver error ends the session
// with a FatalError alert: the client then holds the payload as
// unconfirmed and sends it again later. An error wrapped by Stall holds
// the session instead (see Stall), and a Refusal's reason is sent in the
// alert.
type Handler interface {
	Deliver(d *Delivery) error
}

// Admitter is an optional interface of a Handler: Admit is asked before a sensor's session is
// accepted. An error refuses the session with a FatalError alert instead of the server's Topology;
// the text of a Refusal in it is what the sensor is told.
type Admitter interface {
	Admit(sensor string) error
}

// Refusal is a Handler or Admitter error whose Reason is meant for the sensor: it ends (or refuses)
// the session with a FatalError alert carrying Reason, so the sensor's operator learns why its data
// stays in its spool. Other errors are reported to the sensor as "cannot store data".
type Refusal struct {
	Reason string
	Err    error
}

func (r *Refusal) Error() string {
	if r.Err != nil {
		return r.Reason + ": " + r.Err.Error()
	}
	return r.Reason
}

func (r *Refusal) Unwrap() error { return r.Err }

// Stall marks a Handler error that may clear by itself, such as a full disk. The session then
// stops reading, so that no ping after the payload is answered and the sensor sees nothing after
// it confirmed (its spool keeps it), and offers the same payload to Deliver again every
// StallRetry until it is taken, the session ends or the server shuts down. The sensor needs no
// reconnect and sends nothing twice when space returns.
func Stall(err error) error { return &stallError{err} }

type stallError struct{ err error }

func (e *stallError) Error() string { return e.err.Error() }
func (e *stallError) Unwrap() error { return e.err }

// Pipeliner is an optional interface of a Handler that stores asynchronously: a session then
// reads on while earlier payloads are still being stored, instead of waiting for each (one round
// trip to a replicated log per payload would bound a session's rate). The pong keeps its
// meaning: a ping is answered only after the session's Pipeline confirmed (Wait) every payload
// read before it.
type Pipeliner interface {
	// Pipeline is asked once per session, after its handshake.
	Pipeline(sensor string) Pipeline
}

// Pipeline stores one session's payloads. Its methods are called on the session's goroutine.
type Pipeline interface {
	// Start begins storing d and may return before it is stored: d.Payload.Data is valid only
	// until Start returns, so a Pipeline copies what it keeps. stored is called once d is
	// stored, with whether it was a resend the Pipeline recognised (see Delivery.Duplicate),
	// before a Wait that covers d returns. Start may block to bound what is in flight. Its
	// errors are those of Handler.Deliver: Stall holds the session and starts d again later,
	// others end it.
	Start(d *Delivery, stored func(duplicate bool)) error
	// Wait returns nil once every payload started before the call is stored, or an error if
	// that did not happen before ctx ended: the session then ends with those payloads
	// unconfirmed, and the sensor sends them again.
	Wait(ctx context.Context) error
	// Close ends the pipeline when the session ends; what was not stored was not confirmed.
	Close()
}

// pongMargin is the part of the WebSocket library's window for answering a ping (5 s) that is
// left for writing the pong after a Pipeline's Wait.
const pongMargin = time.Second

// HandlerFunc adapts a function to Handler.
type HandlerFunc func(d *Delivery) error

func (f HandlerFunc) Deliver(d *Delivery) error { return f(d) }

// Server accepts sielink sessions at /session/<name> (mount it there or
// at the root). Set the exported fields before serving; they are not
// changed afterwards.
type Server struct {
	// Auth maps API keys to sensor names (the collector's auth.Keys). A session is accepted
	// only when X-API-Key names the sensor of the path; with no Auth, none is.
	Auth Authenticator
	// Handler receives the payloads.
	Handler Handler
	// Reports, if set, receives the sensors' health reports (LogRecord payloads, see
	// HealthReport); without it they are decoded, counted and dropped.
	Reports Reporter
	// Heartbeat is our interval; default 30 s.
	Heartbeat time.Duration
	// HandshakeTimeout bounds the wait for the client's first
	// message; default 30 s.
	HandshakeTimeout time.Duration
	// MaxMessageSize caps received messages; default 2 MiB. Larger
	// messages are discarded while being read and counted.
	MaxMessageSize int
	// MaxSessionsPerSensor caps a sensor's concurrent sessions (default 4): a sensor runs one,
	// plus briefly one whose loss it has not noticed yet; a stolen key cannot pin more.
	MaxSessionsPerSensor int
	// StallRetry is how often a payload whose Deliver failed with Stall is offered again;
	// default 1 s.
	StallRetry time.Duration
	// Logf receives rate-limited reports; nil discards.
	Logf Logf

	once     sync.Once
	mu       sync.Mutex
	sessions map[*session]struct{}
	sensors  map[string]*sensorCounters
	closing  bool
	wg       sync.WaitGroup
	cnt      serverCounters
	// log limits the reports of refused sessions ("auth") and of bad input ("bad").
	log *logger.Limiter
}

type serverCounters struct {
	accepted, rejectedAuth, rejectedOther, handshakeFailed counter
	heartbeatTimeouts, shutdownsSent, finishedReceived     counter
	malformed, oversize, invalidContainers, unsupported    counter
	handlerErrors, stalls, refusedSessions, tooMany        counter
	badHeartbeat, unconfirmedPings                         counter
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
	Stalls            uint64 `json:"stalls"`             // Deliver attempts that failed with Stall (retried)
	Refused           uint64 `json:"refused"`            // sessions the Handler refused (Admitter), e.g. over quota
	TooManySessions   uint64 `json:"too_many_sessions"`  // sessions refused above MaxSessionsPerSensor
	BadHeartbeat      uint64 `json:"bad_heartbeat"`      // peers announcing no or an unbounded heartbeat
	// UnconfirmedPings are pings whose payloads a Pipeline had not stored within the pong's
	// window: each ended its session unanswered (the sensor resends).
	UnconfirmedPings uint64 `json:"unconfirmed_pings"`
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
	Reports          uint64    `json:"reports"`            // health reports received
	RemoteAddr       string    `json:"remote_addr,omitempty"`
}

type sensorCounters struct {
	mu sync.Mutex
	s  SensorStats
	// pending counts the sensor's sessions from upgrade to end (under Server.mu), for the cap.
	pending int
}

func (srv *Server) init() {
	srv.once.Do(func() {
		srv.sessions = make(map[*session]struct{})
		srv.sensors = make(map[string]*sensorCounters)
		srv.log = logger.NewLimiter(srv.Logf, logInterval)
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

func (srv *Server) maxSessions() int {
	if srv.MaxSessionsPerSensor > 0 {
		return srv.MaxSessionsPerSensor
	}
	return DefaultMaxSessionsPerSensor
}

func (srv *Server) stallRetry() time.Duration {
	if srv.StallRetry > 0 {
		return srv.StallRetry
	}
	return time.Second
}

// DefaultMaxSessionsPerSensor is Server.MaxSessionsPerSensor's default.
const DefaultMaxSessionsPerSensor = 4

// MaxPeerHeartbeat is the longest heartbeat a server accepts from a sensor. A peer announcing
// none (0) or a longer one would hold its session, and the memory behind it, without ever
// timing out.
const MaxPeerHeartbeat = time.Hour

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
	// A refused request gets no keep-alive: an unauthenticated peer must not be able to hold the
	// connection (and a file descriptor) open after the answer.
	refuse := func(msg string, code int) {
		w.Header().Set("Connection", "close")
		http.Error(w, msg, code)
	}
	if !ok || !validSessionName(name) || srv.Auth != nil && !srv.Auth.ValidName(name) {
		srv.cnt.rejectedOther.Add(1)
		refuse("not found", http.StatusNotFound)
		return
	}
	key := r.Header.Get("X-API-Key")
	sensor, ok := "", false
	if srv.Auth != nil {
		sensor, ok = srv.Auth.Lookup(key)
	}
	switch {
	case key == "" || !ok:
		srv.cnt.rejectedAuth.Add(1)
		srv.log.Printf("auth", "sielink: %s: refused session %q: unknown API key", r.RemoteAddr, name)
		refuse("unknown API key", http.StatusUnauthorized)
		return
	case sensor != name:
		srv.cnt.rejectedAuth.Add(1)
		srv.log.Printf("auth", "sielink: %s: refused session %q: API key belongs to sensor %s", r.RemoteAddr, name, sensor)
		refuse("API key not valid for this sensor", http.StatusForbidden)
		return
	}
	sc := srv.sensor(sensor)
	srv.mu.Lock()
	closing := srv.closing
	tooMany := sc.pending >= srv.maxSessions()
	if !closing && !tooMany {
		srv.wg.Add(1)
		sc.pending++
	}
	srv.mu.Unlock()
	switch {
	case closing:
		srv.cnt.rejectedOther.Add(1)
		refuse("shutting down", http.StatusServiceUnavailable)
		return
	case tooMany:
		srv.cnt.tooMany.Add(1)
		srv.log.Printf("auth", "sielink: %s: refused session %q: %d sessions of this sensor are open", r.RemoteAddr, name, srv.maxSessions())
		refuse("too many sessions for this sensor", http.StatusTooManyRequests)
		return
	}
	defer func() {
		srv.mu.Lock()
		sc.pending--
		srv.mu.Unlock()
		srv.wg.Done()
	}()
	// Origin is not checked: the API key authenticates the client, and
	// sensors are not browsers that could be tricked into connecting.
	// The library answers a ping while reading, on this goroutine: with a Pipeline, only once
	// everything read before the ping is stored. s is set before anything is read.
	var s *session
	ws, err := websocket.Accept(w, r, &websocket.AcceptOptions{InsecureSkipVerify: true,
		OnPingReceived: func(ctx context.Context, _ []byte) bool { return s.pingReceived(ctx) }})
	if err != nil {
		srv.cnt.rejectedOther.Add(1)
		return
	}
	ws.SetReadLimit(-1)
	s = &session{
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
		var ref *Refusal
		switch {
		case errors.As(err, &ref):
			srv.cnt.refusedSessions.Add(1)
		case errors.Is(err, errBadHeartbeat):
			srv.cnt.badHeartbeat.Add(1)
		default:
			srv.cnt.handshakeFailed.Add(1)
		}
		srv.log.Printf("bad", "sielink: %s (%s): handshake: %v", r.RemoteAddr, sensor, err)
		ws.CloseNow()
		return
	}
	srv.cnt.accepted.Add(1)
	if p, ok := srv.Handler.(Pipeliner); ok {
		s.pipe = p.Pipeline(sensor)
		defer s.pipe.Close()
	}
	s.sc = sc
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
		Stalls:            c.stalls.Load(),
		Refused:           c.refusedSessions.Load(),
		TooManySessions:   c.tooMany.Load(),
		BadHeartbeat:      c.badHeartbeat.Load(),
		UnconfirmedPings:  c.unconfirmedPings.Load(),
	}
}

// Sensors returns per-sensor counters, sorted by name, for every sensor that authenticated since
// the server started (also one refused later, e.g. over its quota or its session cap).
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
	pipe           Pipeline // of a Pipeliner Handler, else nil
}

// pingReceived tells the WebSocket library whether to answer a ping. With a Pipeline it waits
// until every payload read before the ping is stored; if that takes longer than the library
// leaves for the pong, the ping stays unanswered and the session ends, so that no pong ever
// confirms what is not stored and the sensor resends what it had not seen confirmed.
func (s *session) pingReceived(ctx context.Context) bool {
	if s.pipe == nil {
		return true
	}
	wctx := ctx
	if dl, ok := ctx.Deadline(); ok {
		var cancel context.CancelFunc
		wctx, cancel = context.WithDeadline(ctx, dl.Add(-pongMargin))
		defer cancel()
	}
	err := s.pipe.Wait(wctx)
	if err == nil {
		return true
	}
	s.srv.cnt.unconfirmedPings.Add(1)
	s.srv.log.Printf("bad", "sielink: %s (%s): payloads not stored in time to answer a ping (%v): ending the session, the sensor resends them", s.remote, s.sensor, err)
	s.cancel()
	return false
}

func (s *session) requestShutdown() {
	s.shutdownOnce.Do(func() { close(s.shutdown) })
}

// errBadHeartbeat refuses a peer whose heartbeat would never (or only after a very long time)
// let the session time out.
var errBadHeartbeat = errors.New("sielink: peer heartbeat out of range")

func validPeerHeartbeat(ms uint32) bool {
	return ms > 0 && time.Duration(ms)*time.Millisecond <= MaxPeerHeartbeat
}

func (s *session) handshake() error {
	ctx, cancel := context.WithTimeout(s.ctx, s.srv.handshakeTimeout())
	defer cancel()
	var buf []byte
	if a, ok := s.srv.Handler.(Admitter); ok {
		if err := a.Admit(s.sensor); err != nil {
			reason := "cannot accept data"
			var ref *Refusal
			if errors.As(err, &ref) {
				reason = ref.Reason
			} else {
				err = &Refusal{Reason: reason, Err: err}
			}
			// The alert replaces our Topology, so the client's handshake returns it. Reading the
			// client's first message before closing keeps its unread octets from turning the
			// close into a reset that could discard the alert on the way.
			writeMessage(ctx, s.ws, &buf, fatalAlert(reason))
			readMessage(ctx, s.ws, nil, s.srv.maxMessage())
			return err
		}
	}
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
	if !validPeerHeartbeat(m.Heartbeat) {
		writeMessage(ctx, s.ws, &buf, fatalAlert(fmt.Sprintf("heartbeat of 1 ms to %v required", MaxPeerHeartbeat)))
		return fmt.Errorf("%w: %d ms", errBadHeartbeat, m.Heartbeat)
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
			if !validPeerHeartbeat(m.Heartbeat) {
				s.srv.cnt.badHeartbeat.Add(1)
				s.alert(fmt.Sprintf("heartbeat of 1 ms to %v required", MaxPeerHeartbeat))
				return fmt.Errorf("%w: %d ms", errBadHeartbeat, m.Heartbeat)
			}
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

// alert sends a FatalError alert, waiting a few seconds at most: the session ends after it.
func (s *session) alert(reason string) {
	var buf []byte
	ctx, cancel := context.WithTimeout(s.ctx, 5*time.Second)
	writeMessage(ctx, s.ws, &buf, fatalAlert(reason))
	cancel()
}

func (s *session) invalid(format string, args ...any) {
	s.sc.mu.Lock()
	s.sc.s.Invalid++
	s.sc.mu.Unlock()
	s.srv.log.Printf("bad", "sielink: %s (%s): "+format, append([]any{s.remote, s.sensor}, args...)...)
}

func (s *session) data(p *Payload) error {
	if p == nil {
		s.srv.cnt.malformed.Add(1)
		s.invalid("data message without payload")
		return nil
	}
	if p.PayloadType == PayloadLogRecord && p.CompressionType == CompressionNone {
		s.report(p)
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
	s.sc.mu.Lock()
	st := &s.sc.s
	st.Payloads++
	st.Bytes += uint64(len(p.Data))
	st.Records += uint64(records)
	st.LastSeen = time.Now()
	s.sc.mu.Unlock()
	d := Delivery{Sensor: s.sensor, Remote: s.remote, Payload: p, Records: records}
	d.SequenceID, d.Sequence, d.HasSequence = s.reasm.Sequence()
	if s.pipe != nil {
		// The loss is counted once the payload is stored; p is reused by the next message.
		var link, path LossCounter
		if p.LinkLoss != nil {
			link = *p.LinkLoss
		}
		if p.PathLoss != nil {
			path = *p.PathLoss
		}
		stored := func(duplicate bool) {
			if duplicate {
				return
			}
			s.sc.mu.Lock()
			st.LinkLossBytes += link.Bytes
			st.LinkLossPayloads += link.Payloads
			st.PathLossBytes += path.Bytes
			st.PathLossPayloads += path.Payloads
			s.sc.mu.Unlock()
		}
		return s.deliver(func() error { return s.pipe.Start(&d, stored) })
	}
	if s.srv.Handler != nil {
		if err := s.deliver(func() error { return s.srv.Handler.Deliver(&d) }); err != nil {
			return err
		}
	}
	// The loss a payload reports is counted once it is stored: a payload that fails is sent
	// again with the same report, and a resend of a stored one is recognised by the Handler.
	if d.Duplicate {
		return nil
	}
	s.sc.mu.Lock()
	if l := p.LinkLoss; l != nil {
		st.LinkLossBytes += l.Bytes
		st.LinkLossPayloads += l.Payloads
	}
	if l := p.PathLoss; l != nil {
		st.PathLossBytes += l.Bytes
		st.PathLossPayloads += l.Payloads
	}
	s.sc.mu.Unlock()
	return nil
}

// deliver hands a payload to the Handler (or the Pipeline). It runs on the read loop, so while
// it retries a stalled payload nothing more is read and no ping is answered: the sensor sees
// none of it confirmed.
func (s *session) deliver(handle func() error) error {
	var t *time.Timer
	for {
		err := handle()
		if err == nil {
			return nil
		}
		var stall *stallError
		if !errors.As(err, &stall) {
			s.srv.cnt.handlerErrors.Add(1)
			s.srv.log.Printf("bad", "sielink: %s (%s): storing payload: %v", s.remote, s.sensor, err)
			reason := "cannot store data"
			var ref *Refusal
			if errors.As(err, &ref) {
				reason = ref.Reason
			}
			s.alert(reason)
			return fmt.Errorf("handler: %w", err)
		}
		s.srv.cnt.stalls.Add(1)
		s.srv.log.Printf("bad", "sielink: %s (%s): storing payload: %v (holding the session until it can be stored)", s.remote, s.sensor, err)
		if t == nil {
			t = time.NewTimer(s.srv.stallRetry())
			defer t.Stop()
		} else {
			t.Reset(s.srv.stallRetry())
		}
		select {
		case <-t.C:
		case <-s.ctx.Done():
			return fmt.Errorf("handler: %w", err)
		case <-s.shutdown:
			// Unconfirmed, the payload stays in the sensor's spool for the next session.
			return fmt.Errorf("handler: %w (server shutting down)", err)
		}
	}
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
