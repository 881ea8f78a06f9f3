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
	"slices"
	"strings"
	"time"
)

// Files of a credentials directory. The CA key is only needed to issue node
// certificates and stays on the one host that does (`ftrun keygen ca`, `issue`).
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
// on a standby is an outage that arrives years after anyone remembers this setup; a
// certificate that must stop working early is listed in RevokedFile.
const validity = 10 * 365 * 24 * time.Hour

// NodeCSRFile is a host's certificate request (`ftrun keygen request`), signed on
// the CA's host.
const NodeCSRFile = "node.csr"

// ErrExists means a keygen step would overwrite a key or certificate without being
// told to.
var ErrExists = errors.New("already exists")

// ErrInvalid means a credentials file is present but unusable.
var ErrInvalid = errors.New("invalid credentials file")

// KeygenOptions controls Keygen.
type KeygenOptions struct {
	// Name is the node certificate's common name and an extra DNS name in it, so
	// logs (PeerName) tell nodes apart. Default DefaultNodeName.
	Name string
	// Roles and Services go into the certificate (see IssueOptions).
	Roles, Services []string
	// Force reissues node.crt and node.key when they exist already.
	Force bool
}

// IssueOptions says what a certificate allows its holder.
type IssueOptions struct {
	// Roles: RolePrimary, RoleStandby or both.
	Roles []string
	// Services a primary may ship (AnyService for all); required with RolePrimary.
	Services []string
	// Force overwrites the output certificate.
	Force bool
}

// InitCA makes the deployment's CA in dir: ca.crt (public, copied to every host) and
// ca.key, which never leaves dir: certificates are issued there (Issue) from the
// requests hosts make (Request).
func InitCA(dir string) error {
	if err := makeDir(dir); err != nil {
		return fmt.Errorf("auth: keygen ca: %w", err)
	}
	for _, f := range []string{CACertFile, CAKeyFile} {
		if ok, err := exists(filepath.Join(dir, f)); err != nil || ok {
			if err == nil {
				err = fmt.Errorf("%w: %q; a CA is made once (its key signs every host's certificate)", ErrExists, filepath.Join(dir, f))
			}
			return fmt.Errorf("auth: keygen ca: %w", err)
		}
	}
	if _, _, err := loadOrCreateCA(dir); err != nil {
		return fmt.Errorf("auth: keygen ca: %w", err)
	}
	return nil
}

// Request makes this host's key (node.key, 0600, never leaving dir) and a
// certificate request for it (node.csr) under name, to be carried to the CA's host
// and signed there with Issue. It refuses to replace a key without force.
func Request(dir, name string, force bool) (string, error) {
	if name == "" {
		name = DefaultNodeName
	}
	if err := checkDNSName(name); err != nil {
		return "", fmt.Errorf("auth: keygen request: node name %q: %w", name, err)
	}
	if err := makeDir(dir); err != nil {
		return "", fmt.Errorf("auth: keygen request: %w", err)
	}
	keyPath := filepath.Join(dir, NodeKeyFile)
	if ok, err := exists(keyPath); err != nil {
		return "", fmt.Errorf("auth: keygen request: %w", err)
	} else if ok && !force {
		return "", fmt.Errorf("auth: keygen request: %w: %q; refusing to replace this host's key without --force", ErrExists, keyPath)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", fmt.Errorf("auth: keygen request: %w", err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: name}}, key)
	if err != nil {
		return "", fmt.Errorf("auth: keygen request: %w", err)
	}
	if err := writeKey(keyPath, key); err != nil {
		return "", fmt.Errorf("auth: keygen request: %w", err)
	}
	csrPath := filepath.Join(dir, NodeCSRFile)
	if err := writeFileAtomic(csrPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), 0o644); err != nil {
		return "", fmt.Errorf("auth: keygen request: %w", err)
	}
	return csrPath, nil
}

// Issue signs the request at csrPath with the CA in caDir and writes the certificate
// to outPath. What the certificate allows comes from opts, decided on the CA's host,
// never from the request: a host cannot ask itself into a role.
func Issue(caDir, csrPath, outPath string, opts IssueOptions) (Identity, error) {
	fail := func(err error) (Identity, error) { return Identity{}, fmt.Errorf("auth: keygen issue: %w", err) }
	der, err := readPEM(csrPath, "CERTIFICATE REQUEST")
	if err != nil {
		return fail(err)
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return fail(fmt.Errorf("%w: %q: %w", ErrInvalid, csrPath, err))
	}
	if err := csr.CheckSignature(); err != nil {
		return fail(fmt.Errorf("%w: %q is not signed by its own key: %w", ErrInvalid, csrPath, err))
	}
	if err := checkDNSName(csr.Subject.CommonName); err != nil {
		return fail(fmt.Errorf("%q names %q: %w", csrPath, csr.Subject.CommonName, err))
	}
	if ok, err := exists(outPath); err != nil {
		return fail(err)
	} else if ok && !opts.Force {
		return fail(fmt.Errorf("%w: %q; refusing to overwrite it without --force", ErrExists, outPath))
	}
	ca, caKey, err := loadCA(filepath.Join(caDir, CACertFile), filepath.Join(caDir, CAKeyFile))
	if err != nil {
		return fail(err)
	}
	cert, err := signNode(ca, caKey, csr.Subject.CommonName, csr.PublicKey, opts.Roles, opts.Services)
	if err != nil {
		return fail(err)
	}
	if err := writeCert(outPath, cert.Raw); err != nil {
		return fail(err)
	}
	return IdentityOf(cert), nil
}

// Keygen fills dir with the credentials of one node, CA key included: the one-host
// shortcut of InitCA, Request and Issue, for tests and trials. If dir already holds a
// CA it is reused. Private keys are written 0600 into a directory created 0700.
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
	if _, err := identityURIs(opts.Roles, opts.Services); err != nil {
		return fmt.Errorf("auth: keygen: %w", err)
	}
	if err := makeDir(dir); err != nil {
		return fmt.Errorf("auth: keygen: %w", err)
	}
	nodeCrt := filepath.Join(dir, NodeCertFile)
	if _, err := os.Stat(nodeCrt); err == nil && !opts.Force {
		return fmt.Errorf("auth: keygen: %w: %q; refusing to overwrite it without force", ErrExists, nodeCrt)
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
	cert, err := signNode(ca, caKey, name, key.Public(), opts.Roles, opts.Services)
	if err != nil {
		return fmt.Errorf("auth: keygen: node certificate: %w", err)
	}
	if err := writeKey(filepath.Join(dir, NodeKeyFile), key); err != nil {
		return fmt.Errorf("auth: keygen: %w", err)
	}
	if err := writeCert(nodeCrt, cert.Raw); err != nil {
		return fmt.Errorf("auth: keygen: %w", err)
	}
	return nil
}

// signNode issues a node certificate for pub under name with roles and services.
// A standby's certificate may serve TLS, a primary's may dial: a primary's
// certificate cannot even complete a handshake as a server.
func signNode(ca *x509.Certificate, caKey crypto.Signer, name string, pub crypto.PublicKey, roles, services []string) (*x509.Certificate, error) {
	uris, err := identityURIs(roles, services)
	if err != nil {
		return nil, err
	}
	var usages []x509.ExtKeyUsage
	if slices.Contains(roles, RoleStandby) {
		usages = append(usages, x509.ExtKeyUsageServerAuth)
	}
	if slices.Contains(roles, RolePrimary) {
		usages = append(usages, x509.ExtKeyUsageClientAuth)
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
		URIs:                  uris,
		NotBefore:             now.Add(-time.Hour), // tolerate clocks a little behind
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           usages,
		BasicConstraintsValid: true,
	}
	der, err := issue(tmpl, ca, pub, caKey)
	if err != nil {
		return nil, err
	}
	return x509.ParseCertificate(der)
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
