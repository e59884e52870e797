package collector

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/sie-europe/dnssensor/nmsg"
	"github.com/sie-europe/dnssensor/uplink/sielink"
)

// TestDuplicatesRecognised: a container delivered again (same sequence_id and sequence, as a
// sensor's spool resends after a broken connection) is counted and stored once; containers
// without sequence fields are always stored.
func TestDuplicatesRecognised(t *testing.T) {
	dir := t.TempDir()
	s, err := NewStore(StoreOptions{Dir: dir, Rotate: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	fw, _ := nmsg.NewFileWriter(&buf, nmsg.FileOptions{CRC: true, MaxSize: 1024, SequenceID: 42})
	for i := 0; i < 20; i++ {
		fw.Write(&nmsg.Payload{Vid: 1, Msgtype: 9, TimeSec: int64(i), Data: bytes.Repeat([]byte{byte(i)}, 200)})
	}
	fw.Close()
	var conts [][]byte
	for b := buf.Bytes(); len(b) > 0; {
		n := nmsg.HeaderSize + int(uint32(b[6])<<24|uint32(b[7])<<16|uint32(b[8])<<8|uint32(b[9]))
		conts = append(conts, b[:n])
		b = b[n:]
	}
	var pb bytes.Buffer
	pw, _ := nmsg.NewFileWriter(&pb, nmsg.FileOptions{})
	pw.Write(&nmsg.Payload{Vid: 1, Msgtype: 9, Data: []byte("no sequence")})
	pw.Close()
	plain := pb.Bytes()
	deliver := func(c []byte) {
		if err := s.Deliver(&sielink.Delivery{Sensor: "s1", Payload: &sielink.Payload{Data: c}}); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range conts {
		deliver(c)
	}
	for _, c := range conts[len(conts)/2:] { // the resend of a broken connection's tail
		deliver(c)
	}
	deliver(plain)
	deliver(plain)
	s.Close()
	st := s.Stats()["s1"]
	if st.Duplicates != uint64(len(conts)-len(conts)/2) || st.Containers != uint64(len(conts)+2) {
		t.Errorf("duplicates %d containers %d; want %d and %d", st.Duplicates, st.Containers, len(conts)-len(conts)/2, len(conts)+2)
	}
	files, _ := filepath.Glob(filepath.Join(dir, "s1", "*.nmsg"))
	n := 0
	for _, f := range files {
		b, _ := os.ReadFile(f)
		rd := nmsg.NewReader(bytes.NewReader(b), nmsg.ReaderOptions{})
		for {
			if _, err := rd.Next(); err != nil {
				break
			}
			n++
		}
	}
	if n != 22 {
		t.Errorf("%d payloads stored, want 22 (20 once, the unsequenced one twice)", n)
	}
}

// TestForwardAfterStoredResend: a container stored but not forwarded (the forward spool refused
// it, the session ended) is forwarded when the sensor resends it, and counts as new (its
// linkLoss was not counted); the resend of one that went both ways is neither forwarded again
// nor counted.
func TestForwardAfterStoredResend(t *testing.T) {
	s, err := NewStore(StoreOptions{Dir: t.TempDir(), Rotate: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var buf bytes.Buffer
	fw, _ := nmsg.NewFileWriter(&buf, nmsg.FileOptions{SequenceID: 7})
	fw.Write(&nmsg.Payload{Vid: 1, Msgtype: 9, Data: []byte("record")})
	fw.Close()
	c := buf.Bytes()
	fail, forwarded := true, 0
	h := &storeForward{store: s, fwd: sielink.HandlerFunc(func(*sielink.Delivery) error {
		if fail {
			return errors.New("forward spool full")
		}
		forwarded++
		return nil
	})}
	deliver := func() (*sielink.Delivery, error) {
		d := &sielink.Delivery{Sensor: "s1", Payload: &sielink.Payload{Data: c}}
		return d, h.Deliver(d)
	}
	if _, err := deliver(); err == nil {
		t.Fatal("forward failure not returned")
	}
	fail = false
	d, err := deliver()
	if err != nil || d.Duplicate || forwarded != 1 {
		t.Errorf("resend after a failed forward: err %v, duplicate %v, forwarded %d; want forwarded once, not a duplicate", err, d.Duplicate, forwarded)
	}
	d, err = deliver()
	if err != nil || !d.Duplicate || forwarded != 1 {
		t.Errorf("resend of a forwarded container: err %v, duplicate %v, forwarded %d; want a duplicate, not forwarded again", err, d.Duplicate, forwarded)
	}
	if st := s.Stats()["s1"]; st.Containers != 1 || st.Duplicates != 2 {
		t.Errorf("store stats %+v", st)
	}
}

// TestSeenWindowGrowsWithUse: the recent containers a sensor's file remembers to recognise a
// resend take memory as containers come, not the whole window (2.3 MB) at the first one: a
// collector of a hundred sensors that each sent a few containers held 230 MB for it. The
// window still forgets the oldest beyond seenWindow.
func TestSeenWindowGrowsWithUse(t *testing.T) {
	// The least of a few measurements: goroutines left by other tests may allocate meanwhile,
	// which only ever adds to one.
	least := ^uint64(0)
	for range 5 {
		var fresh sensorFile
		var m0, m1 runtime.MemStats
		runtime.ReadMemStats(&m0)
		fresh.remember(seqKey{1, 1})
		runtime.ReadMemStats(&m1)
		least = min(least, m1.TotalAlloc-m0.TotalAlloc)
	}
	if least > 256<<10 {
		t.Errorf("the first container remembered allocated %d octets", least)
	}
	var sf sensorFile
	sf.remember(seqKey{1, 1})
	for i := 2; i <= seenWindow+1; i++ {
		sf.remember(seqKey{1, uint32(i)})
	}
	if _, ok := sf.seen[seqKey{1, 1}]; ok {
		t.Error("the oldest container is still remembered beyond the window")
	}
	for _, k := range []seqKey{{1, 2}, {1, seenWindow + 1}} {
		if _, ok := sf.seen[k]; !ok {
			t.Errorf("%v forgotten within the window", k)
		}
	}
	if len(sf.seen) != seenWindow {
		t.Errorf("%d remembered, want %d", len(sf.seen), seenWindow)
	}
}
