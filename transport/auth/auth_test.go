package auth

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

func keygen(t *testing.T, dir string, opts KeygenOptions) {
	t.Helper()
	if err := Keygen(dir, opts); err != nil {
		t.Fatalf("Keygen(%q): %v", dir, err)
	}
}

func load(t *testing.T, dir string) *Config {
	t.Helper()
	c, err := LoadConfig(dir)
	if err != nil {
		t.Fatalf("LoadConfig(%q): %v", dir, err)
	}
	return c
}

func mustCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	c, err := readCert(path)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func mode(t *testing.T, path string) fs.FileMode {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode().Perm()
}

// copyCA gives dst the CA of src, the way an operator sets up a second host.
func copyCA(t *testing.T, src, dst string) {
	t.Helper()
	if err := os.MkdirAll(dst, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{CACertFile, CAKeyFile} {
		b, err := os.ReadFile(filepath.Join(src, f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, f), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

func TestKeygen(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "a", "creds")
	keygen(t, dir, KeygenOptions{Roles: both, Services: anySvc})

	if m := mode(t, dir); m != 0o700 {
		t.Errorf("dir mode %o, want 700", m)
	}
	for _, f := range []string{CAKeyFile, NodeKeyFile} {
		if m := mode(t, filepath.Join(dir, f)); m != 0o600 {
			t.Errorf("%s mode %o, want 600", f, m)
		}
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 4 {
		t.Errorf("dir holds %d entries, want 4 (no temporary files left)", len(ents))
	}

	ca := mustCert(t, filepath.Join(dir, CACertFile))
	node := mustCert(t, filepath.Join(dir, NodeCertFile))
	year := 365 * 24 * time.Hour
	if !ca.IsCA || ca.NotAfter.Sub(ca.NotBefore) < 10*year {
		t.Errorf("CA: IsCA %v, valid %v", ca.IsCA, ca.NotAfter.Sub(ca.NotBefore))
	}
	if node.Subject.CommonName != DefaultNodeName {
		t.Errorf("node CN %q", node.Subject.CommonName)
	}
	if !slices.Contains(node.DNSNames, ServerName) {
		t.Errorf("node DNS names %q lack %q", node.DNSNames, ServerName)
	}
	if !slices.Equal(node.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}) {
		t.Errorf("node ext key usage %v", node.ExtKeyUsage)
	}
	if node.NotAfter.Sub(node.NotBefore) < 10*year-2*time.Hour || node.IsCA {
		t.Errorf("node: IsCA %v, valid %v", node.IsCA, node.NotAfter.Sub(node.NotBefore))
	}
	for _, c := range []*x509.Certificate{ca, node} {
		if pub, ok := c.PublicKey.(*ecdsa.PublicKey); !ok || pub.Curve != elliptic.P256() {
			t.Errorf("%s key is %T, want ECDSA P-256", c.Subject.CommonName, c.PublicKey)
		}
	}
	if err := node.CheckSignatureFrom(ca); err != nil {
		t.Errorf("node certificate not signed by the CA: %v", err)
	}
	if c := load(t, dir); c.Name() != DefaultNodeName {
		t.Errorf("Config.Name() = %q", c.Name())
	}
}

func TestKeygenReusesCA(t *testing.T) {
	root := t.TempDir()
	a, b := filepath.Join(root, "a"), filepath.Join(root, "b")
	keygen(t, a, KeygenOptions{Roles: both, Services: anySvc, Name: "node-a"})
	caBefore, _ := os.ReadFile(filepath.Join(a, CACertFile))

	// Same directory: the node certificate is protected, the CA kept.
	err := Keygen(a, KeygenOptions{Roles: both, Services: anySvc, Name: "node-a"})
	if !errors.Is(err, ErrExists) || !strings.Contains(err.Error(), NodeCertFile) || !strings.Contains(err.Error(), "force") {
		t.Fatalf("second Keygen: %v, want ErrExists naming the file and force", err)
	}
	nodeBefore, _ := os.ReadFile(filepath.Join(a, NodeCertFile))
	keygen(t, a, KeygenOptions{Roles: both, Services: anySvc, Name: "node-a2", Force: true})
	caAfter, _ := os.ReadFile(filepath.Join(a, CACertFile))
	nodeAfter, _ := os.ReadFile(filepath.Join(a, NodeCertFile))
	if !bytes.Equal(caBefore, caAfter) {
		t.Fatal("forced Keygen replaced the CA")
	}
	if bytes.Equal(nodeBefore, nodeAfter) {
		t.Fatal("forced Keygen kept the old node certificate")
	}

	// Another host: copy the CA, issue there, verify against the first directory's CA.
	copyCA(t, a, b)
	keygen(t, b, KeygenOptions{Roles: both, Services: anySvc, Name: "node-b"})
	nodeB := mustCert(t, filepath.Join(b, NodeCertFile))
	pool := x509.NewCertPool()
	pool.AddCert(mustCert(t, filepath.Join(a, CACertFile)))
	if _, err := nodeB.Verify(x509.VerifyOptions{Roots: pool, DNSName: ServerName, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Fatalf("node-b does not verify against a's CA: %v", err)
	}
	if !slices.Contains(nodeB.DNSNames, "node-b") {
		t.Fatalf("DNS names %q lack the node name", nodeB.DNSNames)
	}
	load(t, b)
}

func TestKeygenRefuses(t *testing.T) {
	root := t.TempDir()
	src := filepath.Join(root, "src")
	keygen(t, src, KeygenOptions{Roles: both, Services: anySvc})

	onlyCrt := filepath.Join(root, "only-crt")
	copyCA(t, src, onlyCrt)
	os.Remove(filepath.Join(onlyCrt, CAKeyFile))
	onlyKey := filepath.Join(root, "only-key")
	copyCA(t, src, onlyKey)
	os.Remove(filepath.Join(onlyKey, CACertFile))
	badKey := filepath.Join(root, "bad-key")
	copyCA(t, src, badKey)
	if err := os.WriteFile(filepath.Join(badKey, CAKeyFile), []byte("junk"), 0o600); err != nil {
		t.Fatal(err)
	}
	otherKey := filepath.Join(root, "other-key")
	copyCA(t, src, otherKey)
	keygen(t, filepath.Join(root, "other"), KeygenOptions{Roles: both, Services: anySvc})
	k, _ := os.ReadFile(filepath.Join(root, "other", CAKeyFile))
	if err := os.WriteFile(filepath.Join(otherKey, CAKeyFile), k, 0o600); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name string
		dir  string
		opts KeygenOptions
		want string
	}{
		{"CA cert without key", onlyCrt, KeygenOptions{Roles: both, Services: anySvc}, CAKeyFile},
		{"CA key without cert", onlyKey, KeygenOptions{Roles: both, Services: anySvc}, CACertFile},
		{"garbage CA key", badKey, KeygenOptions{Roles: both, Services: anySvc}, CAKeyFile},
		{"CA key of another CA", otherKey, KeygenOptions{Roles: both, Services: anySvc}, "is not the key of"},
		{"bad name", filepath.Join(root, "n"), KeygenOptions{Roles: both, Services: anySvc, Name: "has space"}, "has character"},
		{"bad name label", filepath.Join(root, "n"), KeygenOptions{Roles: both, Services: anySvc, Name: "a..b"}, "label"},
		{"bad name hyphen", filepath.Join(root, "n"), KeygenOptions{Roles: both, Services: anySvc, Name: "-a"}, "'-'"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := Keygen(tt.dir, tt.opts)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Keygen = %v, want an error mentioning %q", err, tt.want)
			}
			if _, err := os.Stat(filepath.Join(tt.dir, NodeCertFile)); err == nil {
				t.Fatal("a node certificate was written anyway")
			}
		})
	}
}

// handshake connects client to server over a real loopback TCP connection and sends
// a message each way, returning each side's first error.
func handshake(t *testing.T, server, client *tls.Config) (serverState, clientState tls.ConnectionState, serverErr, clientErr error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	deadline := time.Now().Add(10 * time.Second)

	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		raw, err := ln.Accept()
		if err != nil {
			serverErr = err
			return
		}
		c := tls.Server(raw, server)
		defer c.Close()
		_ = c.SetDeadline(deadline)
		serverErr = talk(c, "from standby", "from primary", false)
		serverState = c.ConnectionState()
	}()

	raw, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c := tls.Client(raw, client)
	_ = c.SetDeadline(deadline)
	clientErr = talk(c, "from primary", "from standby", true)
	clientState = c.ConnectionState()
	c.Close()
	wg.Wait()
	return serverState, clientState, serverErr, clientErr
}

func talk(c *tls.Conn, send, expect string, sendFirst bool) error {
	if err := c.Handshake(); err != nil {
		return err
	}
	write := func() error { _, err := io.WriteString(c, send); return err }
	read := func() error {
		buf := make([]byte, len(expect))
		if _, err := io.ReadFull(c, buf); err != nil {
			return err
		}
		if string(buf) != expect {
			return errors.New("got " + string(buf))
		}
		return nil
	}
	steps := []func() error{read, write}
	if sendFirst {
		steps = []func() error{write, read}
	}
	for _, s := range steps {
		if err := s(); err != nil {
			return err
		}
	}
	return nil
}

// remoteAlert reports whether err is a TLS alert received from the peer naming want.
func remoteAlert(err error, want string) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "remote error" && strings.Contains(op.Err.Error(), want)
}

func TestHandshake(t *testing.T) {
	root := t.TempDir()
	a, b, other := filepath.Join(root, "a"), filepath.Join(root, "b"), filepath.Join(root, "other")
	keygen(t, a, KeygenOptions{Roles: both, Services: anySvc, Name: "standby-1"})
	copyCA(t, a, b)
	keygen(t, b, KeygenOptions{Roles: both, Services: anySvc, Name: "primary-1"})
	keygen(t, other, KeygenOptions{Roles: both, Services: anySvc, Name: "intruder"}) // its own CA
	ca, cb, co := load(t, a), load(t, b), load(t, other)

	t.Run("same CA", func(t *testing.T) {
		ss, cs, serr, cerr := handshake(t, ca.Server(), cb.Client())
		if serr != nil || cerr != nil {
			t.Fatalf("server: %v; client: %v", serr, cerr)
		}
		if ss.Version != tls.VersionTLS13 || cs.Version != tls.VersionTLS13 {
			t.Fatalf("versions %x/%x, want TLS 1.3", ss.Version, cs.Version)
		}
		if got := PeerName(ss); got != "primary-1" {
			t.Errorf("server sees peer %q", got)
		}
		if got := PeerName(cs); got != "standby-1" {
			t.Errorf("client sees peer %q", got)
		}
	})

	t.Run("client from another CA", func(t *testing.T) {
		// The intruder trusts the real CA (its certificate is no secret), so it
		// accepts the server; only its own certificate gives it away.
		client := co.Client()
		client.RootCAs = cb.Client().RootCAs
		// crypto/tls would hold back a certificate the server's CA list does not
		// cover; an attacker would not.
		foreign := client.Certificates[0]
		client.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &foreign, nil }
		_, _, serr, cerr := handshake(t, ca.Server(), client)
		var unknown x509.UnknownAuthorityError
		if !errors.As(serr, &unknown) {
			t.Errorf("server: %v, want x509.UnknownAuthorityError", serr)
		}
		// In TLS 1.3 the client's handshake completes before the server has checked
		// its certificate; it learns of the refusal from the server's alert.
		if !remoteAlert(cerr, "unknown certificate authority") {
			t.Errorf("client: %v, want the server's unknown-CA alert", cerr)
		}
	})

	t.Run("client and CA both foreign", func(t *testing.T) {
		_, _, serr, cerr := handshake(t, ca.Server(), co.Client())
		var unknown x509.UnknownAuthorityError
		if !errors.As(cerr, &unknown) {
			t.Errorf("client: %v, want x509.UnknownAuthorityError", cerr)
		}
		if !remoteAlert(serr, "bad certificate") {
			t.Errorf("server: %v, want the client's bad-certificate alert", serr)
		}
	})

	t.Run("server from another CA", func(t *testing.T) {
		server := co.Server()
		server.ClientCAs = ca.Server().ClientCAs // accepts genuine clients, but is not genuine
		_, _, serr, cerr := handshake(t, server, cb.Client())
		var unknown x509.UnknownAuthorityError
		if !errors.As(cerr, &unknown) {
			t.Errorf("client: %v, want x509.UnknownAuthorityError", cerr)
		}
		if !remoteAlert(serr, "bad certificate") {
			t.Errorf("server: %v, want the client's bad-certificate alert", serr)
		}
	})

	t.Run("client without certificate", func(t *testing.T) {
		client := cb.Client()
		client.Certificates = nil
		_, _, serr, cerr := handshake(t, ca.Server(), client)
		if serr == nil || !strings.Contains(serr.Error(), "didn't provide a certificate") {
			t.Errorf("server: %v, want a missing client certificate error", serr)
		}
		if !remoteAlert(cerr, "certificate required") {
			t.Errorf("client: %v, want the server's certificate-required alert", cerr)
		}
	})

	t.Run("TLS 1.2 client", func(t *testing.T) {
		client := cb.Client()
		client.MinVersion, client.MaxVersion = tls.VersionTLS12, tls.VersionTLS12
		_, _, serr, cerr := handshake(t, ca.Server(), client)
		if serr == nil || !strings.Contains(serr.Error(), "unsupported versions") {
			t.Errorf("server: %v, want an unsupported versions error", serr)
		}
		if !remoteAlert(cerr, "protocol version") {
			t.Errorf("client: %v, want the server's protocol-version alert", cerr)
		}
	})

	t.Run("settings", func(t *testing.T) {
		s, c := ca.Server(), ca.Client()
		if s.MinVersion != tls.VersionTLS13 || s.ClientAuth != tls.RequireAndVerifyClientCert || s.ClientCAs == nil {
			t.Errorf("server config %+v", s)
		}
		if c.MinVersion != tls.VersionTLS13 || c.ServerName != ServerName || c.RootCAs == nil || len(c.Certificates) != 1 || c.InsecureSkipVerify {
			t.Errorf("client config %+v", c)
		}
		if s == ca.Server() {
			t.Error("Server() shares its tls.Config between calls")
		}
	})
}

func TestPeerNameUnverified(t *testing.T) {
	if got := PeerName(tls.ConnectionState{}); got != "" {
		t.Fatalf("PeerName of no peer = %q", got)
	}
}

func TestLoadConfigErrors(t *testing.T) {
	root := t.TempDir()
	good := filepath.Join(root, "good")
	keygen(t, good, KeygenOptions{Roles: both, Services: anySvc})
	other := filepath.Join(root, "other")
	keygen(t, other, KeygenOptions{Roles: both, Services: anySvc})

	// variant copies the good directory and changes one file.
	variant := func(name string, change func(dir string)) string {
		dir := filepath.Join(root, name)
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		for _, f := range []string{CACertFile, NodeCertFile, NodeKeyFile} {
			b, _ := os.ReadFile(filepath.Join(good, f))
			if err := os.WriteFile(filepath.Join(dir, f), b, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		change(dir)
		return dir
	}
	write := func(f string, data []byte) func(string) {
		return func(dir string) {
			if err := os.WriteFile(filepath.Join(dir, f), data, 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	remove := func(f string) func(string) {
		return func(dir string) { os.Remove(filepath.Join(dir, f)) }
	}
	from := func(src, f string) func(string) {
		return func(dir string) {
			b, _ := os.ReadFile(filepath.Join(src, f))
			write(f, b)(dir)
		}
	}
	nodeCrt, _ := os.ReadFile(filepath.Join(good, NodeCertFile))
	nodeKey, _ := os.ReadFile(filepath.Join(good, NodeKeyFile))

	tests := []struct {
		name     string
		dir      string
		file     string
		notExist bool
	}{
		{"no directory", filepath.Join(root, "absent"), CACertFile, true},
		{"no ca.crt", variant("no-ca", remove(CACertFile)), CACertFile, true},
		{"no node.crt", variant("no-crt", remove(NodeCertFile)), NodeCertFile, true},
		{"no node.key", variant("no-key", remove(NodeKeyFile)), NodeKeyFile, true},
		{"garbage ca.crt", variant("junk-ca", write(CACertFile, []byte("not a certificate"))), CACertFile, false},
		{"garbage node.crt", variant("junk-crt", write(NodeCertFile, []byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"))), NodeCertFile, false},
		{"garbage node.key", variant("junk-key", write(NodeKeyFile, []byte{0, 1, 2})), NodeKeyFile, false},
		{"key in the cert file", variant("swapped", write(NodeCertFile, nodeKey)), NodeCertFile, false},
		{"two certs in ca.crt", variant("two", write(CACertFile, append(nodeCrt, nodeCrt...))), CACertFile, false},
		{"node cert as CA", variant("leaf-ca", write(CACertFile, nodeCrt)), CACertFile, false},
		{"key of another node", variant("other-key", from(other, NodeKeyFile)), NodeKeyFile, false},
		{"node cert of another CA", variant("other-crt", func(dir string) {
			from(other, NodeCertFile)(dir)
			from(other, NodeKeyFile)(dir)
		}), NodeCertFile, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := LoadConfig(tt.dir)
			if err == nil {
				t.Fatal("LoadConfig succeeded")
			}
			msg := err.Error()
			if !strings.Contains(msg, tt.file) || !strings.Contains(msg, "ftrun keygen") {
				t.Fatalf("error %q does not name %s and the fix", msg, tt.file)
			}
			if tt.notExist != errors.Is(err, fs.ErrNotExist) || !tt.notExist != errors.Is(err, ErrInvalid) {
				t.Fatalf("error %q: ErrNotExist %v, ErrInvalid %v", msg, errors.Is(err, fs.ErrNotExist), errors.Is(err, ErrInvalid))
			}
		})
	}
}

// both roles and any service: a credentials directory shared by both ends of a test.
var (
	both   = []string{RolePrimary, RoleStandby}
	anySvc = []string{AnyService}
)
