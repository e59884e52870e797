package sielink

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"math/rand/v2"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sie-europe/dnssensor/internal/testenv"
)

// TestRefusedConnectionClosed: a request refused for its API key gets no keep-alive, so an
// unauthenticated peer cannot hold the connection (measured before: 2,000 held for ≥ 75 s).
func TestRefusedConnectionClosed(t *testing.T) {
	testenv.CheckLeaks(t)
	e := newEnv(t, nil)
	c, err := tls.Dial("tcp", e.addr, e.clientTLS)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	br := bufio.NewReader(c)
	for i, key := range []string{"", "wrong"} {
		req, _ := http.NewRequest("GET", "https://"+e.addr+"/session/s1", nil)
		if key != "" {
			req.Header.Set("X-API-Key", key)
		}
		if err := req.Write(c); err != nil {
			if i == 0 {
				t.Fatal(err)
			}
			return // closed after the first refusal: as wanted
		}
		resp, err := http.ReadResponse(br, req)
		if err != nil {
			if i == 0 {
				t.Fatal(err)
			}
			return
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("status %s, want 401", resp.Status)
		}
		if !resp.Close {
			t.Errorf("401 response keeps the connection alive")
		}
	}
	if _, err := br.ReadByte(); err == nil {
		t.Errorf("connection still open after two refused requests")
	}
}

// TestHeartbeatRequired: a peer announcing heartbeat 0 (never times out) or one above
// MaxPeerHeartbeat is refused with an alert, at the handshake and later.
func TestHeartbeatRequired(t *testing.T) {
	testenv.CheckLeaks(t)
	e := newEnv(t, nil)
	for _, hb := range []time.Duration{0, 2 * MaxPeerHeartbeat} {
		ws := rawClient(t, e, "s1", hb)
		ctx := ctxT(t, 30*time.Second)
		var m Message
		for m.Type != TypeAlert { // after the server's Topology
			msg, _, err := readMessage(ctx, ws, nil, DefaultMaxMessageSize)
			if err != nil {
				t.Fatalf("heartbeat %v: %v", hb, err)
			}
			DecodeMessage(msg, &m)
		}
		if m.Type != TypeAlert || m.Alert == nil || m.Alert.Level != AlertFatalError || !strings.Contains(m.Alert.Message, "heartbeat") {
			t.Errorf("heartbeat %v: first message %+v, want a FatalError about the heartbeat", hb, m)
		}
		ws.CloseNow()
	}
	// A valid session that later announces heartbeat 0 keeps its heartbeat: 0 means "unchanged".
	// One that announces an unbounded heartbeat later is ended.
	ws := rawClient(t, e, "s1", time.Second)
	defer ws.CloseNow()
	ctx := ctxT(t, 30*time.Second)
	var buf []byte
	writeMessage(ctx, ws, &buf, &Message{ProtocolVersion: []uint32{1}, Type: TypeHeartbeat, Heartbeat: 1<<32 - 1})
	testenv.WaitFor(t, "the session to end", func() bool { return e.srv.Stats().Active == 0 && e.srv.Stats().BadHeartbeat == 3 })
	if st := e.srv.Stats(); st.Accepted != 1 {
		t.Errorf("stats %+v", st)
	}
}

// TestSessionsPerSensor: a sensor may hold MaxSessionsPerSensor sessions; more are refused
// (429) while other sensors are unaffected.
func TestSessionsPerSensor(t *testing.T) {
	testenv.CheckLeaks(t)
	e := newEnv(t, func(s *Server) { s.MaxSessionsPerSensor = 2 })
	ctx := ctxT(t, 30*time.Second)
	var conns []*Conn
	for range 2 {
		c, err := Dial(ctx, e.config("s1"))
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	if _, err := Dial(ctx, e.config("s1")); !errors.Is(err, ErrRejected) || !strings.Contains(err.Error(), "429") {
		t.Errorf("third session: Dial = %v, want ErrRejected (429)", err)
	}
	other, err := Dial(ctx, e.config("s2"))
	if err != nil {
		t.Fatalf("other sensor refused: %v", err)
	}
	other.Close()
	conns[0].Close()
	testenv.WaitFor(t, "the closed session to end", func() bool { return e.srv.Stats().Active == 1 })
	c, err := Dial(ctx, e.config("s1"))
	if err != nil {
		t.Fatalf("session after one ended: %v", err)
	}
	c.Close()
	conns[1].Close()
	if st := e.srv.Stats(); st.TooManySessions != 1 {
		t.Errorf("stats %+v", st)
	}
}

// switchHandler fails with Stall (or another error) until told otherwise.
type switchHandler struct {
	mu     sync.Mutex
	fail   error
	got    [][]byte
	tries  atomic.Int32
	admit  error
	dupFor map[string]bool
}

func (h *switchHandler) Deliver(d *Delivery) error {
	h.tries.Add(1)
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.fail != nil {
		return h.fail
	}
	if h.dupFor[string(d.Payload.Data)] {
		d.Duplicate = true
		return nil
	}
	h.got = append(h.got, append([]byte(nil), d.Payload.Data...))
	return nil
}

func (h *switchHandler) Admit(string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.admit
}

func (h *switchHandler) set(fail error) {
	h.mu.Lock()
	h.fail = fail
	h.mu.Unlock()
}

// TestStallConfirmsNothing: while the Handler cannot store (Stall), the session answers no ping,
// so the sensor sees nothing confirmed; once it can, the held payload and the ones behind it are
// stored exactly once without a reconnect, and their linkLoss is counted once.
func TestStallConfirmsNothing(t *testing.T) {
	testenv.CheckLeaks(t)
	h := &switchHandler{}
	e := newEnv(t, func(s *Server) { s.Handler = h; s.StallRetry = 20 * time.Millisecond })
	ctx := ctxT(t, 60*time.Second)
	conn, err := Dial(ctx, e.config("s1"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	h.set(Stall(errors.New("no space left on device")))
	rng := rand.New(rand.NewPCG(3, 4))
	var sent [][]byte
	for i := range 3 {
		c := container(t, rng, 2, 100)
		sent = append(sent, c)
		if err := conn.Send(ctx, c, LossCounter{Payloads: uint64(i + 1), Bytes: 10}); err != nil {
			t.Fatal(err)
		}
	}
	testenv.WaitFor(t, "retries", func() bool { return h.tries.Load() >= 3 })
	sctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	if err := conn.Sync(sctx); err == nil {
		t.Fatal("Sync succeeded while the server could not store")
	}
	cancel()
	if u := conn.Unconfirmed(); u.Payloads != 3 {
		t.Errorf("unconfirmed %+v, want 3 payloads", u)
	}
	if st := e.srv.Sensors(); st[0].LinkLossPayloads != 0 {
		t.Errorf("linkLoss counted before the payload was stored: %+v", st[0])
	}
	h.set(nil)
	if err := conn.Sync(ctx); err != nil {
		t.Fatalf("Sync after space returned: %v", err)
	}
	h.mu.Lock()
	stored := slices.Clone(h.got)
	h.mu.Unlock()
	if len(stored) != 3 || conn.Err() != nil || conn.Stats().Connects != 1 {
		t.Errorf("stored %d payloads (want 3), conn err %v", len(stored), conn.Err())
	}
	for i := range min(len(stored), len(sent)) {
		if !bytes.Equal(stored[i], sent[i]) {
			t.Errorf("payload %d stored altered or out of order", i)
		}
	}
	st := e.srv.Sensors()[0]
	if st.LinkLossPayloads != 6 || st.LinkLossBytes != 30 {
		t.Errorf("linkLoss %d payloads %d octets, want 6 and 30", st.LinkLossPayloads, st.LinkLossBytes)
	}
	if e.srv.Stats().Stalls < 3 {
		t.Errorf("stalls %d", e.srv.Stats().Stalls)
	}
}

// TestLinkLossOnceStored: a payload the Handler fails (the session ends, the sensor resends) or
// recognises as a duplicate does not add its linkLoss; only the stored one does.
func TestLinkLossOnceStored(t *testing.T) {
	testenv.CheckLeaks(t)
	h := &switchHandler{dupFor: map[string]bool{}}
	e := newEnv(t, func(s *Server) { s.Handler = h })
	ctx := ctxT(t, 60*time.Second)
	c := container(t, rand.New(rand.NewPCG(5, 6)), 1, 100)
	send := func() {
		conn, err := Dial(ctx, e.config("s1"))
		if err != nil {
			t.Fatal(err)
		}
		conn.Send(ctx, c, LossCounter{Payloads: 5, Bytes: 50})
		conn.Sync(ctx)
		<-conn.Done()
	}
	h.set(errors.New("forward spool refused"))
	send() // fails: session ends with an alert
	h.set(nil)
	conn, err := Dial(ctx, e.config("s1"))
	if err != nil {
		t.Fatal(err)
	}
	conn.Send(ctx, c, LossCounter{Payloads: 5, Bytes: 50})
	if err := conn.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	h.mu.Lock()
	h.dupFor[string(c)] = true
	h.mu.Unlock()
	conn.Send(ctx, c, LossCounter{Payloads: 5, Bytes: 50}) // the resend of a stored payload
	if err := conn.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	conn.Close()
	if st := e.srv.Sensors()[0]; st.LinkLossPayloads != 5 || st.LinkLossBytes != 50 {
		t.Errorf("linkLoss %d payloads %d octets, want 5 and 50 (counted once)", st.LinkLossPayloads, st.LinkLossBytes)
	}
}

// TestAdmitRefusal: a session the Handler does not admit (a sensor over its quota) is refused
// with a FatalError alert carrying the Refusal's reason, which the client returns.
func TestAdmitRefusal(t *testing.T) {
	testenv.CheckLeaks(t)
	h := &switchHandler{admit: &Refusal{Reason: "over disk quota at the collector", Err: errors.New("quota")}}
	e := newEnv(t, func(s *Server) { s.Handler = h })
	_, err := Dial(ctxT(t, 30*time.Second), e.config("s1"))
	var alert *Alert
	if !errors.As(err, &alert) || alert.Level != AlertFatalError || alert.Message != "over disk quota at the collector" {
		t.Fatalf("Dial = %v, want the quota alert", err)
	}
	testenv.WaitFor(t, "the refusal counted", func() bool { return e.srv.Stats().Refused == 1 })
	if st := e.srv.Stats(); st.Accepted != 0 {
		t.Errorf("stats %+v", st)
	}
}

// TestShutdownWhileStalled: a session holding a payload it cannot store ends promptly at
// Shutdown, leaving the payload unconfirmed (in the sensor's spool), instead of holding the
// shutdown for its whole timeout.
func TestShutdownWhileStalled(t *testing.T) {
	testenv.CheckLeaks(t)
	h := &switchHandler{}
	h.set(Stall(errors.New("no space left on device")))
	e := newEnv(t, func(s *Server) { s.Handler = h; s.StallRetry = 20 * time.Millisecond })
	ctx := ctxT(t, 60*time.Second)
	conn, err := Dial(ctx, e.config("s1"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := conn.Send(ctx, container(t, rand.New(rand.NewPCG(1, 1)), 1, 100), LossCounter{}); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, "a stall", func() bool { return e.srv.Stats().Stalls > 0 })
	sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := e.srv.Shutdown(sctx); err != nil {
		t.Errorf("Shutdown = %v, want the stalled session ended without forcing", err)
	}
	<-conn.Done()
	if u := conn.Unconfirmed(); u.Payloads != 1 {
		t.Errorf("unconfirmed %+v, want the held payload", u)
	}
}
