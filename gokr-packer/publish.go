package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/sie-europe/dnssensor/gokr-packer/packer"
	"github.com/sie-europe/dnssensor/internal/tufrepo"
)

// TrustedRootPath is where an image carries the TUF root its update agent starts from.
const TrustedRootPath = "/etc/updated/root.json"

func runKeys(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("gokr-packer keys", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dir := fs.String("dir", "", "create the keys in `DIR` (0700; never inside the repository)")
	n := fs.Int("root-keys", 1, "number of root keys")
	threshold := fs.Int("root-threshold", 1, "root keys needed to sign root metadata")
	rotateFrom := fs.String("rotate-from", "", "rotate -repo from the keys in `OLDDIR` to the new ones in -dir")
	repoDir := fs.String("repo", "", "repository `DIR`: with -rotate-from the one to rotate; alone, a new repository to create (its root.json can be baked into images with -tuf-root before the first publish)")
	if err := fs.Parse(args); err != nil {
		return usageError{err}
	}
	if *dir == "" {
		return usageError{fmt.Errorf("-dir is required")}
	}
	if *rotateFrom != "" && *repoDir == "" {
		return usageError{fmt.Errorf("-rotate-from needs -repo (the repository to rotate)")}
	}
	if *repoDir != "" && *rotateFrom == "" && tufrepo.Exists(*repoDir) {
		return usageError{fmt.Errorf("-repo %s already holds a repository: rotate its keys with -rotate-from", *repoDir)}
	}
	var old *tufrepo.Keys
	if *repoDir != "" {
		if err := tufrepo.CheckApart(*repoDir, *dir); err != nil {
			return usageError{err}
		}
	}
	if *rotateFrom != "" {
		var err error
		if old, err = tufrepo.LoadKeys(*rotateFrom); err != nil {
			return usageError{fmt.Errorf("-rotate-from: %w", err)}
		}
	}
	k, err := tufrepo.GenerateKeys(*dir, *n, *threshold)
	if err != nil {
		return usageError{err}
	}
	out := map[string]any{"dir": k.Dir, "root_keys": len(k.Root), "root_threshold": k.RootThreshold}
	if old != nil {
		r := &tufrepo.Repo{Dir: *repoDir, Keys: old}
		if err := r.Rotate(k); err != nil {
			return err
		}
		out["rotated"] = *repoDir
	} else if *repoDir != "" {
		r := &tufrepo.Repo{Dir: *repoDir, Keys: k}
		if err := r.Init(); err != nil {
			return err
		}
		out["repo"] = *repoDir
	}
	return json.NewEncoder(stdout).Encode(out)
}

func runPublish(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("gokr-packer publish", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var c common
	c.register(fs)
	repoDir := fs.String("repo", "", "TUF repository `DIR` (created on the first publish; serve it with any static HTTP server)")
	keysDir := fs.String("keys", "", "key `DIR` made by gokr-packer keys")
	version := fs.Int64("version", 0, "release `N` of the image (default: the published one + 1); boxes install only higher versions")
	rollout := fs.Int("rollout", 100, "`PERCENT` of boxes (by machine-id hash) that may install this release")
	built := fs.String("built", "", "publish already built artefacts: the JSON `FILE` gokr-packer printed for the build (default: build now)")
	refresh := fs.Bool("refresh", false, "only re-sign the timestamp (run it more often than -timestamp-expires)")
	tsExpires := fs.Duration("timestamp-expires", tufrepo.DefaultExpiry.Timestamp, "timestamp lifetime: boxes refuse a repository whose timestamp was not refreshed for this long")
	if err := fs.Parse(args); err != nil {
		return usageError{err}
	}
	if *repoDir == "" {
		return usageError{fmt.Errorf("-repo is required")}
	}
	if *keysDir == "" {
		return usageError{fmt.Errorf("-keys is required")}
	}
	if err := tufrepo.CheckApart(*repoDir, *keysDir); err != nil {
		return usageError{err}
	}
	keys, err := tufrepo.LoadKeys(*keysDir)
	if err != nil {
		return usageError{err}
	}
	r := &tufrepo.Repo{Dir: *repoDir, Keys: keys, Expiry: tufrepo.Expiry{Timestamp: *tsExpires}}
	if *refresh {
		if err := r.Refresh(); err != nil {
			return err
		}
		return json.NewEncoder(stdout).Encode(map[string]any{"repo": *repoDir, "refreshed": true})
	}
	if *rollout < 0 || *rollout > 100 {
		return usageError{fmt.Errorf("-rollout %d: want a percentage, 0 to 100", *rollout)}
	}
	if !tufrepo.Exists(*repoDir) {
		// First: the image about to be built carries the new repository's root.
		if err := r.Init(); err != nil {
			return err
		}
	}
	var res *packer.Result
	if *built != "" {
		b, err := os.ReadFile(*built)
		if err != nil {
			return usageError{fmt.Errorf("-built: %w", err)}
		}
		res = &packer.Result{}
		if err := json.Unmarshal(b, res); err != nil || res.RootImg == "" || res.BuildTimestamp == "" {
			return usageError{fmt.Errorf("-built %s: not the JSON a gokr-packer build printed (%v)", *built, err)}
		}
	} else {
		work, err := os.MkdirTemp("", "gokr-packer-publish-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(work)
		trusted, err := os.ReadFile(filepath.Join(*repoDir, "root.json"))
		if err != nil {
			return err
		}
		c.rootFiles = map[string][]byte{TrustedRootPath: trusted}
		if res, err = c.build(ctx, filepath.Join(work, c.image+".img"), "", work, "", stderr); err != nil {
			return err
		}
	}
	img := res.Image
	if img == "" {
		img = c.image
	}
	v := *version
	if v == 0 {
		v, err = r.NextVersion(img)
		if err != nil {
			return err
		}
	}
	files := map[string]string{tufrepo.RootImg: res.RootImg, tufrepo.BootImg: res.BootImg, tufrepo.MBRImg: res.MBRImg}
	if res.SBOM != "" {
		files[tufrepo.SBOM] = res.SBOM
	}
	rel := tufrepo.Release{Custom: tufrepo.Custom{Image: img, Version: v, BuildTimestamp: res.BuildTimestamp, Rollout: *rollout}, Files: files}
	if err := r.Publish(rel); err != nil {
		return err
	}
	fmt.Fprintf(stderr, "gokr-packer: published %s version %d (build %s, rollout %d%%) to %s\n", img, v, res.BuildTimestamp, *rollout, *repoDir)
	return json.NewEncoder(stdout).Encode(struct {
		Release tufrepo.Custom `json:"release"`
		Repo    string         `json:"repo"`
		At      time.Time      `json:"at"`
	}{rel.Custom, *repoDir, time.Now().UTC()})
}
