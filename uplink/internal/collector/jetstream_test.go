package collector

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

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

// TestArchiveRecoveryExact: the collector killed between writing a container and logging its
// stream sequence (and with a torn container after it) restarts holding exactly the logged
// containers, and knows the stream sequence it holds through; sealing folds it into the floor
// file.
func TestArchiveRecoveryExact(t *testing.T) {
	dir := t.TempDir()
	s, err := NewStore(StoreOptions{Dir: dir, Rotate: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	var want1, want2, extra records
	c1 := sequenced(t, 1, 100, &want1)
	c2 := sequenced(t, 2, 30, &want2)
	unlogged := sequenced(t, 3, 60, &extra)
	seq := uint64(0)
	archive := func(s *Store, sensor string, cs [][]byte) {
		for _, c := range cs {
			seq++
			if _, err := s.Archive(sensor, c, seq); err != nil {
				t.Fatal(err)
			}
		}
	}
	archive(s, "s1", c1)
	archive(s, "s2", c2)
	// The crash: s1's next container reached the file but not its log, and a torn one followed.
	sf1, _ := s.sensor("s1")
	sf1.f.Write(unlogged[0])
	sf1.f.Write(unlogged[1][:40])
	for _, sf := range s.all() {
		sf.f.Close()
		sf.seqLog.Close()
	}

	s, err = NewStore(StoreOptions{Dir: dir, Rotate: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if got := s.Archived(); got != seq {
		t.Errorf("recovered floor %d, want %d", got, seq)
	}
	got1, _ := readDir(t, filepath.Join(dir, "s1"))
	equalRecords(t, want1, got1)
	got2, _ := readDir(t, filepath.Join(dir, "s2"))
	equalRecords(t, want2, got2)
	// The unlogged container comes again (it was not acknowledged) and is stored once.
	seq++
	if _, err := s.Archive("s1", unlogged[0], seq); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if logs, _ := filepath.Glob(filepath.Join(dir, "*", ".*.seq")); len(logs) != 0 {
		t.Errorf("sequence logs left after sealing: %v", logs)
	}
	s, err = NewStore(StoreOptions{Dir: dir, Rotate: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if got := s.Archived(); got != seq {
		t.Errorf("floor after sealing %d, want %d", got, seq)
	}
	got1, _ = readDir(t, filepath.Join(dir, "s1"))
	rd := nmsg.NewReader(bytes.NewReader(unlogged[0]), nmsg.ReaderOptions{})
	n := 0
	for _, err := rd.Next(); err == nil; _, err = rd.Next() {
		n++
	}
	equalRecords(t, append(want1, extra[:n]...), got1)
}

// TestArchiverSkipsRedelivered: when the stream delivers again what the archive already holds
// (its acknowledgements were lost: here the durable consumer is deleted while the collector is
// down), the archiver skips it: the archive holds every container once.
func TestArchiverSkipsRedelivered(t *testing.T) {
	root := t.TempDir()
	archive := filepath.Join(root, "nmsg")
	var want records
	conts := sequenced(t, 9, 300, &want)
	mod := func(o *Options) {
		o.Store.Dir = archive
		o.JetStream = &JetStreamOptions{}
	}
	tc := startCollector(t, mod)
	sendAll(t, tc, "alpha", conts)
	waitArchived(t, tc)
	if err := tc.stop(); err != nil {
		t.Fatal(err)
	}

	ctx := ctxT(t, 30*time.Second)
	b, err := openBus(ctx, JetStreamOptions{}, archive, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.stream.DeleteConsumer(ctx, "archive"); err != nil {
		t.Fatal(err)
	}
	b.Close()

	tc = startCollector(t, mod)
	deadline := time.Now().Add(60 * time.Second)
	for {
		a := fetchSnapshot(t, tc.metrics).JetStream.Archiver
		if a.Skipped+a.Archived+a.Duplicates >= uint64(len(conts)) {
			if a.Skipped != uint64(len(conts)) || a.Archived != 0 || a.Lost != (LossStats{}) {
				t.Errorf("archiver after redelivery: %+v", a)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("archiver skipped %d of %d redelivered containers: %+v", a.Skipped, len(conts), a)
		}
		time.Sleep(20 * time.Millisecond)
	}
	prom := fetchPrometheus(t, tc.metrics)
	for _, line := range []string{
		fmt.Sprintf("dnssensor_collector_archiver_skipped_total %d", len(conts)),
		fmt.Sprintf("dnssensor_collector_archiver_stream_seq %d", len(conts)),
		`dnssensor_collector_archive_lost_total{reason="limits"} 0`,
		"dnssensor_collector_archiver_running 1",
	} {
		if !strings.Contains(prom, line+"\n") {
			t.Errorf("/metrics lacks %q", line)
		}
	}
	// Red only for the sensors without a session (none connected in this run).
	if _, rep := healthReport(t, tc.metrics); len(rep.FirstFailurePath) < 2 || !strings.HasPrefix(rep.FirstFailurePath[1], "sensor ") {
		t.Errorf("/health.json first failure %v, want a sensor without a session", rep.FirstFailurePath)
	}
	if err := tc.stop(); err != nil {
		t.Fatal(err)
	}
	got, _ := readDir(t, filepath.Join(archive, "alpha"))
	equalRecords(t, want, got)
}

// TestStreamLimitLossCounted: containers the stream's size limit discarded before the archiver
// read them are counted as lost (reason limits), and the archive holds exactly the rest.
func TestStreamLimitLossCounted(t *testing.T) {
	archive := filepath.Join(t.TempDir(), "nmsg")
	var want records
	conts := sequenced(t, 5, 600, &want) // 8 KiB containers
	tc := startCollector(t, func(o *Options) {
		o.Store.Dir = archive
		o.JetStream = &JetStreamOptions{NoArchive: true, MaxBytes: 5 * 9 << 10}
	})
	sendAll(t, tc, "alpha", conts)
	js := fetchSnapshot(t, tc.metrics).JetStream
	if err := tc.stop(); err != nil {
		t.Fatal(err)
	}
	if js.FirstSeq <= 1 || js.LastSeq != uint64(len(conts)) {
		t.Fatalf("stream from %d to %d: the limit discarded nothing", js.FirstSeq, js.LastSeq)
	}
	kept := int(js.LastSeq - js.FirstSeq + 1)

	tc = startCollector(t, func(o *Options) {
		o.Store.Dir = archive
		o.JetStream = &JetStreamOptions{MaxBytes: 5 * 9 << 10}
	})
	js = waitArchived(t, tc)
	if a := js.Archiver; a.Archived != uint64(kept) || a.Lost.Limits != uint64(len(conts)-kept) {
		t.Errorf("archived %d, lost to limits %d; want %d and %d", a.Archived, a.Lost.Limits, kept, len(conts)-kept)
	}
	if prom := fetchPrometheus(t, tc.metrics); !strings.Contains(prom, fmt.Sprintf("dnssensor_collector_archive_lost_total{reason=\"limits\"} %d\n", len(conts)-kept)) {
		t.Errorf("/metrics lacks the loss")
	}
	if err := tc.stop(); err != nil {
		t.Fatal(err)
	}
	got, _ := readDir(t, filepath.Join(archive, "alpha"))
	if len(got) == 0 || len(got) >= len(want) {
		t.Fatalf("%d records archived of %d sent", len(got), len(want))
	}
	equalRecords(t, want[len(want)-len(got):], got)
}

// TestArchiveQuotaLossCounted: with the stream in front the sensor is confirmed before the
// archive sees its data, so a sensor over its -quota loses what the archive cannot take, and
// that is counted (reason quota), never silent.
func TestArchiveQuotaLossCounted(t *testing.T) {
	var want records
	conts := sequenced(t, 6, 300, &want)
	tc := startCollector(t, func(o *Options) {
		o.Store.Quota = 4 * 9 << 10
		o.JetStream = &JetStreamOptions{}
	})
	sendAll(t, tc, "alpha", conts)
	a := waitArchived(t, tc).Archiver
	if a.Lost.Quota == 0 || a.Archived+a.Lost.Quota != uint64(len(conts)) {
		t.Errorf("archived %d, lost to the quota %d, of %d", a.Archived, a.Lost.Quota, len(conts))
	}
	if prom := fetchPrometheus(t, tc.metrics); !strings.Contains(prom, fmt.Sprintf("dnssensor_collector_archive_lost_total{reason=\"quota\"} %d\n", a.Lost.Quota)) {
		t.Errorf("/metrics lacks the loss")
	}
}

// TestStopDrainsArchive: sensors are confirmed once the stream holds their data, so a clean
// stop must leave the files holding all of it, even when the archiver is behind the stream (here
// slowed to 20 ms a container; the command's TestSelftestServer found 40 of 50 records in the
// files after SIGTERM before the stop drained the stream).
func TestStopDrainsArchive(t *testing.T) {
	archive := filepath.Join(t.TempDir(), "nmsg")
	var want records
	conts := sequenced(t, 78, 50, &want)
	tc := startCollector(t, func(o *Options) {
		o.Store.Dir = archive
		o.JetStream = &JetStreamOptions{archiveDelay: 20 * time.Millisecond}
	})
	sendAll(t, tc, "alpha", conts)
	if js := fetchSnapshot(t, tc.metrics).JetStream; js.Archiver.StreamSeq >= js.LastSeq {
		t.Logf("the archiver caught up before the stop (stream %d, archived %d): the drain is not exercised", js.LastSeq, js.Archiver.StreamSeq)
	}
	if err := tc.stop(); err != nil {
		t.Fatal(err)
	}
	got, _ := readDir(t, filepath.Join(archive, "alpha"))
	if len(got) != len(want) {
		t.Fatalf("%d records in the archive after a clean stop, want %d", len(got), len(want))
	}
	equalRecords(t, want, got)
}

// TestArchiverOutOfOrderDelivery: messages delivered to the durable consumer and never
// acknowledged (a collector that died with them, a consumer leader that failed over) come again
// only after AckWait, behind later ones. The archive must still hold every container: before, the
// later message raised the floor over the missing ones, they were counted as lost to the
// stream's limits and their redelivery skipped as archived (TestClusterProof lost 29 records so).
func TestArchiverOutOfOrderDelivery(t *testing.T) {
	archive := filepath.Join(t.TempDir(), "nmsg")
	var want records
	conts := sequenced(t, 11, 300, &want)
	tc := startCollector(t, func(o *Options) {
		o.Store.Dir = archive
		o.JetStream = &JetStreamOptions{NoArchive: true}
	})
	sendAll(t, tc, "alpha", conts)
	if err := tc.stop(); err != nil {
		t.Fatal(err)
	}

	// The first containers are delivered to the archiver's consumer and left unacknowledged.
	ctx := ctxT(t, 30*time.Second)
	b, err := openBus(ctx, JetStreamOptions{}, archive, nil)
	if err != nil {
		t.Fatal(err)
	}
	cons, err := b.stream.CreateOrUpdateConsumer(ctx, archiverConsumer("archive"))
	if err != nil {
		t.Fatal(err)
	}
	const held = 3
	batch, err := cons.FetchNoWait(held)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for range batch.Messages() {
		n++
	}
	if n != held {
		t.Fatalf("fetched %d messages, want %d", n, held)
	}
	b.Close()

	tc = startCollector(t, func(o *Options) {
		o.Store.Dir = archive
		o.JetStream = &JetStreamOptions{}
	})
	js := waitArchived(t, tc)
	if js.Archiver.Lost != (LossStats{}) || js.Archiver.GapFilled != held {
		t.Errorf("archiver %+v: want %d containers filled from the stream and nothing lost", *js.Archiver, held)
	}
	if err := tc.stop(); err != nil {
		t.Fatal(err)
	}
	got, _ := readDir(t, filepath.Join(archive, "alpha"))
	if len(got) != len(want) {
		t.Errorf("%d records in the archive, want %d", len(got), len(want))
	}
	equalRecords(t, want, got)
}

// TestArchiverAckPolicyChanged: an archive consumer left by a version that acknowledged every
// message (AckExplicit) cannot be updated to AckAll; the archiver creates it anew and the archive
// still holds every container once.
func TestArchiverAckPolicyChanged(t *testing.T) {
	archive := filepath.Join(t.TempDir(), "nmsg")
	var want records
	conts := sequenced(t, 12, 200, &want)
	tc := startCollector(t, func(o *Options) {
		o.Store.Dir = archive
		o.JetStream = &JetStreamOptions{NoArchive: true}
	})
	sendAll(t, tc, "alpha", conts)
	if err := tc.stop(); err != nil {
		t.Fatal(err)
	}
	ctx := ctxT(t, 30*time.Second)
	b, err := openBus(ctx, JetStreamOptions{}, archive, nil)
	if err != nil {
		t.Fatal(err)
	}
	old := archiverConsumer("archive")
	old.AckPolicy = jetstream.AckExplicitPolicy
	if _, err := b.stream.CreateOrUpdateConsumer(ctx, old); err != nil {
		t.Fatal(err)
	}
	b.Close()

	tc = startCollector(t, func(o *Options) {
		o.Store.Dir = archive
		o.JetStream = &JetStreamOptions{}
	})
	js := waitArchived(t, tc)
	if a := js.Archiver; a.Archived != uint64(len(conts)) || a.Lost != (LossStats{}) {
		t.Errorf("archiver %+v: want %d containers archived, nothing lost", *a, len(conts))
	}
	if err := tc.stop(); err != nil {
		t.Fatal(err)
	}
	got, _ := readDir(t, filepath.Join(archive, "alpha"))
	equalRecords(t, want, got)
	b, err = openBus(ctx, JetStreamOptions{}, archive, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	cons, err := b.stream.Consumer(ctx, "archive")
	if err != nil {
		t.Fatal(err)
	}
	if p := cons.CachedInfo().Config.AckPolicy; p != jetstream.AckAllPolicy {
		t.Errorf("archive consumer acknowledges %s, want all", p)
	}
}
