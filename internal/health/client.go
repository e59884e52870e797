package health

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
)

// Client returns an HTTP client that reaches the daemon serving on the unix socket path, whatever
// host a URL names (use http://unix/...).
func Client(socketPath string) *http.Client {
	return &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socketPath)
		},
		DisableKeepAlives: true,
	}}
}

// Get reads /health.json from the daemon serving on socketPath. A failing tree (503) is a report,
// not an error; an error means the daemon could not be asked (not running, not configured, or
// answering something else than the contract).
func Get(ctx context.Context, socketPath string) (*Report, error) {
	var r Report
	if err := getJSON(ctx, socketPath, "/health.json", &r, http.StatusOK, http.StatusServiceUnavailable); err != nil {
		return nil, err
	}
	if r.Schema != Schema {
		return nil, fmt.Errorf("%s: /health.json has schema %q, want %q", socketPath, r.Schema, Schema)
	}
	return &r, nil
}

// GetMetrics reads /metrics.json from the daemon serving on socketPath.
func GetMetrics(ctx context.Context, socketPath string) (*MetricsDoc, error) {
	var d MetricsDoc
	if err := getJSON(ctx, socketPath, "/metrics.json", &d, http.StatusOK); err != nil {
		return nil, err
	}
	if d.Schema != MetricsSchema {
		return nil, fmt.Errorf("%s: /metrics.json has schema %q, want %q", socketPath, d.Schema, MetricsSchema)
	}
	return &d, nil
}

func getJSON(ctx context.Context, socketPath, path string, v any, codes ...int) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://unix"+path, nil)
	if err != nil {
		return err
	}
	resp, err := Client(socketPath).Do(req)
	if err != nil {
		return fmt.Errorf("%s: %w", socketPath, err)
	}
	defer resp.Body.Close()
	okCode := false
	for _, c := range codes {
		okCode = okCode || resp.StatusCode == c
	}
	if !okCode {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("%s: %s: %s: %s", socketPath, path, resp.Status, strings.TrimSpace(string(b)))
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		return fmt.Errorf("%s: %s: Content-Type %q, want application/json", socketPath, path, ct)
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 16<<20)).Decode(v); err != nil {
		return fmt.Errorf("%s: %s: %v", socketPath, path, err)
	}
	return nil
}

// GetLog reads the last n lines of /log.json from the daemon serving on socketPath.
func GetLog(ctx context.Context, socketPath string, n int) (*LogDoc, error) {
	var d LogDoc
	if err := getJSON(ctx, socketPath, fmt.Sprintf("/log.json?n=%d", n), &d, http.StatusOK); err != nil {
		return nil, err
	}
	if d.Schema != LogSchema {
		return nil, fmt.Errorf("%s: /log.json has schema %q, want %q", socketPath, d.Schema, LogSchema)
	}
	return &d, nil
}
