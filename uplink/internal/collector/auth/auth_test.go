package auth

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/sie-europe/dnssensor/internal/secretfile"
)

func TestParseKeys(t *testing.T) {
	k, err := ParseKeys([]byte("# comment\ns1 key1\n\ns-2.x key2 # trailing\n"))
	if err != nil {
		t.Fatal(err)
	}
	if s, ok := k.Lookup("key2"); !ok || s != "s-2.x" || k.Len() != 2 {
		t.Errorf("Lookup(key2) = %q, %v", s, ok)
	}
	if _, ok := k.Lookup("key"); ok {
		t.Error("prefix of a key accepted")
	}
	for _, bad := range []string{"s1", "s1 k1 extra", "../x k1", ".hidden k1", "s1 k1\ns2 k1", "s1 k1\ns1 k2"} {
		if _, err := ParseKeys([]byte(bad)); err == nil {
			t.Errorf("ParseKeys(%q) accepted", bad)
		}
	}
}

func TestValidSensorName(t *testing.T) {
	for name, want := range map[string]bool{
		"s1": true, "s-2.x_Y": true, "": false, ".hidden": false, "..": false, "../x": false,
		"a/b": false, "a b": false, "ä": false, string(make([]byte, 65)): false,
		"a123456789012345678901234567890123456789012345678901234567890123": true,
	} {
		if got := ValidSensorName(name); got != want {
			t.Errorf("ValidSensorName(%q) = %v, want %v", name, got, want)
		}
	}
}

func TestLoadKeys(t *testing.T) {
	dir := t.TempDir()
	keysFile, apiKeys, err := WriteKeys(dir, "s1", "s2")
	if err != nil {
		t.Fatal(err)
	}
	k, err := LoadKeys(keysFile)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"s1", "s2"} {
		b, err := os.ReadFile(apiKeys[s])
		if err != nil {
			t.Fatal(err)
		}
		if got, ok := k.Lookup(string(b[:len(b)-1])); !ok || got != s {
			t.Errorf("the key written for %s looks up as %q, %v", s, got, ok)
		}
	}
	os.Chmod(keysFile, 0o644)
	if _, err := LoadKeys(keysFile); !errors.Is(err, secretfile.ErrPermissions) {
		t.Errorf("LoadKeys with a 0644 keys file = %v", err)
	}
	if _, err := LoadKeys(filepath.Join(dir, "missing")); err == nil {
		t.Error("LoadKeys of a missing file succeeded")
	}
}
