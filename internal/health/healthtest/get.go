package healthtest

import (
	"io"
	"net/http"
	"testing"
)

// Get fetches url with c (health.Client(socket) for a daemon's unix socket, http.DefaultClient for
// a loopback address) and returns the status code and body; transport errors fail t.
func Get(t testing.TB, c *http.Client, url string) (int, []byte) {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, b
}
