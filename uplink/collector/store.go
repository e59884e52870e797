// Package collector is the SOC collector: a sielink server that accepts
// many sensors, stores what each delivers in rotated NMSG files, and
// exposes per-sensor metrics. uplink/cmd/collector is its thin main.
//
// Forwarding to SIE Europe is not done here: Options.Forward is the seam
// where a spool + uplink (the appliance's own packages) attaches.
package collector

import (
	"bufio"
	"bytes"
	"compress/zlib"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/sie-europe/dnssensor/sensor/nmsg"
	"github.com/sie-europe/dnssensor/uplink/sielink"
)

// StoreOptions configures a Store.
type StoreOptions struct {
	// Dir holds one directory per sensor.
	Dir string
	// Rotate is the file period; files cover aligned intervals of this
	// length (UTC), as nmsgtool's -t does. Default 1 minute.
	Rotate time.Duration
	// Zlib compresses containers that arrive uncompressed. Containers
	// that are already compressed are stored as they are.
	Zlib bool
	// Logf reports file errors and recovery; nil discards.
	Logf sielink.Logf
	// Sync fsyncs every container before Deliver returns, so data a sensor saw confirmed (and
	// deleted from its spool) survives a power cut of the collector host too, at the cost of one
	// fsync per container.
	Sync bool

	now func() time.Time // seam for tests
}

// FileStats are a sensor's storage counters.
type FileStats struct {
	Containers   uint64    `json:"containers"`    // containers written
	Duplicates   uint64    `json:"duplicates"`    // containers received again (same sequence_id and sequence), not written twice
	Bytes        uint64    `json:"bytes"`         // octets written (after compression)
	FilesSealed  uint64    `json:"files_sealed"`  // files renamed into place
	WriteErrors  uint64    `json:"write_errors"`  //
	CurrentFile  string    `json:"current_file"`  // temp file being written, if any
	LastRotation time.Time `json:"last_rotation"` //
}

// Store writes containers into <Dir>/<sensor>/<YYYYMMDD.HHMMSS>.<seq>.nmsg
// files. A file is written as .<name>.tmp and renamed into place (after
// fsync) when its period ends, so a reader never sees a partial file.
// Store implements sielink.Handler and is safe for concurrent use;
// each sensor has its own lock, so sensors do not wait for each other.
type Store struct {
	opts StoreOptions

	mu      sync.Mutex
	sensors map[string]*sensorFile
	closed  bool

	recovered int
}

type sensorFile struct {
	mu        sync.Mutex
	dir       string
	f         *os.File
	bw        *bufio.Writer
	tmp, name string
	end       time.Time
	zw        *zlib.Writer
	zbuf      bytes.Buffer
	st        FileStats
	seen      map[seqKey]struct{} // recent containers' (sequence_id, sequence)
	seenRing  []seqKey
	seenNext  int
}

// seqKey identifies a container by its NMSG sequence fields (the sensor's spool stamps them).
type seqKey struct {
	id  uint64
	seq uint32
}

// seenWindow is how many recent containers per sensor are remembered to recognise a resend: a
// sensor resends at most the segments of one broken connection.
const seenWindow = 1 << 16

// seenBefore reports whether a container with c's sequence fields was stored recently, and the
// key to remember once c is stored (ok false: c carries no sequence).
func (sf *sensorFile) seenBefore(c []byte) (k seqKey, ok, dup bool) {
	id, seq, ok := nmsg.ContainerSequence(c)
	if !ok {
		return k, false, false
	}
	k = seqKey{id, seq}
	_, dup = sf.seen[k]
	return k, true, dup
}

// remember records a stored container's key, forgetting the oldest beyond seenWindow. Only
// stored containers are remembered, so a container whose write failed is taken when resent.
func (sf *sensorFile) remember(k seqKey) {
	if sf.seen == nil {
		sf.seen = make(map[seqKey]struct{}, seenWindow)
		sf.seenRing = make([]seqKey, seenWindow)
	}
	if old := sf.seenRing[sf.seenNext]; old != (seqKey{}) {
		delete(sf.seen, old)
	}
	sf.seenRing[sf.seenNext] = k
	sf.seenNext = (sf.seenNext + 1) % seenWindow
	sf.seen[k] = struct{}{}
}

// NewStore creates Dir if needed and recovers temp files a crash left
// behind: each is cut back to its last whole container and renamed
// into place, so delivered data is not lost with the process.
func NewStore(opts StoreOptions) (*Store, error) {
	if opts.Rotate <= 0 {
		opts.Rotate = time.Minute
	}
	if opts.now == nil {
		opts.now = time.Now
	}
	if err := os.MkdirAll(opts.Dir, 0o750); err != nil {
		return nil, fmt.Errorf("creating store directory: %w", err)
	}
	s := &Store{opts: opts, sensors: make(map[string]*sensorFile)}
	if err := s.recover(); err != nil {
		return nil, err
	}
	return s, nil
}

// Recovered returns the number of temp files recovered at start-up.
func (s *Store) Recovered() int { return s.recovered }

func (s *Store) logf(format string, args ...any) {
	if s.opts.Logf != nil {
		s.opts.Logf(format, args...)
	}
}

func (s *Store) recover() error {
	tmps, err := filepath.Glob(filepath.Join(s.opts.Dir, "*", ".*.nmsg.tmp"))
	if err != nil {
		return err
	}
	for _, tmp := range tmps {
		final := filepath.Join(filepath.Dir(tmp), strings.TrimSuffix(strings.TrimPrefix(filepath.Base(tmp), "."), ".tmp"))
		n, err := wholeContainers(tmp)
		if err != nil {
			return fmt.Errorf("recovering %s: %w", tmp, err)
		}
		if n == 0 {
			os.Remove(tmp)
			continue
		}
		if err := os.Truncate(tmp, n); err != nil {
			return fmt.Errorf("recovering %s: %w", tmp, err)
		}
		if _, err := os.Stat(final); err == nil {
			final = strings.TrimSuffix(final, ".nmsg") + ".recovered.nmsg"
		}
		if err := os.Rename(tmp, final); err != nil {
			return fmt.Errorf("recovering %s: %w", tmp, err)
		}
		s.recovered++
		s.logf("collector: recovered %d octets of %s into %s", n, tmp, final)
	}
	return nil
}

// wholeContainers returns the length of the prefix of the file that
// consists of whole containers.
func wholeContainers(path string) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	br := bufio.NewReader(f)
	var off int64
	var hdr [nmsg.HeaderSize]byte
	for {
		if _, err := io.ReadFull(br, hdr[:]); err != nil {
			return off, nil
		}
		if string(hdr[:4]) != "NMSG" {
			return off, nil
		}
		n := int64(binary.BigEndian.Uint32(hdr[6:]))
		if d, err := br.Discard(int(n)); err != nil || int64(d) != n {
			return off, nil
		}
		off += nmsg.HeaderSize + n
	}
}

// ErrStoreClosed is returned by Deliver after Close.
var ErrStoreClosed = errors.New("collector: store closed")

// Deliver appends the payload's container to the sensor's current file
// (sielink.Handler). The container is written through to the kernel before Deliver returns; the
// file is fsynced when it is sealed.
func (s *Store) Deliver(d *sielink.Delivery) error {
	sf, err := s.sensor(d.Sensor)
	if err != nil {
		return err
	}
	sf.mu.Lock()
	defer sf.mu.Unlock()
	key, hasKey, dup := sf.seenBefore(d.Payload.Data)
	if dup {
		// A resend after a broken connection: already stored (and confirmed) once.
		sf.st.Duplicates++
		return nil
	}
	now := s.opts.now()
	if sf.f != nil && !now.Before(sf.end) {
		if err := s.seal(sf); err != nil {
			return err
		}
	}
	if sf.f == nil {
		if err := s.open(sf, now); err != nil {
			sf.st.WriteErrors++
			return err
		}
	}
	data := d.Payload.Data
	if s.opts.Zlib && len(data) >= nmsg.HeaderSize && data[4]&0x01 == 0 {
		data = sf.compress(data)
	}
	// Flush before returning: once Deliver returns, the sensor's next Sync confirms the data and
	// its spool deletes it, so it must already be in the kernel's hands (a collector kill -9 then
	// loses nothing; the end-to-end fault test caught the buffered version losing confirmed data).
	if _, err := sf.bw.Write(data); err == nil {
		if err = sf.bw.Flush(); err == nil && s.opts.Sync {
			err = sf.f.Sync()
		}
	}
	if err != nil {
		sf.st.WriteErrors++
		return fmt.Errorf("writing %s: %w", sf.tmp, err)
	}
	if hasKey {
		sf.remember(key)
	}
	sf.st.Containers++
	sf.st.Bytes += uint64(len(data))
	return nil
}

// compress returns the container with a zlib body (BE32 uncompressed
// length + zlib stream, flag 0x01), or the original if that is not
// smaller. The result is valid until the next call.
func (sf *sensorFile) compress(c []byte) []byte {
	body := c[nmsg.HeaderSize:]
	sf.zbuf.Reset()
	sf.zbuf.Write(make([]byte, nmsg.HeaderSize+4))
	if sf.zw == nil {
		sf.zw = zlib.NewWriter(&sf.zbuf)
	} else {
		sf.zw.Reset(&sf.zbuf)
	}
	sf.zw.Write(body)
	sf.zw.Close()
	out := sf.zbuf.Bytes()
	if len(out) >= len(c) {
		return c
	}
	copy(out, c[:4])
	out[4] = c[4] | 0x01
	out[5] = c[5]
	binary.BigEndian.PutUint32(out[6:], uint32(len(out)-nmsg.HeaderSize))
	binary.BigEndian.PutUint32(out[10:], uint32(len(body)))
	return out
}

func (s *Store) sensor(name string) (*sensorFile, error) {
	if !sielink.ValidSensorName(name) {
		return nil, fmt.Errorf("collector: invalid sensor name %q", name)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, ErrStoreClosed
	}
	sf := s.sensors[name]
	if sf == nil {
		sf = &sensorFile{dir: filepath.Join(s.opts.Dir, name)}
		s.sensors[name] = sf
	}
	return sf, nil
}

func (s *Store) open(sf *sensorFile, now time.Time) error {
	if err := os.MkdirAll(sf.dir, 0o750); err != nil {
		return fmt.Errorf("creating %s: %w", sf.dir, err)
	}
	start := now.UTC().Truncate(s.opts.Rotate)
	base := start.Format("20060102.150405")
	for seq := 0; ; seq++ {
		name := fmt.Sprintf("%s.%d.nmsg", base, seq)
		final := filepath.Join(sf.dir, name)
		tmp := filepath.Join(sf.dir, "."+name+".tmp")
		if _, err := os.Lstat(final); err == nil {
			continue
		}
		f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o640)
		if errors.Is(err, os.ErrExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("creating %s: %w", tmp, err)
		}
		sf.f, sf.tmp, sf.name = f, tmp, final
		if sf.bw == nil {
			sf.bw = bufio.NewWriterSize(f, 1<<20)
		} else {
			sf.bw.Reset(f)
		}
		sf.end = start.Add(s.opts.Rotate)
		sf.st.CurrentFile = tmp
		return nil
	}
}

// seal flushes, fsyncs and renames the current file into place.
func (s *Store) seal(sf *sensorFile) error {
	f := sf.f
	sf.f = nil
	sf.st.CurrentFile = ""
	err := sf.bw.Flush()
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(sf.tmp, sf.name)
	}
	if err == nil {
		err = syncDir(sf.dir)
	}
	if err != nil {
		sf.st.WriteErrors++
		s.logf("collector: sealing %s: %v", sf.tmp, err)
		return fmt.Errorf("sealing %s: %w", sf.tmp, err)
	}
	sf.st.FilesSealed++
	sf.st.LastRotation = s.opts.now()
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// Rotate seals every file whose period has ended; Run calls it every
// second so that a sensor that went quiet still gets its file sealed.
func (s *Store) Rotate() {
	now := s.opts.now()
	for _, sf := range s.all() {
		sf.mu.Lock()
		if sf.f != nil && !now.Before(sf.end) {
			s.seal(sf)
		}
		sf.mu.Unlock()
	}
}

func (s *Store) all() []*sensorFile {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*sensorFile, 0, len(s.sensors))
	for _, sf := range s.sensors {
		out = append(out, sf)
	}
	return out
}

// Close seals all open files; later Deliver calls fail.
func (s *Store) Close() error {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	var errs []error
	for _, sf := range s.all() {
		sf.mu.Lock()
		if sf.f != nil {
			errs = append(errs, s.seal(sf))
		}
		sf.mu.Unlock()
	}
	return errors.Join(errs...)
}

// Stats returns per-sensor storage counters.
func (s *Store) Stats() map[string]FileStats {
	s.mu.Lock()
	names := make([]string, 0, len(s.sensors))
	for n := range s.sensors {
		names = append(names, n)
	}
	s.mu.Unlock()
	sort.Strings(names)
	out := make(map[string]FileStats, len(names))
	for _, n := range names {
		s.mu.Lock()
		sf := s.sensors[n]
		s.mu.Unlock()
		sf.mu.Lock()
		out[n] = sf.st
		sf.mu.Unlock()
	}
	return out
}
