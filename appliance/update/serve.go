package update

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sie-europe/dnssensor/appliance/update/updateconfig"
	"github.com/sie-europe/dnssensor/internal/gokrazyapi"
	"github.com/sie-europe/dnssensor/internal/health"
)

// Tree is updated's health: the repository answers and verifies, and no release is stuck as
// failed.
func (a *Agent) Tree() *health.Tree {
	return health.NewTree("updated", a.cfg.Now,
		health.NewNode("repository", func(time.Time) health.Result {
			s := a.State()
			switch {
			case s.LastCheck.IsZero():
				return health.Result{OK: true, Detail: "not checked yet"}
			case s.LastError != "":
				return health.Result{OK: false, Detail: s.LastError, Changed: s.LastCheck,
					Fix: "check the repository URL and that publish -refresh runs more often than the timestamp expires; a refused signature means the repository was changed without the keys"}
			}
			return health.Result{OK: true, Detail: s.LastResult}
		},
			health.NewNode("updates", func(time.Time) health.Result {
				s := a.State()
				detail := fmt.Sprintf("version %d installed", s.Version)
				if s.Paused {
					detail += ", paused"
				}
				if s.Pending != nil {
					detail += fmt.Sprintf(", version %d: %s since %s", s.Pending.Version, s.Pending.Phase, s.Pending.Since.Format(time.RFC3339))
				}
				if n := len(s.Failed); n > 0 && s.Failed[n-1].Version > s.Version {
					f := s.Failed[n-1]
					return health.Result{OK: false, Detail: fmt.Sprintf("%s; version %d failed: %s", detail, f.Version, f.Reason), Changed: f.At,
						Fix: "the box went back to the previous version; fix the release and publish a higher version (a failed one is never retried automatically)"}
				}
				return health.Result{OK: true, Detail: detail}
			})))
}

func (a *Agent) registry() *prometheus.Registry {
	reg := health.NewRegistry()
	gauge := func(name, help string, f func(State) float64) {
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, func() float64 { return f(a.State()) }))
	}
	gauge("dnssensor_updated_version", "installed release version (0: as flashed, not known yet)", func(s State) float64 { return float64(s.Version) })
	gauge("dnssensor_updated_failed_versions", "releases that failed on this box and are not retried", func(s State) float64 { return float64(len(s.Failed)) })
	gauge("dnssensor_updated_paused", "1 while automatic updates are paused", func(s State) float64 {
		if s.Paused {
			return 1
		}
		return 0
	})
	gauge("dnssensor_updated_last_check_timestamp_seconds", "when the repository was last checked", func(s State) float64 {
		if s.LastCheck.IsZero() {
			return 0
		}
		return float64(s.LastCheck.Unix())
	})
	return reg
}

// Handler serves the health contract plus the agent's own documents and actions, for statusd:
//
//	GET  /state.json    the state file's content (history, failures, pending update)
//	POST /update-now    check now, paused or outside the window
//	POST /pause         stop automatic updates
//	POST /resume
func (a *Agent) Handler() http.Handler {
	srv := &health.Server{Daemon: "updated", Tree: a.Tree(), Registry: a.registry(), Logf: a.cfg.Logf, Now: a.cfg.Now,
		Extra: map[string]http.Handler{"/state.json": http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			json.NewEncoder(w).Encode(a.State())
		})}}
	mux := http.NewServeMux()
	mux.Handle("/", srv.Handler())
	post := func(path string, f func(w http.ResponseWriter)) {
		// Any other method is 405, not the contract mux's 404: the path exists.
		mux.HandleFunc(path, func(w http.ResponseWriter, r *http.Request) {
			if r.Method != http.MethodPost {
				w.Header().Set("Allow", http.MethodPost)
				http.Error(w, "POST only", http.StatusMethodNotAllowed)
				return
			}
			f(w)
		})
	}
	post("/update-now", func(w http.ResponseWriter) {
		a.UpdateNow()
		w.WriteHeader(http.StatusAccepted)
	})
	for path, paused := range map[string]bool{"/pause": true, "/resume": false} {
		post(path, func(w http.ResponseWriter) {
			if err := a.Pause(paused); err != nil {
				http.Error(w, err.Error(), http.StatusInternalServerError)
				return
			}
			w.WriteHeader(http.StatusNoContent)
		})
	}
	return mux
}

// machineID reads the box's identity for staged rollouts, creating a random one on first use
// (gokrazy has no /etc/machine-id; /perm outlives updates).
func machineID(p string) (string, error) {
	b, err := os.ReadFile(p)
	if err == nil && len(strings.TrimSpace(string(b))) > 0 {
		return strings.TrimSpace(string(b)), nil
	}
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return "", err
	}
	var r [16]byte
	if _, err := rand.Read(r[:]); err != nil {
		return "", err
	}
	id := hex.EncodeToString(r[:])
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return "", err
	}
	return id, os.WriteFile(p, []byte(id+"\n"), 0o600)
}

// Main is updated's main: exit 2 on bad flags, 125 when not configured (no repository or no
// trusted root), 1 on a runtime failure.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	flags := flag.NewFlagSet("updated", flag.ContinueOnError)
	flags.SetOutput(stderr)
	cfgFile := flags.String("config", "/perm/updated/config.json", "the box configuration's update section (`FILE`, written by statusd from dnssensor.json); its keys win over -repo, -interval and -window")
	repo := flags.String("repo", "", "TUF repository `URL` (where gokr-packer publish's directory is served); the box configuration's update.repository wins")
	img := flags.String("image", "", "image `NAME` whose releases to follow, e.g. sensor-amd64")
	root := flags.String("trusted-root", "/etc/updated/root.json", "the repository's root.json baked into the image (`FILE`)")
	dir := flags.String("dir", "/perm/updated", "state `DIR` (state.json, the TUF metadata)")
	mid := flags.String("machine-id", "/perm/updated/machine-id", "`FILE` naming this box for staged rollouts (created when missing)")
	device := flags.String("device", "http://127.0.0.1", "gokrazy's HTTP `URL` (its update API)")
	pwFile := flags.String("password-file", "/etc/gokr-pw.txt", "gokrazy's HTTP password `FILE`")
	interval := flags.Duration("interval", time.Hour, "time between checks")
	jitter := flags.Duration("jitter", 10*time.Minute, "random extra wait, so a fleet does not check at once")
	window := flags.String("window", "", "maintenance window `HH:MM-HH:MM` UTC (empty: any time)")
	gateDeadline := flags.Duration("gate-deadline", 5*time.Minute, "the new root must pass the health gate within this")
	gateHold := flags.Duration("gate-hold", 30*time.Second, "... and keep passing it for this long")
	daemons := flags.String("daemons", "sensord,uplinkd", "daemons the health gate reads (`NAME` or NAME=SOCKET)")
	reboot := flags.String("reboot", "kexec", "how the box restarts into a test boot or back: kexec or firmware (the image fills in its hardware profile's)")
	sock := flags.String("health", health.SocketPath("updated"), "health contract and control `SOCKET`")
	if err := flags.Parse(args); err != nil {
		return 2
	}
	bad := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "updated: "+format+"\n", a...)
		return 2
	}
	if flags.NArg() > 0 {
		return bad("unexpected arguments %q", flags.Args())
	}
	if *reboot != "kexec" && *reboot != "firmware" {
		return bad("-reboot %q: want kexec or firmware", *reboot)
	}
	w, err := ParseWindow(*window)
	if err != nil {
		return bad("%v", err)
	}
	// The image's flags are the defaults; the operator's box configuration decides.
	bc, found, err := updateconfig.Load(*cfgFile)
	if err != nil {
		return bad("-config %v", err)
	}
	if found {
		*repo = bc.Repository
		if bc.Interval > 0 {
			*interval = bc.Interval
		}
		if bc.Window != nil {
			w = bc.Window
		}
	}
	if *repo == "" {
		fmt.Fprintf(stderr, "updated: not configured: no update.repository in the box configuration (dnssensor.json, stored as %s) and no -repo URL\n", *cfgFile)
		return 125
	}
	if *interval <= 0 || *jitter < 0 || *gateDeadline <= 0 {
		return bad("-interval and -gate-deadline must be positive, -jitter not negative")
	}
	trusted, err := os.ReadFile(*root)
	if errors.Is(err, fs.ErrNotExist) {
		fmt.Fprintf(stderr, "updated: not configured: -trusted-root %s missing (build the image with gokr-packer publish or -tuf-root)\n", *root)
		return 125
	} else if err != nil {
		return bad("-trusted-root: %v", err)
	}
	var ds []Daemon
	for _, d := range strings.Split(*daemons, ",") {
		name, path, ok := strings.Cut(strings.TrimSpace(d), "=")
		if name == "" {
			continue
		}
		if !ok {
			path = health.SocketPath(name)
		}
		ds = append(ds, Daemon{Name: name, Socket: path})
	}
	pw, err := os.ReadFile(*pwFile)
	if err != nil {
		return bad("-password-file: %v", err)
	}
	api, err := gokrazyapi.New(*device, strings.TrimSpace(strings.SplitN(string(pw), "\n", 2)[0]), nil)
	if err != nil {
		return bad("-device: %v", err)
	}
	id, err := machineID(*mid)
	if err != nil {
		fmt.Fprintf(stderr, "updated: -machine-id: %v\n", err)
		return 1
	}
	logger := log.New(stderr, "updated: ", log.LstdFlags)
	a, err := New(Config{RepoURL: *repo, Image: *img, TrustedRoot: trusted, Dir: *dir, MachineID: id, Device: api,
		Daemons: ds, Interval: *interval, Jitter: *jitter, Window: w, GateDeadline: *gateDeadline, GateHold: *gateHold,
		FirmwareReboot: *reboot == "firmware", Logf: logger.Printf})
	if err != nil {
		return bad("%v", err)
	}
	ln, err := health.ListenUnix(*sock)
	if err != nil {
		fmt.Fprintf(stderr, "updated: -health: %v\n", err)
		return 1
	}
	srv := &http.Server{Handler: a.Handler(), ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
	}()
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			logger.Printf("health socket: %v", err)
		}
	}()
	if ul, ok := ln.(*net.UnixListener); ok {
		ul.SetUnlinkOnClose(true)
	}
	logger.Printf("following %s at %s (machine bucket %d, every %v + up to %v)", *img, *repo, Bucket(id), *interval, *jitter)
	if err := a.Run(ctx); err != nil {
		logger.Printf("%v", err)
		return 1
	}
	return 0
}
