package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sie-europe/dnssensor/gokr-packer/packer"
)

// TestKeysAndPublishCLI drives keys, publish -built (twice, the version counting up), a refused
// lower version, publish -refresh and a root rotation through the command line.
func TestKeysAndPublishCLI(t *testing.T) {
	tmp := t.TempDir()
	keys, repo := filepath.Join(tmp, "keys"), filepath.Join(tmp, "repo")
	run1 := func(args ...string) (string, error) {
		var out, errb bytes.Buffer
		err := run(context.Background(), args, &out, &errb)
		if err != nil {
			errb.WriteString(err.Error())
		}
		return out.String() + errb.String(), err
	}
	if out, err := run1("keys", "-dir", keys, "-root-keys", "2", "-root-threshold", "2"); err != nil {
		t.Fatalf("keys: %v\n%s", err, out)
	}
	built := filepath.Join(tmp, "built.json")
	art := func(v string) {
		res := packer.Result{Image: "sensor-amd64", BuildTimestamp: "2026-01-0" + v + "T00:00:00Z"}
		res.RootImg, res.BootImg, res.MBRImg, res.SBOM = filepath.Join(tmp, v+".root"), filepath.Join(tmp, v+".boot"), filepath.Join(tmp, v+".mbr"), filepath.Join(tmp, v+".sbom")
		for _, f := range []string{res.RootImg, res.BootImg, res.MBRImg, res.SBOM} {
			if err := os.WriteFile(f, []byte(f), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		b, _ := json.Marshal(res)
		if err := os.WriteFile(built, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	art("1")
	if out, err := run1("publish", "-repo", repo, "-keys", keys, "-built", built, "-rollout", "50"); err != nil || !strings.Contains(out, `"version":1`) {
		t.Fatalf("publish: %v\n%s", err, out)
	}
	art("2")
	if out, err := run1("publish", "-repo", repo, "-keys", keys, "-built", built); err != nil || !strings.Contains(out, `"version":2`) {
		t.Fatalf("second publish: %v\n%s", err, out)
	}
	if out, err := run1("publish", "-repo", repo, "-keys", keys, "-built", built, "-version", "2"); err == nil || !strings.Contains(out, "-version 2") {
		t.Errorf("publishing version 2 again: %v, want an error naming -version\n%s", err, out)
	}
	if out, err := run1("publish", "-repo", repo, "-keys", keys, "-refresh"); err != nil {
		t.Fatalf("refresh: %v\n%s", err, out)
	}
	if out, err := run1("publish", "-repo", repo, "-keys", filepath.Join(repo, "k"), "-refresh"); err == nil || !strings.Contains(out, "overlap") {
		t.Errorf("keys inside the repository: %v, want a refusal\n%s", err, out)
	}
	if out, err := run1("publish", "-repo", repo, "-built", built); err == nil || !strings.Contains(out, "-keys is required") {
		t.Errorf("no -keys: %v\n%s", err, out)
	}
	if out, err := run1("keys", "-dir", filepath.Join(tmp, "keys2"), "-rotate-from", keys, "-repo", repo); err != nil {
		t.Fatalf("rotation: %v\n%s", err, out)
	}
	if _, err := os.Stat(filepath.Join(repo, "2.root.json")); err != nil {
		t.Errorf("rotation wrote no root version 2: %v", err)
	}
	ents, _ := os.ReadDir(repo)
	for _, e := range ents {
		if strings.HasSuffix(e.Name(), ".key") {
			t.Errorf("a key in the repository: %s", e.Name())
		}
	}
}

// TestKeysCreateRepo: keys -repo creates the repository with the new keys, so images can carry
// its root.json before the first release (one image build fewer in ci/qemu-tuf-test); the first
// publish then adds to it; an existing repository is refused (that is -rotate-from's job).
func TestKeysCreateRepo(t *testing.T) {
	tmp := t.TempDir()
	keys, repo := filepath.Join(tmp, "keys"), filepath.Join(tmp, "repo")
	var out, errb bytes.Buffer
	if err := run(context.Background(), []string{"keys", "-dir", keys, "-repo", repo}, &out, &errb); err != nil {
		t.Fatalf("keys -repo: %v\n%s", err, errb.String())
	}
	root, err := os.ReadFile(filepath.Join(repo, "root.json"))
	if err != nil || !bytes.Contains(root, []byte(`"_type": "root"`)) && !bytes.Contains(root, []byte(`"_type":"root"`)) {
		t.Fatalf("root.json: %v\n%s", err, root)
	}
	res := packer.Result{Image: "sensor-amd64", BuildTimestamp: "2026-01-01T00:00:00Z"}
	res.RootImg, res.BootImg, res.MBRImg = filepath.Join(tmp, "root"), filepath.Join(tmp, "boot"), filepath.Join(tmp, "mbr")
	for _, f := range []string{res.RootImg, res.BootImg, res.MBRImg} {
		os.WriteFile(f, []byte(f), 0o644)
	}
	b, _ := json.Marshal(res)
	built := filepath.Join(tmp, "built.json")
	os.WriteFile(built, b, 0o644)
	out.Reset()
	if err := run(context.Background(), []string{"publish", "-repo", repo, "-keys", keys, "-built", built}, &out, &errb); err != nil || !strings.Contains(out.String(), `"version":1`) {
		t.Fatalf("first publish into it: %v\n%s%s", err, out.String(), errb.String())
	}
	if after, _ := os.ReadFile(filepath.Join(repo, "root.json")); !bytes.Equal(after, root) {
		t.Error("the first publish replaced the root the images carry")
	}
	errb.Reset()
	if err := run(context.Background(), []string{"keys", "-dir", filepath.Join(tmp, "keys2"), "-repo", repo}, &out, &errb); err == nil || !strings.Contains(err.Error(), "-rotate-from") {
		t.Errorf("keys -repo on an existing repository: %v, want a refusal naming -rotate-from", err)
	}
}
