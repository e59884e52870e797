package status

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/sie-europe/dnssensor/appliance/update/updatestate"
	"github.com/sie-europe/dnssensor/internal/health"
)

// Identity is who this box is and what it runs: what SIE's staff ask first when helping from a
// screenshot.
type Identity struct {
	SensorName string `json:"sensor_name"`
	// Fingerprint identifies the device without showing its machine id: the first 16 hex digits
	// of SHA-256("dnssensor device v1\n" + machine id).
	Fingerprint    string       `json:"device_fingerprint"`
	BuildTimestamp string       `json:"build_timestamp"`
	SBOMHash       string       `json:"sbom_hash"`
	ActiveRoot     string       `json:"active_root"`
	LastUpdate     *UpdateState `json:"last_update,omitempty"`
	// UpdateNote says why LastUpdate is absent ("no update yet") or unreadable.
	UpdateNote string `json:"update_note,omitempty"`
}

// UpdateState is the file the update agent writes after each attempt (/perm/updated/state.json,
// replaced atomically). statusd only reads it.
type UpdateState struct {
	// Time the attempt ended.
	Time time.Time `json:"time"`
	// Result: "ok" (the new image passed the health gate and is kept), "rolled back" (it failed
	// the gate; the previous root is active again) or "failed" (not installed).
	Result string `json:"result"`
	// From and To are the SBOM hashes of the image before and the one attempted.
	From string `json:"from_sbom_hash,omitempty"`
	To   string `json:"to_sbom_hash,omitempty"`
	// Detail says what happened in words (the failing check, the download error...).
	Detail string `json:"detail,omitempty"`
}

const unknownValue = "unknown"

// IdentitySource reads the identity. The static parts (fingerprint, build, SBOM, root) are read
// once, when they were found; the update state and the sensor name on every page.
type IdentitySource struct {
	// MachineIDFiles are tried in order (gokrazy's: /perm/machine-id, /etc/machine-id).
	MachineIDFiles []string
	// SBOMFile is gokrazy's /etc/gokrazy/sbom.json ({"sbom_hash": ..., "sbom": ...}).
	SBOMFile string
	// Cmdline is /proc/cmdline (root=PARTUUID=...-02 or /dev/...2 is root A, 3 is root B).
	Cmdline string
	// UpdateFile is the update agent's state (/perm/updated/state.json).
	UpdateFile string
	// GokrazyURL is gokrazy's own page (http://127.0.0.1/), asked with the device password for
	// its build timestamp: the init process is the only holder of it. "" leaves it unknown.
	GokrazyURL string
	Password   []byte
	// Uplinkd is uplinkd's socket; its /status.json names the sensor (destinations[].sensor).
	Uplinkd string

	Now func() time.Time

	mu     sync.Mutex
	static *Identity
	tried  time.Time
}

// DefaultIdentitySource reads gokrazy's files.
func DefaultIdentitySource(password []byte, uplinkdSocket string) *IdentitySource {
	return &IdentitySource{MachineIDFiles: []string{"/perm/machine-id", "/etc/machine-id"},
		SBOMFile: "/etc/gokrazy/sbom.json", Cmdline: "/proc/cmdline", UpdateFile: "/perm/updated/state.json",
		GokrazyURL: "http://127.0.0.1/", Password: password, Uplinkd: uplinkdSocket}
}

// Read returns the identity; what cannot be found is "unknown".
func (is *IdentitySource) Read(ctx context.Context) *Identity {
	now := time.Now
	if is.Now != nil {
		now = is.Now
	}
	is.mu.Lock()
	// Read again while the build timestamp is unknown (gokrazy's page may not answer yet), but
	// not more than once a minute: a page load must not wait on it each time.
	if is.static == nil || is.static.BuildTimestamp == unknownValue && now().Sub(is.tried) >= time.Minute {
		is.tried = now()
		st := &Identity{Fingerprint: is.fingerprint(), SBOMHash: readSBOMHash(is.SBOMFile), ActiveRoot: activeRoot(is.Cmdline),
			BuildTimestamp: is.buildTimestamp(ctx)}
		is.static = st
	}
	id := *is.static
	is.mu.Unlock()
	id.SensorName = is.sensorName(ctx)
	id.LastUpdate, id.UpdateNote = readUpdateState(is.UpdateFile)
	return &id
}

func (is *IdentitySource) fingerprint() string {
	for _, f := range is.MachineIDFiles {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		id := strings.TrimSpace(string(b))
		if id == "" {
			continue
		}
		// Hashed, as machine-id(5) asks: the id itself is a stable identifier that other
		// software may use as a secret seed.
		sum := sha256.Sum256([]byte("dnssensor device v1\n" + id))
		h := hex.EncodeToString(sum[:8])
		return h[:4] + "-" + h[4:8] + "-" + h[8:12] + "-" + h[12:]
	}
	return unknownValue
}

func readSBOMHash(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return unknownValue
	}
	var doc struct {
		Hash string `json:"sbom_hash"`
	}
	if json.Unmarshal(b, &doc) != nil || doc.Hash == "" {
		return unknownValue
	}
	return doc.Hash
}

var rootPart = regexp.MustCompile(`(?:^|\s)root=(\S+)`)

// activeRoot reads which root partition booted: gokrazy's image has root A on partition 2 and
// root B on partition 3, named by PARTUUID=<disk>-02/-03 or a device path ending in 2/3.
func activeRoot(cmdline string) string {
	b, err := os.ReadFile(cmdline)
	if err != nil {
		return unknownValue
	}
	m := rootPart.FindStringSubmatch(string(b))
	if m == nil {
		return unknownValue
	}
	root := m[1]
	switch {
	case strings.HasSuffix(root, "-02"), strings.HasSuffix(root, "2") && strings.HasPrefix(root, "/dev/"):
		return "A (" + root + ")"
	case strings.HasSuffix(root, "-03"), strings.HasSuffix(root, "3") && strings.HasPrefix(root, "/dev/"):
		return "B (" + root + ")"
	}
	return unknownValue + " (" + root + ")"
}

func (is *IdentitySource) buildTimestamp(ctx context.Context) string {
	if is.GokrazyURL == "" {
		return unknownValue
	}
	var doc struct {
		BuildTimestamp string
	}
	if getGokrazyJSON(ctx, is.GokrazyURL, is.Password, &doc) != nil || doc.BuildTimestamp == "" {
		return unknownValue
	}
	return doc.BuildTimestamp
}

func (is *IdentitySource) sensorName(ctx context.Context) string {
	if is.Uplinkd == "" {
		return unknownValue
	}
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://unix/status.json", nil)
	if err != nil {
		return unknownValue
	}
	resp, err := health.Client(is.Uplinkd).Do(req)
	if err != nil {
		return unknownValue
	}
	defer resp.Body.Close()
	var doc struct {
		Destinations []struct {
			Sensor string `json:"sensor"`
		} `json:"destinations"`
	}
	if resp.StatusCode != http.StatusOK || json.NewDecoder(io.LimitReader(resp.Body, 4<<20)).Decode(&doc) != nil {
		return unknownValue
	}
	var names []string
	for _, d := range doc.Destinations {
		if d.Sensor != "" && !containsString(names, d.Sensor) {
			names = append(names, d.Sensor)
		}
	}
	if len(names) == 0 {
		return unknownValue
	}
	return strings.Join(names, ", ")
}

func containsString(l []string, s string) bool {
	for _, x := range l {
		if x == s {
			return true
		}
	}
	return false
}

func readUpdateState(path string) (*UpdateState, string) {
	b, err := os.ReadFile(path)
	if os.IsNotExist(err) || path == "" {
		return nil, "no update yet"
	}
	if err != nil {
		return nil, fmt.Sprintf("%s: %v", path, err)
	}
	if st, ok, err := lastUpdateOf(b); ok {
		if err != nil {
			return nil, fmt.Sprintf("%s: unreadable (%v)", path, err)
		}
		if st == nil {
			return nil, "no update yet"
		}
		return st, ""
	}
	var st UpdateState
	if err := json.Unmarshal(b, &st); err != nil || st.Result == "" {
		if err == nil {
			err = fmt.Errorf("no result")
		}
		return nil, fmt.Sprintf("%s: unreadable (%v)", path, err)
	}
	return &st, ""
}

// lastUpdateOf reads the last update's outcome from updated's own state file (schema
// dnssensor.updated/v1; ok is false for another document): the newer of the last commit (a
// history event) and the last failure.
func lastUpdateOf(b []byte) (st *UpdateState, ok bool, err error) {
	var doc updatestate.State
	if json.Unmarshal(b, &doc) != nil || doc.Schema != updatestate.StateSchema {
		return nil, false, nil
	}
	for i := len(doc.History) - 1; i >= 0; i-- {
		e := doc.History[i]
		if e.Version != 0 && e.What == fmt.Sprintf("version %d committed", e.Version) {
			st = &UpdateState{Time: e.At, Result: "ok", Detail: e.What}
			break
		}
	}
	if n := len(doc.Failed); n > 0 {
		f := doc.Failed[n-1]
		if st == nil || f.At.After(st.Time) {
			st = &UpdateState{Time: f.At, Result: "rolled back", Detail: fmt.Sprintf("version %d: %s", f.Version, f.Reason)}
		}
	}
	return st, true, nil
}
