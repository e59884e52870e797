package packer

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	shim "github.com/gokrazy/dnssensor-shim"

	"github.com/sie-europe/dnssensor/images"
	"github.com/sie-europe/dnssensor/internal/testenv"
)

func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// goModVersion returns the version of mod required by a go.mod file.
func goModVersion(t *testing.T, gomod, mod string) string {
	t.Helper()
	b, err := os.ReadFile(gomod)
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^\s*(?:require\s+)?` + regexp.QuoteMeta(mod) + `\s+(\S+)`).FindStringSubmatch(string(b))
	if m == nil {
		t.Fatalf("%s does not require %s", gomod, mod)
	}
	return m[1]
}

// TestShimPinnedVersion fails loudly when gokrazy/internal moves without the
// shim being reviewed: the wrappers were written against one exact version, and
// the main module, the shim and the image build module must all agree on it
// (and on gokrazy itself, whose device code reads what the shim writes).
func TestShimPinnedVersion(t *testing.T) {
	root := repoRoot(t)
	const internal = "github.com/gokrazy/internal"
	for _, gomod := range []string{"go.mod", "gokr-packer/gokrazyshim/go.mod", "images/deps/go.mod"} {
		if v := goModVersion(t, filepath.Join(root, gomod), internal); v != shim.InternalVersion {
			t.Errorf("%s requires %s %s; the shim is written against %s: review gokr-packer/gokrazyshim, then update InternalVersion", gomod, internal, v, shim.InternalVersion)
		}
	}
	// The main module requires gokrazy itself only once a package of it imports gokrazy (go mod
	// tidy drops an unused requirement); from then on both must agree.
	b, err := os.ReadFile(filepath.Join(root, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), "github.com/gokrazy/gokrazy ") {
		return
	}
	main := goModVersion(t, filepath.Join(root, "go.mod"), "github.com/gokrazy/gokrazy")
	deps := goModVersion(t, filepath.Join(root, "images/deps/go.mod"), "github.com/gokrazy/gokrazy")
	if main != deps {
		t.Errorf("github.com/gokrazy/gokrazy: main module %s, images/deps %s (the image must run the version the main module pins)", main, deps)
	}
}

// TestWriters pushes a small tree through the shim's FAT and SquashFS writers
// and lets the host's fsck.vfat, mtools and unsquashfs read it back.
func TestWriters(t *testing.T) {
	fsck := requireTool(t, "fsck.vfat", "dosfstools")
	mtype := requireTool(t, "mtype", "mtools")
	unsquashfs := requireTool(t, "unsquashfs", "squashfs-tools")
	dir := t.TempDir()
	mtime := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	big := bytes.Repeat([]byte("0123456789abcdef"), 40000) // several SquashFS blocks / FAT clusters
	tr := newTree()
	for _, err := range []error{
		tr.bytes("/cmdline.txt", cmdlineFile("root=x"), 0o644),
		tr.bytes("/vmlinuz", big, 0o644),
		tr.bytes("/loader/entries/gokrazy.conf", []byte("title t\n"), 0o644),
		tr.bytes("/EFI/BOOT/BOOTX64.EFI", []byte("efi"), 0o644),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
	var fat bytes.Buffer
	if err := writeFAT(&fat, tr, mtime); err != nil {
		t.Fatal(err)
	}
	fatFile := filepath.Join(dir, "boot.img")
	os.WriteFile(fatFile, fat.Bytes(), 0o644)
	runTool(t, fsck, "-n", fatFile)
	if got := runTool(t, mtype, "-i", fatFile, "::/loader/entries/gokrazy.conf"); got != "title t\n" {
		t.Errorf("mtype gokrazy.conf = %q", got)
	}
	// The device finds cmdline.txt by extents; the bytes there must be the file.
	off, n, err := shim.FATExtents(bytes.NewReader(fat.Bytes()), "/cmdline.txt")
	if err != nil {
		t.Fatal(err)
	}
	if got := string(fat.Bytes()[off : off+n]); got != "root=x\n"+strings.Repeat(" ", 64) {
		t.Errorf("cmdline.txt via extents = %q", got)
	}
	off, n, err = shim.FATExtents(bytes.NewReader(fat.Bytes()), "/vmlinuz")
	if err != nil || !bytes.Equal(fat.Bytes()[off:off+n], big) {
		t.Errorf("vmlinuz not contiguous at its extent (BIOS boot code needs that): %v", err)
	}

	rt := newTree()
	rt.dir("/dev")
	for _, err := range []error{
		rt.bytes("/gokrazy/init", []byte("#!init"), 0o755),
		rt.bytes("/etc/hostname", []byte("box"), 0o644),
		rt.symlink("/etc/resolv.conf", "/tmp/resolv.conf"),
		rt.bytes("/lib/big", big, 0o644),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
	sqFile := filepath.Join(dir, "root.img")
	f, _ := os.Create(sqFile)
	if err := writeSquashfs(f, rt, mtime); err != nil {
		t.Fatal(err)
	}
	f.Close()
	list := runTool(t, unsquashfs, "-lls", sqFile)
	for _, want := range []string{"squashfs-root/dev", "-rwxr-xr-x root/root                 6 2026-01-02 03:04 squashfs-root/gokrazy/init",
		"squashfs-root/etc/resolv.conf -> /tmp/resolv.conf", "squashfs-root/lib/big"} {
		if !strings.Contains(list, want) {
			t.Errorf("unsquashfs -lls lacks %q:\n%s", want, list)
		}
	}
	ext := filepath.Join(dir, "x")
	runTool(t, unsquashfs, "-d", ext, sqFile)
	if b, _ := os.ReadFile(filepath.Join(ext, "lib/big")); !bytes.Equal(b, big) {
		t.Error("lib/big differs after unsquashfs")
	}
}

// TestBuildImage builds the default image twice with the same inputs: the root
// file system must come out byte for byte the same, and the image must carry
// what the device and the status page need.
func TestBuildImage(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the image twice (-short)")
	}
	requireTool(t, "mkfs.ext4", "e2fsprogs")
	if _, err := needFile(efiStubPath, "systemd-boot-efi"); err != nil {
		testenv.Missing(t, err)
	}
	unsquashfs := requireTool(t, "unsquashfs", "squashfs-tools")
	mdir := requireTool(t, "mdir", "mtools")
	sgdisk := requireTool(t, "sgdisk", "gdisk")
	im, err := images.Load("sensor-amd64")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	pw := filepath.Join(dir, "pw.txt")
	os.WriteFile(pw, []byte("test-password\n"), 0o600)
	build := func(name string) *Result {
		res, err := Build(context.Background(), Options{
			RepoRoot:     repoRoot(t),
			Image:        im,
			Output:       filepath.Join(dir, name+".img"),
			BuildTime:    time.Unix(1767225600, 0),
			PasswordFile: pw,
		})
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	a, b := build("a"), build("b")
	if a.RootSHA256 != b.RootSHA256 || a.BootSHA256 != b.BootSHA256 || a.MBRSHA256 != b.MBRSHA256 || a.SBOMHash != b.SBOMHash {
		t.Errorf("same inputs, different bytes:\n%+v\n%+v", a, b)
	}
	if fi, _ := os.Stat(a.MBRImg); fi.Size() != 446 {
		t.Errorf("mbr.img is %d bytes, want 446", fi.Size())
	}
	if a.BuildTimestamp != "2026-01-01T00:00:00Z" {
		t.Errorf("build timestamp %s", a.BuildTimestamp)
	}
	if !strings.Contains(runTool(t, sgdisk, "-v", a.Output), "No problems found") {
		t.Error("sgdisk -v finds problems in the image")
	}
	boot := runTool(t, mdir, "-/", "-b", "-i", a.BootImg, "::")
	for _, want := range []string{"::/vmlinuz", "::/cmdline.txt", "::/EFI/BOOT/BOOTX64.EFI", "::/loader/entries/gokrazy.conf"} {
		if !strings.Contains(boot, want) {
			t.Errorf("boot partition lacks %s:\n%s", want, boot)
		}
	}
	ext := filepath.Join(dir, "root")
	runTool(t, unsquashfs, "-d", ext, a.RootImg)
	for _, p := range []string{"gokrazy/init", "user/netconfd", "user/statusd", "user/timed", "gokrazy/randomd", "user/updated", "user/sensord"} {
		if _, err := os.Stat(filepath.Join(ext, p)); err != nil {
			t.Errorf("root file system: %v", err)
		}
	}
	if got, _ := os.ReadFile(filepath.Join(ext, "etc/gokr-pw.txt")); string(got) != "test-password" {
		t.Errorf("password file holds %q", got)
	}
	// The SBOM hash the status page shows is the hash of the SBOM beside it.
	raw, err := os.ReadFile(filepath.Join(ext, "etc/gokrazy/sbom.json"))
	if err != nil {
		t.Fatal(err)
	}
	var sb struct {
		Hash string          `json:"sbom_hash"`
		SBOM json.RawMessage `json:"sbom"`
	}
	if err := json.Unmarshal(raw, &sb); err != nil {
		t.Fatal(err)
	}
	var compact bytes.Buffer
	json.Compact(&compact, sb.SBOM)
	h := sha256.Sum256(compact.Bytes())
	if sb.Hash != a.SBOMHash || hex.EncodeToString(h[:]) != sb.Hash {
		t.Errorf("sbom_hash %s, result %s, sha256(sbom) %x", sb.Hash, a.SBOMHash, h)
	}
	if !strings.Contains(string(sb.SBOM), "github.com/gokrazy/kernel.amd64") || !strings.Contains(compact.String(), `"sum":"h1:`) {
		t.Errorf("SBOM lacks the kernel module or go.sum hashes")
	}
	// Every binary is pure Go and static (gokrazy has no dynamic loader).
	out, err := exec.Command("go", "version", "-m", filepath.Join(ext, "user/sensord")).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "CGO_ENABLED=0") || !strings.Contains(string(out), "-trimpath=true") {
		t.Errorf("sensord not built with CGO_ENABLED=0 -trimpath: %v\n%s", err, out)
	}
}

func TestBuildErrors(t *testing.T) {
	im, err := images.Load("sensor-amd64")
	if err != nil {
		t.Fatal(err)
	}
	_, err = Build(context.Background(), Options{RepoRoot: repoRoot(t), Image: im, Output: "/dev/null"})
	if err == nil || !strings.Contains(err.Error(), "yes-erase-device") {
		t.Errorf("writing to a device without confirmation: %v", err)
	}
	_, err = Build(context.Background(), Options{RepoRoot: repoRoot(t), Image: im, Output: "/dev/sdzz-does-not-exist"})
	if err == nil || !strings.Contains(err.Error(), "refusing") {
		t.Errorf("creating a file under /dev: %v", err)
	}
}
