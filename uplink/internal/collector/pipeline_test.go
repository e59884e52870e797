package collector

import (
	"context"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/sie-europe/dnssensor/internal/testenv"
	"github.com/sie-europe/dnssensor/nmsg"
	"github.com/sie-europe/dnssensor/uplink/sielink"
)

// TestPipelineConfirmsAfterPubAck: a session publishes its containers without waiting for each
// PubAck, yet the sensor's Sync confirms only containers the stream acknowledged. One container's
// PubAck fails (it is published again in its place), another's is held beyond the pong's window
// (the session ends unconfirmed and the sensor resends everything after its last Sync): after
// every Sync that succeeds each container up to it has its PubAck, and the archive holds every
// record exactly once.
func TestPipelineConfirmsAfterPubAck(t *testing.T) {
	testenv.CheckLeaks(t)
	const failSeq, holdSeq = 5, 12
	var mu sync.Mutex
	acked := map[uint32]bool{} // containers (by sequence) past their PubAck
	failed, held := false, false
	seqOf := func(data []byte) uint32 {
		_, seq, ok := nmsg.ContainerSequence(data)
		if !ok {
			t.Error("a container without a sequence")
		}
		return seq
	}
	tc := startCollector(t, func(o *Options) {
		o.JetStream = &JetStreamOptions{
			Pipeline: true,
			pubFail: func(data []byte) bool {
				mu.Lock()
				defer mu.Unlock()
				if seqOf(data) == failSeq && !failed {
					failed = true
					return true
				}
				return false
			},
			pubAck: func(ctx context.Context, data []byte) {
				seq := seqOf(data)
				mu.Lock()
				hold := seq == holdSeq && !held
				held = held || hold
				mu.Unlock()
				if hold {
					<-ctx.Done() // until the session ends: past the pong's window
					return
				}
				mu.Lock()
				acked[seq] = true
				mu.Unlock()
			},
		}
	})
	var want records
	conts := sequenced(t, 91, 900, &want)
	if len(conts) <= holdSeq {
		t.Fatalf("only %d containers", len(conts))
	}
	ctx := ctxT(t, 120*time.Second)
	confirmed, sessions := 0, 0
	for confirmed < len(conts) {
		if sessions++; sessions > 5 {
			t.Fatalf("%d sessions, %d of %d containers confirmed", sessions, confirmed, len(conts))
		}
		conn, err := sielink.Dial(ctx, tc.config("alpha"))
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range conts[confirmed:] {
			if err = conn.Send(ctx, c, sielink.LossCounter{}); err != nil {
				break
			}
		}
		if err == nil {
			err = conn.Sync(ctx)
		}
		if err == nil {
			mu.Lock()
			for _, c := range conts {
				if !acked[seqOf(c)] {
					t.Errorf("container %d confirmed before its PubAck", seqOf(c))
				}
			}
			mu.Unlock()
			confirmed = len(conts)
		}
		conn.Close()
	}
	if sessions != 2 {
		t.Errorf("%d sessions, want 2 (the held PubAck ends the first unconfirmed)", sessions)
	}
	snap := fetchSnapshot(t, tc.metrics)
	if snap.Server.UnconfirmedPings != 1 {
		t.Errorf("unconfirmed pings %d, want 1", snap.Server.UnconfirmedPings)
	}
	var pub *PublishStats
	for _, s := range snap.Sensors {
		if s.Sensor == "alpha" {
			pub = s.Publish
		}
	}
	if pub == nil || pub.Errors < 1 || pub.Duplicates < 1 {
		t.Errorf("publish stats %+v: want the failed PubAck counted and the resends recognised", pub)
	}
	waitArchived(t, tc)
	if err := tc.stop(); err != nil { // seals the files
		t.Fatal(err)
	}
	got, _ := readDir(t, filepath.Join(tc.dir, "nmsg", "alpha"))
	if len(got) != len(want) {
		t.Fatalf("%d records in the archive, want %d (each once)", len(got), len(want))
	}
	equalRecords(t, want, got)
}
