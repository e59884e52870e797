package source

import (
	"bytes"
	"os/exec"
	"testing"
	"time"

	"github.com/sie-europe/dnssensor/internal/testenv"
)

// TestRingPortDown: a ring on a port that is down waits for it instead of failing, and captures
// once the port is up; a port taken down later is the same quiet spell; a port removed ends the
// capture with an error naming it. At boot sensord may open a tap port before netconfd has
// brought it up: the poll failed ("packet poll failed", the kernel's ENETDOWN on the socket),
// sensord exited 1, and gokrazy's restart cost an emulated box 20-35 s without capture.
//
// It runs in a network namespace of its own (testenv.InOwnNetns).
func TestRingPortDown(t *testing.T) {
	if !testenv.InOwnNetns(t) {
		return
	}
	ip := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v\n%s", args, err, out)
		}
	}
	ip("link", "add", "ringdown0", "type", "veth", "peer", "name", "ringdown1")
	r, err := OpenRing(RingConfig{Iface: "ringdown0", Snaplen: 2048, BlockSize: 64 << 10, NumBlocks: 4, BlockTimeout: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()

	// Down: every read is a quiet one.
	quiet := func(when string) {
		t.Helper()
		for i := 0; i < 5; i++ {
			if _, _, _, _, err := r.Read(); err != nil && err != ErrRingTimeout {
				t.Fatalf("%s: read %d: %v, want a quiet read (ErrRingTimeout)", when, i, err)
			}
		}
	}
	quiet("bound while the port is down")

	send := testenv.FrameSender(t, "ringdown1")
	// The frame is sent again until it is read: a veth pair carries frames only once both ends
	// are up and their carrier is on, which the kernel reports a little after `ip link set up`.
	captured := func(marker string) {
		t.Helper()
		frame := append([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0, 0, 0, 0, 1, 0x88, 0xb5}, marker...)
		frame = append(frame, make([]byte, 64)...)
		deadline := time.Now().Add(testenv.Patience)
		lastSend := time.Time{}
		for {
			if time.Now().After(deadline) {
				t.Fatalf("frame %q not captured within %v", marker, testenv.Patience)
			}
			if time.Since(lastSend) > 100*time.Millisecond {
				send(frame)
				lastSend = time.Now()
			}
			got, _, _, _, err := r.Read()
			if err == ErrRingTimeout {
				continue
			}
			if err != nil {
				t.Fatalf("waiting for frame %q: %v", marker, err)
			}
			if bytes.Contains(got, []byte(marker)) {
				return
			}
		}
	}
	ip("link", "set", "ringdown1", "up")
	ip("link", "set", "ringdown0", "up")
	captured("first frame")

	ip("link", "set", "ringdown0", "down")
	quiet("the port taken down")
	ip("link", "set", "ringdown0", "up")
	captured("after the port came back")

	// Removed: an error naming the port, not quiet reads for ever.
	ip("link", "del", "ringdown0")
	deadline := time.Now().Add(testenv.Patience)
	for {
		_, _, _, _, err := r.Read()
		if err != nil && err != ErrRingTimeout {
			if !bytes.Contains([]byte(err.Error()), []byte("ringdown0")) {
				t.Errorf("removed port: %v, want an error naming ringdown0", err)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("removed port: still quiet reads")
		}
	}
}
