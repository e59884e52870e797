package tufrepo

import (
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/theupdateframework/go-tuf/v2/metadata"
	"github.com/theupdateframework/go-tuf/v2/metadata/config"
	"github.com/theupdateframework/go-tuf/v2/metadata/updater"
)

func writeFiles(t *testing.T, dir string, content string) map[string]string {
	t.Helper()
	files := map[string]string{}
	for _, n := range []string{RootImg, BootImg, MBRImg, SBOM} {
		p := filepath.Join(dir, n)
		if err := os.WriteFile(p, []byte(n+content), 0o644); err != nil {
			t.Fatal(err)
		}
		files[n] = p
	}
	return files
}

// client verifies the repository the way a box does, from trustedRoot.
func client(t *testing.T, repoURL string, trustedRoot []byte, metaDir string) *updater.Updater {
	t.Helper()
	cfg, err := config.New(repoURL, trustedRoot)
	if err != nil {
		t.Fatal(err)
	}
	cfg.LocalMetadataDir = metaDir
	cfg.LocalTargetsDir = filepath.Join(metaDir, "targets")
	up, err := updater.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return up
}

func TestKeysPublishRotate(t *testing.T) {
	tmp := t.TempDir()
	keysDir := filepath.Join(tmp, "keys")
	k, err := GenerateKeys(keysDir, 2, 2)
	if err != nil {
		t.Fatal(err)
	}
	ents, _ := os.ReadDir(keysDir)
	for _, e := range ents {
		fi, _ := e.Info()
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v, want 0600", e.Name(), fi.Mode().Perm())
		}
	}
	if _, err := GenerateKeys(keysDir, 1, 1); err == nil || !strings.Contains(err.Error(), "refusing to overwrite") {
		t.Errorf("second GenerateKeys into the same dir: %v, want a refusal", err)
	}
	if _, err := GenerateKeys(filepath.Join(tmp, "k2"), 2, 3); err == nil || !strings.Contains(err.Error(), "-root-threshold") {
		t.Errorf("threshold above key count: %v, want an error naming -root-threshold", err)
	}
	loaded, err := LoadKeys(keysDir)
	if err != nil {
		t.Fatal(err)
	}
	if len(loaded.Root) != 2 || loaded.RootThreshold != 2 || len(loaded.Online) != 3 {
		t.Fatalf("loaded %d root keys, threshold %d, %d online keys", len(loaded.Root), loaded.RootThreshold, len(loaded.Online))
	}
	if keyID(loaded.Root[0]) != keyID(k.Root[0]) {
		t.Fatal("loaded root key differs from the generated one")
	}

	repoDir := filepath.Join(tmp, "repo")
	if err := CheckApart(filepath.Join(keysDir, "repo"), keysDir); err == nil {
		t.Error("a repository inside the key directory was accepted")
	}
	if err := CheckApart(repoDir, filepath.Join(repoDir, "keys")); err == nil {
		t.Error("a key directory inside the repository was accepted")
	}
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	r := &Repo{Dir: repoDir, Keys: loaded, Now: func() time.Time { return now }}
	rel := Release{Custom: Custom{Image: "img", Version: 1, BuildTimestamp: "2026-01-01T00:00:00Z", Rollout: 100},
		Files: writeFiles(t, tmp, "v1")}
	if err := r.Publish(rel); err != nil {
		t.Fatal(err)
	}
	rel.Version = 1
	if err := r.Publish(rel); err == nil || !strings.Contains(err.Error(), "-version 1") {
		t.Errorf("republishing version 1: %v, want an error naming -version", err)
	}
	rel.Version, rel.Files = 2, writeFiles(t, tmp, "v2")
	if err := r.Publish(rel); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(http.FileServer(http.Dir(repoDir)))
	defer srv.Close()
	trusted, err := os.ReadFile(filepath.Join(repoDir, "1.root.json"))
	if err != nil {
		t.Fatal(err)
	}
	up := client(t, srv.URL, trusted, filepath.Join(tmp, "meta"))
	up.UnsafeSetRefTime(now.Add(time.Hour))
	if err := up.Refresh(); err != nil {
		t.Fatal(err)
	}
	tf, err := up.GetTargetInfo(TargetPath("img", RootImg))
	if err != nil {
		t.Fatal(err)
	}
	_, data, err := up.DownloadTarget(tf, filepath.Join(tmp, "dl"), "")
	if err != nil || string(data) != RootImg+"v2" {
		t.Fatalf("download: %q, %v", data, err)
	}

	// The timestamp expires after 48 h; refresh makes it valid again.
	now = now.Add(72 * time.Hour)
	if err := r.Refresh(); err != nil {
		t.Fatal(err)
	}
	up = client(t, srv.URL, trusted, filepath.Join(tmp, "meta"))
	up.UnsafeSetRefTime(now.Add(time.Hour))
	if err := up.Refresh(); err != nil {
		t.Fatalf("after publish -refresh: %v", err)
	}

	// Rotation: a client that trusts root v1 follows to the new keys.
	next, err := GenerateKeys(filepath.Join(tmp, "keys2"), 3, 2)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Rotate(next); err != nil {
		t.Fatal(err)
	}
	rel.Version, rel.Files = 3, writeFiles(t, tmp, "v3")
	if err := (&Repo{Dir: repoDir, Keys: loaded, Now: r.Now}).Publish(rel); err == nil || !strings.Contains(err.Error(), "rotated") {
		t.Errorf("publishing with the retired keys: %v, want a refusal", err)
	}
	if err := r.Publish(rel); err != nil {
		t.Fatal(err)
	}
	up = client(t, srv.URL, trusted, filepath.Join(tmp, "meta2"))
	up.UnsafeSetRefTime(now.Add(time.Hour))
	if err := up.Refresh(); err != nil {
		t.Fatalf("client on root v1 after rotation: %v", err)
	}
	if v := up.GetTrustedMetadataSet().Root.Signed.Version; v != 2 {
		t.Errorf("client trusts root version %d, want 2", v)
	}
	tf, err = up.GetTargetInfo(TargetPath("img", RootImg))
	if err != nil {
		t.Fatal(err)
	}
	if c, _ := Latest(map[string]*metadata.TargetFiles{tf.Path: tf}, "img"); c.Version != 3 {
		t.Errorf("latest version %d, want 3", c.Version)
	}
}

func TestLoadKeysRefusesLooseModes(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "keys")
	if _, err := GenerateKeys(dir, 1, 1); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Join(dir, "targets.key"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadKeys(dir); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Errorf("LoadKeys with a world-readable key: %v, want a refusal naming chmod 600", err)
	}
}

func TestRootThresholdNeedsEnoughKeys(t *testing.T) {
	tmp := t.TempDir()
	dir := filepath.Join(tmp, "keys")
	if _, err := GenerateKeys(dir, 2, 2); err != nil {
		t.Fatal(err)
	}
	// One root key moved offline: the repository cannot be created with the other alone.
	if err := os.Rename(filepath.Join(dir, "root-2.key"), filepath.Join(tmp, "root-2.key")); err != nil {
		t.Fatal(err)
	}
	k, err := LoadKeys(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := (&Repo{Dir: filepath.Join(tmp, "repo"), Keys: k}).Init(); err == nil || !strings.Contains(err.Error(), "threshold") {
		t.Errorf("Init with 1 of 2 root keys: %v, want a threshold error", err)
	}
}
