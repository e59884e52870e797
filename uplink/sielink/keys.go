package sielink

import (
	"bytes"
	"fmt"
	"net/url"
	"strings"

	"github.com/sie-europe/dnssensor/internal/secretfile"
)

// ErrKeyFilePermissions is returned for a key file that anyone but its
// owner could read: an API key that leaked through a world-readable file
// has to be revoked at SIE, so refusing early is cheaper.
var ErrKeyFilePermissions = secretfile.ErrPermissions

// ReadAPIKey reads a client's API key: the file's only non-empty line,
// surrounding white space removed. The file must have mode 0600 (or
// stricter).
func ReadAPIKey(path string) (string, error) {
	b, err := secretfile.Read(path)
	if err != nil {
		return "", err
	}
	key := string(bytes.TrimSpace(b))
	if key == "" {
		return "", fmt.Errorf("key file %s: empty", path)
	}
	if strings.ContainsAny(key, "\r\n\t ") || !secretfile.ValidToken(key) {
		return "", fmt.Errorf("key file %s: key must be one line of printable characters", path)
	}
	return key, nil
}

// Authenticator decides who may open a session (the collector's keys file, auth.Keys).
type Authenticator interface {
	// ValidName reports whether name may name a sensor at all; a session path with any other
	// name is not found (404), whatever key it carries.
	ValidName(name string) bool
	// Lookup returns the sensor an API key belongs to.
	Lookup(apiKey string) (sensor string, ok bool)
}

// validSessionName is what the protocol needs of a session name: one URL path element that
// travels unescaped. Which names a collector accepts is its own rule (Authenticator.ValidName).
func validSessionName(name string) bool {
	return name != "" && name != "." && name != ".." && url.PathEscape(name) == name
}
