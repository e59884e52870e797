package collector

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sie-europe/dnssensor/internal/testenv"
	"github.com/sie-europe/dnssensor/nmsg"
)

// TestZlibContainersEndToEnd: a sensor run with -z sends zlib NMSG containers (the container's
// own flag; the sielink payload's compressionType stays none). Through JetStream each is
// validated, published under the message id of the sequence fields inside its compressed body
// (a resend is stored once), archived exactly as received (the file reads back as the same
// records, as nmsgtool reads it), and inflated by the fan-outs: one JSON line per record, and
// every record in the NMSG/UDP datagrams.
func TestZlibContainersEndToEnd(t *testing.T) {
	dir := t.TempDir()
	archive := filepath.Join(dir, "nmsg")
	jsonFile := filepath.Join(dir, "fanout.jsonl")
	udpAddr, udpPayloads := udpPayloadCounter(t)
	conts, lines := dnsqrContainersOpts(t, 600, nmsg.FileOptions{Zlib: true, SequenceID: 21, MaxSize: 16 << 10})
	var plain int
	for _, c := range conts {
		if c[4]&0x01 == 0 {
			plain++
		}
	}
	if plain != 0 {
		t.Fatalf("%d of %d containers not compressed", plain, len(conts))
	}
	mod := func(o *Options) {
		o.Store.Dir = archive
		o.JetStream = &JetStreamOptions{FanOut: []FanOut{
			{UDP: udpAddr, MTU: 60000},
			{JSONFile: jsonFile},
		}}
	}
	tc := startCollector(t, mod)
	sendAll(t, tc, "alpha", conts)
	sendAll(t, tc, "alpha", conts[len(conts)/2:]) // a resend of the tail
	js := waitArchived(t, tc)
	testenv.WaitFor(t, "the fan-outs to reach the stream's end", func() bool {
		js = fetchSnapshot(t, tc.metrics).JetStream
		for _, c := range js.Consumers {
			if c.StreamSeq != js.LastSeq {
				return false
			}
		}
		return len(js.Consumers) == 2
	})
	snap := fetchSnapshot(t, tc.metrics)
	if err := tc.stop(); err != nil {
		t.Fatal(err)
	}
	if js.Messages != uint64(len(conts)) {
		t.Errorf("stream holds %d messages, want %d (the resend stored once)", js.Messages, len(conts))
	}
	if snap.Server.InvalidContainers != 0 {
		t.Errorf("%d containers refused as invalid", snap.Server.InvalidContainers)
	}
	for _, c := range js.Consumers {
		if c.Skipped != 0 {
			t.Errorf("consumer %+v skipped payloads", c)
		}
	}
	// The archive holds the containers as received, in order.
	files, _ := filepath.Glob(filepath.Join(archive, "alpha", "*.nmsg"))
	var got []byte
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, b...)
	}
	if want := bytes.Join(conts, nil); !bytes.Equal(got, want) {
		t.Errorf("archive holds %d octets in %d files, want the %d octets of the %d containers as sent", len(got), len(files), len(want), len(conts))
	}
	rd := nmsg.NewReader(bytes.NewReader(got), nmsg.ReaderOptions{})
	n := 0
	for {
		if _, err := rd.Next(); err != nil {
			break
		}
		n++
	}
	if n != len(lines) {
		t.Errorf("archive reads back as %d records, want %d", n, len(lines))
	}
	b, err := os.ReadFile(jsonFile)
	if err != nil {
		t.Fatal(err)
	}
	if g := strings.Split(strings.TrimSuffix(string(b), "\n"), "\n"); strings.Join(g, "\n") != strings.Join(lines, "\n") {
		t.Errorf("%d JSON lines, want the %d of the records in order", len(g), len(lines))
	}
	testenv.WaitFor(t, "every record in the NMSG/UDP datagrams", func() bool {
		return udpPayloads() >= len(lines)
	})
}

// TestMsgIDSeq: the archiver reads a container's sequence fields from its message id rather
// than inflating it; an id that is not one msgID made for the sensor names nothing.
func TestMsgIDSeq(t *testing.T) {
	for _, c := range []struct {
		sensor string
		id     uint64
		seq    uint32
	}{{"alpha", 0, 0}, {"site1.sensor-2_x", 0xffffffffffffffff, 0xffffffff}, {"a", 0x1234, 77}} {
		if got := msgIDSeq(c.sensor, msgID(c.sensor, c.id, c.seq)); got != (containerSeq{id: c.id, seq: c.seq, ok: true, known: true}) {
			t.Errorf("%s: %+v", msgID(c.sensor, c.id, c.seq), got)
		}
	}
	for _, mid := range []string{"", "alpha", "alpha/12", "beta/12/3", "alpha/xyz/3", "alpha/12/-1", "alpha/12/4294967296", "alpha/12/3/4"} {
		if got := msgIDSeq("alpha", mid); got.known {
			t.Errorf("%q names %+v", mid, got)
		}
	}
}
