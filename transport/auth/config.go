package auth

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
)

// Config holds one node's credentials: the deployment CA and the node's own
// certificate and key.
type Config struct {
	pool    *x509.CertPool
	cert    tls.Certificate
	id      Identity
	revoked *revocations
}

// LoadConfig reads ca.crt, node.crt and node.key from dir and checks that they
// belong together (the key matches the certificate, the CA issued it, it has not
// expired), so a bad directory fails at startup with the file named rather than at
// the first handshake with a TLS alert.
func LoadConfig(dir string) (*Config, error) {
	fix := fmt.Sprintf("make this host's key with `ftrun keygen request %s`, issue its certificate on the CA host with `ftrun keygen issue`, and copy node.crt and ca.crt there", dir)
	caPath := filepath.Join(dir, CACertFile)
	ca, err := readCert(caPath)
	if err != nil {
		return nil, fmt.Errorf("auth: %w (%s)", err, fix)
	}
	if !ca.IsCA {
		return nil, fmt.Errorf("auth: %w: %q is not a CA certificate (%s)", ErrInvalid, caPath, fix)
	}
	crtPath, keyPath := filepath.Join(dir, NodeCertFile), filepath.Join(dir, NodeKeyFile)
	leaf, err := readCert(crtPath)
	if err != nil {
		return nil, fmt.Errorf("auth: %w (%s)", err, fix)
	}
	key, err := readKey(keyPath)
	if err != nil {
		return nil, fmt.Errorf("auth: %w (%s)", err, fix)
	}
	if pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool }); !ok || !pub.Equal(leaf.PublicKey) {
		return nil, fmt.Errorf("auth: %w: %q is not the key of %q (make a new key with `ftrun keygen request --force %s` and issue its certificate with `ftrun keygen issue`)", ErrInvalid, keyPath, crtPath, dir)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	if _, err := leaf.Verify(x509.VerifyOptions{
		Roots:     pool,
		DNSName:   ServerName,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}); err != nil {
		return nil, fmt.Errorf("auth: %w: %q is not valid under %q: %w (issue it anew from this CA with `ftrun keygen issue`, from a request made in %s)", ErrInvalid, crtPath, caPath, err, dir)
	}
	id := IdentityOf(leaf)
	if len(id.Roles) == 0 {
		return nil, fmt.Errorf("auth: %w: %q carries no role (made by an older ftrun keygen?): issue it anew with `ftrun keygen issue --role primary|standby`", ErrInvalid, crtPath)
	}
	rev := &revocations{path: filepath.Join(dir, RevokedFile)}
	if bad, err := rev.revoked(id.Serial); err != nil {
		return nil, fmt.Errorf("auth: %w", err)
	} else if bad {
		return nil, fmt.Errorf("auth: %w: %q (serial %s) is listed in %q: issue this host a new certificate", ErrInvalid, crtPath, id.Serial, rev.path)
	}
	return &Config{
		pool:    pool,
		cert:    tls.Certificate{Certificate: [][]byte{leaf.Raw}, PrivateKey: key, Leaf: leaf},
		id:      id,
		revoked: rev,
	}, nil
}

// Name is the common name of this node's certificate.
func (c *Config) Name() string { return c.id.Name }

// Identity is what this node's own certificate allows it.
func (c *Config) Identity() Identity { return c.id }

// Require fails unless this node's certificate carries role, naming the fix: a
// standby started with a primary's certificate fails at start, not at the first
// handshake.
func (c *Config) Require(role string) error {
	if !c.id.Has(role) {
		return fmt.Errorf("auth: %w: this node's certificate %s lacks the %q role (issue it with `ftrun keygen issue --role %s`)", ErrForbidden, c.id, role, role)
	}
	return nil
}

// Server returns the settings for the listening end, a standby: it accepts only a
// peer whose certificate carries RolePrimary and is not revoked (which services it
// may ship, the standby checks against PeerIdentity per Hello). Each call returns a
// new tls.Config, so a caller may adjust its copy without affecting others.
func (c *Config) Server() *tls.Config {
	return &tls.Config{
		MinVersion:       tls.VersionTLS13,
		Certificates:     []tls.Certificate{c.cert},
		ClientAuth:       tls.RequireAndVerifyClientCert,
		ClientCAs:        c.pool,
		VerifyConnection: c.verifyPeer(RolePrimary),
	}
}

// Client returns the settings for the dialling end, a primary. It verifies the
// server against the deployment CA under ServerName, whatever address was dialled,
// and accepts only a certificate with RoleStandby that is not revoked: the program's
// memory goes to nobody else.
func (c *Config) Client() *tls.Config {
	return &tls.Config{
		MinVersion:       tls.VersionTLS13,
		Certificates:     []tls.Certificate{c.cert},
		RootCAs:          c.pool,
		ServerName:       ServerName,
		VerifyConnection: c.verifyPeer(RoleStandby),
	}
}

// PeerName is the common name of the peer's verified certificate, for logs, or ""
// when the peer presented none that was verified.
func PeerName(cs tls.ConnectionState) string {
	if len(cs.VerifiedChains) == 0 || len(cs.VerifiedChains[0]) == 0 {
		return ""
	}
	return cs.VerifiedChains[0][0].Subject.CommonName
}

func readPEM(path, blockType string) ([]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", filepath.Base(path), err)
	}
	block, rest := pem.Decode(data)
	if block == nil || block.Type != blockType {
		return nil, fmt.Errorf("%w: %q holds no PEM %q block", ErrInvalid, path, blockType)
	}
	if more, _ := pem.Decode(rest); more != nil {
		return nil, fmt.Errorf("%w: %q holds more than one PEM block", ErrInvalid, path)
	}
	return block.Bytes, nil
}

func readCert(path string) (*x509.Certificate, error) {
	der, err := readPEM(path, "CERTIFICATE")
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("%w: %q: %w", ErrInvalid, path, err)
	}
	return cert, nil
}

func readKey(path string) (crypto.Signer, error) {
	der, err := readPEM(path, "PRIVATE KEY")
	if err != nil {
		return nil, err
	}
	key, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		return nil, fmt.Errorf("%w: %q: %w", ErrInvalid, path, err)
	}
	ec, ok := key.(*ecdsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("%w: %q: %T, want an ECDSA key", ErrInvalid, path, key)
	}
	return ec, nil
}
