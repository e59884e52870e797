package collector

import (
	"crypto/x509"
	"testing"
)

func x509Pool(t testing.TB, certPEM []byte) *x509.CertPool {
	p := x509.NewCertPool()
	if !p.AppendCertsFromPEM(certPEM) {
		t.Fatal("bad certificate")
	}
	return p
}

func x509PoolPEM(certPEM []byte) *x509.CertPool {
	p := x509.NewCertPool()
	p.AppendCertsFromPEM(certPEM)
	return p
}
