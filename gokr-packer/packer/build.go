// Package packer builds dnssensor device images: it compiles the image's
// programs and a generated init for the profile's architecture, lays out a
// gokrazy disk (GPT + hybrid MBR, FAT16 boot, two SquashFS roots, ext4 /perm)
// and writes the update artefacts next to the image. The on-disk formats the
// device reads come from gokrazy's own writers through gokr-packer/gokrazyshim.
package packer

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	shim "github.com/gokrazy/dnssensor-shim"

	"github.com/sie-europe/dnssensor/hardware"
	"github.com/sie-europe/dnssensor/images"
)

// Options configure one build.
type Options struct {
	RepoRoot string       // checkout root (holds go.mod and images/deps)
	Image    images.Image // what to build
	// Output is the image file, or a block device (then ConfirmDevice must equal
	// it). ArtefactDir receives STEM.boot.img, STEM.root.img, STEM.mbr.img
	// (default: Output's folder; for a device, a temporary folder).
	Output        string
	ConfirmDevice string
	ArtefactDir   string
	// BuildTime is the build timestamp the device shows (and the only time stamp
	// in the root file system): fix it (SOURCE_DATE_EPOCH) for reproducible bytes.
	BuildTime time.Time
	// PasswordFile holds the device's HTTP password (user "gokrazy"); created
	// with a random password when missing.
	PasswordFile string
	// PermDir, when set, is copied into the new /perm (mkfs.ext4 -d): the
	// device's own configuration (sensord's resolver addresses, uplinkd's
	// destinations and API key) on first flash. Updates never touch /perm.
	PermDir string
	// RootFiles are extra files for the root file system, by absolute path (the
	// update agent's trusted TUF root, /etc/updated/root.json).
	RootFiles map[string][]byte
	Log       io.Writer // progress, one line per step
}

// Result is what the packer prints as its one-line JSON answer.
type Result struct {
	Image          string   `json:"image"`
	Profile        string   `json:"profile"`
	GOARCH         string   `json:"goarch"`
	Output         string   `json:"output"`
	SizeBytes      int64    `json:"size_bytes"`
	AllocatedBytes int64    `json:"allocated_bytes,omitempty"`
	BootImg        string   `json:"boot_img"`
	RootImg        string   `json:"root_img"`
	MBRImg         string   `json:"mbr_img"`
	SBOM           string   `json:"sbom"`              // beside the artefacts, published with them
	Vmlinuz        string   `json:"vmlinuz,omitempty"` // direct-boot profiles
	Cmdline        string   `json:"cmdline"`
	RootSHA256     string   `json:"root_sha256"`
	BootSHA256     string   `json:"boot_sha256"`
	MBRSHA256      string   `json:"mbr_sha256"`
	SBOMHash       string   `json:"sbom_hash"`
	BuildTimestamp string   `json:"build_timestamp"`
	Programs       []string `json:"programs"`
	Skipped        []string `json:"skipped,omitempty"`
	Warnings       []string `json:"warnings,omitempty"`
	Seconds        float64  `json:"seconds"`
}

type step struct {
	log   io.Writer
	start time.Time
}

func (s *step) printf(format string, args ...any) {
	fmt.Fprintf(s.log, "[%5.1fs] "+format+"\n", append([]any{time.Since(s.start).Seconds()}, args...)...)
}

// Build builds the image described by opts.
func Build(ctx context.Context, opts Options) (*Result, error) {
	st := &step{log: opts.Log, start: time.Now()}
	if st.log == nil {
		st.log = io.Discard
	}
	im := opts.Image
	prof, err := hardware.Get(im.Profile)
	if err != nil {
		return nil, err
	}
	if opts.BuildTime.IsZero() {
		opts.BuildTime = time.Now()
	}
	buildTime := opts.BuildTime.UTC().Truncate(time.Second)
	buildTimestamp := buildTime.Format(time.RFC3339)

	// Host tools first, so a missing package fails in a second, not after the build.
	mkfs, err := needTool("mkfs.ext4", "e2fsprogs")
	if err != nil {
		return nil, err
	}
	var efiStub string
	if prof.Has(hardware.BootUEFI) {
		if efiStub, err = needFile(efiStubPath, "systemd-boot-efi"); err != nil {
			return nil, err
		}
	}
	target, err := openTarget(opts.Output, opts.ConfirmDevice)
	if err != nil {
		return nil, err
	}
	defer target.f.Close()

	size := im.StorageBytes
	if size == 0 {
		size = prof.MinStorageBytes
	}
	if target.device {
		if target.size < prof.MinStorageBytes {
			return nil, fmt.Errorf("%s holds %d bytes, profile %s needs at least %d", opts.Output, target.size, prof.Name, prof.MinStorageBytes)
		}
		size = target.size
	}
	layout, err := NewLayout(size, im.Seed())
	if err != nil {
		return nil, err
	}

	tmp, err := os.MkdirTemp("", "gokr-packer-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)

	password, err := readOrCreatePassword(opts.PasswordFile)
	if err != nil {
		return nil, err
	}

	// Programs: ours from the checkout, gokrazy's from images/deps.
	depsDir := filepath.Join(opts.RepoRoot, "images", "deps")
	var (
		mainPkgs, depPkgs []string
		services          []Service
		res               = &Result{Image: im.Name, Profile: prof.Name, GOARCH: prof.GOARCH, BuildTimestamp: buildTimestamp}
		rootPathOf        = map[string]string{}
	)
	for _, p := range im.Programs {
		if !packageExists(opts.RepoRoot, p.Package) {
			if p.Optional {
				st.printf("skipping optional program %s: not in the tree yet", p.Package)
				res.Skipped = append(res.Skipped, p.Package)
				continue
			}
			return nil, fmt.Errorf("program %s: no Go files in the tree", p.Package)
		}
		flags, err := images.Expand(p.Flags, prof)
		if err != nil {
			return nil, err
		}
		dir := "/user/"
		if inMainModule(p.Package) {
			mainPkgs = append(mainPkgs, p.Package)
		} else {
			dir = "/gokrazy/" // gokrazy's own programs live beside init, as on stock gokrazy
			depPkgs = append(depPkgs, p.Package)
		}
		rootPathOf[p.Package] = dir + binaryName(p.Package)
		services = append(services, Service{Path: dir + binaryName(p.Package), Args: flags, Env: p.Env, WaitForClock: p.WaitForClock})
		res.Programs = append(res.Programs, p.Package)
	}
	initSrc, err := GenerateInit(buildTimestamp, services)
	if err != nil {
		return nil, err
	}

	binDir := filepath.Join(tmp, "bin")
	if err := os.Mkdir(binDir, 0o755); err != nil {
		return nil, err
	}
	st.printf("building %d programs and init for linux/%s (CGO_ENABLED=0, -trimpath)", len(services), prof.GOARCH)
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	run := func(f func() error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f(); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		}()
	}
	run(func() error { return goBuild(ctx, opts.RepoRoot, prof.GOARCH, binDir, "", mainPkgs) })
	run(func() error { return goBuild(ctx, depsDir, prof.GOARCH, binDir, "", depPkgs) })
	initDir := filepath.Join(tmp, "init")
	if err := os.Mkdir(initDir, 0o755); err != nil {
		return nil, err
	}
	run(func() error { return buildInit(ctx, depsDir, prof.GOARCH, binDir, initSrc, initDir) })
	var kernelVersion, kernelDir, fwVersion, fwDir, eepromVersion, eepromDir string
	run(func() (err error) { kernelVersion, kernelDir, err = moduleDir(ctx, depsDir, prof.Kernel); return err })
	if prof.Firmware != "" {
		run(func() (err error) { fwVersion, fwDir, err = moduleDir(ctx, depsDir, prof.Firmware); return err })
	}
	if prof.EEPROM != "" {
		run(func() (err error) { eepromVersion, eepromDir, err = moduleDir(ctx, depsDir, prof.EEPROM); return err })
	}
	wg.Wait()
	if len(errs) > 0 {
		return nil, errs[0]
	}
	st.printf("built; kernel %s@%s", prof.Kernel, kernelVersion)
	if w := kernelModuleMismatch(kernelDir); w != "" {
		st.printf("warning: %s", w)
		res.Warnings = append(res.Warnings, w)
	}

	// SBOM.
	sbom := SBOM{Image: im.Name, Profile: prof.Name, GOARCH: prof.GOARCH}
	pkgs := append(append([]string{}, mainPkgs...), depPkgs...)
	sort.Strings(pkgs)
	for _, pkg := range pkgs {
		sp, err := sbomProgram(filepath.Join(binDir, binaryName(pkg)), rootPathOf[pkg], pkg)
		if err != nil {
			return nil, err
		}
		sbom.Programs = append(sbom.Programs, sp)
	}
	initSBOM, err := sbomProgram(filepath.Join(binDir, "init"), "/gokrazy/init", "(generated init)")
	if err != nil {
		return nil, err
	}
	sbom.Programs = append(sbom.Programs, initSBOM)
	goSum := filepath.Join(depsDir, "go.sum")
	for _, m := range [][2]string{{prof.Kernel, kernelVersion}, {prof.Firmware, fwVersion}, {prof.EEPROM, eepromVersion}} {
		if m[0] != "" {
			sbom.Modules = append(sbom.Modules, SBOMModule{Path: m[0], Version: m[1], Sum: goSumHash(goSum, m[0], m[1])})
		}
	}
	sbomFile, sbomHash, err := encodeSBOM(sbom)
	if err != nil {
		return nil, err
	}
	res.SBOMHash = sbomHash

	// Root file system.
	root := newTree()
	for _, d := range []string{"dev", "proc", "sys", "tmp", "perm", "run", "mnt", "etc/ssl/certs"} {
		if _, err := root.dir(d); err != nil {
			return nil, err
		}
	}
	adds := []error{
		root.file("/gokrazy/init", filepath.Join(binDir, "init"), 0o755),
		root.bytes("/etc/hostname", []byte(im.Hostname), 0o644),
		root.bytes("/etc/hosts", []byte("127.0.0.1 localhost\n::1 localhost\n"), 0o644),
		root.symlink("/etc/resolv.conf", "/tmp/resolv.conf"), // gokrazy's dhcp writes /tmp/resolv.conf
		root.bytes("/etc/gokr-pw.txt", []byte(password), 0o400),
		root.bytes("/etc/gokrazy/sbom.json", sbomFile, 0o644),
	}
	for _, err := range adds {
		if err != nil {
			return nil, err
		}
	}
	extra := make([]string, 0, len(opts.RootFiles))
	for dst := range opts.RootFiles {
		extra = append(extra, dst)
	}
	sort.Strings(extra)
	for _, dst := range extra {
		if err := root.bytes(dst, opts.RootFiles[dst], 0o644); err != nil {
			return nil, err
		}
	}
	for _, pkg := range pkgs {
		if err := root.file(rootPathOf[pkg], filepath.Join(binDir, binaryName(pkg)), 0o755); err != nil {
			return nil, err
		}
	}
	for _, p := range im.Programs {
		dsts := make([]string, 0, len(p.Files))
		for dst := range p.Files {
			dsts = append(dsts, dst)
		}
		sort.Strings(dsts)
		for _, dst := range dsts {
			src := filepath.Join(opts.RepoRoot, p.Files[dst])
			if _, err := os.Stat(src); err != nil {
				return nil, fmt.Errorf("program %s: extra file: %w", p.Package, err)
			}
			if err := root.file(dst, src, 0o644); err != nil {
				return nil, err
			}
		}
	}
	if _, err := os.Stat(filepath.Join(kernelDir, "lib", "modules")); err == nil {
		if err := root.copyDir("/lib/modules", filepath.Join(kernelDir, "lib", "modules")); err != nil {
			return nil, err
		}
	}
	rootImg := filepath.Join(tmp, "root.img")
	rf, err := os.Create(rootImg)
	if err != nil {
		return nil, err
	}
	if err := writeSquashfs(rf, root, buildTime); err != nil {
		rf.Close()
		return nil, fmt.Errorf("writing root file system: %w", err)
	}
	if err := rf.Close(); err != nil {
		return nil, err
	}
	if prof.UncompressedRoot {
		b, err := os.ReadFile(rootImg)
		if err != nil {
			return nil, err
		}
		if b, err = storeUncompressed(b); err != nil {
			return nil, fmt.Errorf("root file system: %w", err)
		}
		if err := os.WriteFile(rootImg, b, 0o644); err != nil {
			return nil, err
		}
	}
	rootInfo, _ := os.Stat(rootImg)
	if rootInfo.Size() > int64(rootSectors)*sectorSize {
		return nil, fmt.Errorf("root file system is %d bytes, partition holds %d", rootInfo.Size(), int64(rootSectors)*sectorSize)
	}
	kind := "SquashFS"
	if prof.UncompressedRoot {
		kind += ", data uncompressed"
	}
	st.printf("root file system: %d bytes %s", rootInfo.Size(), kind)

	// Boot file system.
	cmdline := kernelCmdline(prof, layout, im.Cmdline)
	res.Cmdline = cmdline
	boot, err := bootTree(prof, cmdline, kernelDir, fwDir, eepromDir, efiStub)
	if err != nil {
		return nil, err
	}
	bootImg := filepath.Join(tmp, "boot.img")
	var bootBuf bytes.Buffer
	// Not the build time: the boot partition's bytes then only change when its
	// contents do, and an update pushes it only then.
	if err := writeFAT(&bootBuf, boot, moduleTime(kernelVersion)); err != nil {
		return nil, fmt.Errorf("writing boot file system: %w", err)
	}
	if bootBuf.Len() > bootSectors*sectorSize {
		return nil, fmt.Errorf("boot file system is %d bytes, partition holds %d", bootBuf.Len(), bootSectors*sectorSize)
	}
	if err := os.WriteFile(bootImg, bootBuf.Bytes(), 0o644); err != nil {
		return nil, err
	}
	st.printf("boot file system: %d bytes FAT16", bootBuf.Len())

	// MBR boot code: BIOS loads cmdline.txt's first sector and vmlinuz by LBA.
	var bootCode [446]byte
	if prof.Has(hardware.BootBIOS) {
		br := bytes.NewReader(bootBuf.Bytes())
		kOff, _, err := shim.FATExtents(br, "/vmlinuz")
		if err != nil {
			return nil, fmt.Errorf("locating vmlinuz in the boot file system: %w", err)
		}
		cOff, _, err := shim.FATExtents(br, "/cmdline.txt")
		if err != nil {
			return nil, fmt.Errorf("locating cmdline.txt in the boot file system: %w", err)
		}
		p1 := layout.Parts[0].FirstLBA
		bootCode = shim.MBRBootCode(uint32(p1+uint64(kOff)/sectorSize), uint32(p1+uint64(cOff)/sectorSize), layout.DiskSignature)
	}
	mbr := layout.MBR(bootCode)

	// Disk.
	st.printf("writing %s (%d bytes, GPT + hybrid MBR)", opts.Output, size)
	if err := writeDisk(target, layout, mbr, bootImg, rootImg); err != nil {
		return nil, err
	}
	if err := target.f.Sync(); err != nil {
		return nil, err
	}
	if target.device {
		// mke2fs opens the device exclusively; our handle (exclusive since
		// openTarget) must go first. The device was checked unused then.
		if err := target.f.Close(); err != nil {
			return nil, err
		}
	}
	if err := formatPerm(ctx, mkfs, opts.Output, layout, opts.PermDir); err != nil {
		return nil, err
	}
	st.printf("/perm formatted (ext4, %d MiB)", layout.Parts[3].Sectors()*sectorSize>>20)

	// Update artefacts.
	artDir := opts.ArtefactDir
	if artDir == "" {
		if target.device {
			return nil, fmt.Errorf("writing to a device: give -artefacts DIR for boot.img/root.img/mbr.img")
		}
		artDir = filepath.Dir(opts.Output)
	}
	if err := os.MkdirAll(artDir, 0o755); err != nil {
		return nil, err
	}
	stem := filepath.Join(artDir, strings.TrimSuffix(filepath.Base(opts.Output), ".img"))
	if target.device {
		stem = filepath.Join(artDir, im.Name)
	}
	res.BootImg, res.RootImg, res.MBRImg = stem+".boot.img", stem+".root.img", stem+".mbr.img"
	if err := copyFile(bootImg, res.BootImg); err != nil {
		return nil, err
	}
	if err := copyFile(rootImg, res.RootImg); err != nil {
		return nil, err
	}
	if err := os.WriteFile(res.MBRImg, mbr[:446], 0o644); err != nil {
		return nil, err
	}
	res.SBOM = stem + ".sbom.json"
	if err := os.WriteFile(res.SBOM, sbomFile, 0o644); err != nil {
		return nil, err
	}
	if prof.Has(hardware.BootDirect) {
		res.Vmlinuz = stem + ".vmlinuz"
		if err := copyFile(filepath.Join(kernelDir, "vmlinuz"), res.Vmlinuz); err != nil {
			return nil, err
		}
	}
	for _, h := range []struct {
		file string
		dst  *string
	}{{res.RootImg, &res.RootSHA256}, {res.BootImg, &res.BootSHA256}, {res.MBRImg, &res.MBRSHA256}} {
		if *h.dst, err = fileSHA256(h.file); err != nil {
			return nil, err
		}
	}
	res.Output = opts.Output
	res.SizeBytes = size
	if fi, err := target.f.Stat(); err == nil && !target.device {
		res.AllocatedBytes = allocated(fi)
	}
	res.Seconds = float64(time.Since(st.start).Milliseconds()) / 1000
	st.printf("done: %s", opts.Output)
	return res, nil
}

// kernelCmdline is the command line in cmdline.txt and the systemd-boot entry.
// The last console= becomes /dev/console (where gokrazy's own log goes): the
// serial console when the profile has one, so a headless box logs somewhere.
func kernelCmdline(p hardware.Profile, l Layout, extra string) string {
	args := []string{"console=tty1"}
	if p.SerialConsole != "" {
		args = append(args, "console="+p.SerialConsole)
	}
	args = append(args, "root="+l.RootArg())
	args = append(args, strings.Fields(p.Cmdline)...)
	args = append(args, strings.Fields(extra)...) // the image's own (images.Image.Cmdline)
	return strings.Join(args, " ")
}

// cmdlineFile pads the command line after its newline: the device edits the
// file in place (appending " gokrazy.try_boot_inactive=1" before the newline for
// a test boot) and cannot grow it, so the padding is the room it grows into.
func cmdlineFile(s string) []byte {
	return []byte(s + "\n" + strings.Repeat(" ", 64))
}

// bootTree assembles the boot partition for the profile's boot methods.
func bootTree(p hardware.Profile, cmdline, kernelDir, fwDir, eepromDir, efiStub string) (*tree, error) {
	t := newTree()
	errs := []error{
		t.file("/vmlinuz", filepath.Join(kernelDir, "vmlinuz"), 0o644),
		t.bytes("/cmdline.txt", cmdlineFile(cmdline), 0o644),
	}
	if p.Has(hardware.BootUEFI) {
		// systemd-boot entry. Lines end in CR, not LF: the device's cmdline editor
		// rewrites every LF in this file, and only the last line (options) may
		// take the appended argument; systemd-boot accepts CR as a line end.
		conf := "title gokrazy\rlinux /vmlinuz\roptions " + cmdline
		errs = append(errs,
			t.file("/EFI/BOOT/BOOTX64.EFI", efiStub, 0o644),
			t.bytes("/loader/entries/gokrazy.conf", cmdlineFile(conf), 0o644),
		)
	}
	for _, err := range errs {
		if err != nil {
			return nil, err
		}
	}
	if p.Has(hardware.BootRPi) {
		if err := rpiBoot(t, p, kernelDir, fwDir, eepromDir); err != nil {
			return nil, err
		}
	}
	return t, nil
}

// rpiBoot adds what the Raspberry Pi firmware reads from the FAT partition: its
// own blobs (bootcode.bin, start*.elf, fixup*.dat), config.txt, the DTBs and
// overlays from the kernel module, and for the Pi 4 an EEPROM update
// (pieeprom.upd + .sig, recovery.bin, vl805 USB firmware) that the boot ROM
// applies once and gokrazy's /update/features reports.
func rpiBoot(t *tree, p hardware.Profile, kernelDir, fwDir, eepromDir string) error {
	fw, err := os.ReadDir(fwDir)
	if err != nil {
		return err
	}
	for _, e := range fw {
		n := e.Name()
		if e.Type().IsRegular() && (strings.HasSuffix(n, ".elf") || strings.HasSuffix(n, ".dat") || n == "bootcode.bin") {
			if err := t.file("/"+n, filepath.Join(fwDir, n), 0o644); err != nil {
				return err
			}
		}
	}
	kd, err := os.ReadDir(kernelDir)
	if err != nil {
		return err
	}
	for _, e := range kd {
		if strings.HasSuffix(e.Name(), ".dtb") {
			if err := t.file("/"+e.Name(), filepath.Join(kernelDir, e.Name()), 0o644); err != nil {
				return err
			}
		}
	}
	if err := t.copyDir("/overlays", filepath.Join(kernelDir, "overlays")); err != nil {
		return err
	}
	config, err := os.ReadFile(filepath.Join(kernelDir, "config.txt"))
	if err != nil {
		return err
	}
	if p.SerialConsole != "" {
		config = bytes.ReplaceAll(config, []byte("enable_uart=0"), []byte("enable_uart=1"))
	}
	if err := t.bytes("/config.txt", config, 0o644); err != nil {
		return err
	}
	if eepromDir == "" {
		return nil
	}
	for _, blob := range []struct{ prefix, name string }{{"pieeprom-", "pieeprom"}, {"vl805-", "vl805"}} {
		newest, err := newestBlob(eepromDir, blob.prefix)
		if err != nil {
			return err
		}
		b, err := os.ReadFile(filepath.Join(eepromDir, newest))
		if err != nil {
			return err
		}
		sum, _ := fileSHA256(filepath.Join(eepromDir, newest))
		ext := ".bin"
		if blob.name == "pieeprom" {
			ext = ".upd"
		}
		// The .sig's ts comes from the file (not the build clock): same inputs, same bytes.
		ts := blobTime(newest)
		if err := t.bytes("/"+blob.name+ext, b, 0o644); err != nil {
			return err
		}
		if err := t.bytes("/"+blob.name+".sig", []byte(fmt.Sprintf("%s\nts: %d\n", sum, ts)), 0o644); err != nil {
			return err
		}
	}
	return t.file("/recovery.bin", filepath.Join(eepromDir, "recovery.bin"), 0o644)
}

// newestBlob returns the lexically last file with prefix (pieeprom-YYYY-MM-DD.bin
// sorts by date).
func newestBlob(dir, prefix string) (string, error) {
	m, err := filepath.Glob(filepath.Join(dir, prefix+"*.bin"))
	if err != nil || len(m) == 0 {
		return "", fmt.Errorf("no %s*.bin in %s", prefix, dir)
	}
	sort.Strings(m)
	return filepath.Base(m[len(m)-1]), nil
}

// moduleTime is the commit time in a pseudo-version (v0.0.0-20260705070735-…),
// or the FAT epoch.
func moduleTime(version string) time.Time {
	parts := strings.Split(version, "-")
	if len(parts) == 3 {
		if t, err := time.Parse("20060102150405", parts[1]); err == nil {
			return t
		}
	}
	return time.Date(1980, 1, 1, 0, 0, 0, 0, time.UTC)
}

func blobTime(name string) int64 {
	date := strings.TrimSuffix(strings.TrimPrefix(name, "pieeprom-"), ".bin")
	if t, err := time.Parse("2006-01-02", date); err == nil {
		return t.Unix()
	}
	return 0
}

func writeDisk(t *target, l Layout, mbr [512]byte, bootImg, rootImg string) error {
	f := t.f
	if !t.device {
		// Start from an empty sparse file: only what we write takes space.
		if err := f.Truncate(0); err != nil {
			return err
		}
		if err := f.Truncate(int64(l.DiskSectors) * sectorSize); err != nil {
			return err
		}
	}
	primary, array, backup := l.GPT()
	last := int64(l.DiskSectors - 1)
	for _, w := range []struct {
		off  int64
		data []byte
	}{
		{0, mbr[:]},
		{sectorSize, primary[:]},
		{2 * sectorSize, array},
		{(last - gptArraySects) * sectorSize, array},
		{last * sectorSize, backup[:]},
	} {
		if _, err := f.WriteAt(w.data, w.off); err != nil {
			return err
		}
	}
	if err := copyInto(f, bootImg, l.Parts[0].Offset()); err != nil {
		return err
	}
	if err := copyInto(f, rootImg, l.Parts[1].Offset()); err != nil {
		return err
	}
	if t.device {
		// A device may hold an old image: clear the start of root B so nothing
		// mistakes stale data for a valid file system.
		if _, err := f.WriteAt(make([]byte, 1<<20), l.Parts[2].Offset()); err != nil {
			return err
		}
	}
	return nil
}

func copyInto(f *os.File, src string, off int64) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	_, err = io.Copy(io.NewOffsetWriter(f, off), in)
	return err
}

// formatPerm makes the ext4 /perm file system inside partition 4 (gokrazy
// never formats it itself). The UUID is derived from the seed like the GUIDs.
func formatPerm(ctx context.Context, mkfs, path string, l Layout, permDir string) error {
	p := l.Parts[3]
	blocks := p.Sectors() * sectorSize / 4096
	args := []string{"-F", "-q", "-t", "ext4", "-b", "4096", "-L", "perm",
		"-U", strings.ToLower(p.GUID.String()),
		"-E", "offset=" + strconv.FormatInt(p.Offset(), 10) + ",nodiscard,root_owner=0:0"}
	if permDir != "" {
		if fi, err := os.Stat(permDir); err != nil || !fi.IsDir() {
			return fmt.Errorf("-perm-dir %s: not a directory", permDir)
		}
		args = append(args, "-d", permDir)
	}
	cmd := exec.CommandContext(ctx, mkfs, append(args, path, strconv.FormatUint(blocks, 10))...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("formatting /perm with %s: %v\n%s", mkfs, err, out.String())
	}
	return nil
}

func copyFile(src, dst string) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	tmp := dst + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, dst)
}

// readOrCreatePassword returns the device's HTTP password, creating a random
// one (0600) when the file does not exist yet.
func readOrCreatePassword(p string) (string, error) {
	if p == "" {
		return "", fmt.Errorf("no password file")
	}
	b, err := os.ReadFile(p)
	if err == nil {
		pw := strings.TrimSpace(string(b))
		if pw == "" {
			return "", fmt.Errorf("password file %s is empty", p)
		}
		return pw, nil
	}
	if !os.IsNotExist(err) {
		return "", err
	}
	var r [16]byte
	if _, err := rand.Read(r[:]); err != nil {
		return "", err
	}
	pw := hex.EncodeToString(r[:])
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return "", err
	}
	if err := os.WriteFile(p, []byte(pw+"\n"), 0o600); err != nil {
		return "", err
	}
	return pw, nil
}
