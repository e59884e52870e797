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
