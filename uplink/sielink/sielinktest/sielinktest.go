// Package sielinktest provides what sielink tests need: throw-away certificates and key files
// (made by the collector's auth package, which the collector's self-test uses too).
package sielinktest

import (
	"crypto/tls"
	"crypto/x509"

	"github.com/sie-europe/dnssensor/uplink/internal/collector/auth"
)

// CertPEM is auth.CertPEM: a self-signed certificate for hosts that is its own CA, and its key.
func CertPEM(hosts ...string) (certPEM, keyPEM []byte, err error) { return auth.CertPEM(hosts...) }

// TLS returns a server configuration with a fresh self-signed
// certificate for hosts and a client configuration trusting only it.
func TLS(hosts ...string) (server, client *tls.Config, err error) {
	certPEM, keyPEM, err := CertPEM(hosts...)
	if err != nil {
		return nil, nil, err
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, nil, err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(certPEM)
	return &tls.Config{Certificates: []tls.Certificate{cert}}, &tls.Config{RootCAs: pool}, nil
}

// NewAPIKey returns a random API key.
func NewAPIKey() string { return auth.NewAPIKey() }

// WriteKeys is auth.WriteKeys: a keys file "keys" and one API key file "<sensor>.key" per sensor
// in dir, all mode 0600.
func WriteKeys(dir string, sensors ...string) (keysFile string, apiKeyFiles map[string]string, err error) {
	return auth.WriteKeys(dir, sensors...)
}
