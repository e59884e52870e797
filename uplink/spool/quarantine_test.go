package spool

import (
	"bytes"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// validImage returns a sealed segment file holding records [from, from+n)
// with sequence seq.
func validImage(t testing.TB, seq uint64, from, n uint32) []byte {
	t.Helper()
	o := testOpts(t, false)
	p := mustProducer(t, o)
	p.mu.Lock()
	p.nextSeq = seq
	p.mu.Unlock()
	writeN(t, p, from, n)
	p.Close()
	b, err := os.ReadFile(filepath.Join(o.Dir, segName(seq)))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

type damage struct {
	name    string
	mangle  func(b []byte) []byte
	records uint64 // what the ledger must count
}

func damages(t testing.TB) []damage {
	flip := func(off int) func([]byte) []byte {
		return func(b []byte) []byte {
			b = bytes.Clone(b)
			b[off] ^= 0x40
			return b
		}
	}
	rnd := rand.New(rand.NewPCG(1, 2))
	garbage := make([]byte, 3000)
	for i := range garbage {
		garbage[i] = byte(rnd.Uint32())
	}
	return []damage{
		{"truncated body", func(b []byte) []byte { return b[:len(b)-100] }, 10},
		{"truncated header", func(b []byte) []byte { return b[:30] }, 0},
		{"empty", func(b []byte) []byte { return nil }, 0},
		{"body bit flip", flip(headerSize + 200), 10},
		{"first container header", flip(headerSize + 1), 10},
		{"record count", flip(27), 0}, // header CRC catches it
		{"appended garbage", func(b []byte) []byte { return append(bytes.Clone(b), "garbage"...) }, 10},
		{"garbage", func([]byte) []byte { return garbage }, 0},
		{"other sequence", func([]byte) []byte { return validImage(t, 999, 0, 10) }, 10},
	}
}

// TestQuarantine puts damaged segments between intact ones in both tiers:
// the consumer delivers exactly the intact ones, in order, and every
// damaged one ends in quarantine and in the ledger.
func TestQuarantine(t *testing.T) {
	for _, atStart := range []bool{false, true} {
		t.Run(map[bool]string{false: "consumer", true: "producer start-up"}[atStart], func(t *testing.T) {
			o := testOpts(t, true)
			for _, d := range []string{o.Dir, o.DiskDir} {
				os.MkdirAll(d, 0o755)
			}
			var want []uint32
			var wantLoss Counter
			seq := uint64(100)
			for i, d := range damages(t) {
				dir := []string{o.Dir, o.DiskDir}[i%2]
				good := validImage(t, seq, uint32(seq)*100, 10)
				os.WriteFile(filepath.Join(dir, segName(seq)), good, 0o644)
				want = append(want, seqRange(uint32(seq)*100, 10)...)
				seq++
				bad := d.mangle(validImage(t, seq, uint32(seq)*100, 10))
				os.WriteFile(filepath.Join(dir, segName(seq)), bad, 0o644)
				wantLoss.add(Counter{Segments: 1, Records: d.records, Bytes: uint64(len(bad))})
				seq++
			}
			if atStart {
				p := mustProducer(t, o)
				p.Close()
				if s := p.Stats().Quarantined; s.Segments == 0 {
					t.Errorf("producer quarantined nothing at start-up")
				}
			}
			c := mustConsumer(t, o)
			ids, _ := drain(t, c)
			if diff := cmp.Diff(want, ids); diff != "" {
				t.Errorf("delivered records (-want +got):\n%s", diff)
			}
			if got := mustLedger(t, o.DiskDir).Quarantined; got != wantLoss {
				t.Errorf("ledger quarantined %+v, want %+v", got, wantLoss)
			}
			n := 0
			for _, d := range []string{o.Dir, o.DiskDir} {
				des, _ := os.ReadDir(filepath.Join(d, quarantineDir))
				n += len(des)
			}
			if n != len(damages(t)) {
				t.Errorf("%d files in quarantine, want %d", n, len(damages(t)))
			}
		})
	}
}
