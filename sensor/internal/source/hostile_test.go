package source

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/binary"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"

	"github.com/sie-europe/dnssensor/sensor/internal/decode"
)

// TestPcapngMixedLinkTypes: a pcapng with an Ethernet and a raw-IP interface yields every frame of
// both, each with its own interface's link type (the default reader skipped the second
// interface's frames without a word: 5 of 10 lost).
func TestPcapngMixedLinkTypes(t *testing.T) {
	var b bytes.Buffer
	w, err := pcapgo.NewNgWriterInterface(&b, pcapgo.NgInterface{LinkType: layers.LinkTypeEthernet, SnapLength: 65535}, pcapgo.DefaultNgWriterOptions)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := w.AddInterface(pcapgo.NgInterface{LinkType: layers.LinkTypeRaw, SnapLength: 65535})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 10; i++ {
		ci := gopacket.CaptureInfo{Timestamp: time.Unix(1700000000+int64(i), 0), CaptureLength: 40, Length: 40}
		if i%2 == 1 {
			ci.InterfaceIndex = raw
		}
		if err := w.WritePacket(ci, make([]byte, 40)); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	got := map[decode.LinkType]int{}
	n, err := Read(context.Background(), &b, func(l decode.LinkType, _ int64, _ []byte, _ int) { got[l]++ })
	if err != nil || n != 10 || got[decode.LinkEthernet] != 5 || got[decode.LinkRaw] != 5 {
		t.Fatalf("%d frames, %v, per link type %v; want 10: 5 Ethernet, 5 raw", n, err, got)
	}
}

// hugeRecord is a pcap (or pcapng) whose first record claims 512 MiB and carries 8 MiB of it.
func hugePcap(t *testing.T, gz bool) []byte {
	var b bytes.Buffer
	hdr := make([]byte, 24)
	binary.LittleEndian.PutUint32(hdr[0:], 0xa1b2c3d4)
	binary.LittleEndian.PutUint16(hdr[4:], 2)
	binary.LittleEndian.PutUint16(hdr[6:], 4)
	binary.LittleEndian.PutUint32(hdr[16:], 0x7fffffff) // snaplen as hostile as the record
	binary.LittleEndian.PutUint32(hdr[20:], 1)
	b.Write(hdr)
	rec := make([]byte, 16)
	binary.LittleEndian.PutUint32(rec[8:], 512<<20)
	binary.LittleEndian.PutUint32(rec[12:], 512<<20)
	b.Write(rec)
	b.Write(make([]byte, 8<<20))
	if !gz {
		return b.Bytes()
	}
	var z bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&z, gzip.BestSpeed)
	zw.Write(b.Bytes())
	zw.Close()
	return z.Bytes()
}

func hugePcapng() []byte {
	var b bytes.Buffer
	le := binary.LittleEndian
	shb := make([]byte, 28)
	le.PutUint32(shb[0:], 0x0a0d0d0a)
	le.PutUint32(shb[4:], 28)
	le.PutUint32(shb[8:], 0x1a2b3c4d)
	le.PutUint16(shb[12:], 1)
	le.PutUint64(shb[16:], ^uint64(0))
	le.PutUint32(shb[24:], 28)
	b.Write(shb)
	idb := make([]byte, 20)
	le.PutUint32(idb[0:], 1)
	le.PutUint32(idb[4:], 20)
	le.PutUint16(idb[8:], 1)
	le.PutUint32(idb[12:], 0) // no snap length
	le.PutUint32(idb[16:], 20)
	b.Write(idb)
	epb := make([]byte, 28)
	le.PutUint32(epb[0:], 6)
	le.PutUint32(epb[4:], 32+512<<20)
	le.PutUint32(epb[20:], 512<<20)
	le.PutUint32(epb[24:], 512<<20)
	b.Write(epb)
	b.Write(make([]byte, 8<<20))
	return b.Bytes()
}

// TestHugeRecordCapped: a record header that claims 512 MiB is refused with a clear error before
// its bytes are buffered (a compressed capture made the reader hold 1.77 GiB).
func TestHugeRecordCapped(t *testing.T) {
	for _, tc := range []struct {
		name string
		data []byte
	}{
		{"pcap", hugePcap(t, false)},
		{"pcap.gz", hugePcap(t, true)},
		{"pcapng", hugePcapng()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			n, err := Read(context.Background(), bytes.NewReader(tc.data), func(decode.LinkType, int64, []byte, int) {})
			runtime.ReadMemStats(&after)
			alloc := after.TotalAlloc - before.TotalAlloc
			t.Logf("%d frames, err %v, allocated %d KiB", n, err, alloc>>10)
			if err == nil || !strings.Contains(err.Error(), "262144") {
				t.Errorf("error %v does not name the 262144-octet frame limit", err)
			}
			if alloc > 4<<20 {
				t.Errorf("allocated %d KiB reading one hostile record; want at most 4 MiB", alloc>>10)
			}
		})
	}
}
