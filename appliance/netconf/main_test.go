package netconf

import (
	"net"
	"os"
	"testing"

	"github.com/sie-europe/dnssensor/appliance/netconf/netnstest"
	"golang.org/x/sys/unix"
)

// children are the parts of the tests that run inside a network namespace, in a re-executed test
// binary (see netnstest.Child).
var children = map[string]func() (any, error){
	"tap": func() (any, error) { return ConfigureTap(os.Getenv("NETC_IFACE")) },
	// send puts one frame on NETC_IFACE through a packet socket, as a rogue program on the box
	// could: the tap port's "nothing sent" check must see it.
	"send": func() (any, error) {
		ifi, err := net.InterfaceByName(os.Getenv("NETC_IFACE"))
		if err != nil {
			return nil, err
		}
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, 0)
		if err != nil {
			return nil, err
		}
		defer unix.Close(fd)
		frame := make([]byte, 60)
		copy(frame, []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0, 0, 0, 0, 1, 0x88, 0xb5}) // local experimental EtherType
		return nil, unix.Sendto(fd, frame, 0, &unix.SockaddrLinklayer{Ifindex: ifi.Index})
	},
}

func TestMain(m *testing.M) {
	netnstest.RunChild(children)
	os.Exit(m.Run())
}
