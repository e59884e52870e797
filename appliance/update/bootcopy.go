package update

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/google/renameio/v2"
)

// The boot partition across an update. gokrazy writes it in place (PUT /update/bootonly) and
// its rollback, the one-shot test boot, switches only the root: without a copy, a version that
// fails leaves the old root booting the new kernel, whose modules it does not carry. So before
// the first byte of a release's boot partition goes out, the region it will overwrite is kept
// in /perm (bootCopyFile) and recorded, with the whole partition's SHA-256, in the pending
// update (BootSaved). An update that then does not commit passes through PhaseRestoring: the
// copy goes back raw (PUT /update/boot: gokrazy edits no command line then, so the bytes are
// the ones read), it is read back and compared with the hash before the update, and the box
// reboots when the kernel running is the release's. Each step is recorded before the next, so
// a power cut anywhere restarts the restore (it is idempotent), and the copy is durable before
// the partition is touched. Not covered: a power cut inside gokrazy's own in-place write of a
// boot partition, which can leave it unbootable with or without this copy.

// bootRead reads the whole boot partition; when keep is not nil, its first len bytes are copied
// to keep as well.
func (a *Agent) readBoot(keep io.Writer, n int64) (sum string, size int64, keptSum string, err error) {
	r, err := a.cfg.BootPartition()
	if err != nil {
		return "", 0, "", err
	}
	defer r.Close()
	whole, kept := sha256.New(), sha256.New()
	if keep != nil {
		got, err := io.Copy(io.MultiWriter(keep, kept, whole), io.LimitReader(r, n))
		if err != nil {
			return "", 0, "", fmt.Errorf("reading the boot partition: %w", err)
		}
		if got < n {
			return "", 0, "", fmt.Errorf("the boot partition holds %d bytes, the release's image %d", got, n)
		}
		size = got
	}
	rest, err := io.Copy(whole, r)
	if err != nil {
		return "", 0, "", fmt.Errorf("reading the boot partition: %w", err)
	}
	return hex.EncodeToString(whole.Sum(nil)), size + rest, hex.EncodeToString(kept.Sum(nil)), nil
}

// saveBoot keeps the region of the boot partition that a boot image of n bytes overwrites,
// durably, then records it in the pending update; prev is State.BootSHA256 before the update.
func (a *Agent) saveBoot(n int64, prev string) error {
	if err := a.step("keeping a copy of the boot partition"); err != nil {
		return err
	}
	if err := a.point("boot saving"); err != nil {
		return err
	}
	bootID, err := a.cfg.BootID()
	if err != nil {
		return err
	}
	f, err := renameio.TempFile(a.cfg.Dir, filepath.Join(a.cfg.Dir, bootCopyFile))
	if err != nil {
		return err
	}
	defer f.Cleanup()
	sum, size, keptSum, err := a.readBoot(f, n)
	if err != nil {
		return err
	}
	if err := f.CloseAtomicallyReplace(); err != nil { // fsync, then rename
		return err
	}
	d, err := os.Open(a.cfg.Dir)
	if err != nil {
		return err
	}
	err = syncDir(d) // the rename
	d.Close()
	if err != nil {
		return err
	}
	if err := a.point("boot saved"); err != nil {
		return err
	}
	now := a.cfg.Now().UTC()
	if err := a.update(func(s *State) {
		s.Pending.BootSaved = &BootSaved{SHA256: keptSum, Bytes: n, PartitionSHA256: sum, BootID: bootID, PrevBootSHA256: prev}
		s.BootPartition = &BootRead{SHA256: sum, Bytes: size, At: now, BootID: bootID, Why: fmt.Sprintf("before writing version %d's boot partition", s.Pending.Version)}
		s.AddEvent(now, s.Pending.Version, "boot partition (sha256 %s) kept in /perm before writing version %d's", sum, s.Pending.Version)
	}); err != nil {
		return err
	}
	return a.point("boot recorded")
}

// restoreBoot puts the kept boot partition back for a pending update in PhaseRestoring, ends
// the update and reboots when the running kernel came from the release's boot partition (always
// in its test boot).
func (a *Agent) restoreBoot(ctx context.Context) error {
	p := a.State().Pending
	bs := p.BootSaved
	tb, err := a.cfg.TestBooted()
	if err != nil {
		return err
	}
	bootID, err := a.cfg.BootID()
	if err != nil {
		return err
	}
	if err := a.point("restoring"); err != nil {
		return err
	}
	sum, size, _, err := a.readBoot(nil, 0)
	if err != nil {
		return fmt.Errorf("restoring the boot partition: %w", err)
	}
	if sum != bs.PartitionSHA256 {
		// Recorded first: a restart later in this boot knows the running kernel is the release's.
		if err := a.update(func(s *State) { s.Pending.BootSaved.RestoredBootID = bootID }); err != nil {
			return err
		}
		if err := a.putBootCopy(ctx, bs); err != nil {
			return fmt.Errorf("restoring the boot partition: %w (retried at the next start or check)", err)
		}
		if err := a.point("boot restored"); err != nil {
			return err
		}
		if sum, size, _, err = a.readBoot(nil, 0); err != nil {
			return fmt.Errorf("restoring the boot partition: %w", err)
		}
		if sum != bs.PartitionSHA256 {
			return fmt.Errorf("the boot partition read back after the restore has sha256 %s, %s before the update (retried at the next start or check)", sum, bs.PartitionSHA256)
		}
		bs = a.State().Pending.BootSaved
	}
	// The kernel running is the release's when this boot began after the release's boot
	// partition was written and before the copy went back: the copy went back in this boot.
	reboot := tb || (bootID != bs.BootID && bs.RestoredBootID == bootID)
	now := a.cfg.Now().UTC()
	if err := a.update(func(s *State) {
		v := s.Pending.Version
		s.BootSHA256 = bs.PrevBootSHA256
		s.BootPartition = &BootRead{SHA256: sum, Bytes: size, At: now, BootID: bootID, Why: fmt.Sprintf("restored: version %d %s", v, s.Pending.Outcome)}
		s.AddEvent(now, v, "boot partition restored (sha256 %s, as before version %d)", sum, v)
		if reboot {
			s.BootVerify = bootID
		}
		s.Pending = nil
	}); err != nil {
		return err
	}
	_ = os.Remove(filepath.Join(a.cfg.Dir, bootCopyFile))
	if !reboot {
		return nil
	}
	if err := a.point("rollback"); err != nil {
		return err
	}
	// Through the firmware, not kexec: gokrazy's kexec mounts the boot partition read-write to
	// load the kernel and never unmounts it, which marks the FAT dirty (one bit of its boot
	// sector) and the partition would no longer be the one restored.
	a.reboot(ctx, true)
	return nil
}

// putBootCopy writes the kept copy back raw, checking it and gokrazy's echo against its hash.
func (a *Agent) putBootCopy(ctx context.Context, bs *BootSaved) error {
	b, err := os.ReadFile(filepath.Join(a.cfg.Dir, bootCopyFile))
	if err != nil {
		return err
	}
	if h := sha256.Sum256(b); hex.EncodeToString(h[:]) != bs.SHA256 || int64(len(b)) != bs.Bytes {
		return errors.New("the copy in /perm does not match its recorded hash: not written")
	}
	got, err := a.cfg.Device.Put(ctx, "/update/boot", bytes.NewReader(b))
	if err != nil {
		return err
	}
	if got != bs.SHA256 {
		return fmt.Errorf("gokrazy echoed sha256 %s for the copy, want %s", got, bs.SHA256)
	}
	return nil
}

// verifyBoot reads the boot partition at the first start after a restore and its reboot: from
// the disk, not from what the restoring boot had cached.
func (a *Agent) verifyBoot() {
	st := a.State()
	bootID, err := a.cfg.BootID()
	if err != nil || bootID == st.BootVerify {
		return
	}
	now := a.cfg.Now().UTC()
	sum, size, _, err := a.readBoot(nil, 0)
	_ = a.update(func(s *State) {
		s.BootVerify = ""
		if err != nil {
			s.AddEvent(now, 0, "reading the boot partition after the restore: %v", err)
			return
		}
		same := "the same as restored"
		if s.BootPartition == nil || s.BootPartition.SHA256 != sum {
			same = "NOT the one restored"
		}
		s.BootPartition = &BootRead{SHA256: sum, Bytes: size, At: now, BootID: bootID, Why: "first start after the restore"}
		s.AddEvent(now, 0, "boot partition after the reboot: sha256 %s, %s", sum, same)
	})
}
