package boxconfig

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// Apply writes f under l and returns the daemons whose file changed. Every new file is written
// and synced beside its target first; only then are they renamed into place, the daemons' files
// before the box file, so a failure before the renames changes nothing, and the box file, renamed
// last, is the record of what was meant: Reconcile at the next start finishes an interrupted
// Apply from it. The box file replaced is kept as PrevFile. A section that is absent removes its
// daemon's file.
func Apply(l Layout, f *Files) (changed []string, err error) {
	type step struct {
		daemon, path string
		data         []byte
		mode         os.FileMode
		tmp          string
	}
	var steps []*step
	for path, key := range f.Secrets {
		if old, err := os.ReadFile(path); err != nil || !bytes.Equal(old, key) {
			steps = append(steps, &step{daemon: "uplinkd", path: path, data: key, mode: 0o600})
		}
	}
	var remove []*step
	for _, df := range l.files() {
		data, ok := f.Daemon[df[0]]
		old, err := os.ReadFile(df[1])
		switch {
		case !ok && errors.Is(err, fs.ErrNotExist):
		case !ok:
			remove = append(remove, &step{daemon: df[0], path: df[1]})
		case err == nil && bytes.Equal(old, data):
		default:
			steps = append(steps, &step{daemon: df[0], path: df[1], data: data, mode: 0o644})
		}
	}
	oldBox, boxErr := os.ReadFile(l.BoxFile())
	if boxErr == nil && bytes.Equal(oldBox, f.Box) && len(steps) == 0 && len(remove) == 0 {
		return nil, nil
	}
	if boxErr == nil && !bytes.Equal(oldBox, f.Box) {
		steps = append(steps, &step{path: l.PrevFile(), data: oldBox, mode: 0o644})
	}
	steps = append(steps, &step{path: l.BoxFile(), data: f.Box, mode: 0o644})
	defer func() {
		for _, s := range steps {
			if s.tmp != "" {
				os.Remove(s.tmp)
			}
		}
	}()
	for _, s := range steps {
		if s.tmp, err = writeTemp(s.path, s.data, s.mode); err != nil {
			return nil, err
		}
	}
	seen := map[string]bool{}
	dirs := map[string]bool{}
	for _, s := range steps {
		if err := os.Rename(s.tmp, s.path); err != nil {
			return changed, fmt.Errorf("replacing %s: %v", s.path, err)
		}
		s.tmp = ""
		dirs[filepath.Dir(s.path)] = true
		if s.daemon != "" && !seen[s.daemon] {
			seen[s.daemon] = true
			changed = append(changed, s.daemon)
		}
	}
	for _, s := range remove {
		if err := os.Remove(s.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return changed, err
		}
		dirs[filepath.Dir(s.path)] = true
		if !seen[s.daemon] {
			seen[s.daemon] = true
			changed = append(changed, s.daemon)
		}
	}
	for d := range dirs {
		syncDir(d)
	}
	return changed, nil
}

// writeTemp writes data to a new file beside path and syncs it, so a rename puts it in place whole
// even across a power cut.
func writeTemp(path string, data []byte, mode os.FileMode) (string, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return "", err
	}
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".new-*")
	if err != nil {
		return "", err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Chmod(mode)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(f.Name())
		return "", fmt.Errorf("writing %s: %v", path, err)
	}
	return f.Name(), nil
}

func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
}

// CheckAndApply parses, checks and applies a box file: nothing is written unless all of it checks
// out.
func CheckAndApply(l Layout, data []byte) (changed []string, err error) {
	b, err := Parse(data)
	if err != nil {
		return nil, err
	}
	f, errs := Check(b, l)
	if errs != nil {
		return nil, errs
	}
	return Apply(l, f)
}

// Reconcile brings the daemons' files in line with the box file, finishing an Apply a power cut
// interrupted between its renames. Without a box file it does nothing.
func Reconcile(l Layout) (changed []string, err error) {
	data, err := os.ReadFile(l.BoxFile())
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return CheckAndApply(l, data)
}
