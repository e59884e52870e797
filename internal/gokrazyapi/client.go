// Package gokrazyapi is a client for gokrazy's update API (HTTP with basic auth, user
// "gokrazy"), shared by the push client on the operator's machine (gokr-packer update) and the
// update agent on the box (appliance/update), which talks to the same API on localhost:
//
//	GET  /update/features        must offer partuuid and updatehash
//	PUT  /update/root            new root into the inactive partition; echoes its SHA-256
//	PUT  /update/bootonly        new boot partition; echoes its SHA-256
//	PUT  /update/mbr             new MBR boot code; echoes its SHA-256
//	POST /update/switch          boot the inactive root from now on
//	POST /update/testboot        boot the inactive root once
//	POST /reboot
//	GET  /                       (JSON) the running build's timestamp
//
// Every PUT is checked against the SHA-256 the device echoes: a mismatch means the partition
// does not hold what was sent.
package gokrazyapi

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// Client talks to one device.
type Client struct {
	base *url.URL
	pw   string
	hc   *http.Client
}

// New checks the device URL; hc nil is a client without an overall time-out (a root image over
// a slow link takes a while) but with a header time-out that catches a dead device.
func New(device, password string, hc *http.Client) (*Client, error) {
	base, err := url.Parse(device)
	if err != nil || base.Host == "" || (base.Scheme != "http" && base.Scheme != "https") {
		return nil, fmt.Errorf("device %q: want http://host[:port]", device)
	}
	if hc == nil {
		hc = &http.Client{Transport: &http.Transport{
			ResponseHeaderTimeout: 5 * time.Minute,
			DisableKeepAlives:     true,
		}}
	}
	return &Client{base: base, pw: password, hc: hc}, nil
}

func (c *Client) do(ctx context.Context, method, path string, body io.Reader, json bool) (*http.Response, error) {
	u := *c.base
	path, u.RawQuery, _ = strings.Cut(path, "?") // "/reboot?kexec=off"
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

// Call makes one request and returns the answer's body (at most 1 MiB); anything but 200 is an
// error naming the request.
func (c *Client) Call(ctx context.Context, method, path string, body io.Reader, json bool) ([]byte, error) {
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

// Post is a POST without a body (switch, testboot, reboot).
func (c *Client) Post(ctx context.Context, path string) error {
	_, err := c.Call(ctx, http.MethodPost, path, nil, false)
	return err
}

// BuildTimestamp asks the status page which build runs.
func (c *Client) BuildTimestamp(ctx context.Context) (string, error) {
	b, err := c.Call(ctx, http.MethodGet, "/", nil, true)
	if err != nil {
		return "", err
	}
	var st struct{ BuildTimestamp string }
	if err := json.Unmarshal(b, &st); err != nil {
		return "", fmt.Errorf("GET /: not gokrazy's status JSON: %w", err)
	}
	return st.BuildTimestamp, nil
}

// Features returns /update/features and checks that the device can take our updates.
func (c *Client) Features(ctx context.Context) (string, error) {
	feat, err := c.Call(ctx, http.MethodGet, "/update/features", nil, false)
	if err != nil {
		return "", err
	}
	f := strings.TrimSpace(string(feat))
	for _, need := range []string{"partuuid", "updatehash"} {
		if !strings.Contains(f, need) {
			return f, fmt.Errorf("device lacks update feature %q (has %q): too old for this client", need, f)
		}
	}
	return f, nil
}

// Put streams r to path and returns the SHA-256 (hex) of what was sent, after checking that the
// device echoes the same.
func (c *Client) Put(ctx context.Context, path string, r io.Reader) (string, error) {
	h := sha256.New()
	b, err := c.Call(ctx, http.MethodPut, path, io.TeeReader(r, h), false)
	if err != nil {
		return "", err
	}
	want := hex.EncodeToString(h.Sum(nil))
	if got := strings.TrimSpace(string(b)); got != want {
		return "", fmt.Errorf("PUT %s: device wrote data with SHA-256 %s, we sent %s", path, got, want)
	}
	return want, nil
}
