// Package collector is the SOC collector: a sielink server that accepts
// many sensors, stores what each delivers in rotated NMSG files, and
// exposes per-sensor metrics. uplink/cmd/collector is its thin main.
//
// With JetStreamOptions a NATS JetStream stream (embedded, or a cluster) sits between the
// sensors and the files: containers are confirmed once the stream holds them, and the archiver
// (a durable consumer) writes the stream into the files exactly once (jetstream.go, archiver.go).
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
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/renameio/v2"

	"github.com/sie-europe/dnssensor/nmsg"
	"github.com/sie-europe/dnssensor/uplink/internal/collector/auth"
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
	// Quota bounds the octets a sensor's directory may hold (0: no bound), so that one sensor
	// flooding cannot fill the disk for the others. Over it, the sensor's session is refused with
	// an alert and its data waits in its own spool until files are moved away.
	Quota int64

	now    func() time.Time // seam for tests
	rescan time.Duration    // how often a sensor's directory is measured again; default 10 s
}

// FileStats are a sensor's storage counters.
type FileStats struct {
	Containers   uint64    `json:"containers"`    // containers written
	Duplicates   uint64    `json:"duplicates"`    // containers received again (same sequence_id and sequence), not written twice
	Bytes        uint64    `json:"bytes"`         // octets written (after compression)
	FilesSealed  uint64    `json:"files_sealed"`  // files renamed into place
	WriteErrors  uint64    `json:"write_errors"`  // failed writes, fsyncs and seals (each attempt)
	CurrentFile  string    `json:"current_file"`  // temp file being written, if any
	LastRotation time.Time `json:"last_rotation"` //
	// LastWriteError is the latest write error, kept while the sensor's data cannot be stored.
	LastWriteError string `json:"last_write_error,omitempty"`
	Stalled        bool   `json:"stalled"`       // the last write failed: the sensor's data waits in its spool
	PendingSeals   int    `json:"pending_seals"` // finished files whose seal failed and is retried
	DiskBytes      int64  `json:"disk_bytes"`    // octets in the sensor's directory (measured for the quota)
	QuotaRefusals  uint64 `json:"quota_refusals"`
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
	archived  uint64 // stream sequence the archive holds through (Archive)
}

type sensorFile struct {
	mu        sync.Mutex
	dir       string
	f         *os.File
	size      int64    // octets of whole containers in f: a failed write is cut back to it
	seqLog    *os.File // f's sequence log (Archive): (stream sequence, length of f) per container
	tmp, name string
	end       time.Time
	pending   []pendingSeal // files set aside with confirmed data, to be sealed when possible
	measured  time.Time     // when st.DiskBytes was last measured
	refused   int64         // size of the last container refused over quota
	lastLog   time.Time
	unlogged  int
	zw        *zlib.Writer
	zbuf      bytes.Buffer
	st        FileStats
	seen      map[seqKey]struct{} // recent containers' (sequence_id, sequence)
	seenRing  []seqKey
	seenNext  int
}

// pendingSeal is a temp file that could not be sealed (fsync, rename) or cut back. It holds
// containers the sensor saw confirmed, so it is never abandoned: Rotate and Close seal it once
// they can, cutting it to its whole containers first.
type pendingSeal struct{ tmp, name string }

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
func (sf *sensorFile) seenBefore(c []byte, sq containerSeq) (k seqKey, ok, dup bool) {
	id, seq, ok := sq.of(c)
	if !ok {
		return k, false, false
	}
	k = seqKey{id, seq}
	_, dup = sf.seen[k]
	return k, true, dup
}

// remember records a stored container's key, forgetting the oldest beyond seenWindow. Only
// stored containers are remembered, so a container whose write failed is taken when resent.
// The window grows with the containers stored: made whole at a sensor's first container, it
// took 4.5 MB per sensor at once (450 MB for a hundred sensors), which a sensor sending a
// container a second fills in 18 hours.
func (sf *sensorFile) remember(k seqKey) {
	if sf.seen == nil {
		sf.seen = make(map[seqKey]struct{})
	}
	if len(sf.seenRing) < seenWindow {
		sf.seenRing = append(sf.seenRing, k)
	} else {
		delete(sf.seen, sf.seenRing[sf.seenNext])
		sf.seenRing[sf.seenNext] = k
		sf.seenNext = (sf.seenNext + 1) % seenWindow
	}
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
	floor, err := readFloor(s.opts.Dir)
	if err != nil {
		return err
	}
	for _, tmp := range tmps {
		final := filepath.Join(filepath.Dir(tmp), strings.TrimSuffix(strings.TrimPrefix(filepath.Base(tmp), "."), ".tmp"))
		n, seq, err := cutAndRename(tmp, final)
		if err != nil {
			return fmt.Errorf("recovering %s: %w", tmp, err)
		}
		floor = max(floor, seq)
		if n > 0 {
			s.recovered++
			s.logf("collector: recovered %d octets of %s", n, tmp)
		}
	}
	// Sequence logs whose file was sealed (or recovered just now) but not yet folded into the
	// floor file.
	logs, err := filepath.Glob(filepath.Join(s.opts.Dir, "*", ".*.nmsg.seq"))
	if err != nil {
		return err
	}
	for _, l := range logs {
		_, seq, err := readSeqLog(l, -1)
		if err != nil {
			return fmt.Errorf("recovering %s: %w", l, err)
		}
		floor = max(floor, seq)
	}
	s.archived = floor
	if len(logs) > 0 {
		if err := writeFloor(s.opts.Dir, floor); err != nil {
			return err
		}
		for _, l := range logs {
			os.Remove(l)
		}
	}
	return nil
}

// floorFile holds, in decimal, the stream sequence through which the sealed files hold every
// container; the sequence logs of the files being written hold the rest.
const floorFile = ".archived-stream-seq"

func readFloor(dir string) (uint64, error) {
	b, err := os.ReadFile(filepath.Join(dir, floorFile))
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	n, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%s: %v (it holds the archived stream sequence; remove it only with the stream's archive consumer)", filepath.Join(dir, floorFile), err)
	}
	return n, nil
}

func writeFloor(dir string, seq uint64) error {
	if err := renameio.WriteFile(filepath.Join(dir, floorFile), []byte(strconv.FormatUint(seq, 10)+"\n"), 0o640); err != nil {
		return fmt.Errorf("recording the archived stream sequence: %w", err)
	}
	return nil
}

func seqLogPath(tmp string) string { return strings.TrimSuffix(tmp, ".tmp") + ".seq" }

// seqLogEntry is one container of a sequence log: its stream sequence and the file's length
// after it, big-endian.
const seqLogEntry = 16

// readSeqLog returns the longest prefix of the file (at most limit octets; limit < 0: no
// limit) whose containers all have their stream sequence in the log, and the last such
// sequence. A container written without its log entry (a crash between the two) is cut: it
// was not acknowledged, so the stream delivers it again.
func readSeqLog(path string, limit int64) (end int64, seq uint64, err error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, 0, err
	}
	for ; len(b) >= seqLogEntry; b = b[seqLogEntry:] {
		e := int64(binary.BigEndian.Uint64(b[8:]))
		if limit >= 0 && e > limit {
			break
		}
		seq, end = binary.BigEndian.Uint64(b), e
	}
	return end, seq, nil
}

// cutAndRename cuts a temp file back to its whole containers (and, with a sequence log, to the
// containers logged: seq is the last one's stream sequence), fsyncs it and renames it into
// place (beside an existing file of that name, as .recovered.nmsg). An empty file is removed.
// The sequence log stays until its sequence is in the floor file.
func cutAndRename(tmp, final string) (n int64, seq uint64, err error) {
	n, err = wholeContainers(tmp)
	if err != nil {
		return 0, 0, err
	}
	if _, err := os.Lstat(seqLogPath(tmp)); err == nil {
		if n, seq, err = readSeqLog(seqLogPath(tmp), n); err != nil {
			return 0, 0, err
		}
	}
	if n == 0 {
		return 0, seq, os.Remove(tmp)
	}
	f, err := os.OpenFile(tmp, os.O_WRONLY, 0)
	if err != nil {
		return 0, 0, err
	}
	err = f.Truncate(n)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return 0, 0, err
	}
	if _, err := os.Lstat(final); err == nil {
		final = strings.TrimSuffix(final, ".nmsg") + ".recovered.nmsg"
	}
	if err := os.Rename(tmp, final); err != nil {
		return 0, 0, err
	}
	return n, seq, syncDir(filepath.Dir(final))
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

// ErrOverQuota refuses data of a sensor whose directory holds StoreOptions.Quota octets.
var ErrOverQuota = errors.New("collector: sensor over its disk quota")

// quotaReason is what a sensor over quota is told in the alert.
const quotaReason = "over disk quota at the collector: data stays in the sensor's spool"

// Deliver appends the payload's container to the sensor's current file (sielink.Handler). The
// container is written through to the kernel (and fsynced with Sync) before Deliver returns
// nil: only then can the sensor see it confirmed. A failed write is cut back out of the file and
// returned as a sielink.Stall, so the session holds the payload, confirms nothing after it, and
// offers it again until space returns.
func (s *Store) Deliver(d *sielink.Delivery) error {
	dup, err := s.put(d.Sensor, d.Payload.Data, 0, deliverySeq(d))
	d.Duplicate = dup
	return err
}

// Archive stores a container read from the JetStream stream at stream sequence streamSeq (the
// archiver's path; > 0). Besides the container it appends (streamSeq, file length) to the
// file's sequence log (.<name>.seq), so that a restart knows which stream sequence the archive
// holds through (Archived) and neither loses nor repeats a container. Errors are those of
// Deliver: a sielink.Stall (disk full, retry) or a sielink.Refusal (over quota).
func (s *Store) Archive(sensor string, data []byte, streamSeq uint64) (dup bool, err error) {
	return s.put(sensor, data, streamSeq, containerSeq{})
}

// archive is Archive with the container's sequence fields when they are known (its message id).
func (s *Store) archive(sensor string, data []byte, streamSeq uint64, sq containerSeq) (dup bool, err error) {
	return s.put(sensor, data, streamSeq, sq)
}

func (s *Store) put(sensor string, data []byte, streamSeq uint64, sq containerSeq) (bool, error) {
	sf, err := s.sensor(sensor)
	if err != nil {
		return false, err
	}
	sf.mu.Lock()
	defer sf.mu.Unlock()
	key, hasKey, dup := sf.seenBefore(data, sq)
	if dup {
		// A resend after a broken connection: already stored (and confirmed) once.
		sf.st.Duplicates++
		s.archivedThrough(streamSeq)
		return true, nil
	}
	now := s.opts.now()
	if sf.f != nil && !now.Before(sf.end) {
		// A failed seal sets the file aside (it is retried); new data goes to a new file.
		s.seal(sf)
	}
	if s.opts.Zlib && len(data) >= nmsg.HeaderSize && data[4]&0x01 == 0 {
		data = sf.compress(data)
	}
	if q := s.opts.Quota; q > 0 {
		s.measure(sf, now, false)
		if sf.st.DiskBytes+int64(len(data)) > q {
			sf.refused = int64(len(data))
			sf.st.QuotaRefusals++
			s.writeFailed(sf, fmt.Errorf("%w (%d of %d octets used)", ErrOverQuota, sf.st.DiskBytes, q))
			return false, &sielink.Refusal{Reason: quotaReason, Err: ErrOverQuota}
		}
	}
	if sf.f == nil {
		if err := s.open(sf, now); err != nil {
			s.writeFailed(sf, err)
			return false, sielink.Stall(err)
		}
	}
	if err := s.write(sf, data, streamSeq); err != nil {
		s.writeFailed(sf, err)
		return false, sielink.Stall(err)
	}
	if sf.st.Stalled {
		sf.st.Stalled = false
		s.logf("collector: %s: writing again after %d write errors", sensor, sf.st.WriteErrors)
	}
	if hasKey {
		sf.remember(key)
	}
	sf.st.Containers++
	sf.st.Bytes += uint64(len(data))
	sf.st.DiskBytes += int64(len(data))
	s.archivedThrough(streamSeq)
	return false, nil
}

// archivedThrough raises the stream sequence the archive holds through.
func (s *Store) archivedThrough(seq uint64) {
	s.mu.Lock()
	s.archived = max(s.archived, seq)
	s.mu.Unlock()
}

// Archived is the stream sequence through which the archive holds every container (Archive):
// recovered from the sequence logs and the floor file at start-up, raised by each Archive.
func (s *Store) Archived() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.archived
}

// write appends one container to the current file. On failure the file is cut back to its
// last whole container, so that the next write (once space returns) continues a valid file; a
// file that cannot be cut is set aside for Rotate to repair and seal.
func (s *Store) write(sf *sensorFile, data []byte, streamSeq uint64) error {
	if streamSeq > 0 && sf.seqLog == nil {
		// Created before the first container, so a file with data and no log is one of the direct
		// path, and one with a log has every container it may keep logged.
		l, err := os.OpenFile(seqLogPath(sf.tmp), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
		if err != nil {
			return fmt.Errorf("creating the sequence log of %s: %w", sf.tmp, err)
		}
		sf.seqLog = l
	}
	// Written through before returning: once Deliver returns, the sensor's next Sync confirms the
	// data and its spool deletes it, so it must already be in the kernel's hands (a collector
	// kill -9 then loses nothing; the end-to-end fault test caught a buffered version losing
	// confirmed data).
	_, err := sf.f.Write(data)
	if err == nil && s.opts.Sync {
		err = sf.f.Sync()
	}
	if err == nil && sf.seqLog != nil {
		// After the container (fsynced first with Sync): a logged container is in the file.
		var e [seqLogEntry]byte
		binary.BigEndian.PutUint64(e[:], streamSeq)
		binary.BigEndian.PutUint64(e[8:], uint64(sf.size)+uint64(len(data)))
		if _, err = sf.seqLog.Write(e[:]); err != nil {
			// A torn entry would shift every later one: cut the log back to its whole entries.
			if fi, serr := sf.seqLog.Stat(); serr == nil {
				sf.seqLog.Truncate(fi.Size() / seqLogEntry * seqLogEntry)
			}
		}
	}
	if err == nil {
		sf.size += int64(len(data))
		return nil
	}
	err = fmt.Errorf("writing %s: %w", sf.tmp, err)
	cerr := sf.f.Truncate(sf.size)
	if cerr == nil {
		_, cerr = sf.f.Seek(sf.size, io.SeekStart)
	}
	if cerr != nil {
		s.logf("collector: cutting %s back to %d octets: %v (set aside to be repaired)", sf.tmp, sf.size, cerr)
		sf.f.Close()
		s.setAside(sf)
	}
	return err
}

// writeFailed counts and logs a write error (the first at once, then at most one line every
// 10 seconds per sensor) and keeps it in the sensor's stats.
func (s *Store) writeFailed(sf *sensorFile, err error) {
	if !errors.Is(err, ErrOverQuota) {
		sf.st.WriteErrors++
	}
	sf.st.Stalled = true
	sf.st.LastWriteError = err.Error()
	now := time.Now()
	if !sf.lastLog.IsZero() && now.Sub(sf.lastLog) < 10*time.Second {
		sf.unlogged++
		return
	}
	more := ""
	if sf.unlogged > 0 {
		more = fmt.Sprintf(" (%d similar errors not logged)", sf.unlogged)
	}
	sf.lastLog, sf.unlogged = now, 0
	s.logf("collector: %s: %v; the data stays unconfirmed in the sensor's spool%s", filepath.Base(sf.dir), err, more)
}

// measure sets st.DiskBytes from the sensor's directory when the last measurement is older than
// the rescan interval (or always with force), so files moved away free the quota.
func (s *Store) measure(sf *sensorFile, now time.Time, force bool) {
	every := s.opts.rescan
	if every <= 0 {
		every = 10 * time.Second
	}
	if !force && !sf.measured.IsZero() && now.Sub(sf.measured) < every && now.After(sf.measured) {
		return
	}
	sf.measured = now
	ents, err := os.ReadDir(sf.dir)
	if err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			s.logf("collector: measuring %s: %v", sf.dir, err)
		}
		sf.st.DiskBytes = 0
		return
	}
	var n int64
	for _, e := range ents {
		if fi, err := e.Info(); err == nil && fi.Mode().IsRegular() {
			n += fi.Size()
		}
	}
	sf.st.DiskBytes = n
}

// Admit refuses a session of a sensor over its quota (sielink.Admitter), so the sensor learns
// why at once and keeps its data.
func (s *Store) Admit(sensor string) error {
	if s.opts.Quota <= 0 {
		return nil
	}
	sf, err := s.sensor(sensor)
	if err != nil {
		return err
	}
	sf.mu.Lock()
	defer sf.mu.Unlock()
	s.measure(sf, s.opts.now(), true)
	// Refused until the container that did not fit would: no session that could store nothing.
	if sf.st.DiskBytes+max(sf.refused, 1) > s.opts.Quota {
		sf.st.QuotaRefusals++
		return &sielink.Refusal{Reason: quotaReason, Err: ErrOverQuota}
	}
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
	if !auth.ValidSensorName(name) {
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
		sf.f, sf.tmp, sf.name, sf.size = f, tmp, final, 0
		sf.end = start.Add(s.opts.Rotate)
		sf.st.CurrentFile = tmp
		return nil
	}
}

// seal fsyncs and renames the current file into place. A file that fails to seal is set aside
// and sealed later by Rotate or Close: it holds confirmed data.
func (s *Store) seal(sf *sensorFile) error {
	f := sf.f
	sf.f = nil
	sf.st.CurrentFile = ""
	err := f.Sync()
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
		s.logf("collector: sealing %s: %v (kept, sealing again later)", sf.tmp, err)
		s.setAside(sf)
		return fmt.Errorf("sealing %s: %w", sf.tmp, err)
	}
	if sf.seqLog != nil {
		sf.seqLog.Close()
		sf.seqLog = nil
		s.foldSeqLog(seqLogPath(sf.tmp))
	}
	sf.st.FilesSealed++
	sf.st.LastRotation = s.opts.now()
	return nil
}

// setAside moves the current (closed) file to the pending seals.
func (s *Store) setAside(sf *sensorFile) {
	if sf.seqLog != nil {
		// Kept beside the file: its seal (cutAndRename) cuts the file to what the log holds.
		sf.seqLog.Close()
		sf.seqLog = nil
	}
	if _, err := os.Lstat(sf.tmp); err == nil {
		sf.pending = append(sf.pending, pendingSeal{sf.tmp, sf.name})
	}
	sf.f, sf.size = nil, 0
	sf.st.CurrentFile = ""
	sf.st.PendingSeals = len(sf.pending)
}

// sealPending retries the seals that failed, keeping those that fail again.
func (s *Store) sealPending(sf *sensorFile) error {
	var errs []error
	left := sf.pending[:0]
	for _, p := range sf.pending {
		n, _, err := cutAndRename(p.tmp, p.name)
		if err == nil {
			s.foldSeqLog(seqLogPath(p.tmp))
		}
		if err != nil {
			sf.st.WriteErrors++
			errs = append(errs, fmt.Errorf("sealing %s: %w", p.tmp, err))
			left = append(left, p)
			continue
		}
		if n > 0 {
			sf.st.FilesSealed++
			sf.st.LastRotation = s.opts.now()
			s.logf("collector: sealed %s after an earlier failure", p.tmp)
		}
	}
	sf.pending = left
	sf.st.PendingSeals = len(left)
	return errors.Join(errs...)
}

// foldSeqLog records the archive's stream sequence in the floor file and removes a sealed file's
// sequence log; a log left by a failure is folded in at the next start.
func (s *Store) foldSeqLog(path string) {
	if _, err := os.Lstat(path); err != nil {
		return
	}
	if err := writeFloor(s.opts.Dir, s.Archived()); err != nil {
		s.logf("collector: %v (kept %s)", err, path)
		return
	}
	os.Remove(path)
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
		if len(sf.pending) > 0 {
			if err := s.sealPending(sf); err != nil && time.Since(sf.lastLog) >= 10*time.Second {
				sf.lastLog = time.Now()
				s.logf("collector: %v (retrying)", err)
			}
		}
		if s.opts.Quota > 0 {
			s.measure(sf, now, false)
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

// Close seals all open files, and the files whose seal failed before; it fails only if some
// could still not be sealed (they are recovered at the next start). Later Deliver calls fail.
func (s *Store) Close() error {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	var errs []error
	for _, sf := range s.all() {
		sf.mu.Lock()
		if sf.f != nil {
			s.seal(sf)
		}
		if len(sf.pending) > 0 {
			errs = append(errs, s.sealPending(sf))
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
