package pipeline

import (
	"hash/maphash"
	"net/netip"
	"reflect"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sie-europe/dnssensor/nmsg/dnsqr"
	"github.com/sie-europe/dnssensor/sensor/internal/decode"
)

// Sharded spreads frames over several pipelines, one goroutine each, so capture scales over cores.
//
// The shard is a symmetric hash of the two IP addresses of the transaction (for an ICMP error, of
// the query it quotes): a query and its response, every IP fragment of a datagram (later
// fragments carry no ports) and the ICMP error about a query all land in the same pipeline, so
// pairing is exactly that of one pipeline. A resolver talks to many authorities, which spreads the
// load. Each batch handed to a shard carries the newest capture time seen by any shard, so quiet
// shards still expire their pending queries on time (at batch granularity).
//
// Frame, Idle, Sync and Flush belong to one goroutine (the capture loop); Stats may be called from
// any goroutine and sums snapshots the shards publish about once a second (exactly after Flush).
// The Emit function is called from the shards' goroutines, one call at a time.
type Sharded struct {
	ps    []*Pipeline
	in    []chan *shardBatch
	cur   []*shardBatch
	free  chan *shardBatch
	wg    sync.WaitGroup
	snaps []atomic.Pointer[Stats]
	seed  maphash.Seed
	pk    decode.Packet
	mu    sync.Mutex
	now   int64
	done  bool
}

const (
	shardFrames = 256
	shardBytes  = 256 << 10
	shardQueue  = 8
)

type shardBatch struct {
	link []decode.LinkType
	ts   []int64
	wire []int32
	off  []int32
	data []byte
	idle int64 // after the frames: advance the shard's clock to this capture time
}

func (b *shardBatch) reset() {
	b.link, b.ts, b.wire, b.off, b.data, b.idle = b.link[:0], b.ts[:0], b.wire[:0], b.off[:0], b.data[:0], 0
}

// NewSharded starts n pipelines with the same configuration.
func NewSharded(n int, cfg Config, emit Emit) (*Sharded, error) {
	s := &Sharded{seed: maphash.MakeSeed(), free: make(chan *shardBatch, n*(shardQueue+2))}
	locked := func(r *dnsqr.Record) error {
		s.mu.Lock()
		defer s.mu.Unlock()
		return emit(r)
	}
	for i := 0; i < cap(s.free); i++ {
		s.free <- &shardBatch{data: make([]byte, 0, shardBytes)}
	}
	s.snaps = make([]atomic.Pointer[Stats], n)
	cfg.MaxBytes /= n // the memory limit is the process's: each shard gets its share
	for i := 0; i < n; i++ {
		p, err := New(cfg, locked)
		if err != nil {
			return nil, err
		}
		s.ps = append(s.ps, p)
		s.in = append(s.in, make(chan *shardBatch, shardQueue))
		s.cur = append(s.cur, <-s.free)
	}
	for i := range s.ps {
		s.wg.Add(1)
		go s.work(i)
	}
	return s, nil
}

func (s *Sharded) work(i int) {
	defer s.wg.Done()
	p := s.ps[i]
	last := time.Now()
	for b := range s.in[i] {
		for j, ts := range b.ts {
			off := int(b.off[j])
			end := len(b.data)
			if j+1 < len(b.off) {
				end = int(b.off[j+1])
			}
			p.Frame(b.link[j], ts, b.data[off:end], int(b.wire[j]))
		}
		if b.idle != 0 {
			p.Idle(b.idle)
		}
		b.reset()
		s.free <- b
		if time.Since(last) >= time.Second {
			last = time.Now()
			st := p.Stats()
			s.snaps[i].Store(&st)
		}
	}
	p.Flush()
	st := p.Stats()
	s.snaps[i].Store(&st)
}

// shard picks the pipeline for a frame; frames that do not decode go to shard 0, which counts them.
func (s *Sharded) shard(link decode.LinkType, frame []byte) int {
	if len(s.ps) == 1 || decode.Decode(link, frame, &s.pk) != decode.OK {
		return 0
	}
	a, b := s.pk.Src, s.pk.Dst
	if (s.pk.Proto == decode.ProtoICMP || s.pk.Proto == decode.ProtoICMPv6) && !s.pk.Frag {
		if qa, qb, ok := quotedAddrs(s.pk.Payload); ok {
			a, b = qa, qb
		}
	}
	x, y := a.As16(), b.As16()
	h1, h2 := maphash.Bytes(s.seed, x[:]), maphash.Bytes(s.seed, y[:])
	return int((h1 ^ h2) % uint64(len(s.ps))) // xor: the same for both directions
}

// quotedAddrs reads the addresses of the packet an ICMP error quotes.
func quotedAddrs(q []byte) (src, dst netip.Addr, ok bool) {
	switch {
	case len(q) >= 20 && q[0]>>4 == 4:
		return netip.AddrFrom4([4]byte(q[12:16])), netip.AddrFrom4([4]byte(q[16:20])), true
	case len(q) >= 40 && q[0]>>4 == 6:
		return netip.AddrFrom16([16]byte(q[8:24])), netip.AddrFrom16([16]byte(q[24:40])), true
	}
	return src, dst, false
}

// Frame copies the frame into its shard's batch; it is valid only during the call, as for
// Pipeline.Frame.
func (s *Sharded) Frame(link decode.LinkType, ts int64, frame []byte, wireLen int) {
	if ts > s.now {
		s.now = ts
	}
	i := s.shard(link, frame)
	b := s.cur[i]
	if len(b.ts) >= shardFrames || len(b.data)+len(frame) > shardBytes {
		s.send(i)
		b = s.cur[i]
	}
	b.link = append(b.link, link)
	b.ts = append(b.ts, ts)
	b.wire = append(b.wire, int32(wireLen))
	b.off = append(b.off, int32(len(b.data)))
	b.data = append(b.data, frame...)
}

func (s *Sharded) send(i int) {
	b := s.cur[i]
	if b.idle == 0 {
		b.idle = s.now
	}
	s.in[i] <- b
	s.cur[i] = <-s.free
}

// Sync hands every partly filled batch to its shard, so nothing waits for a batch to fill; the
// live capture loop calls it after each release.
func (s *Sharded) Sync() {
	for i := range s.cur {
		if len(s.cur[i].ts) > 0 {
			s.send(i)
		}
	}
}

// Idle advances every shard's clock to ts, so quiet shards expire pending queries.
func (s *Sharded) Idle(ts int64) {
	if ts > s.now {
		s.now = ts
	}
	for i := range s.cur {
		s.cur[i].idle = s.now
		s.send(i)
	}
}

// Flush ends the input: every shard processes what it was given, flushes its pending queries,
// and stops. Flush returns after all records were emitted.
func (s *Sharded) Flush() {
	if s.done {
		return
	}
	s.done = true
	s.Sync()
	for _, c := range s.in {
		close(c)
	}
	s.wg.Wait()
}

// Stats sums the shards' counters.
func (s *Sharded) Stats() Stats {
	var sum Stats
	for i := range s.snaps {
		if st := s.snaps[i].Load(); st != nil {
			addCounters(reflect.ValueOf(&sum).Elem(), reflect.ValueOf(st).Elem())
		}
	}
	return sum
}

// addCounters adds every integer field of src to dst, recursing into structs and arrays: the
// stats structs are plain counters, and a reflective sum cannot forget a field added later.
func addCounters(dst, src reflect.Value) {
	switch dst.Kind() {
	case reflect.Struct:
		for i := 0; i < dst.NumField(); i++ {
			if dst.Field(i).CanSet() {
				addCounters(dst.Field(i), src.Field(i))
			}
		}
	case reflect.Array:
		for i := 0; i < dst.Len(); i++ {
			addCounters(dst.Index(i), src.Index(i))
		}
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		dst.SetUint(dst.Uint() + src.Uint())
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		dst.SetInt(dst.Int() + src.Int())
	}
}
