package auth

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Files of a credentials directory. The CA key is only needed to issue node
// certificates; a host that never runs keygen does not need a copy of it.
const (
	CACertFile   = "ca.crt"
	CAKeyFile    = "ca.key"
	NodeCertFile = "node.crt"
	NodeKeyFile  = "node.key"
)

// ServerName is the DNS name every node certificate carries and every client
// verifies. Nodes are identified by holding a certificate from the deployment's CA,
// not by host name, so a standby can be reached by any address (a failover moves them).
const ServerName = "ftrun"

// DefaultNodeName is the common name of a node certificate when none is given.
const DefaultNodeName = "ftrun-node"

// validity of the CA and of node certificates. Long, because an expired certificate
// on a standby is an outage that arrives years after anyone remembers this setup;
// revocation in a private CA is done by replacing the CA.
const validity = 10 * 365 * 24 * time.Hour

// ErrExists means Keygen would overwrite a node certificate without being told to.
var ErrExists = errors.New("node certificate already exists")

// ErrInvalid means a credentials file is present but unusable.
var ErrInvalid = errors.New("invalid credentials file")

// KeygenOptions controls Keygen.
type KeygenOptions struct {
	// Name is the node certificate's common name and an extra DNS name in it, so
	// logs (PeerName) tell nodes apart. Default DefaultNodeName.
	Name string
	// Force reissues node.crt and node.key when they exist already.
	Force bool
}

// Keygen fills dir with the credentials of one node. If dir already holds a CA
// (ca.crt and ca.key) it is reused, so that the credentials of several hosts come
// from one CA: run Keygen once, copy ca.crt and ca.key to the next host's directory,
// run Keygen there. Private keys are written 0600 into a directory created 0700.
// Files are written atomically, keys before certificates, so an interrupted Keygen
// never leaves a certificate without its key.
func Keygen(dir string, opts KeygenOptions) error {
	name := opts.Name
	if name == "" {
		name = DefaultNodeName
	}
	if err := checkDNSName(name); err != nil {
		return fmt.Errorf("auth: keygen: node name %q: %w", name, err)
	}
	if err := makeDir(dir); err != nil {
		return fmt.Errorf("auth: keygen: %w", err)
	}
	nodeCrt := filepath.Join(dir, NodeCertFile)
	if _, err := os.Stat(nodeCrt); err == nil && !opts.Force {
		return fmt.Errorf("auth: keygen: %w: %q; refusing to overwrite it without force (ftrun keygen --force)", ErrExists, nodeCrt)
	} else if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("auth: keygen: %w", err)
	}

	ca, caKey, err := loadOrCreateCA(dir)
	if err != nil {
		return fmt.Errorf("auth: keygen: %w", err)
	}

	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("auth: keygen: node key: %w", err)
	}
	now := time.Now()
	notAfter := now.Add(validity)
	// A certificate cannot usefully outlive the CA that vouches for it.
	if notAfter.After(ca.NotAfter) {
		notAfter = ca.NotAfter
	}
	dnsNames := []string{ServerName}
	if name != ServerName {
		dnsNames = append(dnsNames, name)
	}
	tmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: name},
		DNSNames:              dnsNames,
		NotBefore:             now.Add(-time.Hour), // tolerate clocks a little behind
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}
	der, err := issue(tmpl, ca, key.Public(), caKey)
	if err != nil {
		return fmt.Errorf("auth: keygen: node certificate: %w", err)
	}
	if err := writeKey(filepath.Join(dir, NodeKeyFile), key); err != nil {
		return fmt.Errorf("auth: keygen: %w", err)
	}
	if err := writeCert(nodeCrt, der); err != nil {
		return fmt.Errorf("auth: keygen: %w", err)
	}
	return nil
}

// makeDir creates dir 0700. An existing directory is left as the operator made it.
func makeDir(dir string) error {
	if _, err := os.Stat(dir); err == nil {
		return nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	// MkdirAll's mode is filtered by the umask; the directory must not be looser.
	return os.Chmod(dir, 0o700)
}

func loadOrCreateCA(dir string) (*x509.Certificate, crypto.Signer, error) {
	crtPath, keyPath := filepath.Join(dir, CACertFile), filepath.Join(dir, CAKeyFile)
	haveCrt, err := exists(crtPath)
	if err != nil {
		return nil, nil, err
	}
	haveKey, err := exists(keyPath)
	if err != nil {
		return nil, nil, err
	}
	switch {
	case haveCrt && haveKey:
		return loadCA(crtPath, keyPath)
	case haveCrt:
		return nil, nil, fmt.Errorf("%q exists but %q does not: copy the CA key next to its certificate to issue node certificates", crtPath, keyPath)
	case haveKey:
		return nil, nil, fmt.Errorf("%q exists but %q does not: copy the CA certificate next to its key", keyPath, crtPath)
	}

	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("CA key: %w", err)
	}
	// Every deployment's CA gets its own name, so a TLS error naming the CA a
	// certificate was checked against tells which deployment's CA it was.
	var id [4]byte
	if _, err := rand.Read(id[:]); err != nil {
		return nil, nil, fmt.Errorf("CA name: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: fmt.Sprintf("ftrun CA %x", id)},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		// Only node certificates below it: a stolen node key cannot mint more nodes.
		MaxPathLenZero: true,
	}
	der, err := issue(tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, nil, fmt.Errorf("CA certificate: %w", err)
	}
	ca, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, fmt.Errorf("CA certificate: %w", err)
	}
	if err := writeKey(keyPath, key); err != nil {
		return nil, nil, err
	}
	if err := writeCert(crtPath, der); err != nil {
		return nil, nil, err
	}
	return ca, key, nil
}

func loadCA(crtPath, keyPath string) (*x509.Certificate, crypto.Signer, error) {
	ca, err := readCert(crtPath)
	if err != nil {
		return nil, nil, err
	}
	if !ca.IsCA {
		return nil, nil, fmt.Errorf("%w: %q is not a CA certificate", ErrInvalid, crtPath)
	}
	key, err := readKey(keyPath)
	if err != nil {
		return nil, nil, err
	}
	if pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool }); !ok || !pub.Equal(ca.PublicKey) {
		return nil, nil, fmt.Errorf("%w: %q is not the key of %q", ErrInvalid, keyPath, crtPath)
	}
	return ca, key, nil
}

func exists(path string) (bool, error) {
	_, err := os.Stat(path)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, fs.ErrNotExist):
		return false, nil
	}
	return false, err
}

func issue(tmpl, parent *x509.Certificate, pub crypto.PublicKey, signer crypto.Signer) ([]byte, error) {
	// 128 random bits: serials must be unique per CA and hosts issue independently.
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, err
	}
	tmpl.SerialNumber = serial
	return x509.CreateCertificate(rand.Reader, tmpl, parent, pub, signer)
}

func writeKey(path string, key *ecdsa.PrivateKey) error {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("encode %q: %w", path, err)
	}
	return writeFileAtomic(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600)
}

func writeCert(path string, der []byte) error {
	return writeFileAtomic(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
}

// writeFileAtomic replaces path with data so that readers see the old file or the
// new one, never a torn one, and a key never exists with looser permissions even
// for a moment (the temporary file is created 0600).
func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("write %q: %w", path, err)
	}
	tmp := f.Name()
	defer os.Remove(tmp) // no-op once renamed
	err = f.Chmod(perm)
	if err == nil {
		_, err = f.Write(data)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		return fmt.Errorf("write %q: %w", path, err)
	}
	if d, err := os.Open(dir); err == nil {
		// Make the rename itself durable; failure here only risks losing a fresh file.
		_ = d.Sync()
		_ = d.Close()
	}
	return nil
}

// checkDNSName accepts what may go into a certificate's DNS names: dot-separated
// labels of letters, digits and inner hyphens.
func checkDNSName(name string) error {
	if len(name) > 253 {
		return errors.New("longer than 253 characters")
	}
	for _, label := range strings.Split(name, ".") {
		if label == "" || len(label) > 63 {
			return fmt.Errorf("label %q must be 1 to 63 characters", label)
		}
		if label[0] == '-' || label[len(label)-1] == '-' {
			return fmt.Errorf("label %q starts or ends with '-'", label)
		}
		for _, c := range label {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
				return fmt.Errorf("label %q has character %q (use letters, digits, '-')", label, c)
			}
		}
	}
	return nil
}
