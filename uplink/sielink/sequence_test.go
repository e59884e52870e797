package sielink

import (
	"bytes"
	"encoding/binary"
	"sync"
	"testing"
	"time"

	"github.com/sie-europe/dnssensor/nmsg"
)

// TestDeliveryCarriesSequence: a Delivery carries the container's NMSG sequence fields, read
// while the session validated it, from inside a zlib body too, so the Handler need not inflate
// the container again to name it (the collector's message id and duplicate check).
func TestDeliveryCarriesSequence(t *testing.T) {
	type seq struct {
		id  uint64
		seq uint32
		ok  bool
	}
	var mu sync.Mutex
	var got []seq
	e := newEnv(t, func(s *Server) {
		s.Handler = HandlerFunc(func(d *Delivery) error {
			mu.Lock()
			got = append(got, seq{d.SequenceID, d.Sequence, d.HasSequence})
			mu.Unlock()
			return nil
		})
	})
	var conts [][]byte
	var want []seq
	for _, o := range []nmsg.FileOptions{{Zlib: true, SequenceID: 0xabcdef, MaxSize: 4 << 10}, {SequenceID: 5, MaxSize: 4 << 10}, {Zlib: true}} {
		var buf bytes.Buffer
		w, err := nmsg.NewFileWriter(&buf, o)
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 60; i++ {
			if err := w.Write(&nmsg.Payload{Vid: 1, Msgtype: 9, Data: bytes.Repeat([]byte{byte(i)}, 150)}); err != nil {
				t.Fatal(err)
			}
		}
		w.Close()
		b := buf.Bytes()
		for n := uint32(0); len(b) > 0; n++ {
			l := nmsg.HeaderSize + int(binary.BigEndian.Uint32(b[6:10]))
			if o.Zlib && b[4]&0x01 == 0 {
				t.Fatal("container not compressed")
			}
			conts = append(conts, b[:l])
			if o.SequenceID != 0 {
				want = append(want, seq{o.SequenceID, n, true})
			} else {
				want = append(want, seq{})
			}
			b = b[l:]
		}
	}
	ctx := ctxT(t, 30*time.Second)
	conn, err := Dial(ctx, e.config("s1"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	for _, c := range conts {
		if err := conn.Send(ctx, c, LossCounter{}); err != nil {
			t.Fatal(err)
		}
	}
	if err := conn.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(got) != len(want) {
		t.Fatalf("%d deliveries, want %d", len(got), len(want))
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("container %d: delivered sequence %+v, want %+v", i, got[i], want[i])
		}
	}
}
