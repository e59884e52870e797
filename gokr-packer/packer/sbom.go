package packer

import (
	"bufio"
	"crypto/sha256"
	"debug/buildinfo"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
)

// SBOM lists what an image is made of: every program with its binary hash, Go
// version and module graph (versions and go.sum hashes), and the kernel,
// firmware and EEPROM modules. Its SHA-256 is written beside it into
// /etc/gokrazy/sbom.json, which gokrazy's status page shows as "SBOM hash", so
// an operator can tell which exact build a device runs.
type SBOM struct {
	Image    string        `json:"image"`
	Profile  string        `json:"profile"`
	GOARCH   string        `json:"goarch"`
	Programs []SBOMProgram `json:"programs"`
	Modules  []SBOMModule  `json:"device_modules"` // kernel, firmware, EEPROM
}

// SBOMProgram is one binary in the root file system.
type SBOMProgram struct {
	Path      string       `json:"path"`
	Package   string       `json:"package"`
	SHA256    string       `json:"sha256"`
	GoVersion string       `json:"go_version"`
	Main      string       `json:"main_module"`
	Deps      []SBOMModule `json:"deps"`
}

// SBOMModule is a module version and its go.sum hash.
type SBOMModule struct {
	Path    string `json:"path"`
	Version string `json:"version"`
	Sum     string `json:"sum,omitempty"`
}

func fileSHA256(p string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func sbomProgram(binary, rootPath, pkg string) (SBOMProgram, error) {
	sum, err := fileSHA256(binary)
	if err != nil {
		return SBOMProgram{}, err
	}
	bi, err := buildinfo.ReadFile(binary)
	if err != nil {
		return SBOMProgram{}, fmt.Errorf("reading build info of %s: %w", binary, err)
	}
	p := SBOMProgram{Path: rootPath, Package: pkg, SHA256: sum, GoVersion: bi.GoVersion, Main: bi.Main.Path}
	for _, d := range bi.Deps {
		m := SBOMModule{Path: d.Path, Version: d.Version, Sum: d.Sum}
		if d.Replace != nil {
			m.Version += " => " + d.Replace.Path + " " + d.Replace.Version
		}
		p.Deps = append(p.Deps, m)
	}
	return p, nil
}

// goSumHash returns the h1: hash of mod@version from a go.sum file.
func goSumHash(goSum, mod, version string) string {
	f, err := os.Open(goSum)
	if err != nil {
		return ""
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		fields := strings.Fields(s.Text())
		if len(fields) == 3 && fields[0] == mod && fields[1] == version {
			return fields[2]
		}
	}
	return ""
}

// encodeSBOM returns the sbom.json file contents and the hash shown by the
// status page.
func encodeSBOM(s SBOM) (file []byte, hash string, err error) {
	b, err := json.Marshal(s)
	if err != nil {
		return nil, "", err
	}
	h := sha256.Sum256(b)
	hash = hex.EncodeToString(h[:])
	file, err = json.MarshalIndent(struct {
		Hash string          `json:"sbom_hash"`
		SBOM json.RawMessage `json:"sbom"`
	}{hash, b}, "", "  ")
	return file, hash, err
}
