package source

import (
	"errors"
	"fmt"
	"net"
	"os"
	"reflect"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unsafe"

	"github.com/gopacket/gopacket/afpacket"
	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// RingConfig describes one capture port's AF_PACKET socket.
type RingConfig struct {
	Iface   string
	Snaplen int // accepted frames are cut here (by the BPF filter's return value)
	// BlockSize × NumBlocks is the ring's memory. TPACKET_V3 packs frames of any length into
	// blocks, so a frame up to BlockSize minus the block header fits: jumbo frames and GRO
	// super-frames need no special frame size.
	BlockSize, NumBlocks int
	// BlockTimeout retires a partly filled block; RetireDelay(BlockTimeout) bounds how long a
	// frame waits in the kernel before user space can read it (the two-port merge relies on it).
	BlockTimeout time.Duration
	Filter       []bpf.RawInstruction // nil: no kernel filter
}

// ErrRingTimeout is returned by Read when no frame arrived within the poll interval.
var ErrRingTimeout = afpacket.ErrTimeout

// Ring is one TPACKET_V3 socket, promiscuous, bound to one interface. Read is for one goroutine;
// KernelStats may be called from another.
type Ring struct {
	tp      *afpacket.TPacket
	fd      int // tp's socket (-1: unknown), for the error behind a failed poll
	ifindex int // the port's index at open: a port removed and made again is another port
	Name    string
}

// OpenRing opens and configures the socket.
func OpenRing(c RingConfig) (*Ring, error) {
	if t, err := os.ReadFile("/sys/class/net/" + c.Iface + "/type"); err == nil {
		// Ethernet (1) and loopback (772) frames start with an Ethernet header; the decoder and
		// the kernel filter assume one.
		if s := strings.TrimSpace(string(t)); s != "1" && s != "772" {
			return nil, fmt.Errorf("%s: link type %s is not Ethernet", c.Iface, s)
		}
	}
	tp, err := afpacket.NewTPacket(
		afpacket.OptInterface(c.Iface),
		afpacket.OptTPacketVersion(afpacket.TPacketVersion3),
		afpacket.OptFrameSize(afpacket.DefaultFrameSize),
		afpacket.OptBlockSize(c.BlockSize),
		afpacket.OptNumBlocks(c.NumBlocks),
		afpacket.OptBlockTimeout(c.BlockTimeout),
		// Short polls bound how long a partly filled batch waits in the reader (sensor/internal/live).
		afpacket.OptPollTimeout(c.BlockTimeout),
		// A tag the NIC stripped into tp_vlan_tci is put back in front of the ethertype, so
		// frames look as on the wire and the decoder walks every tag itself.
		afpacket.OptAddVLANHeader(true),
	)
	if err != nil {
		return nil, fmt.Errorf("%s: opening TPACKET_V3 ring: %w", c.Iface, err)
	}
	if c.Filter != nil {
		if err := tp.SetBPF(c.Filter); err != nil {
			tp.Close()
			return nil, fmt.Errorf("%s: attaching the BPF filter: %w", c.Iface, err)
		}
	}
	if err := tp.SetPromiscuous(true); err != nil {
		tp.Close()
		return nil, fmt.Errorf("%s: promiscuous mode: %w", c.Iface, err)
	}
	r := &Ring{tp: tp, fd: -1, Name: c.Iface}
	if ifc, err := net.InterfaceByName(c.Iface); err == nil {
		r.ifindex = ifc.Index
	}
	// afpacket keeps its socket unexported, and only the socket holds why a poll failed.
	if f := reflect.ValueOf(tp).Elem().FieldByName("fd"); f.IsValid() && f.CanInt() {
		r.fd = int(f.Int())
	}
	return r, nil
}

// Read returns the next frame (valid until the next Read), its ring timestamp in ns, its length
// on the wire and whether the kernel reported an offloaded VLAN tag.
func (r *Ring) Read() (frame []byte, ts int64, wireLen int, vlan bool, err error) {
	data, ci, err := r.tp.ZeroCopyReadPacketData()
	if errors.Is(err, afpacket.ErrPoll) {
		err = r.pollErr()
	}
	if err != nil {
		return nil, 0, 0, false, err
	}
	return data, ci.Timestamp.UnixNano(), ci.Length, len(ci.AncillaryData) > 0, nil
}

// pollErr reads, and so clears, the socket error behind a poll that reported POLLERR. A port that
// is down leaves ENETDOWN there: bound while down (at boot, sensord can open a tap port before
// netconfd has made it silent and brought it up) or taken down later. The kernel resumes delivery
// when the port comes up again, so that is a quiet spell (ErrRingTimeout, no frames to lose), not
// the end of the capture: ending it made gokrazy restart sensord, 20-35 s without capture on an
// emulated box. A port that is gone is the end.
func (r *Ring) pollErr() error {
	if r.fd < 0 {
		return fmt.Errorf("%s: %w", r.Name, afpacket.ErrPoll)
	}
	e, err := unix.GetsockoptInt(r.fd, unix.SOL_SOCKET, unix.SO_ERROR)
	if err != nil {
		return fmt.Errorf("%s: %w (reading its error: %v)", r.Name, afpacket.ErrPoll, err)
	}
	if syscall.Errno(e) != unix.ENETDOWN {
		return fmt.Errorf("%s: %w: %v", r.Name, afpacket.ErrPoll, syscall.Errno(e))
	}
	if ifc, err := net.InterfaceByName(r.Name); err != nil || ifc.Index != r.ifindex {
		return fmt.Errorf("%s: the port is gone (%w: %v)", r.Name, afpacket.ErrPoll, syscall.Errno(e))
	}
	return ErrRingTimeout
}

// KernelStats returns the socket's cumulative PACKET_STATISTICS: frames the kernel passed the
// filter, frames it dropped because the ring was full, and times the queue froze.
func (r *Ring) KernelStats() (packets, drops, freezes uint64, err error) {
	_, s3, err := r.tp.SocketStats()
	if err != nil {
		return 0, 0, 0, err
	}
	return uint64(s3.Packets()), uint64(s3.Drops()), uint64(s3.QueueFreezes()), nil
}

// Close releases the socket and the ring; Read must have returned.
func (r *Ring) Close() { r.tp.Close() }

// Offloads reports whether GRO or LRO is on for iface (SIOCETHTOOL). Either merges frames into
// super-frames beyond the MTU before AF_PACKET sees them, so a capture port should have both
// off; err is set when the driver does not answer.
func Offloads(iface string) (gro, lro bool, err error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return false, false, err
	}
	defer unix.Close(fd)
	get := func(cmd uint32) (uint32, error) {
		v := struct{ cmd, data uint32 }{cmd: cmd}
		var ifr struct {
			name [unix.IFNAMSIZ]byte
			data uintptr
			_    [16]byte
		}
		copy(ifr.name[:], iface)
		ifr.data = uintptr(unsafe.Pointer(&v))
		if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.SIOCETHTOOL, uintptr(unsafe.Pointer(&ifr))); e != 0 {
			return 0, e
		}
		return v.data, nil
	}
	g, err := get(unix.ETHTOOL_GGRO)
	if err != nil {
		return false, false, fmt.Errorf("%s: ETHTOOL_GGRO: %w", iface, err)
	}
	f, err := get(unix.ETHTOOL_GFLAGS)
	if err != nil && !errors.Is(err, syscall.EOPNOTSUPP) {
		return g != 0, false, fmt.Errorf("%s: ETHTOOL_GFLAGS: %w", iface, err)
	}
	const ethFlagLRO = 1 << 15
	return g != 0, f&ethFlagLRO != 0, nil
}

// IfaceMTU reads an interface's MTU, for choosing a snaplen that keeps jumbo frames whole.
func IfaceMTU(iface string) int {
	b, err := os.ReadFile("/sys/class/net/" + iface + "/mtu")
	if err != nil {
		return 0
	}
	n, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return n
}
