package packer

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
)

// MainModule is this repository's module path.
const MainModule = "github.com/sie-europe/dnssensor"

// goEnv is the environment of every device build: pure Go for the profile's
// architecture. GOFLAGS is replaced so a developer's setting cannot change the
// image; GOTOOLCHAIN=local keeps the toolchain the one that runs the packer.
func goEnv(goarch string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "GOFLAGS=") || strings.HasPrefix(kv, "GOOS=") ||
			strings.HasPrefix(kv, "GOARCH=") || strings.HasPrefix(kv, "CGO_ENABLED=") {
			continue
		}
		env = append(env, kv)
	}
	return append(env, "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+goarch, "GOFLAGS=-mod=readonly")
}

// goBuild builds the main packages pkgs (import paths) in module directory dir
// into outDir, one binary per package named after its last path element.
// overlay, when non-empty, is passed as -overlay (used for the generated init).
func goBuild(ctx context.Context, dir, goarch, outDir, overlay string, pkgs []string) error {
	if len(pkgs) == 0 {
		return nil
	}
	args := []string{"build", "-trimpath", "-buildvcs=false", "-o", outDir + "/"}
	if overlay != "" {
		args = append(args, "-overlay", overlay)
	}
	args = append(args, pkgs...)
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = dir
	cmd.Env = goEnv(goarch)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("go build (in %s) %s: %v\n%s", dir, strings.Join(pkgs, " "), err, stderr.String())
	}
	return nil
}

// buildInit compiles the generated init source inside the deps module (which
// pins github.com/gokrazy/gokrazy) without writing into the source tree: the
// file is mapped into a package directory that does not exist, via -overlay.
func buildInit(ctx context.Context, depsDir, goarch, outDir string, src []byte, tmp string) error {
	srcFile := filepath.Join(tmp, "init.go")
	if err := os.WriteFile(srcFile, src, 0o644); err != nil {
		return err
	}
	virtual := filepath.Join(depsDir, "zgeneratedinit", "init.go")
	ov, err := json.Marshal(map[string]map[string]string{"Replace": {virtual: srcFile}})
	if err != nil {
		return err
	}
	ovFile := filepath.Join(tmp, "overlay.json")
	if err := os.WriteFile(ovFile, ov, 0o644); err != nil {
		return err
	}
	if err := goBuild(ctx, depsDir, goarch, outDir, ovFile, []string{"./zgeneratedinit"}); err != nil {
		return fmt.Errorf("building generated init: %w", err)
	}
	return os.Rename(filepath.Join(outDir, "zgeneratedinit"), filepath.Join(outDir, "init"))
}

// moduleDir returns the directory of module mod as required by the module in
// dir, downloading it when needed (the module cache is filled by the Go proxy).
func moduleDir(ctx context.Context, dir, mod string) (version, modDir string, err error) {
	cmd := exec.CommandContext(ctx, "go", "mod", "download", "-json", mod)
	cmd.Dir = dir
	cmd.Env = goEnv("amd64")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	runErr := cmd.Run()
	var info struct{ Version, Dir, Error string }
	if err := json.Unmarshal(stdout.Bytes(), &info); err != nil || runErr != nil || info.Error != "" {
		return "", "", fmt.Errorf("locating module %s (is it required by %s/go.mod?): %v %s %s", mod, dir, runErr, info.Error, stderr.String())
	}
	return info.Version, info.Dir, nil
}

// inMainModule reports whether pkg is built from the checkout (not from deps).
func inMainModule(pkg string) bool {
	return strings.HasPrefix(pkg, MainModule+"/") && !strings.HasPrefix(pkg, MainModule+"/images/deps/")
}

// packageExists reports whether a main-module package has a folder in the tree;
// used for "optional" programs other engineers have not landed yet.
func packageExists(repoRoot, pkg string) bool {
	if !inMainModule(pkg) {
		return true
	}
	rel := strings.TrimPrefix(pkg, MainModule+"/")
	matches, _ := filepath.Glob(filepath.Join(repoRoot, rel, "*.go"))
	return len(matches) > 0
}

func binaryName(pkg string) string { return path.Base(pkg) }
