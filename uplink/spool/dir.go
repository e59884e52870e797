package spool

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"
)

// Names inside a tier directory. Everything else there is left alone,
// except names starting with "." (temp files, see cleanTemps).
const (
	quarantineDir = "quarantine"
	producerLock  = "producer.lock"
	consumerLock  = "consumer.lock"
	ledgerFile    = "loss.json"
	ledgerLock    = "loss.lock"
	seqFile       = "seq"
)

type tierID int

const (
	ram tierID = iota
	disk
)

func (t tierID) String() string {
	if t == ram {
		return "ram"
	}
	return "disk"
}

// tier is one spool directory.
type tier struct {
	id  tierID
	dir string
}

func (t *tier) path(seq uint64) string { return filepath.Join(t.dir, segName(seq)) }

// entry is a segment file found by a scan.
type entry struct {
	seq  uint64
	size int64
}

// scan lists the tier's segments in sequence order.
func (t *tier) scan() ([]entry, error) { return t.scanForeign(nil) }

// scanForeign is scan that also passes foreign to every entry that is
// not a segment file and not one of the spool's own names.
func (t *tier) scanForeign(foreign func(fs.DirEntry)) ([]entry, error) {
	f, err := os.Open(t.dir)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	des, err := f.ReadDir(-1)
	if err != nil {
		return nil, err
	}
	out := make([]entry, 0, len(des))
	for _, de := range des {
		seq, ok := parseSegName(de.Name())
		if !ok || !de.Type().IsRegular() {
			if foreign != nil && !ownName(de.Name()) {
				foreign(de)
			}
			continue
		}
		info, err := de.Info()
		if err != nil {
			continue // acked or moved since the listing
		}
		out = append(out, entry{seq: seq, size: info.Size()})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].seq < out[j].seq })
	return out, nil
}

// ownName reports the spool's own non-segment names. Temp files (".")
// are cleanTemps' business.
func ownName(name string) bool {
	switch name {
	case quarantineDir, producerLock, consumerLock, ledgerFile, ledgerLock, seqFile:
		return true
	}
	return strings.HasPrefix(name, ".")
}

// segmentLike reports a name that claims to be a segment: the canonical
// form, or anything with ".seg" in it (a renamed or backed-up segment).
func segmentLike(name string) bool {
	_, ok := parseSegName(name)
	return ok || strings.Contains(name, ".seg")
}

// syncDir makes renames and unlinks in dir durable. On tmpfs it is free.
func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// Segment files are locked with flock(2) so the two processes never race
// on a file: the consumer holds a shared lock on every segment it has
// handed out; the producer takes an exclusive lock before it unlinks one
// (spill, drop, quarantine) and only reads under a shared one. flock locks
// belong to the open file description, so they vanish with a killed
// process and conflict even between two opens in one process.

var errLocked = errors.New("spool: segment locked")

func flock(f *os.File, how int) error {
	for {
		err := syscall.Flock(int(f.Fd()), how|syscall.LOCK_NB)
		if err == syscall.EINTR {
			continue
		}
		if err == syscall.EWOULDBLOCK {
			return errLocked
		}
		return err
	}
}

// openLocked opens path and locks it. The returned file is still the one
// at path: a file unlinked or replaced between open and lock is reported
// as os.ErrNotExist.
func openLocked(path string, how int) (*os.File, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	if err := flock(f, how); err != nil {
		f.Close()
		return nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	pi, err := os.Stat(path)
	if err != nil || !os.SameFile(fi, pi) {
		f.Close()
		return nil, os.ErrNotExist
	}
	return f, nil
}

// lockFile takes an exclusive lock on a long-lived lock file, retrying
// for up to wait (a restarted process may briefly overlap its
// predecessor's exit).
func lockFile(path string, wait time.Duration) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, err
	}
	deadline := time.Now().Add(wait)
	for {
		err := flock(f, syscall.LOCK_EX)
		if err == nil {
			return f, nil
		}
		if err != errLocked || time.Now().After(deadline) {
			f.Close()
			if err == errLocked {
				return nil, fmt.Errorf("%s is held by another process", path)
			}
			return nil, err
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// readHeader reads and checks the first headerSize octets of f and that
// the file's length matches the header.
func readHeader(f *os.File) (Meta, error) {
	var b [headerSize]byte
	n, err := io.ReadFull(f, b[:])
	if err != nil && err != io.ErrUnexpectedEOF && err != io.EOF {
		return Meta{}, err
	}
	m, err := parseHeader(b[:n])
	if err != nil {
		return m, err
	}
	fi, err := f.Stat()
	if err != nil {
		return m, err
	}
	if fi.Size() != headerSize+m.BodyLen {
		return m, corrupt("file is %d octets, header says %d", fi.Size(), headerSize+m.BodyLen)
	}
	return m, nil
}

// quarantine moves a damaged segment out of the delivery path, keeping it
// for inspection, and counts it as lost unless a copy in the other tier
// (twin, may be nil) still exists: that copy is delivered or counted on
// its own. It returns whether it counted a loss.
func quarantine(t, twin *tier, seq uint64, size int64, records uint32, l *ledger, reason error, logf func(string, ...any)) bool {
	if !moveToQuarantine(t, segName(seq), reason, logf) {
		return false
	}
	if twin != nil {
		if _, err := os.Stat(twin.path(seq)); err == nil {
			return false
		}
	}
	l.add(func(g *Ledger) {
		g.Quarantined.Segments++
		g.Quarantined.Records += uint64(records)
		g.Quarantined.Bytes += uint64(size)
	})
	return true
}

// moveToQuarantine renames the entry name of tier t (of any type: a
// symlink is moved, not followed) into the quarantine directory and logs
// it. It reports false when the entry was gone or could not be moved.
func moveToQuarantine(t *tier, name string, reason error, logf func(string, ...any)) bool {
	qdir := filepath.Join(t.dir, quarantineDir)
	dst := filepath.Join(qdir, fmt.Sprintf("%s-%s", t.id, name))
	for i := 1; ; i++ {
		if _, err := os.Lstat(dst); errors.Is(err, os.ErrNotExist) {
			break
		}
		dst = filepath.Join(qdir, fmt.Sprintf("%s-%s.%d", t.id, name, i))
	}
	src := filepath.Join(t.dir, name)
	if err := os.Rename(src, dst); err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			logf("spool: quarantining %s: %v", src, err)
		}
		return false
	}
	if t.id == disk {
		syncDir(t.dir)
	}
	logf("spool: quarantined %s as %s: %v", src, dst, reason)
	return true
}

// foreignResult is what a foreign entry in a tier turned out to be.
type foreignResult int

const (
	foreignIgnored foreignResult = iota // not a segment: left alone
	foreignCopy                         // a misnamed copy of a segment still in the spool: quarantined, nothing lost
	foreignLost                         // quarantined and counted
)

// quarantineForeign deals with an entry of tier t that is not a segment
// file under its canonical name. Whatever claims to be a segment, by its
// name or by its header, cannot be shipped (a symlink could point
// anywhere, a FIFO would block the reader, a misnamed file's sequence is
// unverified): it is moved to quarantine and counted, so that a segment
// never vanishes from the delivery path without a word. Anything else (an
// operator's file, a lost+found directory, uplinkd's state) is left
// alone. exists reports whether a segment is still in the spool: a
// misnamed copy of it lost nothing.
func quarantineForeign(t *tier, de fs.DirEntry, l *ledger, logf func(string, ...any), exists func(uint64) bool) (foreignResult, Counter) {
	name := de.Name()
	p := filepath.Join(t.dir, name)
	var c Counter
	var reason error
	if !de.Type().IsRegular() {
		if !segmentLike(name) {
			return foreignIgnored, c
		}
		reason = fmt.Errorf("named like a segment but a %s, not a regular file", typeName(de.Type()))
		c = Counter{Segments: 1}
	} else {
		// O_NONBLOCK and O_NOFOLLOW: the entry may have been swapped for
		// a FIFO or a symlink since the listing.
		f, err := os.OpenFile(p, os.O_RDONLY|syscall.O_NONBLOCK|syscall.O_NOFOLLOW, 0)
		if err != nil {
			if segmentLike(name) && !errors.Is(err, os.ErrNotExist) {
				logf("spool: %s: %v", p, err)
			}
			return foreignIgnored, c
		}
		var b [headerSize]byte
		n, _ := io.ReadFull(f, b[:])
		fi, err := f.Stat()
		f.Close()
		if err != nil || !fi.Mode().IsRegular() {
			return foreignIgnored, c
		}
		magic := n >= len(segMagic) && [4]byte(b[:4]) == segMagic
		if !magic && !segmentLike(name) {
			return foreignIgnored, c
		}
		c = Counter{Segments: 1, Bytes: uint64(fi.Size())}
		reason = errors.New("named like a segment but not one")
		if magic {
			reason = errors.New("a segment under a name that is not its own")
			if m, err := parseHeader(b[:n]); err == nil {
				c.Records = uint64(m.Records)
				reason = fmt.Errorf("segment %d under a name that is not its own (%s)", m.Seq, segName(m.Seq))
				if exists(m.Seq) {
					if moveToQuarantine(t, name, fmt.Errorf("%v: a copy of a segment still in the spool, nothing lost", reason), logf) {
						return foreignCopy, Counter{}
					}
					return foreignIgnored, Counter{}
				}
			}
		}
	}
	if !moveToQuarantine(t, name, reason, logf) {
		return foreignIgnored, Counter{}
	}
	l.add(func(g *Ledger) { g.Quarantined.add(c) })
	return foreignLost, c
}

func typeName(m fs.FileMode) string {
	switch {
	case m&fs.ModeSymlink != 0:
		return "symbolic link"
	case m.IsDir():
		return "directory"
	case m&fs.ModeNamedPipe != 0:
		return "FIFO"
	case m&fs.ModeSocket != 0:
		return "socket"
	case m&fs.ModeDevice != 0:
		return "device"
	}
	return "special file"
}

// cleanTemps removes temp files a crashed writer left behind (renameio
// names them "." + final name + random digits) and counts them. It must
// run while no writer can be active: under the producer lock, and for the
// ledger's own temp files under the ledger lock.
//
// A temp file whose segment exists under its final name in either tier
// (exists) was a spill copy: nothing was lost, so it is not counted.
func cleanTemps(dir string, l *ledger, logf func(string, ...any), exists func(uint64) bool) {
	var files, bytes uint64
	removeIn := func(d string) {
		des, err := os.ReadDir(d)
		if err != nil {
			return
		}
		for _, de := range des {
			name := de.Name()
			if !strings.HasPrefix(name, ".") || !de.Type().IsRegular() {
				continue
			}
			p := filepath.Join(d, name)
			var size int64
			if info, err := de.Info(); err == nil {
				size = info.Size()
			}
			if err := os.Remove(p); err != nil {
				logf("spool: removing temp file %s: %v", p, err)
				continue
			}
			// Only a segment's temp file held data; an interrupted
			// ledger or sequence write lost nothing.
			if seq, ok := parseSegName(name[1:min(len(name), 25)]); ok && !exists(seq) {
				files++
				bytes += uint64(size)
			}
		}
	}
	l.withLock(func() {
		removeIn(dir)
	})
	if files > 0 {
		logf("spool: removed %d temp files (%d octets) left by a crashed writer in %s", files, bytes, dir)
		l.add(func(g *Ledger) {
			g.TempFiles.Segments += files
			g.TempFiles.Bytes += bytes
		})
	}
}

func otherTier(t, r, d *tier) *tier {
	if t == r {
		return d
	}
	return r
}
