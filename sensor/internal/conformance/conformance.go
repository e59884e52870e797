// Package conformance finds the shared conformance corpus (../shared/conformance beside the
// checkout) for tests, which skip when a clone does not have it.
package conformance

import (
	"os"
	"path/filepath"
	"testing"
)

// Dir returns the corpus folder, or skips t with a message when it is absent.
func Dir(t testing.TB) string {
	t.Helper()
	if d := os.Getenv("CONFORMANCE_DIR"); d != "" {
		return d
	}
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for d := wd; ; d = filepath.Dir(d) {
		c := filepath.Join(d, "shared", "conformance")
		if fi, err := os.Stat(c); err == nil && fi.IsDir() {
			return c
		}
		c = filepath.Join(d, "..", "shared", "conformance")
		if fi, err := os.Stat(c); err == nil && fi.IsDir() {
			return filepath.Clean(c)
		}
		if filepath.Dir(d) == d {
			break
		}
	}
	t.Skip("conformance corpus not found (../shared/conformance beside the checkout, or $CONFORMANCE_DIR); skipping")
	return ""
}
