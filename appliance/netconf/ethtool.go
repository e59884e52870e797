package netconf

import (
	"encoding/binary"
	"fmt"
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Offloads are driven through the SIOCETHTOOL feature ioctls (ETHTOOL_GFEATURES/SFEATURES, with
// names from the ETH_SS_FEATURES string set), the interface `ethtool -K` uses. It is a few dozen
// lines against golang.org/x/sys/unix; mdlayher/ethtool speaks ethtool netlink but has no feature
// messages, so it could report a link but not turn GRO off.

const (
	ethtoolGStrings  = 0x1b
	ethtoolGSSetInfo = 0x37
	ethtoolGFeatures = 0x3a
	ethtoolSFeatures = 0x3b
	ethSSFeatures    = 4
	ethGStringLen    = 32
)

// ifreqData is struct ifreq with the ifr_data member of its union.
type ifreqData struct {
	name [unix.IFNAMSIZ]byte
	data unsafe.Pointer
	_    [24 - unsafe.Sizeof(uintptr(0))]byte
}

// ethtool issues one SIOCETHTOOL request on iface with buf (which starts with the command word) as
// ifr_data, and returns the ioctl's non-negative result.
func ethtool(iface string, buf []byte) (int, error) {
	var ifr ifreqData
	if len(iface) >= len(ifr.name) {
		return 0, fmt.Errorf("interface name %q too long", iface)
	}
	copy(ifr.name[:], iface)
	ifr.data = unsafe.Pointer(&buf[0])
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("ethtool socket: %w", err)
	}
	defer unix.Close(fd)
	r, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.SIOCETHTOOL, uintptr(unsafe.Pointer(&ifr)))
	runtime.KeepAlive(buf)
	if errno != 0 {
		return 0, errno
	}
	return int(r), nil
}

// feature is one named entry of a device's feature set.
type feature struct {
	available, requested, active, neverChanged bool
}

// featureSet is what ETHTOOL_GFEATURES says of a device, by name.
type featureSet struct {
	names  []string // index = feature bit
	byName map[string]feature
}

var ne = binary.NativeEndian

// featureNames reads the ETH_SS_FEATURES string set of iface.
func featureNames(iface string) ([]string, error) {
	// struct ethtool_sset_info { u32 cmd; u32 reserved; u64 sset_mask; u32 data[]; }
	info := make([]byte, 16+4)
	ne.PutUint32(info[0:], ethtoolGSSetInfo)
	ne.PutUint64(info[8:], 1<<ethSSFeatures)
	if _, err := ethtool(iface, info); err != nil {
		return nil, fmt.Errorf("ETHTOOL_GSSET_INFO on %s: %w", iface, err)
	}
	if ne.Uint64(info[8:])&(1<<ethSSFeatures) == 0 {
		return nil, fmt.Errorf("%s has no feature string set", iface)
	}
	n := int(ne.Uint32(info[16:]))
	// A device has a few dozen features (64 in Linux 6.x); a count far beyond that is a broken
	// reply, not a reason to allocate.
	if n <= 0 || n > 1024 {
		return nil, fmt.Errorf("%s reports %d features", iface, n)
	}
	// struct ethtool_gstrings { u32 cmd; u32 string_set; u32 len; u8 data[]; }
	gs := make([]byte, 12+n*ethGStringLen)
	ne.PutUint32(gs[0:], ethtoolGStrings)
	ne.PutUint32(gs[4:], ethSSFeatures)
	ne.PutUint32(gs[8:], uint32(n))
	if _, err := ethtool(iface, gs); err != nil {
		return nil, fmt.Errorf("ETHTOOL_GSTRINGS on %s: %w", iface, err)
	}
	names := make([]string, n)
	for i := range names {
		s := gs[12+i*ethGStringLen : 12+(i+1)*ethGStringLen]
		for j, c := range s {
			if c == 0 {
				s = s[:j]
				break
			}
		}
		names[i] = string(s)
	}
	return names, nil
}

func blocks(n int) int { return (n + 31) / 32 }

// getFeatures reads the feature state of iface.
func getFeatures(iface string) (featureSet, error) {
	names, err := featureNames(iface)
	if err != nil {
		return featureSet{}, err
	}
	nb := blocks(len(names))
	// struct ethtool_gfeatures { u32 cmd; u32 size; struct { u32 available, requested, active,
	// never_changed; } features[size]; }
	buf := make([]byte, 8+nb*16)
	ne.PutUint32(buf[0:], ethtoolGFeatures)
	ne.PutUint32(buf[4:], uint32(nb))
	if _, err := ethtool(iface, buf); err != nil {
		return featureSet{}, fmt.Errorf("ETHTOOL_GFEATURES on %s: %w", iface, err)
	}
	fs := featureSet{names: names, byName: make(map[string]feature, len(names))}
	for i, name := range names {
		if name == "" {
			continue
		}
		b := buf[8+(i/32)*16:]
		bit := uint32(1) << (i % 32)
		fs.byName[name] = feature{
			available:    ne.Uint32(b[0:])&bit != 0,
			requested:    ne.Uint32(b[4:])&bit != 0,
			active:       ne.Uint32(b[8:])&bit != 0,
			neverChanged: ne.Uint32(b[12:])&bit != 0,
		}
	}
	return fs, nil
}

// setFeaturesOff requests that the named features of iface be off; names the device lacks are
// ignored. The kernel applies what it can; the caller reads the state back.
func setFeaturesOff(iface string, fs featureSet, off []string) error {
	nb := blocks(len(fs.names))
	// struct ethtool_sfeatures { u32 cmd; u32 size; struct { u32 valid, requested; } features[size]; }
	buf := make([]byte, 8+nb*8)
	ne.PutUint32(buf[0:], ethtoolSFeatures)
	ne.PutUint32(buf[4:], uint32(nb))
	any := false
	for i, name := range fs.names {
		for _, o := range off {
			if name != o {
				continue
			}
			f := fs.byName[name]
			if !f.active && !f.requested {
				continue
			}
			b := buf[8+(i/32)*8:]
			// valid marks the bit as changed; requested stays 0 (off).
			ne.PutUint32(b[0:], ne.Uint32(b[0:])|1<<(i%32))
			any = true
		}
	}
	if !any {
		return nil
	}
	// A positive result (ETHTOOL_F_WISH, _COMPAT) says some wish was not granted: the read-back
	// reports which.
	if _, err := ethtool(iface, buf); err != nil {
		return fmt.Errorf("ETHTOOL_SFEATURES on %s: %w", iface, err)
	}
	return nil
}
