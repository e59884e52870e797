package app

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sie-europe/dnssensor/nmsg"
	"github.com/sie-europe/dnssensor/uplink/spool"
)

// TestSpoolOutput: sensord -spool delivers exactly the payloads -w writes, and on exit the RAM
// tier has been sealed and moved to the disk tier.
func TestSpoolOutput(t *testing.T) {
	dir := t.TempDir()
	ram, disk, w := filepath.Join(dir, "ram"), filepath.Join(dir, "disk"), filepath.Join(dir, "out.nmsg")
	var stderr bytes.Buffer
	code := Main(context.Background(), []string{"-r", "../../testdata/real/basic.pcap,../../testdata/real/frag.pcap", "-resolver", realResolvers, "-rd", "any",
		"-w", w, "-spool", ram, "-spool-disk", disk, "-spool-segment-size", "8192"}, io.Discard, &stderr)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	if !strings.Contains(stderr.String(), "spool_records=") {
		t.Errorf("stats line without spool counters: %s", stderr.String())
	}
	want := payloads(t, readFile(t, w))
	if len(want) == 0 {
		t.Fatal("no records in the example capture")
	}
	if n, _ := os.ReadDir(ram); countSegs(n) != 0 {
		t.Errorf("RAM tier not moved to disk on exit")
	}
	c, err := spool.OpenConsumer(spool.Options{Dir: ram, DiskDir: disk, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var got [][]byte
	var segs int
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		s, err := c.Next(ctx)
		cancel()
		if err != nil {
			break
		}
		segs++
		got = append(got, payloads(t, s.Body())...)
		c.Ack(s)
	}
	if len(got) != len(want) {
		t.Fatalf("spool delivered %d payloads in %d segments, -w wrote %d", len(got), segs, len(want))
	}
	for i := range want {
		if !bytes.Equal(got[i], want[i]) {
			t.Fatalf("payload %d differs between -spool and -w", i)
		}
	}
}

func countSegs(des []os.DirEntry) int {
	n := 0
	for _, de := range des {
		if strings.HasSuffix(de.Name(), ".seg") {
			n++
		}
	}
	return n
}

func readFile(t *testing.T, name string) []byte {
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func payloads(t *testing.T, b []byte) [][]byte {
	var out [][]byte
	rd := nmsg.NewReader(bytes.NewReader(b), nmsg.ReaderOptions{})
	for {
		p, err := rd.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, bytes.Clone(p.Data))
	}
}
