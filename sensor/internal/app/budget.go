package app

import "fmt"

// minStateBytes is the smallest shared state budget: one largest datagram in reassembly plus
// one as a pending query, with room to spare.
const minStateBytes = 1 << 20

// setStateBytes sets the byte budget shared by the pair table, fragments and TCP buffers: the
// given -state-max-bytes, or half of -memory-limit, leaving the other half to the buffers,
// outputs and the garbage collector's headroom.
func (o *Options) setStateBytes(n int64) error {
	if n < 0 {
		return fmt.Errorf("-state-max-bytes: %d is negative", n)
	}
	if n == 0 {
		n = o.MemoryLimit / 2
		if o.MemoryLimit <= 0 {
			n = 128 << 20
		}
		n = max(n, minStateBytes)
	}
	if n < minStateBytes {
		return fmt.Errorf("-state-max-bytes: %d is below %d (1 MiB); the pair table, fragments and TCP buffers need at least that", n, minStateBytes)
	}
	if o.MemoryLimit > 0 && n > o.MemoryLimit {
		return fmt.Errorf("-state-max-bytes: %d is above -memory-limit %d; keep it at most half of it (the default)", n, o.MemoryLimit)
	}
	o.Pipeline.MaxBytes = int(min(n, int64(^uint(0)>>1)))
	return nil
}
