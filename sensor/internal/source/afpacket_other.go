//go:build !linux

package source

import (
	"errors"
	"time"

	"golang.org/x/net/bpf"
)

// RingConfig describes one capture port's AF_PACKET socket (Linux only).
type RingConfig struct {
	Iface                string
	Snaplen              int
	BlockSize, NumBlocks int
	BlockTimeout         time.Duration
	Filter               []bpf.RawInstruction
}

// ErrRingTimeout is returned by Read when no frame arrived within the poll interval.
var ErrRingTimeout = errors.New("timeout")

// Ring is an AF_PACKET socket; live capture needs Linux.
type Ring struct{ Name string }

func OpenRing(c RingConfig) (*Ring, error) {
	return nil, errors.New("live capture needs Linux AF_PACKET")
}
func (r *Ring) Read() ([]byte, int64, int, bool, error) {
	return nil, 0, 0, false, errors.New("unsupported")
}
func (r *Ring) KernelStats() (uint64, uint64, uint64, error) {
	return 0, 0, 0, errors.New("unsupported")
}
func (r *Ring) Close()                    {}
func Offloads(string) (bool, bool, error) { return false, false, errors.New("unsupported") }
func IfaceMTU(string) int                 { return 0 }
