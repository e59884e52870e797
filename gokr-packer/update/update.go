// Package update pushes a built image to a running device through gokrazy's
// update API (HTTP with basic auth, user "gokrazy"):
//
//	GET  /update/features        must offer partuuid and updatehash
//	PUT  /update/root            new root into the inactive partition; echoes its SHA-256
//	PUT  /update/bootonly        new boot partition, only when it changed; echoes its hash
//	PUT  /update/mbr             new MBR boot code, only when it changed; echoes its hash
//	POST /update/switch          boot the inactive root next (or /update/testboot: once)
//	POST /reboot
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
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"
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

type client struct {
	base *url.URL
	pw   string
	hc   *http.Client
}

func (c *client) do(ctx context.Context, method, path string, body io.Reader, json bool) (*http.Response, error) {
	u := *c.base
	u.Path = strings.TrimRight(u.Path, "/") + path
	req, err := http.NewRequestWithContext(ctx, method, u.String(), body)
	if err != nil {
		return nil, err
	}
	req.SetBasicAuth("gokrazy", c.pw)
	if json {
		req.Header.Set("Accept", "application/json")
	}
	return c.hc.Do(req)
}

func (c *client) call(ctx context.Context, method, path string, body io.Reader, json bool) ([]byte, error) {
	resp, err := c.do(ctx, method, path, body, json)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, fmt.Errorf("%s %s: reading answer: %w", method, path, err)
	}
	if resp.StatusCode == http.StatusUnauthorized {
		return nil, fmt.Errorf("%s %s: wrong password (401)", method, path)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s %s: %s: %s", method, path, resp.Status, strings.TrimSpace(string(b)))
	}
	return b, nil
}

// buildTimestamp asks the status page which build runs.
func (c *client) buildTimestamp(ctx context.Context) (string, error) {
	b, err := c.call(ctx, http.MethodGet, "/", nil, true)
	if err != nil {
		return "", err
	}
	var st struct{ BuildTimestamp string }
	if err := json.Unmarshal(b, &st); err != nil {
		return "", fmt.Errorf("GET /: not gokrazy's status JSON: %w", err)
	}
	return st.BuildTimestamp, nil
}

// put streams file to path and checks the SHA-256 the device computed while
// writing it: a mismatch means the partition does not hold what we sent.
func (c *client) put(ctx context.Context, path, file string) error {
	f, err := os.Open(file)
	if err != nil {
		return err
	}
	defer f.Close()
	h := sha256.New()
	b, err := c.call(ctx, http.MethodPut, path, io.TeeReader(f, h), false)
	if err != nil {
		return err
	}
	want := hex.EncodeToString(h.Sum(nil))
	if got := strings.TrimSpace(string(b)); got != want {
		return fmt.Errorf("PUT %s: device wrote data with SHA-256 %s, we sent %s", path, got, want)
	}
	return nil
}

// Push runs the whole update.
func Push(ctx context.Context, o Options) (*Result, error) {
	start := time.Now()
	logf := func(format string, args ...any) {
		if o.Log != nil {
			fmt.Fprintf(o.Log, "[update %5.1fs] "+format+"\n", append([]any{time.Since(start).Seconds()}, args...)...)
		}
	}
	base, err := url.Parse(o.Device)
	if err != nil || base.Host == "" || (base.Scheme != "http" && base.Scheme != "https") {
		return nil, fmt.Errorf("device %q: want http://host[:port]", o.Device)
	}
	hc := o.Client
	if hc == nil {
		// No overall timeout: a root image over a slow link takes a while. Dial
		// and header time-outs catch a dead device.
		hc = &http.Client{Transport: &http.Transport{
			ResponseHeaderTimeout: 5 * time.Minute,
			DisableKeepAlives:     true,
		}}
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
	c := &client{base: base, pw: o.Password, hc: hc}
	res := &Result{Device: o.Device, NewBuildTimestamp: o.BuildTimestamp, Testboot: o.Testboot}

	if res.OldBuildTimestamp, err = c.buildTimestamp(ctx); err != nil {
		return nil, err
	}
	logf("device runs build %s", res.OldBuildTimestamp)
	if res.OldBuildTimestamp == o.BuildTimestamp {
		return nil, fmt.Errorf("device already runs build %s: nothing would tell the new build apart (use a new -build-timestamp)", o.BuildTimestamp)
	}
	feat, err := c.call(ctx, http.MethodGet, "/update/features", nil, false)
	if err != nil {
		return nil, err
	}
	res.Features = strings.TrimSpace(string(feat))
	for _, need := range []string{"partuuid", "updatehash"} {
		if !strings.Contains(res.Features, need) {
			return nil, fmt.Errorf("device lacks update feature %q (has %q): too old for this client", need, res.Features)
		}
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
	if err := c.put(ctx, "/update/root", o.RootImg); err != nil {
		return nil, err
	}
	res.PushedRoot = true
	if bootSum != prev.BootSHA256 {
		// bootonly (not boot): it leaves the cmdline pointing at the running root,
		// so an update cut short here still boots the old, complete system.
		logf("PUT /update/bootonly (boot partition changed)")
		if err := c.put(ctx, "/update/bootonly", o.BootImg); err != nil {
			return nil, err
		}
		res.PushedBoot = true
	}
	if mbrSum != prev.MBRSHA256 {
		logf("PUT /update/mbr (boot code changed)")
		if err := c.put(ctx, "/update/mbr", o.MBRImg); err != nil {
			return nil, err
		}
		res.PushedMBR = true
	}
	sw := "/update/switch"
	if o.Testboot {
		sw = "/update/testboot"
	}
	logf("POST %s", sw)
	if _, err := c.call(ctx, http.MethodPost, sw, nil, false); err != nil {
		return nil, err
	}
	if err := saveState(o.StateFile, state{BootSHA256: bootSum, MBRSHA256: mbrSum}); err != nil {
		logf("warning: cannot record pushed hashes (next push sends boot and MBR again): %v", err)
	}
	logf("POST /reboot")
	rebootAt := time.Now()
	rctx, rcancel := context.WithTimeout(ctx, o.RebootWait)
	_, err = c.call(rctx, http.MethodPost, "/reboot", nil, false)
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
		if _, err := c.call(ctx, http.MethodPost, "/update/switch", nil, false); err != nil {
			return nil, err
		}
	}
	res.Seconds = time.Since(start).Seconds()
	logf("device runs build %s", o.BuildTimestamp)
	return res, nil
}

func waitFor(ctx context.Context, c *client, o Options, logf func(string, ...any)) error {
	ctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()
	var last string
	for {
		pctx, pcancel := context.WithTimeout(ctx, 5*time.Second)
		ts, err := c.buildTimestamp(pctx)
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
