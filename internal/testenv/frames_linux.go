package testenv

import (
	"errors"
	"net"
	"testing"

	"golang.org/x/sys/unix"
)

// FrameSender returns a function that sends one Ethernet frame out of ifname (the far end of a
// veth pair a test made, in its own network namespace) to the broadcast address. A frame the
// kernel refuses because the link is not up yet (ENETDOWN) is not an error: a veth carries frames
// only once both ends have carrier, a moment after `ip link set up`, so callers send again until
// they see the frame arrive. The socket is closed when the test ends.
func FrameSender(t testing.TB, ifname string) func(frame []byte) {
	t.Helper()
	ifc, err := net.InterfaceByName(ifname)
	if err != nil {
		t.Fatal(err)
	}
	s, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(s) })
	to := &unix.SockaddrLinklayer{Ifindex: ifc.Index, Halen: 6, Addr: [8]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}}
	return func(frame []byte) {
		t.Helper()
		if err := unix.Sendto(s, frame, 0, to); err != nil && !errors.Is(err, unix.ENETDOWN) {
			t.Fatal(err)
		}
	}
}
