package auth

import (
	"crypto"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// flow runs the request/issue flow: the CA in caDir, a host's key in dir.
func flow(t *testing.T, caDir, dir, name string, opts IssueOptions) *Config {
	t.Helper()
	csr, err := Request(dir, name, false)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Issue(caDir, csr, filepath.Join(dir, NodeCertFile), opts); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(caDir, CACertFile))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, CACertFile), b, 0o644); err != nil {
		t.Fatal(err)
	}
	return load(t, dir)
}

func TestRequestIssueFlow(t *testing.T) {
	root := t.TempDir()
	ca := filepath.Join(root, "ca")
	if err := InitCA(ca); err != nil {
		t.Fatal(err)
	}
	if err := InitCA(ca); !errors.Is(err, ErrExists) {
		t.Fatalf("second InitCA = %v, want ErrExists", err)
	}
	host := filepath.Join(root, "host-a")
	c := flow(t, ca, host, "host-a", IssueOptions{Roles: []string{RolePrimary}, Services: []string{"redis", "web"}})
	id := c.Identity()
	if id.Name != "host-a" || !id.Has(RolePrimary) || id.Has(RoleStandby) || !id.MayServe("redis") || !id.MayServe("web") || id.MayServe("other") {
		t.Fatalf("identity %s", id)
	}
	// The CA key never had to leave the CA's directory.
	if _, err := os.Stat(filepath.Join(host, CAKeyFile)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("host directory holds the CA key: %v", err)
	}
	if m := mode(t, filepath.Join(host, NodeKeyFile)); m != 0o600 {
		t.Errorf("node.key mode %o", m)
	}
	if _, err := Request(host, "host-a", false); !errors.Is(err, ErrExists) {
		t.Fatalf("Request over a key = %v, want ErrExists", err)
	}
	csr := filepath.Join(host, NodeCSRFile)
	for _, tc := range []struct {
		name string
		opts IssueOptions
		want string
	}{
		{"no role", IssueOptions{Services: []string{"x"}}, "role"},
		{"primary without service", IssueOptions{Roles: []string{RolePrimary}}, "at least one service"},
		{"bad service", IssueOptions{Roles: []string{RolePrimary}, Services: []string{"../x"}}, "invalid service name"},
		{"unknown role", IssueOptions{Roles: []string{"root"}}, "role"},
		{"services without primary", IssueOptions{Roles: []string{RoleStandby}, Services: []string{"x"}}, "need the"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out := filepath.Join(root, tc.name+".crt")
			if _, err := Issue(ca, csr, out, tc.opts); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Issue = %v, want %q", err, tc.want)
			}
			if _, err := os.Stat(out); err == nil {
				t.Fatal("a certificate was written anyway")
			}
		})
	}
	if _, err := Issue(host, csr, filepath.Join(root, "x.crt"), IssueOptions{Roles: []string{RoleStandby}}); err == nil {
		t.Fatal("Issue without the CA key succeeded")
	}
}

func TestRolesInHandshake(t *testing.T) {
	root := t.TempDir()
	ca := filepath.Join(root, "ca")
	if err := InitCA(ca); err != nil {
		t.Fatal(err)
	}
	standby := flow(t, ca, filepath.Join(root, "standby"), "standby-1", IssueOptions{Roles: []string{RoleStandby}})
	primary := flow(t, ca, filepath.Join(root, "primary"), "primary-1", IssueOptions{Roles: []string{RolePrimary}, Services: []string{"redis"}})
	other := flow(t, ca, filepath.Join(root, "other"), "primary-2", IssueOptions{Roles: []string{RolePrimary}, Services: []string{"web"}})

	t.Run("primary and standby", func(t *testing.T) {
		ss, _, serr, cerr := handshake(t, standby.Server(), primary.Client())
		if serr != nil || cerr != nil {
			t.Fatalf("server %v, client %v", serr, cerr)
		}
		if id := PeerIdentity(ss); !id.MayServe("redis") || id.MayServe("web") {
			t.Fatalf("standby sees %s", id)
		}
	})
	t.Run("a primary posing as the standby", func(t *testing.T) {
		// Its certificate lacks the standby role (and server use): the real primary
		// refuses to send it anything.
		_, _, _, cerr := handshake(t, other.Server(), primary.Client())
		if cerr == nil {
			t.Fatal("the primary accepted a primary's certificate as its standby")
		}
	})
	t.Run("a standby dialling a standby", func(t *testing.T) {
		_, _, serr, _ := handshake(t, standby.Server(), standby.Client())
		if serr == nil {
			t.Fatal("the standby accepted a standby certificate as a primary")
		}
	})
	t.Run("revoked", func(t *testing.T) {
		serial := primary.Identity().Serial
		rev := filepath.Join(root, "standby", RevokedFile)
		if err := os.WriteFile(rev, []byte("# rotated out\n"+strings.ToUpper(serial)+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		defer os.Remove(rev)
		_, _, serr, _ := handshake(t, standby.Server(), primary.Client())
		if !errors.Is(serr, ErrForbidden) || !strings.Contains(serr.Error(), "revoked") {
			t.Fatalf("server %v, want the revocation named", serr)
		}
		if _, _, serr, cerr := handshake(t, standby.Server(), other.Client()); serr != nil || cerr != nil {
			t.Fatalf("a certificate not revoked: server %v, client %v", serr, cerr)
		}
		if err := os.WriteFile(rev, []byte("not-hex\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, _, serr, _ := handshake(t, standby.Server(), other.Client()); serr == nil || !strings.Contains(serr.Error(), "not a hex serial") {
			t.Fatalf("a broken revocation list: server %v, want it to fail closed", serr)
		}
	})
}

func TestLoadConfigRefusesRolelessCertificate(t *testing.T) {
	dir := t.TempDir()
	ca, key, err := loadOrCreateCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	nodeKey, err := Request(dir, "old", false)
	if err != nil {
		t.Fatal(err)
	}
	_ = nodeKey
	k, err := readKey(filepath.Join(dir, NodeKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	// What an older keygen made: no roles, no services.
	cert, err := signNodeRoleless(ca, key, k.Public())
	if err != nil {
		t.Fatal(err)
	}
	if err := writeCert(filepath.Join(dir, NodeCertFile), cert); err != nil {
		t.Fatal(err)
	}
	_, err = LoadConfig(dir)
	if err == nil || !strings.Contains(err.Error(), "no role") || !strings.Contains(err.Error(), "ftrun keygen issue") {
		t.Fatalf("LoadConfig = %v, want the missing role and the fix", err)
	}
}

func TestIdentityIgnoresForeignURIs(t *testing.T) {
	dir := t.TempDir()
	keygen(t, dir, KeygenOptions{Roles: []string{RolePrimary}, Services: []string{"a", AnyService}})
	id := load(t, dir).Identity()
	if !slices.Equal(id.Services, []string{"a", AnyService}) || !id.MayServe("anything") {
		t.Fatalf("identity %s", id)
	}
}

func signNodeRoleless(ca *x509.Certificate, caKey crypto.Signer, pub crypto.PublicKey) ([]byte, error) {
	tmpl := &x509.Certificate{
		Subject: pkix.Name{CommonName: "old"}, DNSNames: []string{ServerName},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	return issue(tmpl, ca, pub, caKey)
}
