// Package tufrepo writes the TUF repository (The Update Framework, through go-tuf's metadata
// package) from which the boxes fetch their images: a plain directory any static HTTP server can
// serve. gokr-packer's keys and publish commands are thin layers over it; the update agent's
// tests use it to build real repositories.
//
// Layout, with consistent snapshots (every file a client fetches except timestamp.json is named
// by its version or hash, so a publish in progress never mixes with the one before):
//
//	REPO/N.root.json              every root version (a client walks them to follow a rotation)
//	REPO/root.json                the newest root: the one to bake into images
//	REPO/N.targets.json           the targets: IMAGE/root.img, boot.img, mbr.img, sbom.json
//	REPO/N.snapshot.json
//	REPO/timestamp.json           short-lived; publish -refresh re-signs it
//	REPO/targets/IMAGE/HASH.NAME  the artefacts
//
// Keys (ed25519, PKCS #8 PEM, mode 0600) live in their own directory, never in the repository:
// root-1.key … root-N.key, targets.key, snapshot.key, timestamp.key and keys.json (the root
// threshold).
package tufrepo

import (
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/sigstore/sigstore/pkg/signature"
	"github.com/theupdateframework/go-tuf/v2/metadata"
)

// Roles are the four top-level TUF roles.
var onlineRoles = []string{metadata.TARGETS, metadata.SNAPSHOT, metadata.TIMESTAMP}

// Keys is a key directory loaded. Root keys may be fewer than the root role has (some kept
// offline): only signing root metadata needs a threshold of them.
type Keys struct {
	Dir           string
	Root          []ed25519.PrivateKey
	RootThreshold int
	Online        map[string]ed25519.PrivateKey // targets, snapshot, timestamp
}

type keysFile struct {
	RootKeys      int `json:"root_keys"`
	RootThreshold int `json:"root_threshold"`
}

// GenerateKeys creates a new key set in dir (created 0700 if missing). It never overwrites a
// key: an existing key file is an error.
func GenerateKeys(dir string, rootKeys, rootThreshold int) (*Keys, error) {
	if rootKeys < 1 {
		return nil, fmt.Errorf("-root-keys %d: need at least 1", rootKeys)
	}
	if rootThreshold < 1 || rootThreshold > rootKeys {
		return nil, fmt.Errorf("-root-threshold %d: must be between 1 and -root-keys (%d)", rootThreshold, rootKeys)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("-dir: %w", err)
	}
	if m, err := filepath.Glob(filepath.Join(dir, "*.key")); err != nil || len(m) > 0 {
		return nil, fmt.Errorf("-dir %s already holds keys (%s): refusing to overwrite them; use a new directory", dir, strings.Join(m, ", "))
	}
	k := &Keys{Dir: dir, RootThreshold: rootThreshold, Online: map[string]ed25519.PrivateKey{}}
	gen := func(name string) (ed25519.PrivateKey, error) {
		_, priv, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			return nil, err
		}
		der, err := x509.MarshalPKCS8PrivateKey(priv)
		if err != nil {
			return nil, err
		}
		f, err := os.OpenFile(filepath.Join(dir, name+".key"), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return nil, err
		}
		if err := pem.Encode(f, &pem.Block{Type: "PRIVATE KEY", Bytes: der}); err != nil {
			f.Close()
			return nil, err
		}
		return priv, f.Close()
	}
	for i := 1; i <= rootKeys; i++ {
		p, err := gen(fmt.Sprintf("root-%d", i))
		if err != nil {
			return nil, err
		}
		k.Root = append(k.Root, p)
	}
	for _, r := range onlineRoles {
		p, err := gen(r)
		if err != nil {
			return nil, err
		}
		k.Online[r] = p
	}
	b, _ := json.Marshal(keysFile{RootKeys: rootKeys, RootThreshold: rootThreshold})
	if err := os.WriteFile(filepath.Join(dir, "keys.json"), append(b, '\n'), 0o600); err != nil {
		return nil, err
	}
	return k, nil
}

// LoadKeys reads a key directory. A key file readable by group or others is refused: a signing
// key another account can read is not a secret any more.
func LoadKeys(dir string) (*Keys, error) {
	b, err := os.ReadFile(filepath.Join(dir, "keys.json"))
	if err != nil {
		return nil, fmt.Errorf("-keys %s: not a key directory (create one with gokr-packer keys -dir): %w", dir, err)
	}
	var kf keysFile
	if err := json.Unmarshal(b, &kf); err != nil || kf.RootThreshold < 1 {
		return nil, fmt.Errorf("-keys %s: keys.json is damaged (want {\"root_threshold\": N})", dir)
	}
	k := &Keys{Dir: dir, RootThreshold: kf.RootThreshold, Online: map[string]ed25519.PrivateKey{}}
	read := func(p string) (ed25519.PrivateKey, error) {
		fi, err := os.Stat(p)
		if err != nil {
			return nil, err
		}
		if fi.Mode().Perm()&0o077 != 0 {
			return nil, fmt.Errorf("-keys: %s is readable by others (mode %v): chmod 600 it", p, fi.Mode().Perm())
		}
		raw, err := os.ReadFile(p)
		if err != nil {
			return nil, err
		}
		blk, _ := pem.Decode(raw)
		if blk == nil || blk.Type != "PRIVATE KEY" {
			return nil, fmt.Errorf("-keys: %s is not a PEM private key", p)
		}
		key, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("-keys: %s: %w", p, err)
		}
		ed, ok := key.(ed25519.PrivateKey)
		if !ok {
			return nil, fmt.Errorf("-keys: %s is not an ed25519 key", p)
		}
		return ed, nil
	}
	roots, _ := filepath.Glob(filepath.Join(dir, "root-*.key"))
	sort.Strings(roots)
	for _, p := range roots {
		key, err := read(p)
		if err != nil {
			return nil, err
		}
		k.Root = append(k.Root, key)
	}
	for _, r := range onlineRoles {
		key, err := read(filepath.Join(dir, r+".key"))
		if errors.Is(err, fs.ErrNotExist) {
			continue // kept elsewhere; whoever needs it says so
		}
		if err != nil {
			return nil, err
		}
		k.Online[r] = key
	}
	return k, nil
}

func tufKey(p ed25519.PrivateKey) *metadata.Key {
	k, err := metadata.KeyFromPublicKey(p.Public())
	if err != nil {
		panic(err) // an ed25519 public key always converts
	}
	return k
}

func keyID(p ed25519.PrivateKey) string {
	id, err := tufKey(p).ID()
	if err != nil {
		panic(err)
	}
	return id
}

func signer(p ed25519.PrivateKey) signature.Signer {
	s, err := signature.LoadSigner(p, crypto.Hash(0))
	if err != nil {
		panic(err) // ed25519 keys always load
	}
	return s
}
