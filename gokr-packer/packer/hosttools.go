package packer

import (
	"fmt"
	"os"
	"os/exec"
)

// efiStubPath is where Debian's systemd-boot-efi puts the x86-64 boot loader.
const efiStubPath = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi"

// needTool returns the path of a host program or an error saying how to get it.
func needTool(name, pkg string) (string, error) {
	p, err := exec.LookPath(name)
	if err != nil {
		for _, dir := range []string{"/usr/sbin", "/sbin"} { // not on PATH for non-root users
			if _, err := os.Stat(dir + "/" + name); err == nil {
				return dir + "/" + name, nil
			}
		}
		return "", fmt.Errorf("host tool %s not found: apt-get install -y %s", name, pkg)
	}
	return p, nil
}

// needFile returns p or an error saying which package provides it.
func needFile(p, pkg string) (string, error) {
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("%s not found: apt-get install -y %s", p, pkg)
	}
	return p, nil
}
