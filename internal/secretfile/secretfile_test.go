package secretfile

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func TestRead(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "k")
	if err := os.WriteFile(p, []byte("secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if b, err := Read(p); err != nil || string(b) != "secret\n" {
		t.Fatalf("Read(0600) = %q, %v", b, err)
	}
	for _, mode := range []os.FileMode{0o640, 0o604, 0o644} {
		os.Chmod(p, mode)
		if _, err := Read(p); !errors.Is(err, ErrPermissions) {
			t.Errorf("Read(%04o) = %v, want ErrPermissions", mode, err)
		}
	}
	if _, err := Read(dir); err == nil {
		t.Error("Read(directory) accepted")
	}
	big := filepath.Join(dir, "big")
	os.WriteFile(big, make([]byte, MaxSize+1), 0o600)
	if _, err := Read(big); err == nil {
		t.Error("Read of a file above MaxSize accepted")
	}
}

func TestValidToken(t *testing.T) {
	for s, want := range map[string]bool{"abc": true, "a-b_c.d~!": true, "": false, "a b": false, "a\tb": false, "ä": false, "a\x7f": false} {
		if got := ValidToken(s); got != want {
			t.Errorf("ValidToken(%q) = %v, want %v", s, got, want)
		}
	}
}

// TestKnown: what Read returns is remembered for the log scrubber: a key file's key, a keys
// file's keys but not its sensor names or comments, nothing too short to be a secret.
func TestKnown(t *testing.T) {
	p := filepath.Join(t.TempDir(), "keys")
	os.WriteFile(p, []byte("# sensors of lab 7, rotated 2026-01-01\nlab-sensor-7 k7-0123456789abcdef\nshort-one abc\n"), 0o600)
	q := filepath.Join(t.TempDir(), "api.key")
	os.WriteFile(q, []byte("  api-key-fedcba9876543210 \n"), 0o600)
	if _, err := Read(p); err != nil {
		t.Fatal(err)
	}
	if _, err := Read(q); err != nil {
		t.Fatal(err)
	}
	known := map[string]bool{}
	for _, k := range Known() {
		known[k] = true
	}
	for _, want := range []string{"k7-0123456789abcdef", "api-key-fedcba9876543210"} {
		if !known[want] {
			t.Errorf("%q not known: %q", want, Known())
		}
	}
	for _, not := range []string{"lab-sensor-7", "abc", "2026-01-01", "lab-sensor-7 k7-0123456789abcdef"} {
		if known[not] {
			t.Errorf("%q remembered as a secret", not)
		}
	}
	if k := Known(); len(k) > 1 && len(k[0]) < len(k[len(k)-1]) {
		t.Errorf("not longest first: %q", k)
	}
}
