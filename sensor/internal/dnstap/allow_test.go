package dnstap

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"
)

// TestServerAllowList: a TCP listener with an allow-list takes writers from listed addresses
// only; others are closed at once and counted (a non-loopback listener took 54 injected
// records from anybody).
func TestServerAllowList(t *testing.T) {
	ln, err := Listen("tcp:127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	out := make(chan []Event, 1024)
	st := &Stats{}
	srv := &Server{Stats: st, Out: out, Logf: t.Logf, Allow: []netip.Prefix{netip.MustParsePrefix("127.0.0.2/32")}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- srv.Serve(ctx, ln) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()

	write := func(from string, id uint16) error {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}, Timeout: 10 * time.Second}
		c, err := d.Dial("tcp", ln.Addr().String())
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(30 * time.Second))
		fw, err := NewBidirectionalWriter(c)
		if err != nil {
			return err
		}
		for _, f := range exchange(t, id) {
			if err := fw.Write(f); err != nil {
				return err
			}
		}
		return fw.Close()
	}
	if err := write("127.0.0.1", 1); err == nil {
		t.Error("a writer outside the allow-list completed the handshake")
	}
	if err := write("127.0.0.2", 2); err != nil {
		t.Fatalf("allowed writer: %v", err)
	}
	got := 0
	deadline := time.After(30 * time.Second)
	for got < 2 {
		select {
		case b := <-out:
			for _, e := range b {
				if e.Msg[0] != 0 || e.Msg[1] != 2 {
					t.Fatalf("event of a refused writer on the output: id %x", e.Msg[:2])
				}
			}
			got += len(b)
		case <-deadline:
			t.Fatalf("got %d events, want 2; %s", got, st.String())
		}
	}
	if st.Refused.Load() != 1 || st.Conns.Load() != 1 {
		t.Errorf("want 1 refused, 1 accepted: %s", st.String())
	}
}
