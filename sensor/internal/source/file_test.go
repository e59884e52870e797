package source

import (
	"bytes"
	"os"
	"strings"
	"testing"

	"github.com/sie-europe/dnssensor/sensor/internal/decode"
)

type frame struct {
	link decode.LinkType
	ts   int64
	data []byte
	wire int
}

func readAll(t *testing.T, path string) []frame {
	t.Helper()
	var out []frame
	_, err := ReadFile(path, func(l decode.LinkType, ts int64, f []byte, w int) {
		out = append(out, frame{l, ts, append([]byte(nil), f...), w})
	})
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return out
}

// TestPcapngEqualsPcap: the same capture as pcapng (made with editcap -F pcapng from
// ../../testdata/real/caps.pcap) gives the same frames, link type and nanosecond timestamps.
func TestPcapngEqualsPcap(t *testing.T) {
	a, b := readAll(t, "../../testdata/real/caps.pcap"), readAll(t, "testdata/caps.pcapng")
	if len(a) == 0 || len(a) != len(b) {
		t.Fatalf("%d frames from pcap, %d from pcapng", len(a), len(b))
	}
	for i := range a {
		if a[i].link != b[i].link || a[i].ts != b[i].ts || !bytes.Equal(a[i].data, b[i].data) || a[i].wire != b[i].wire {
			t.Fatalf("frame %d differs: %v/%d vs %v/%d", i, a[i].link, a[i].ts, b[i].link, b[i].ts)
		}
	}
}

func TestTruncatedAndBadFiles(t *testing.T) {
	data, err := os.ReadFile("../../testdata/real/caps.pcap")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cut := dir + "/cut.pcap"
	os.WriteFile(cut, data[:len(data)-7], 0o644)
	n, err := ReadFile(cut, func(decode.LinkType, int64, []byte, int) {})
	if err == nil || !strings.Contains(err.Error(), "truncated") || n == 0 {
		t.Errorf("cut file: %d frames, %v", n, err)
	}
	junk := dir + "/junk.pcap"
	os.WriteFile(junk, []byte("definitely not a capture file"), 0o644)
	if _, err := ReadFile(junk, func(decode.LinkType, int64, []byte, int) {}); err == nil {
		t.Error("junk accepted")
	}
	empty := dir + "/empty.pcap"
	os.WriteFile(empty, nil, 0o644)
	if _, err := ReadFile(empty, func(decode.LinkType, int64, []byte, int) {}); err == nil || !strings.Contains(err.Error(), "truncated") {
		t.Errorf("empty file: %v", err)
	}
}
