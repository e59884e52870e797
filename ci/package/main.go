// Command package builds the Debian packages dnssensor (sensord, uplinkd) and dnssensor-collector
// for amd64 and arm64 in one run:
//
//	go run -C ci/package . -o dist
//
// It is its own module so that nfpm and its dependencies stay out of the go.mod the appliance's
// binaries are built from; it builds those binaries from the repository around it with the
// repository's own go.mod (CGO_ENABLED=0, -trimpath), as the image does. The units, maintainer
// scripts, conffiles and resolver snippets are the files under files/, embedded.
package main

import (
	"bytes"
	"compress/gzip"
	"embed"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/goreleaser/nfpm/v2"
	_ "github.com/goreleaser/nfpm/v2/deb" // registers the deb packager
	"github.com/goreleaser/nfpm/v2/files"
)

//go:embed files
var embedded embed.FS

// rootModule is the repository's module, whose commands are packaged.
const rootModule = "github.com/sie-europe/dnssensor"

type binary struct {
	pkg, name, summary string // Go package, installed name in /usr/sbin, man page NAME line
}

type debian struct {
	name, summary, description string
	bins                       []binary
	units                      []string          // files/units/*.service
	conffiles                  map[string]string // /etc path -> files/ path
	extra                      map[string]string // other installed files: path -> files/ path
	docs                       []string          // files/doc/ entries installed in /usr/share/doc/NAME
	scripts                    string            // prefix of files/scripts/PREFIX.{postinst,prerm,postrm}
}

var packages = []debian{
	{
		name:    "dnssensor",
		summary: "passive DNS sensor for a recursive resolver (capture or dnstap)",
		description: "Records the cache-miss traffic of a recursive resolver (its queries to\n" +
			"authoritative servers and their responses) as NMSG base:dnsqr records,\n" +
			"after scrubbing everything that identifies the resolver's clients, and\n" +
			"ships them to SIE Europe or a SOC collector. Runs on the name server\n" +
			"itself: live capture on its upstream interface, or dnstap from unbound\n" +
			"or BIND. Hardened systemd units; the spool survives restarts and upgrades.",
		bins: []binary{
			{"./sensor/cmd/sensord", "sensord", "passive DNS sensor: capture or dnstap to scrubbed NMSG records"},
			{"./uplink/cmd/uplinkd", "uplinkd", "ships the sensor's spooled NMSG records to their destinations"},
		},
		units: []string{"dnssensor-capture.service", "dnssensor-dnstap.service", "dnssensor-uplinkd.service"},
		conffiles: map[string]string{
			"/etc/dnssensor/capture.json": "etc/capture.json",
			"/etc/dnssensor/dnstap.json":  "etc/dnstap.json",
		},
		extra: map[string]string{"/usr/lib/tmpfiles.d/dnssensor.conf": "etc/tmpfiles.conf"},
		docs: []string{"README.Debian", "examples/unbound.conf", "examples/named.conf", "examples/kresd.conf",
			"examples/capture.json", "examples/uplinkd.json"},
		scripts: "dnssensor",
	},
	{
		name:    "dnssensor-collector",
		summary: "collector for dnssensor sensors (sielink receiver)",
		description: "Receives the NMSG records of dnssensor sensors over authenticated\n" +
			"sielink sessions (WebSocket over TLS) and writes them to files per\n" +
			"sensor, for a SOC that keeps its sensors' data on its own premises.\n" +
			"Hardened systemd unit.",
		bins:      []binary{{"./uplink/cmd/collector", "dnssensor-collector", "receives dnssensor records over sielink and stores them"}},
		units:     []string{"dnssensor-collector.service"},
		conffiles: map[string]string{"/etc/dnssensor/collector.env": "etc/collector.env"},
		scripts:   "collector",
	},
}

func main() {
	out := flag.String("o", "", "write the .deb files into `DIR` (created)")
	version := flag.String("version", "0.1.0", "package `VERSION` (Debian native version)")
	arches := flag.String("arch", "amd64,arm64", "comma-separated GOARCH `LIST` (Debian names are the same for these)")
	maintainer := flag.String("maintainer", "SIE Europe <dnssensor@sie-europe.net>", "Maintainer field")
	flag.Parse()
	if *out == "" || flag.NArg() > 0 {
		fmt.Fprintln(os.Stderr, "usage: go run -C ci/package . -o DIR [-version V] [-arch amd64,arm64]")
		os.Exit(2)
	}
	if err := run(*out, *version, strings.Split(*arches, ","), *maintainer); err != nil {
		fmt.Fprintf(os.Stderr, "package: %v\n", err)
		os.Exit(1)
	}
}

func run(out, version string, arches []string, maintainer string) error {
	root, err := repoRoot()
	if err != nil {
		return err
	}
	if out, err = filepath.Abs(out); err != nil {
		return err
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	tmp, err := os.MkdirTemp("", "dnssensor-package-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	stage := filepath.Join(tmp, "files")
	if err := stageEmbedded(stage); err != nil {
		return err
	}
	mtime := sourceDate(root)

	// Man pages come from the commands' own -h, so they cannot drift from the flags.
	host := filepath.Join(tmp, "host")
	for _, p := range packages {
		for _, b := range p.bins {
			exe := filepath.Join(host, b.name)
			if err := goBuild(root, runtime.GOARCH, b.pkg, exe); err != nil {
				return err
			}
			if err := writeGz(filepath.Join(stage, "man", b.name+".8.gz"), manPage(exe, b, version, mtime)); err != nil {
				return err
			}
		}
	}
	for _, p := range packages {
		if err := writeOverrides(filepath.Join(stage, "lintian", p.name), p); err != nil {
			return err
		}
		if err := writeGz(filepath.Join(stage, "changelog", p.name+".gz"), changelog(p.name, version, maintainer, mtime)); err != nil {
			return err
		}
	}
	for _, arch := range arches {
		for _, p := range packages {
			bindir := filepath.Join(tmp, arch)
			for _, b := range p.bins {
				if err := goBuild(root, arch, b.pkg, filepath.Join(bindir, b.name)); err != nil {
					return err
				}
			}
			path, err := build(p, arch, version, maintainer, mtime, stage, bindir, out)
			if err != nil {
				return fmt.Errorf("%s %s: %v", p.name, arch, err)
			}
			st, err := os.Stat(path)
			if err != nil {
				return err
			}
			fmt.Printf("%s\t%d\n", path, st.Size())
		}
	}
	return nil
}

// build writes one .deb and returns its path.
func build(p debian, arch, version, maintainer string, mtime time.Time, stage, bindir, out string) (string, error) {
	var contents files.Contents
	add := func(src, dst, typ string, mode os.FileMode) {
		contents = append(contents, &files.Content{Source: src, Destination: dst, Type: typ,
			FileInfo: &files.ContentFileInfo{Owner: "root", Group: "root", Mode: mode, MTime: mtime}})
	}
	for _, b := range p.bins {
		add(filepath.Join(bindir, b.name), "/usr/sbin/"+b.name, "", 0o755)
		add(filepath.Join(stage, "man", b.name+".8.gz"), "/usr/share/man/man8/"+b.name+".8.gz", "", 0o644)
	}
	for _, u := range p.units {
		// /lib, not /usr/lib: where Debian 12's systemd and lintian expect packaged units.
		add(filepath.Join(stage, "units", u), "/lib/systemd/system/"+u, "", 0o644)
	}
	for dst, src := range p.conffiles {
		add(filepath.Join(stage, src), dst, files.TypeConfig, 0o644)
	}
	for dst, src := range p.extra {
		add(filepath.Join(stage, src), dst, "", 0o644)
	}
	doc := "/usr/share/doc/" + p.name + "/"
	add(filepath.Join(stage, "doc", "copyright"), doc+"copyright", "", 0o644)
	add(filepath.Join(stage, "changelog", p.name+".gz"), doc+"changelog.gz", "", 0o644)
	for _, d := range p.docs {
		add(filepath.Join(stage, "doc", d), doc+d, "", 0o644)
	}
	add(filepath.Join(stage, "lintian", p.name), "/usr/share/lintian/overrides/"+p.name, "", 0o644)
	script := func(s string) string { return filepath.Join(stage, "scripts", p.scripts+"."+s) }
	info := nfpm.WithDefaults(&nfpm.Info{
		Name:        p.name,
		Arch:        arch,
		Platform:    "linux",
		Version:     version,
		Section:     "net",
		Priority:    "optional",
		Maintainer:  maintainer,
		Description: p.summary + "\n" + p.description,
		Homepage:    "https://github.com/sie-europe/dnssensor",
		MTime:       mtime,
		Overridables: nfpm.Overridables{
			Depends:  []string{"adduser"},
			Contents: contents,
			Umask:    0o022,
			Scripts:  nfpm.Scripts{PostInstall: script("postinst"), PreRemove: script("prerm"), PostRemove: script("postrm")},
			Deb:      nfpm.Deb{Compression: "xz"},
		},
	})
	if err := nfpm.PrepareForPackager(info, "deb"); err != nil {
		return "", err
	}
	pkgr, err := nfpm.Get("deb")
	if err != nil {
		return "", err
	}
	path := filepath.Join(out, fmt.Sprintf("%s_%s_%s.deb", p.name, version, arch))
	f, err := os.Create(path)
	if err != nil {
		return "", err
	}
	if err := pkgr.Package(info, f); err != nil {
		f.Close()
		return "", err
	}
	return path, f.Close()
}

// repoRoot walks up from the working directory to the repository's go.mod.
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if b, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil && strings.HasPrefix(string(b), "module "+rootModule+"\n") {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("not inside the dnssensor repository (no go.mod of " + rootModule + " above the working directory)")
		}
		dir = parent
	}
}

func goBuild(root, arch, pkg, exe string) error {
	cmd := exec.Command("go", "build", "-trimpath", "-buildvcs=false", "-ldflags=-s -w -buildid=", "-o", exe, pkg)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+arch, "GOFLAGS=", "GOWORK=off")
	cmd.Stderr = os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("go build %s for %s: %v", pkg, arch, err)
	}
	return nil
}

// sourceDate is SOURCE_DATE_EPOCH, else the last commit's time, so that the same commit gives
// the same packages.
func sourceDate(root string) time.Time {
	if s := os.Getenv("SOURCE_DATE_EPOCH"); s != "" {
		if n, err := strconv.ParseInt(s, 10, 64); err == nil {
			return time.Unix(n, 0).UTC()
		}
	}
	cmd := exec.Command("git", "log", "-1", "--format=%ct")
	cmd.Dir = root
	if b, err := cmd.Output(); err == nil {
		if n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64); err == nil {
			return time.Unix(n, 0).UTC()
		}
	}
	return time.Now().UTC().Truncate(time.Second)
}

func stageEmbedded(dir string) error {
	return fs.WalkDir(embedded, "files", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		dst := filepath.Join(dir, strings.TrimPrefix(path, "files"))
		if d.IsDir() {
			return os.MkdirAll(dst, 0o755)
		}
		b, err := embedded.ReadFile(path)
		if err != nil {
			return err
		}
		mode := os.FileMode(0o644)
		if strings.HasPrefix(path, "files/scripts/") {
			mode = 0o755
		}
		return os.WriteFile(dst, b, mode)
	})
}

// writeGz writes data gzip-compressed as Debian wants it (best compression, no name or time in
// the header: reproducible).
func writeGz(path string, data []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	var buf bytes.Buffer
	zw, err := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	if err != nil {
		return err
	}
	zw.Write(data)
	if err := zw.Close(); err != nil {
		return err
	}
	return os.WriteFile(path, buf.Bytes(), 0o644)
}

func changelog(name, version, maintainer string, t time.Time) []byte {
	return fmt.Appendf(nil, "%s (%s) unstable; urgency=medium\n\n  * Built from the dnssensor repository by ci/package.\n\n -- %s  %s\n",
		name, version, maintainer, t.Format("Mon, 02 Jan 2006 15:04:05 -0700"))
}

// manPage turns the command's -h output into a section 8 page.
func manPage(exe string, b binary, version string, t time.Time) []byte {
	help, _ := exec.Command(exe, "-h").CombinedOutput() // flag's -h exits 0 or 2
	var m bytes.Buffer
	fmt.Fprintf(&m, ".TH %s 8 %q %q \"System Administration\"\n", strings.ToUpper(b.name), t.Format("2006-01-02"), "dnssensor "+version)
	fmt.Fprintf(&m, ".SH NAME\n%s \\- %s\n", b.name, b.summary)
	fmt.Fprintf(&m, ".SH OPTIONS\nThe command's own help (%s -h):\n.PP\n.nf\n", b.name)
	for _, l := range strings.Split(strings.TrimRight(string(help), "\n"), "\n") {
		l = strings.ReplaceAll(l, `\`, `\e`)
		l = strings.ReplaceAll(l, "\t", "        ")
		if strings.HasPrefix(l, ".") || strings.HasPrefix(l, "'") {
			l = `\&` + l
		}
		m.WriteString(l + "\n")
	}
	m.WriteString(".fi\n.SH SEE ALSO\n/usr/share/doc/dnssensor/README.Debian, systemctl(1), journalctl(1)\n")
	return m.Bytes()
}

// writeOverrides answers lintian's one remaining tag. Go binaries built with CGO_ENABLED=0 are
// static by design (the appliance's binaries are the same); lintian exempts Go only when it sees
// a source package that build-depends on golang-go, which a package built from the Go toolchain
// directly, without dpkg-buildpackage, does not have.
func writeOverrides(path string, p debian) error {
	var b strings.Builder
	b.WriteString("# Pure Go (CGO_ENABLED=0), static by design; see ci/package.\n")
	for _, bin := range p.bins {
		fmt.Fprintf(&b, "%s: statically-linked-binary [usr/sbin/%s]\n", p.name, bin.name)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return os.WriteFile(path, []byte(b.String()), 0o644)
}
