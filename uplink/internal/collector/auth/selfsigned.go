package auth

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// The throwaway credentials below serve the collector's -selftest-server and the tests (through
// sielinktest); they are here, not in a test package, because the collector binary links them.

// CertPEM returns a self-signed ECDSA P-256 certificate valid for a
// week for hosts (DNS names or IP addresses), and its private key, both
// PEM-encoded. The certificate is its own CA, so a pool holding it
// verifies it.
func CertPEM(hosts ...string) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 64))
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "sielink test " + strings.Join(hosts, ",")},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(7 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, err
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), nil
}

// NewAPIKey returns a random API key.
func NewAPIKey() string {
	var b [24]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// WriteKeys writes, in dir, a keys file "keys" for the server and one
// API key file "<sensor>.key" per sensor, all mode 0600, and returns
// the keys file's path and the API key files' paths by sensor.
func WriteKeys(dir string, sensors ...string) (keysFile string, apiKeyFiles map[string]string, err error) {
	var sb strings.Builder
	apiKeyFiles = make(map[string]string)
	for _, s := range sensors {
		k := NewAPIKey()
		fmt.Fprintf(&sb, "%s %s\n", s, k)
		p := filepath.Join(dir, s+".key")
		if err := os.WriteFile(p, []byte(k+"\n"), 0o600); err != nil {
			return "", nil, err
		}
		apiKeyFiles[s] = p
	}
	keysFile = filepath.Join(dir, "keys")
	if err := os.WriteFile(keysFile, []byte(sb.String()), 0o600); err != nil {
		return "", nil, err
	}
	return keysFile, apiKeyFiles, nil
}
