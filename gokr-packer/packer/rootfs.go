package packer

import (
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	shim "github.com/gokrazy/dnssensor-shim"
)

// fsNode is a file, directory or symlink of a file system being assembled in
// memory before it is written; contents stay on disk (src) until then.
type fsNode struct {
	children map[string]*fsNode // non-nil for directories
	src      string             // regular file: host path to copy
	data     []byte             // regular file: contents (when src is empty)
	mode     os.FileMode
	target   string // symlink target
}

func newDir() *fsNode { return &fsNode{children: map[string]*fsNode{}, mode: 0o755} }

// tree is a file system under construction.
type tree struct{ root *fsNode }

func newTree() *tree { return &tree{root: newDir()} }

func (t *tree) dir(p string) (*fsNode, error) {
	n := t.root
	for _, c := range strings.Split(strings.Trim(p, "/"), "/") {
		if c == "" {
			continue
		}
		next, ok := n.children[c]
		if !ok {
			next = newDir()
			n.children[c] = next
		}
		if next.children == nil {
			return nil, fmt.Errorf("%s: %s is not a directory", p, c)
		}
		n = next
	}
	return n, nil
}

func (t *tree) add(p string, n *fsNode) error {
	d, err := t.dir(filepath.Dir(p))
	if err != nil {
		return err
	}
	base := filepath.Base(p)
	if _, dup := d.children[base]; dup {
		return fmt.Errorf("%s added twice", p)
	}
	d.children[base] = n
	return nil
}

func (t *tree) file(p, src string, mode os.FileMode) error {
	return t.add(p, &fsNode{src: src, mode: mode})
}

func (t *tree) bytes(p string, data []byte, mode os.FileMode) error {
	return t.add(p, &fsNode{data: data, mode: mode})
}

func (t *tree) symlink(p, target string) error {
	return t.add(p, &fsNode{target: target, mode: 0o777})
}

// copyDir adds every file below host directory src at dst (modes normalised:
// executables 0755, everything else 0644; the module cache is read-only).
func (t *tree) copyDir(dst, src string) error {
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		target := filepath.Join(dst, rel)
		switch {
		case d.IsDir():
			_, err := t.dir(target)
			return err
		case d.Type()&fs.ModeSymlink != 0:
			l, err := os.Readlink(p)
			if err != nil {
				return err
			}
			return t.symlink(target, l)
		default:
			info, err := d.Info()
			if err != nil {
				return err
			}
			mode := os.FileMode(0o644)
			if info.Mode()&0o111 != 0 {
				mode = 0o755
			}
			return t.file(target, p, mode)
		}
	})
}

func sortedNames(n *fsNode) []string {
	names := make([]string, 0, len(n.children))
	for k := range n.children {
		names = append(names, k)
	}
	sort.Strings(names) // SquashFS needs sorted directories; it also makes bytes reproducible
	return names
}

func (n *fsNode) open() (io.ReadCloser, error) {
	if n.src != "" {
		return os.Open(n.src)
	}
	return io.NopCloser(strings.NewReader(string(n.data))), nil
}

// writeSquashfs writes t as a SquashFS image to w; every time stamp is mtime so
// the same inputs give the same bytes.
func writeSquashfs(w io.WriteSeeker, t *tree, mtime time.Time) error {
	sw, err := shim.NewSquashfsWriter(w, mtime)
	if err != nil {
		return err
	}
	var walk func(d *shim.SquashfsDir, n *fsNode, p string) error
	walk = func(d *shim.SquashfsDir, n *fsNode, p string) error {
		for _, name := range sortedNames(n) {
			c := n.children[name]
			switch {
			case c.children != nil:
				sub := d.Directory(name, mtime)
				if err := walk(sub, c, p+"/"+name); err != nil {
					return err
				}
				if err := sub.Flush(); err != nil {
					return err
				}
			case c.target != "":
				if err := d.Symlink(c.target, name, mtime, c.mode); err != nil {
					return err
				}
			default:
				r, err := c.open()
				if err != nil {
					return err
				}
				f, err := d.File(name, mtime, c.mode)
				if err != nil {
					r.Close()
					return err
				}
				if _, err := io.Copy(f, r); err != nil {
					r.Close()
					return fmt.Errorf("%s/%s: %w", p, name, err)
				}
				r.Close()
				if err := f.Close(); err != nil {
					return err
				}
			}
		}
		return nil
	}
	root := sw.Root()
	if err := walk(root, t.root, ""); err != nil {
		return err
	}
	if err := root.Flush(); err != nil {
		return err
	}
	return sw.Flush()
}

// writeFAT writes t as a FAT16B image (no symlinks) to w, padded to the size its
// boot sector declares (so boot.img is a complete file system on its own). Files
// are written in sorted order; each one is contiguous.
func writeFAT(w io.Writer, t *tree, mtime time.Time) error {
	cw := &countingWriter{w: w}
	fw, err := shim.NewFATWriter(cw)
	if err != nil {
		return err
	}
	if err := writeFATEntries(fw, t, mtime); err != nil {
		return err
	}
	if err := fw.Flush(); err != nil {
		return err
	}
	if pad := int64(fw.TotalSectors())*sectorSize - cw.n; pad > 0 {
		_, err := w.Write(make([]byte, pad))
		return err
	}
	return nil
}

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

func writeFATEntries(fw *shim.FATWriter, t *tree, mtime time.Time) error {
	var walk func(n *fsNode, p string) error
	walk = func(n *fsNode, p string) error {
		for _, name := range sortedNames(n) {
			c := n.children[name]
			full := p + "/" + name // leading slash: the FAT writer treats "x" as "./x"
			switch {
			case c.children != nil:
				if err := fw.Mkdir(full, mtime); err != nil {
					return err
				}
				if err := walk(c, full); err != nil {
					return err
				}
			case c.target != "":
				return fmt.Errorf("%s: FAT has no symlinks", full)
			default:
				r, err := c.open()
				if err != nil {
					return err
				}
				fwr, err := fw.File(full, mtime)
				if err != nil {
					r.Close()
					return err
				}
				_, err = io.Copy(fwr, r)
				r.Close()
				if err != nil {
					return fmt.Errorf("%s: %w", full, err)
				}
			}
		}
		return nil
	}
	return walk(t.root, "")
}
