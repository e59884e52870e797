package packer

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sie-europe/dnssensor/images"
	"github.com/sie-europe/dnssensor/internal/testenv"
)

// loopDevice attaches a sparse file as a block device (root only).
func loopDevice(t *testing.T, size int64) string {
	t.Helper()
	testenv.NeedRoot(t, "a loop device")
	losetup := requireTool(t, "losetup", "mount")
	f := filepath.Join(t.TempDir(), "disk")
	if err := os.WriteFile(f, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(f, size); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(losetup, "-f", "--show", f).CombinedOutput()
	if err != nil {
		testenv.Need(t, false, "no loop device here: %v %s", err, out)
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() { exec.Command(losetup, "-d", dev).Run() })
	return dev
}

// TestBuildToDevice writes an image to a (loop) block device: refused without
// the confirmation, refused while mounted, written and valid with it.
func TestBuildToDevice(t *testing.T) {
	if testing.Short() {
		t.Skip("builds an image (-short)")
	}
	if _, err := needFile(efiStubPath, "systemd-boot-efi"); err != nil {
		testenv.Missing(t, err)
	}
	sgdisk := requireTool(t, "sgdisk", "gdisk")
	mkfs := requireTool(t, "mkfs.ext4", "e2fsprogs")
	dev := loopDevice(t, 3<<30)
	im, err := images.Load("sensor-amd64")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	pw := filepath.Join(dir, "pw")
	os.WriteFile(pw, []byte("pw"), 0o600)
	opts := Options{RepoRoot: repoRoot(t), Image: im, Output: dev, ArtefactDir: dir, PasswordFile: pw, BuildTime: time.Unix(1767225600, 0)}

	if _, err := Build(context.Background(), opts); err == nil || !strings.Contains(err.Error(), "-yes-erase-device="+dev) {
		t.Fatalf("unconfirmed device write: %v", err)
	}

	// Mounted: refuse even when confirmed.
	runTool(t, mkfs, "-F", "-q", dev)
	mnt := t.TempDir()
	if out, err := exec.Command("mount", dev, mnt).CombinedOutput(); err != nil {
		t.Logf("cannot mount here, skipping the mounted case: %v %s", err, out)
	} else {
		opts.ConfirmDevice = dev
		_, err := Build(context.Background(), opts)
		exec.Command("umount", mnt).Run()
		if err == nil || !strings.Contains(err.Error(), "mounted") {
			t.Fatalf("mounted device: %v", err)
		}
	}

	opts.ConfirmDevice = dev
	res, err := Build(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	if res.SizeBytes != 3<<30 {
		t.Errorf("image sized %d, want the device's %d", res.SizeBytes, int64(3<<30))
	}
	if out := runTool(t, sgdisk, "-v", dev); !strings.Contains(out, "No problems found") {
		t.Errorf("sgdisk -v %s:\n%s", dev, out)
	}
	if _, err := os.Stat(res.RootImg); err != nil {
		t.Errorf("update artefacts: %v", err)
	}
}
