// Package bootdev finds a gokrazy box's boot partition (partition 1 of the root file system's
// disk) from the kernel command line, as gokrazy does: statusd reads provisioning files from it,
// updated keeps a copy of it across an update.
package bootdev

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"regexp"
	"strings"
)

var (
	rootDev  = regexp.MustCompile(`(?:^|\s)root=(/dev/[a-z0-9]+?)(p?)([0-9]+)(?:\s|$)`)
	rootMBR  = regexp.MustCompile(`(?:^|\s)root=PARTUUID=([0-9a-fA-F]{8})-([0-9]{2})(?:\s|$)`)
	rootGPT  = regexp.MustCompile(`(?:^|\s)root=PARTUUID=([0-9a-fA-F-]{36})/PARTNROFF=([0-9]+)(?:\s|$)`)
	sysBlock = "/sys/block"
)

// Find finds the boot partition, partition 1 of the disk holding the root file system, as
// gokrazy does from the kernel command line: root=/dev/mmcblk0p2 (or sda2, nvme0n1p2, vda2),
// root=PARTUUID=<MBR disk signature>-02, or root=PARTUUID=<GPT GUID of partition 1>/PARTNROFF=1.
func Find(cmdlinePath string) (string, error) {
	b, err := os.ReadFile(cmdlinePath)
	if err != nil {
		return "", err
	}
	cmdline := string(b)
	if m := rootDev.FindStringSubmatch(cmdline); m != nil {
		return m[1] + m[2] + "1", nil
	}
	if m := rootMBR.FindStringSubmatch(cmdline); m != nil {
		disk, err := findDisk(func(f *os.File) bool {
			var sig [4]byte
			if _, err := f.ReadAt(sig[:], 440); err != nil {
				return false
			}
			return fmt.Sprintf("%08x", binary.LittleEndian.Uint32(sig[:])) == strings.ToLower(m[1])
		})
		if err != nil {
			return "", err
		}
		return partition(disk, 1), nil
	}
	if m := rootGPT.FindStringSubmatch(cmdline); m != nil {
		disk, err := findDisk(func(f *os.File) bool { return firstGPTPartition(f) == strings.ToLower(m[1]) })
		if err != nil {
			return "", err
		}
		return partition(disk, 1), nil
	}
	return "", fmt.Errorf("%s: no root= this knows (%q)", cmdlinePath, strings.TrimSpace(cmdline))
}

func findDisk(match func(*os.File) bool) (string, error) {
	ents, err := os.ReadDir(sysBlock)
	if err != nil {
		return "", err
	}
	for _, e := range ents {
		dev := "/dev/" + e.Name()
		f, err := os.Open(dev)
		if err != nil {
			continue
		}
		ok := match(f)
		f.Close()
		if ok {
			return dev, nil
		}
	}
	return "", errors.New("no disk with the root's PARTUUID")
}

// partition names a disk's partition as the kernel does: a disk name ending in a digit takes "p".
func partition(disk string, n int) string {
	if last := disk[len(disk)-1]; last >= '0' && last <= '9' {
		return fmt.Sprintf("%sp%d", disk, n)
	}
	return fmt.Sprintf("%s%d", disk, n)
}

// firstGPTPartition returns the unique GUID of a GPT disk's first partition entry (512-byte
// sectors, as gokrazy's images use), lower case, or "".
func firstGPTPartition(f *os.File) string {
	var hdr [92]byte
	if _, err := f.ReadAt(hdr[:], 512); err != nil || string(hdr[:8]) != "EFI PART" {
		return ""
	}
	lba := binary.LittleEndian.Uint64(hdr[72:80])
	var ent [32]byte
	if _, err := f.ReadAt(ent[:], int64(lba)*512); err != nil {
		return ""
	}
	g := ent[16:32]
	return fmt.Sprintf("%08x-%04x-%04x-%x-%x", binary.LittleEndian.Uint32(g[0:4]), binary.LittleEndian.Uint16(g[4:6]),
		binary.LittleEndian.Uint16(g[6:8]), g[8:10], g[10:16])
}
