package packer

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// bzImageVersion reads the version string an x86 bzImage carries in its setup
// header ("7.1.2 (gokrazy@docker) #1 …"); empty when the file is no bzImage.
func bzImageVersion(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	hdr := make([]byte, 0x210)
	if _, err := f.ReadAt(hdr, 0); err != nil || string(hdr[0x202:0x206]) != "HdrS" {
		return ""
	}
	off := int64(binary.LittleEndian.Uint16(hdr[0x20E:])) + 0x200
	buf := make([]byte, 128)
	n, _ := f.ReadAt(buf, off)
	buf = buf[:n]
	if i := bytes.IndexByte(buf, 0); i >= 0 {
		buf = buf[:i]
	}
	return string(buf)
}

// kernelModuleMismatch reports when the kernel's release differs from every
// lib/modules/<release> folder shipped beside it: the device then loads no
// modules (gokrazy logs "loading modules: … no such file"). A packaging slip in
// the kernel module, not ours, but worth a warning at build time.
func kernelModuleMismatch(kernelDir string) string {
	v := bzImageVersion(filepath.Join(kernelDir, "vmlinuz"))
	if v == "" {
		return ""
	}
	release := strings.Fields(v)[0]
	dirs, err := os.ReadDir(filepath.Join(kernelDir, "lib", "modules"))
	if err != nil || len(dirs) == 0 {
		return ""
	}
	var names []string
	for _, d := range dirs {
		if d.Name() == release {
			return ""
		}
		names = append(names, d.Name())
	}
	return fmt.Sprintf("vmlinuz is release %s but the kernel module ships lib/modules/%s: loadable modules will not load on the device", release, strings.Join(names, ","))
}
