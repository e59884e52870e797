package nmsgudp

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/sie-europe/dnssensor/nmsg"
)

func containers(t *testing.T, n, size int) ([]byte, [][]byte) {
	t.Helper()
	var buf bytes.Buffer
	fw, err := nmsg.NewFileWriter(&buf, nmsg.FileOptions{CRC: true})
	if err != nil {
		t.Fatal(err)
	}
	var want [][]byte
	for i := 0; i < n; i++ {
		d := bytes.Repeat([]byte(fmt.Sprintf("%06d", i)), size/6+i%50)
		want = append(want, d)
		if err := fw.Write(&nmsg.Payload{Vid: 1, Msgtype: 9, TimeSec: int64(i), Data: d}); err != nil {
			t.Fatal(err)
		}
	}
	fw.Close()
	return buf.Bytes(), want
}

// TestDeliveryOverLoopback sends payloads of all sizes (fragmented and not, with and without zlib)
// to a receiver on loopback that applies the wire rules: every payload arrives intact, in order, no
// datagram exceeds the MTU, sequence numbers count up.
func TestDeliveryOverLoopback(t *testing.T) {
	for _, tc := range []struct {
		mtu  int
		zlib bool
	}{{1280, false}, {1280, true}, {512, false}, {8192, true}} {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		seg, want := containers(t, 200, 300)
		s, err := New(Config{Addr: pc.LocalAddr().String(), MTU: tc.mtu, Zlib: tc.zlib, Rate: 20000})
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan [][]byte)
		go func() {
			ra := nmsg.NewReassembler(nmsg.ReassemblerOptions{})
			var got [][]byte
			buf := make([]byte, 65536)
			for len(got) < len(want) {
				pc.SetReadDeadline(time.Now().Add(5 * time.Second))
				n, from, err := pc.ReadFrom(buf)
				if err != nil {
					break
				}
				if n > tc.mtu {
					t.Errorf("datagram of %d octets over MTU %d", n, tc.mtu)
				}
				ps, err := ra.Feed(from.String(), buf[:n], time.Now())
				if err != nil {
					t.Errorf("receiver: %v", err)
				}
				for _, p := range ps {
					got = append(got, append([]byte(nil), p.Data...))
				}
			}
			done <- got
		}()
		if err := s.SendContainers(context.Background(), seg); err != nil {
			t.Fatal(err)
		}
		got := <-done
		if len(got) != len(want) {
			t.Fatalf("mtu %d zlib %v: %d payloads arrived, want %d", tc.mtu, tc.zlib, len(got), len(want))
		}
		for i := range want {
			if !bytes.Equal(got[i], want[i]) {
				t.Fatalf("payload %d differs", i)
			}
		}
		s.Close()
		pc.Close()
	}
}

// TestRefusedIsNotFatal: nobody listens (ICMP port unreachable); sending goes on and is counted.
func TestRefusedIsNotFatal(t *testing.T) {
	pc, _ := net.ListenPacket("udp", "127.0.0.1:0")
	addr := pc.LocalAddr().String()
	pc.Close()
	s, err := New(Config{Addr: addr})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	seg, _ := containers(t, 50, 2000)
	for i := 0; i < 3; i++ {
		if err := s.SendContainers(context.Background(), seg); err != nil {
			t.Fatalf("send %d: %v", i, err)
		}
	}
	if s.Stats.Refused.Load() == 0 {
		t.Error("no ECONNREFUSED counted")
	}
	if s.Stats.Payloads.Load() != 150 {
		t.Errorf("payloads %d, want 150", s.Stats.Payloads.Load())
	}
}

func TestRateLimitAndCancel(t *testing.T) {
	pc, _ := net.ListenPacket("udp", "127.0.0.1:0")
	defer pc.Close()
	s, _ := New(Config{Addr: pc.LocalAddr().String(), Rate: 100})
	defer s.Close()
	seg, _ := containers(t, 100, 1200) // about one datagram each
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := s.SendContainers(ctx, seg)
	if err == nil || time.Since(start) > time.Second {
		t.Fatalf("SendContainers = %v after %v, want a context error near 200ms", err, time.Since(start))
	}
	if d := s.Stats.Datagrams.Load(); d > 40 {
		t.Errorf("%d datagrams in 200ms at 100/s", d)
	}
}

func TestGarbageSegmentCounted(t *testing.T) {
	pc, _ := net.ListenPacket("udp", "127.0.0.1:0")
	defer pc.Close()
	s, _ := New(Config{Addr: pc.LocalAddr().String()})
	defer s.Close()
	if err := s.SendContainers(context.Background(), []byte("this is not nmsg at all")); err != nil {
		t.Fatal(err)
	}
	if s.Stats.BadInput.Load() != 1 {
		t.Errorf("BadInput %d", s.Stats.BadInput.Load())
	}
}
