// Package update pushes a built image to a running device through gokrazy's
// update API (HTTP with basic auth, user "gokrazy"):
//
//	GET  /update/features        must offer partuuid and updatehash
//	PUT  /update/root            new root into the inactive partition; echoes its SHA-256
//	PUT  /update/bootonly        new boot partition, only when it changed; echoes its hash
//	PUT  /update/mbr             new MBR boot code, only when it changed; echoes its hash
//	POST /update/switch          boot the inactive root next (or /update/testboot: once)
//	POST /reboot                 by kexec, or through the firmware (?kexec=off: FirmwareReboot)
//	GET  /                       (JSON) polled until the new build timestamp answers
//
// "Changed" means different from what this client last pushed to the same
// device (a small state file); without that record everything is pushed.
package update

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/sie-europe/dnssensor/internal/gokrazyapi"
)

// Options configure one push.
type Options struct {
	Device         string // base URL
	Password       string
	RootImg        string
	BootImg        string
	MBRImg         string
	BuildTimestamp string // of the new build: the device answers with it when done
	StateFile      string // remembers boot/MBR hashes pushed to this device
	Testboot       bool
	Timeout        time.Duration
	Log            io.Writer
	Client         *http.Client // nil: a client with sensible time-outs
	PollInterval   time.Duration
	// RebootWait bounds the wait for the answer to POST /reboot (0: 5 s). gokrazy answers
	// only after it has stopped every service, and netconfd, stopping, releases its DHCP lease
	// and removes the address the request came in on: that answer never arrives, and the
	// transport's header time-out would hold the push for minutes. Polling decides anyway (an
	// old build still answering while it goes down is polled past), and a kexec reboot takes
	// longer than this, so the wait costs nothing.
	RebootWait time.Duration
	// FirmwareReboot reboots through the firmware (gokrazy's /reboot?kexec=off) instead of
	// kexec. Under software emulation the firmware path is the faster one: kexec's purgatory
	// checks the loaded kernel's SHA-256 on an emulated CPU, and SeaBIOS costs almost nothing.
	FirmwareReboot bool
}

// Result summarises a push.
type Result struct {
	Device            string  `json:"device"`
	Features          string  `json:"features"`
	OldBuildTimestamp string  `json:"old_build_timestamp"`
	NewBuildTimestamp string  `json:"new_build_timestamp"`
	PushedRoot        bool    `json:"pushed_root"`
	PushedBoot        bool    `json:"pushed_boot"`
	PushedMBR         bool    `json:"pushed_mbr"`
	Testboot          bool    `json:"testboot"`
	RebootToAnswer    float64 `json:"reboot_to_answer_seconds"`
	Seconds           float64 `json:"seconds"`
}

type state struct {
	BootSHA256 string `json:"boot_sha256"`
	MBRSHA256  string `json:"mbr_sha256"`
}

// DeviceKey turns a device URL into a file-name-safe key for its state file.
func DeviceKey(device string) string {
	r := strings.NewReplacer("://", "_", "/", "_", ":", "_", "[", "", "]", "")
	return r.Replace(strings.TrimRight(device, "/"))
}

// put streams file to path; the device's echoed SHA-256 is checked by gokrazyapi.
func put(ctx context.Context, c *gokrazyapi.Client, path, file string) error {
	f, err := os.Open(file)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = c.Put(ctx, path, f)
	return err
}

// Push runs the whole update.
func Push(ctx context.Context, o Options) (*Result, error) {
	start := time.Now()
	logf := func(format string, args ...any) {
		if o.Log != nil {
			fmt.Fprintf(o.Log, "[update %5.1fs] "+format+"\n", append([]any{time.Since(start).Seconds()}, args...)...)
		}
	}
	c, err := gokrazyapi.New(o.Device, o.Password, o.Client)
	if err != nil {
		return nil, err
	}
	if o.Timeout == 0 {
		o.Timeout = 5 * time.Minute
	}
	if o.PollInterval == 0 {
		o.PollInterval = 500 * time.Millisecond
	}
	if o.RebootWait == 0 {
		o.RebootWait = 5 * time.Second
	}
	res := &Result{Device: o.Device, NewBuildTimestamp: o.BuildTimestamp, Testboot: o.Testboot}

	if res.OldBuildTimestamp, err = c.BuildTimestamp(ctx); err != nil {
		return nil, err
	}
	logf("device runs build %s", res.OldBuildTimestamp)
	if res.OldBuildTimestamp == o.BuildTimestamp {
		return nil, fmt.Errorf("device already runs build %s: nothing would tell the new build apart (use a new -build-timestamp)", o.BuildTimestamp)
	}
	if res.Features, err = c.Features(ctx); err != nil {
		return nil, err
	}

	var prev state
	if b, err := os.ReadFile(o.StateFile); err == nil {
		_ = json.Unmarshal(b, &prev) // a damaged record only means pushing everything
	}
	bootSum, err := sum(o.BootImg)
	if err != nil {
		return nil, err
	}
	mbrSum, err := sum(o.MBRImg)
	if err != nil {
		return nil, err
	}

	logf("PUT /update/root (%s)", o.RootImg)
	if err := put(ctx, c, "/update/root", o.RootImg); err != nil {
		return nil, err
	}
	res.PushedRoot = true
	if bootSum != prev.BootSHA256 {
		// bootonly (not boot): it leaves the cmdline pointing at the running root,
		// so an update cut short here still boots the old, complete system.
		logf("PUT /update/bootonly (boot partition changed)")
		if err := put(ctx, c, "/update/bootonly", o.BootImg); err != nil {
			return nil, err
		}
		res.PushedBoot = true
	}
	if mbrSum != prev.MBRSHA256 {
		logf("PUT /update/mbr (boot code changed)")
		if err := put(ctx, c, "/update/mbr", o.MBRImg); err != nil {
			return nil, err
		}
		res.PushedMBR = true
	}
	sw := "/update/switch"
	if o.Testboot {
		sw = "/update/testboot"
	}
	logf("POST %s", sw)
	if _, err := c.Call(ctx, http.MethodPost, sw, nil, false); err != nil {
		return nil, err
	}
	if err := saveState(o.StateFile, state{BootSHA256: bootSum, MBRSHA256: mbrSum}); err != nil {
		logf("warning: cannot record pushed hashes (next push sends boot and MBR again): %v", err)
	}
	reboot := "/reboot"
	if o.FirmwareReboot {
		reboot += "?kexec=off"
	}
	logf("POST %s", reboot)
	rebootAt := time.Now()
	rctx, rcancel := context.WithTimeout(ctx, o.RebootWait)
	_, err = c.Call(rctx, http.MethodPost, reboot, nil, false)
	rcancel()
	if err != nil {
		// The device may drop the connection while going down; polling decides.
		logf("reboot request: %v (polling anyway)", err)
	}
	if err := waitFor(ctx, c, o, logf); err != nil {
		return nil, err
	}
	res.RebootToAnswer = time.Since(rebootAt).Seconds()
	if o.Testboot {
		// The test boot ran the new root from the old root's cmdline; make it permanent.
		logf("test boot came up; POST /update/switch to keep it")
		if _, err := c.Call(ctx, http.MethodPost, "/update/switch", nil, false); err != nil {
			return nil, err
		}
	}
	res.Seconds = time.Since(start).Seconds()
	logf("device runs build %s", o.BuildTimestamp)
	return res, nil
}

func waitFor(ctx context.Context, c *gokrazyapi.Client, o Options, logf func(string, ...any)) error {
	ctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()
	var last string
	for {
		pctx, pcancel := context.WithTimeout(ctx, 5*time.Second)
		ts, err := c.BuildTimestamp(pctx)
		pcancel()
		if err == nil && ts == o.BuildTimestamp {
			return nil
		}
		if err == nil && ts != last {
			logf("device answers with build %s, waiting for %s", ts, o.BuildTimestamp)
			last = ts
		}
		select {
		case <-ctx.Done():
			if last != "" {
				return fmt.Errorf("device came back with build %s, not %s (rolled back?) within %s", last, o.BuildTimestamp, o.Timeout)
			}
			return fmt.Errorf("device did not answer within %s after reboot: %v", o.Timeout, err)
		case <-time.After(o.PollInterval):
		}
	}
}

func sum(p string) (string, error) {
	b, err := os.ReadFile(p)
	if err != nil {
		return "", err
	}
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:]), nil
}

func saveState(p string, s state) error {
	b, err := json.Marshal(s)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return err
	}
	tmp := p + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, p)
}
