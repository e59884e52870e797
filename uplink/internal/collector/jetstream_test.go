package collector

import (
	"bytes"
	"encoding/binary"
	"math/rand/v2"
	"path/filepath"
	"testing"
	"time"

	"github.com/sie-europe/dnssensor/nmsg"
	"github.com/sie-europe/dnssensor/uplink/sielink"
)

// sequenced returns the containers of a spool run (sequence_id id) holding n records of 250
// octets, whose data is appended to rec.
func sequenced(t testing.TB, id uint64, n int, rec *records) [][]byte {
	rng := rand.New(rand.NewPCG(id, 1))
	var buf bytes.Buffer
	w, err := nmsg.NewFileWriter(&buf, nmsg.FileOptions{CRC: true, SequenceID: id, MaxSize: 8 << 10})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < n; i++ {
		d := make([]byte, 250)
		for j := range d {
			d[j] = byte(rng.Uint32())
		}
		*rec = append(*rec, d)
		if err := w.Write(&nmsg.Payload{Vid: 1, Msgtype: 9, TimeSec: 1700000000, Data: d}); err != nil {
			t.Fatal(err)
		}
	}
	w.Close()
	return splitContainers(buf.Bytes())
}

func splitContainers(b []byte) [][]byte {
	var out [][]byte
	for len(b) > 0 {
		n := nmsg.HeaderSize + int(binary.BigEndian.Uint32(b[6:]))
		out = append(out, b[:n:n])
		b = b[n:]
	}
	return out
}

// sendAll sends the containers in one session and waits until the collector confirmed them.
func sendAll(t *testing.T, tc *testCollector, sensor string, conts [][]byte) {
	t.Helper()
	ctx := ctxT(t, 60*time.Second)
	conn, err := sielink.Dial(ctx, tc.config(sensor))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	for _, c := range conts {
		if err := conn.Send(ctx, c, sielink.LossCounter{}); err != nil {
			t.Fatal(err)
		}
	}
	if err := conn.Sync(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestResendAcrossRestartStoredOnce: a sensor whose connection broke before it saw its last
// containers confirmed resends them; when the collector restarted in between, they must still
// be stored once (the collector's memory of recent containers died with it, the stream's
// duplicate window did not).
func TestResendAcrossRestartStoredOnce(t *testing.T) {
	archive := filepath.Join(t.TempDir(), "nmsg")
	var want records
	conts := sequenced(t, 77, 200, &want)
	mod := func(o *Options) {
		o.Store.Dir = archive
		o.JetStream = &JetStreamOptions{Sync: true}
	}

	tc := startCollector(t, mod)
	sendAll(t, tc, "alpha", conts)
	waitArchived(t, tc)
	if err := tc.stop(); err != nil {
		t.Fatal(err)
	}
	tc = startCollector(t, mod)
	sendAll(t, tc, "alpha", conts[3:]) // the unconfirmed tail, sent again
	js := waitArchived(t, tc)
	if js.Messages != uint64(len(conts)) {
		t.Errorf("stream holds %d messages, want %d", js.Messages, len(conts))
	}
	for _, s := range fetchSnapshot(t, tc.metrics).Sensors {
		if s.Sensor == "alpha" && (s.Publish == nil || s.Publish.Duplicates != uint64(len(conts)-3)) {
			t.Errorf("publish stats %+v; want %d duplicates", s.Publish, len(conts)-3)
		}
	}
	if err := tc.stop(); err != nil {
		t.Fatal(err)
	}
	got, _ := readDir(t, filepath.Join(archive, "alpha"))
	if len(got) != len(want) {
		t.Fatalf("%d records in the archive, want %d (each once)", len(got), len(want))
	}
	equalRecords(t, want, got)
}

// waitArchived waits until the archiver holds the stream through its last message.
func waitArchived(t *testing.T, tc *testCollector) *JetStreamSnapshot {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		js := fetchSnapshot(t, tc.metrics).JetStream
		if js == nil || js.Archiver == nil {
			t.Fatal("no archiver in /status.json")
		}
		if js.LastSeq > 0 && js.Archiver.StreamSeq == js.LastSeq {
			return js
		}
		if time.Now().After(deadline) {
			t.Fatalf("archiver at stream sequence %d of %d: %+v", js.Archiver.StreamSeq, js.LastSeq, js.Archiver)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
