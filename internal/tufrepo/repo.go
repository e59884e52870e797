package tufrepo

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/theupdateframework/go-tuf/v2/metadata"
)

// Custom is the custom metadata of every target of an image release: the agent reads it from
// the root image's target.
type Custom struct {
	Image          string `json:"image"`
	Version        int64  `json:"version"`         // monotonic per image: a box never installs a version ≤ its own
	BuildTimestamp string `json:"build_timestamp"` // gokrazy's, RFC 3339: the running system answers with it
	Rollout        int    `json:"rollout"`         // percent of boxes (by machine-id hash) that may install it
}

// Target names inside an image's folder.
const (
	RootImg = "root.img"
	BootImg = "boot.img"
	MBRImg  = "mbr.img"
	SBOM    = "sbom.json"
)

// TargetPath is the target name of an image's artefact: IMAGE/NAME.
func TargetPath(image, name string) string { return image + "/" + name }

// Expiry is how long each role's metadata stays valid after it is signed.
type Expiry struct {
	Root, Targets, Snapshot, Timestamp time.Duration
}

// DefaultExpiry: the online roles' long lifetimes are safe because the timestamp, re-signed by
// publish -refresh, bounds how long a frozen view of the repository is accepted.
var DefaultExpiry = Expiry{Root: 365 * 24 * time.Hour, Targets: 365 * 24 * time.Hour,
	Snapshot: 365 * 24 * time.Hour, Timestamp: 48 * time.Hour}

// Repo is a repository directory and the keys that sign it.
type Repo struct {
	Dir    string
	Keys   *Keys
	Now    func() time.Time // nil: time.Now
	Expiry Expiry           // zero fields: DefaultExpiry's
}

func (r *Repo) now() time.Time {
	if r.Now != nil {
		return r.Now().UTC()
	}
	return time.Now().UTC()
}

func (r *Repo) expires(role string) time.Time {
	d := map[string]time.Duration{metadata.ROOT: r.Expiry.Root, metadata.TARGETS: r.Expiry.Targets,
		metadata.SNAPSHOT: r.Expiry.Snapshot, metadata.TIMESTAMP: r.Expiry.Timestamp}[role]
	if d == 0 {
		d = map[string]time.Duration{metadata.ROOT: DefaultExpiry.Root, metadata.TARGETS: DefaultExpiry.Targets,
			metadata.SNAPSHOT: DefaultExpiry.Snapshot, metadata.TIMESTAMP: DefaultExpiry.Timestamp}[role]
	}
	return r.now().Add(d).Truncate(time.Second)
}

// CheckApart refuses a key directory inside the repository (or the other way round): whatever
// the web server serves must never include a private key.
func CheckApart(repoDir, keysDir string) error {
	a, err1 := filepath.Abs(repoDir)
	b, err2 := filepath.Abs(keysDir)
	if err := errors.Join(err1, err2); err != nil {
		return err
	}
	if a == b || strings.HasPrefix(b+"/", a+"/") || strings.HasPrefix(a+"/", b+"/") {
		return fmt.Errorf("-keys %s and -repo %s overlap: the repository is served as it is, keep the keys elsewhere", keysDir, repoDir)
	}
	return nil
}

type state struct {
	root      *metadata.Metadata[metadata.RootType]
	targets   *metadata.Metadata[metadata.TargetsType]
	snapshot  *metadata.Metadata[metadata.SnapshotType]
	timestamp *metadata.Metadata[metadata.TimestampType]
}

// load reads the newest consistent state: timestamp → snapshot → targets, and root.json.
func (r *Repo) load() (*state, error) {
	s := &state{}
	var err error
	if s.root, err = metadata.Root().FromFile(filepath.Join(r.Dir, "root.json")); err != nil {
		return nil, fmt.Errorf("-repo %s: %w", r.Dir, err)
	}
	if s.timestamp, err = metadata.Timestamp().FromFile(filepath.Join(r.Dir, "timestamp.json")); err != nil {
		return nil, fmt.Errorf("-repo %s: %w", r.Dir, err)
	}
	sv := s.timestamp.Signed.Meta["snapshot.json"].Version
	if s.snapshot, err = metadata.Snapshot().FromFile(filepath.Join(r.Dir, fmt.Sprintf("%d.snapshot.json", sv))); err != nil {
		return nil, fmt.Errorf("-repo %s: %w", r.Dir, err)
	}
	tv := s.snapshot.Signed.Meta["targets.json"].Version
	if s.targets, err = metadata.Targets().FromFile(filepath.Join(r.Dir, fmt.Sprintf("%d.targets.json", tv))); err != nil {
		return nil, fmt.Errorf("-repo %s: %w", r.Dir, err)
	}
	return s, nil
}

// Exists tells whether dir holds a repository already.
func Exists(dir string) bool {
	_, err := os.Stat(filepath.Join(dir, "root.json"))
	return err == nil
}

// Init creates a repository: root version 1 over the key set, empty targets.
func (r *Repo) Init() error {
	if Exists(r.Dir) {
		return fmt.Errorf("-repo %s already holds a repository", r.Dir)
	}
	if err := os.MkdirAll(r.Dir, 0o755); err != nil {
		return fmt.Errorf("-repo: %w", err)
	}
	root := metadata.Root(r.expires(metadata.ROOT))
	if err := r.setRootKeys(&root.Signed, r.Keys); err != nil {
		return err
	}
	if err := r.signRoot(root, r.Keys); err != nil {
		return err
	}
	if err := r.writeRoot(root); err != nil {
		return err
	}
	s := &state{root: root, targets: metadata.Targets(r.expires(metadata.TARGETS)),
		snapshot: metadata.Snapshot(), timestamp: metadata.Timestamp()}
	s.targets.Signed.Version = 0 // commit bumps every online role to 1
	s.snapshot.Signed.Version = 0
	s.timestamp.Signed.Version = 0
	return r.commit(s, true)
}

func (r *Repo) setRootKeys(root *metadata.RootType, k *Keys) error {
	if len(k.Root) < k.RootThreshold {
		return fmt.Errorf("-keys %s: %d root keys for a threshold of %d", k.Dir, len(k.Root), k.RootThreshold)
	}
	for role := range root.Roles {
		for _, id := range append([]string(nil), root.Roles[role].KeyIDs...) {
			if err := root.RevokeKey(id, role); err != nil {
				return err
			}
		}
	}
	for _, p := range k.Root {
		if err := root.AddKey(tufKey(p), metadata.ROOT); err != nil {
			return err
		}
	}
	root.Roles[metadata.ROOT].Threshold = k.RootThreshold
	for _, role := range onlineRoles {
		p, ok := k.Online[role]
		if !ok {
			return fmt.Errorf("-keys %s: no %s.key", k.Dir, role)
		}
		if err := root.AddKey(tufKey(p), role); err != nil {
			return err
		}
		root.Roles[role].Threshold = 1
	}
	return nil
}

// signRoot signs with every root key of k that the root role lists, and checks the threshold.
func (r *Repo) signRoot(root *metadata.Metadata[metadata.RootType], k *Keys) error {
	n := 0
	for _, p := range k.Root {
		if !contains(root.Signed.Roles[metadata.ROOT].KeyIDs, keyID(p)) {
			continue
		}
		if _, err := root.Sign(signer(p)); err != nil {
			return err
		}
		n++
	}
	if n < root.Signed.Roles[metadata.ROOT].Threshold {
		return fmt.Errorf("-keys %s: %d of the repository's root keys present, its threshold is %d", k.Dir, n, root.Signed.Roles[metadata.ROOT].Threshold)
	}
	return nil
}

func contains(ids []string, id string) bool {
	for _, x := range ids {
		if x == id {
			return true
		}
	}
	return false
}

func (r *Repo) writeRoot(root *metadata.Metadata[metadata.RootType]) error {
	b, err := root.ToBytes(true)
	if err != nil {
		return err
	}
	if err := writeAtomic(filepath.Join(r.Dir, fmt.Sprintf("%d.root.json", root.Signed.Version)), b); err != nil {
		return err
	}
	return writeAtomic(filepath.Join(r.Dir, "root.json"), b)
}

// onlineKey returns the key of role that the repository's root trusts.
func (r *Repo) onlineKey(root *metadata.RootType, role string) (ed25519.PrivateKey, error) {
	p, ok := r.Keys.Online[role]
	if !ok {
		return nil, fmt.Errorf("-keys %s: no %s.key (needed to sign %s.json)", r.Keys.Dir, role, role)
	}
	if !contains(root.Roles[role].KeyIDs, keyID(p)) {
		return nil, fmt.Errorf("-keys %s: %s.key is not the %s key of the repository's root (version %d): wrong key directory, or keys rotated", r.Keys.Dir, role, role, root.Version)
	}
	return p, nil
}

// commit signs and writes new versions of targets (when withTargets), snapshot and timestamp,
// in the order that keeps every served state consistent: the files a timestamp names exist
// before the timestamp does.
func (r *Repo) commit(s *state, withTargets bool) error {
	keyOf := func(role string) (ed25519.PrivateKey, error) { return r.onlineKey(&s.root.Signed, role) }
	if withTargets {
		k, err := keyOf(metadata.TARGETS)
		if err != nil {
			return err
		}
		s.targets.Signed.Version++
		s.targets.Signed.Expires = r.expires(metadata.TARGETS)
		s.targets.ClearSignatures()
		if _, err := s.targets.Sign(signer(k)); err != nil {
			return err
		}
		b, err := s.targets.ToBytes(true)
		if err != nil {
			return err
		}
		if err := writeAtomic(filepath.Join(r.Dir, fmt.Sprintf("%d.targets.json", s.targets.Signed.Version)), b); err != nil {
			return err
		}
		s.snapshot.Signed.Meta["targets.json"] = metadata.MetaFile(s.targets.Signed.Version)
	}
	if withTargets || s.snapshot.Signed.Expires.Before(r.expires(metadata.TIMESTAMP)) {
		// A snapshot that would expire before the new timestamp is re-signed with it.
		k, err := keyOf(metadata.SNAPSHOT)
		if err != nil {
			return err
		}
		s.snapshot.Signed.Version++
		s.snapshot.Signed.Expires = r.expires(metadata.SNAPSHOT)
		s.snapshot.ClearSignatures()
		if _, err := s.snapshot.Sign(signer(k)); err != nil {
			return err
		}
		b, err := s.snapshot.ToBytes(true)
		if err != nil {
			return err
		}
		if err := writeAtomic(filepath.Join(r.Dir, fmt.Sprintf("%d.snapshot.json", s.snapshot.Signed.Version)), b); err != nil {
			return err
		}
		s.timestamp.Signed.Meta["snapshot.json"] = metadata.MetaFile(s.snapshot.Signed.Version)
	}
	k, err := keyOf(metadata.TIMESTAMP)
	if err != nil {
		return err
	}
	s.timestamp.Signed.Version++
	s.timestamp.Signed.Expires = r.expires(metadata.TIMESTAMP)
	s.timestamp.ClearSignatures()
	if _, err := s.timestamp.Sign(signer(k)); err != nil {
		return err
	}
	b, err := s.timestamp.ToBytes(true)
	if err != nil {
		return err
	}
	return writeAtomic(filepath.Join(r.Dir, "timestamp.json"), b)
}

// Release is one image version to publish.
type Release struct {
	Custom
	Files map[string]string // target name (RootImg, BootImg, MBRImg, SBOM) → local file
}

// Publish adds a release: its artefacts are copied into targets/IMAGE/ and replace the image's
// previous targets. The version must be higher than the one published before.
func (r *Repo) Publish(rel Release) error {
	if rel.Image == "" || strings.ContainsAny(rel.Image, "/\\") {
		return fmt.Errorf("-image %q: want a plain image name", rel.Image)
	}
	if rel.Rollout < 0 || rel.Rollout > 100 {
		return fmt.Errorf("-rollout %d: want a percentage, 0 to 100", rel.Rollout)
	}
	if rel.Version < 1 {
		return fmt.Errorf("-version %d: want a positive number", rel.Version)
	}
	if _, ok := rel.Files[RootImg]; !ok {
		return fmt.Errorf("release of %s: no %s", rel.Image, RootImg)
	}
	if !Exists(r.Dir) {
		if err := r.Init(); err != nil {
			return err
		}
	}
	s, err := r.load()
	if err != nil {
		return err
	}
	if _, err := r.onlineKey(&s.root.Signed, metadata.TARGETS); err != nil {
		return err // before copying hundreds of megabytes
	}
	if prev, ok := Latest(s.targets.Signed.Targets, rel.Image); ok && rel.Version <= prev.Version {
		return fmt.Errorf("-version %d: the repository already has version %d of %s, and boxes never install a version lower than or equal to theirs; publish a higher one", rel.Version, prev.Version, rel.Image)
	}
	custom, err := json.Marshal(rel.Custom)
	if err != nil {
		return err
	}
	raw := json.RawMessage(custom)
	for p := range s.targets.Signed.Targets {
		if strings.HasPrefix(p, rel.Image+"/") {
			delete(s.targets.Signed.Targets, p)
		}
	}
	names := make([]string, 0, len(rel.Files))
	for n := range rel.Files {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		tf, err := r.addTarget(rel.Image, n, rel.Files[n])
		if err != nil {
			return err
		}
		tf.Custom = &raw
		s.targets.Signed.Targets[TargetPath(rel.Image, n)] = tf
	}
	return r.commit(s, true)
}

// addTarget copies file to targets/IMAGE/HASH.NAME and describes it.
func (r *Repo) addTarget(image, name, file string) (*metadata.TargetFiles, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	dir := filepath.Join(r.Dir, "targets", image)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	tmp, err := os.CreateTemp(dir, ".tmp-"+name+"-")
	if err != nil {
		return nil, err
	}
	defer os.Remove(tmp.Name())
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(tmp, h), f)
	if err != nil {
		tmp.Close()
		return nil, err
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return nil, err
	}
	if err := tmp.Close(); err != nil {
		return nil, err
	}
	sum := h.Sum(nil)
	if err := os.Rename(tmp.Name(), filepath.Join(dir, fmt.Sprintf("%x.%s", sum, name))); err != nil {
		return nil, err
	}
	return &metadata.TargetFiles{Length: n, Hashes: metadata.Hashes{"sha256": sum}, Path: TargetPath(image, name)}, nil
}

// Latest returns the custom metadata of the image's root target among targets.
func Latest(targets map[string]*metadata.TargetFiles, image string) (Custom, bool) {
	tf, ok := targets[TargetPath(image, RootImg)]
	if !ok || tf.Custom == nil {
		return Custom{}, false
	}
	var c Custom
	if err := json.Unmarshal(*tf.Custom, &c); err != nil {
		return Custom{}, false
	}
	return c, true
}

// Refresh re-signs the timestamp (and the snapshot if it would expire first).
func (r *Repo) Refresh() error {
	s, err := r.load()
	if err != nil {
		return err
	}
	return r.commit(s, false)
}

// Rotate replaces the repository's keys by next's: a new root version signed by a threshold of
// the current root keys (r.Keys) and of the new ones, then targets, snapshot and timestamp
// re-signed with the new online keys. Boxes follow the rotation on their next poll.
func (r *Repo) Rotate(next *Keys) error {
	s, err := r.load()
	if err != nil {
		return err
	}
	root := s.root
	root.Signed.Version++
	root.Signed.Expires = r.expires(metadata.ROOT)
	root.ClearSignatures()
	old := *root.Signed.Roles[metadata.ROOT]
	old.KeyIDs = append([]string(nil), old.KeyIDs...)
	if err := r.setRootKeys(&root.Signed, next); err != nil {
		return err
	}
	// The old threshold over the old keys: the rule a client applies to accept the new root.
	n := 0
	for _, p := range r.Keys.Root {
		if contains(old.KeyIDs, keyID(p)) {
			if _, err := root.Sign(signer(p)); err != nil {
				return err
			}
			n++
		}
	}
	if n < old.Threshold {
		return fmt.Errorf("-keys %s: %d of the current root keys present, its threshold is %d", r.Keys.Dir, n, old.Threshold)
	}
	if err := r.signRoot(root, next); err != nil {
		return err
	}
	if err := r.writeRoot(root); err != nil {
		return err
	}
	r.Keys = next
	return r.commit(s, true)
}

func writeAtomic(p string, b []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(p), ".tmp-"+filepath.Base(p)+"-")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), p)
}

// NextVersion is one more than the image's published version (1 for a new image).
func (r *Repo) NextVersion(image string) (int64, error) {
	s, err := r.load()
	if err != nil {
		return 0, err
	}
	c, _ := Latest(s.targets.Signed.Targets, image)
	return c.Version + 1, nil
}
