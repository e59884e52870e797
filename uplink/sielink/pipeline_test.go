package sielink

import (
	"bytes"
	"context"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/sie-europe/dnssensor/internal/testenv"
)

// gatedPipeline stores a payload only when the test releases it, in order: a Pipeline whose
// store (a PubAck) is as slow as the test wants.
type gatedPipeline struct {
	mu       sync.Mutex
	got      [][]byte
	stored   []func(bool)
	released int
	changed  chan struct{}
	closed   bool
}

func (g *gatedPipeline) Pipeline(string) Pipeline { return g }

func (g *gatedPipeline) Deliver(*Delivery) error { panic("a Pipeliner's Deliver is not called") }

func (g *gatedPipeline) Start(d *Delivery, stored func(bool)) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.got = append(g.got, bytes.Clone(d.Payload.Data))
	g.stored = append(g.stored, stored)
	return nil
}

// release stores the payloads up to n.
func (g *gatedPipeline) release(n int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for ; g.released < n; g.released++ {
		g.stored[g.released](false)
	}
	close(g.changed)
	g.changed = make(chan struct{})
}

func (g *gatedPipeline) Wait(ctx context.Context) error {
	g.mu.Lock()
	target := len(g.got)
	for g.released < target {
		ch := g.changed
		g.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
		g.mu.Lock()
	}
	g.mu.Unlock()
	return nil
}

func (g *gatedPipeline) Close() {
	g.mu.Lock()
	g.closed = true
	g.mu.Unlock()
}

func (g *gatedPipeline) count() (started, released int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.got), g.released
}

// TestPipelineConfirmsOnlyStored: with a Pipeline the session reads on while its payloads are
// being stored, but a ping is answered only once every payload before it is stored: a Sync
// never confirms a payload ahead of its store, not even when all but the last one are stored.
// A store that does not come within the pong's window ends the session unanswered, and the
// sensor counts the payload as possibly lost (it resends it).
func TestPipelineConfirmsOnlyStored(t *testing.T) {
	testenv.CheckLeaks(t)
	g := &gatedPipeline{changed: make(chan struct{})}
	e := newEnv(t, func(s *Server) { s.Handler = g })
	ctx := ctxT(t, 60*time.Second)
	conn, err := Dial(ctx, e.config("s1"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	rng := rand.New(rand.NewPCG(7, 8))
	var sent [][]byte
	for i := range 3 {
		c := container(t, rng, 2, 100)
		sent = append(sent, c)
		if err := conn.Send(ctx, c, LossCounter{Payloads: uint64(i + 1), Bytes: 10}); err != nil {
			t.Fatal(err)
		}
	}
	// The session read all three without any being stored: that is the pipelining.
	testenv.WaitFor(t, "all three started", func() bool { n, _ := g.count(); return n == 3 })
	synced := make(chan error, 1)
	go func() { synced <- conn.Sync(ctx) }()
	g.release(2)
	select {
	case err := <-synced:
		t.Fatalf("Sync returned (%v) while the third payload was not stored", err)
	case <-time.After(500 * time.Millisecond):
	}
	if u := conn.Unconfirmed(); u.Payloads != 3 {
		t.Errorf("unconfirmed %+v, want 3 payloads", u)
	}
	if st := e.srv.Sensors()[0]; st.LinkLossPayloads != 3 {
		t.Errorf("linkLoss %d payloads, want 3 (of the two stored)", st.LinkLossPayloads)
	}
	g.release(3)
	if err := <-synced; err != nil {
		t.Fatalf("Sync after every payload was stored: %v", err)
	}
	if u := conn.Unconfirmed(); u.Payloads != 0 {
		t.Errorf("unconfirmed %+v after the Sync", u)
	}
	if st := e.srv.Sensors()[0]; st.LinkLossPayloads != 6 {
		t.Errorf("linkLoss %d payloads, want 6", st.LinkLossPayloads)
	}
	g.mu.Lock()
	for i := range sent {
		if !bytes.Equal(g.got[i], sent[i]) {
			t.Errorf("payload %d altered or out of order", i)
		}
	}
	g.mu.Unlock()

	// A fourth payload is never stored: its ping goes unanswered and the session ends.
	if err := conn.Send(ctx, container(t, rng, 1, 100), LossCounter{}); err != nil {
		t.Fatal(err)
	}
	if err := conn.Sync(ctx); err == nil {
		t.Fatal("Sync confirmed a payload that was never stored")
	}
	<-conn.Done()
	if l := conn.Stats().PossiblyLostPayloads; l != 1 {
		t.Errorf("possibly lost %d payloads, want 1 (the unstored one, for resending)", l)
	}
	if n := e.srv.Stats().UnconfirmedPings; n != 1 {
		t.Errorf("unconfirmed pings %d, want 1", n)
	}
	testenv.WaitFor(t, "pipeline closed", func() bool { g.mu.Lock(); defer g.mu.Unlock(); return g.closed })
}
