package packer

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// target is where the image goes: a regular file, or a whole block device.
type target struct {
	f      *os.File
	device bool
	size   int64
}

// openTarget opens the output. A block device is only accepted when confirm
// names the same device, it is a whole disk, and neither it nor any of its
// partitions is mounted, used as swap, or holds the running system: flashing the
// wrong disk is the one mistake this tool must never make.
func openTarget(path, confirm string) (*target, error) {
	if path == "" {
		return nil, fmt.Errorf("no output: give -o FILE.img or -o /dev/sdX")
	}
	fi, err := os.Stat(path)
	if err == nil && fi.Mode()&os.ModeDevice != 0 {
		if err := checkDevice(path, confirm); err != nil {
			return nil, err
		}
		f, err := os.OpenFile(path, os.O_RDWR|syscall.O_EXCL, 0)
		if err != nil {
			return nil, fmt.Errorf("opening %s exclusively (in use?): %w", path, err)
		}
		size, err := f.Seek(0, io.SeekEnd)
		if err != nil {
			f.Close()
			return nil, err
		}
		return &target{f: f, device: true, size: size}, nil
	}
	if err == nil && !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is neither a regular file nor a block device", path)
	}
	if strings.HasPrefix(path, "/dev/") {
		return nil, fmt.Errorf("%s does not exist: refusing to create a regular file under /dev", path)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, err
	}
	return &target{f: f}, nil
}

// checkDevice applies the safety rules for writing to a block device.
func checkDevice(path, confirm string) error {
	if confirm != path {
		return fmt.Errorf("%s is a block device: this erases it completely; repeat its path as -yes-erase-device=%s to confirm", path, path)
	}
	real, err := filepath.EvalSymlinks(path)
	if err != nil {
		return err
	}
	name := filepath.Base(real)
	sys := filepath.Join("/sys/class/block", name)
	if _, err := os.Stat(filepath.Join(sys, "partition")); err == nil {
		return fmt.Errorf("%s is a partition; give the whole disk", path)
	}
	// The disk and all its partitions.
	devs := map[string]bool{"/dev/" + name: true}
	entries, _ := os.ReadDir(filepath.Join("/sys/block", name))
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), name) {
			devs["/dev/"+e.Name()] = true
		}
	}
	// Device-mapper/LVM/RAID built on top of it.
	holders, _ := filepath.Glob(filepath.Join("/sys/block", name, "*", "holders", "*"))
	more, _ := filepath.Glob(filepath.Join("/sys/block", name, "holders", "*"))
	if h := append(holders, more...); len(h) > 0 {
		return fmt.Errorf("%s is in use by %s (LVM, RAID or dm-crypt): refusing", path, filepath.Base(h[0]))
	}
	for _, table := range []string{"/proc/mounts", "/proc/swaps"} {
		f, err := os.Open(table)
		if err != nil {
			return fmt.Errorf("cannot verify %s is unused: %w", path, err)
		}
		s := bufio.NewScanner(f)
		for s.Scan() {
			fields := strings.Fields(s.Text())
			if len(fields) < 2 {
				continue
			}
			dev := fields[0]
			if r, err := filepath.EvalSymlinks(dev); err == nil {
				dev = r
			}
			if devs[dev] {
				f.Close()
				return fmt.Errorf("%s is in use (%s %s in %s): refusing to overwrite a mounted or system disk", path, fields[0], fields[1], table)
			}
		}
		f.Close()
	}
	return nil
}

// allocated returns the bytes a sparse file really occupies.
func allocated(fi os.FileInfo) int64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Blocks * 512
	}
	return fi.Size()
}
