package auth

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/ftrun/ftrun/transport/svcname"
)

// Roles a certificate may carry. A standby receives programs' memory and runs them,
// so only a certificate with RoleStandby may be one; a primary ships a program, so
// only a certificate with RolePrimary may, and only for the services it names.
const (
	RolePrimary = "primary"
	RoleStandby = "standby"
)

// AnyService in a certificate's services lets it serve every service. It is for a
// deployment of one tenant; the issuer must ask for it by name.
const AnyService = "*"

// uriScheme prefixes the URI SANs that carry roles and services:
// ftrun://role/primary, ftrun://service/redis. URI SANs are standard X.509, shown
// by `openssl x509 -text`, and covered by the CA's signature like the rest.
const uriScheme = "ftrun"

// ErrForbidden means a peer's certificate does not allow what it asked for.
var ErrForbidden = errors.New("certificate does not allow it")

// Identity is what a verified certificate says of its holder.
type Identity struct {
	// Name is the certificate's common name (the host it was issued to).
	Name string
	// Serial is the certificate's serial number in hex, as RevokedFile lists it.
	Serial   string
	Roles    []string
	Services []string
}

// Has reports whether the identity carries role.
func (id Identity) Has(role string) bool { return slices.Contains(id.Roles, role) }

// MayServe reports whether a primary with this identity may ship service.
func (id Identity) MayServe(service string) bool {
	return id.Has(RolePrimary) && (slices.Contains(id.Services, service) || slices.Contains(id.Services, AnyService))
}

// String is the identity for logs.
func (id Identity) String() string {
	return fmt.Sprintf("%q (serial %s, roles %s, services %s)", id.Name, id.Serial, strings.Join(id.Roles, ","), strings.Join(id.Services, ","))
}

// IdentityOf reads the roles and services of cert. Entries it does not know are
// ignored, so that a newer issuer's certificate still works here for what this
// version understands.
func IdentityOf(cert *x509.Certificate) Identity {
	id := Identity{Name: cert.Subject.CommonName, Serial: serialHex(cert.SerialNumber)}
	for _, u := range cert.URIs {
		if u.Scheme != uriScheme {
			continue
		}
		v := strings.TrimPrefix(u.Path, "/")
		switch u.Host {
		case "role":
			if (v == RolePrimary || v == RoleStandby) && !id.Has(v) {
				id.Roles = append(id.Roles, v)
			}
		case "service":
			if (v == AnyService || svcname.Check(v) == nil) && !slices.Contains(id.Services, v) {
				id.Services = append(id.Services, v)
			}
		}
	}
	return id
}

// PeerIdentity is the identity of the peer's verified certificate (zero when the
// peer presented none that was verified).
func PeerIdentity(cs tls.ConnectionState) Identity {
	if len(cs.VerifiedChains) == 0 || len(cs.VerifiedChains[0]) == 0 {
		return Identity{}
	}
	return IdentityOf(cs.VerifiedChains[0][0])
}

// identityURIs encodes roles and services for a certificate.
func identityURIs(roles, services []string) ([]*url.URL, error) {
	var out []*url.URL
	for _, r := range roles {
		if r != RolePrimary && r != RoleStandby {
			return nil, fmt.Errorf("role %q: want %q or %q", r, RolePrimary, RoleStandby)
		}
		out = append(out, &url.URL{Scheme: uriScheme, Host: "role", Path: "/" + r})
	}
	for _, s := range services {
		if s != AnyService {
			if err := svcname.Check(s); err != nil {
				return nil, err
			}
		}
		out = append(out, &url.URL{Scheme: uriScheme, Host: "service", Path: "/" + s})
	}
	if len(services) > 0 && !slices.Contains(roles, RolePrimary) {
		return nil, fmt.Errorf("services %q need the %q role", services, RolePrimary)
	}
	if slices.Contains(roles, RolePrimary) && len(services) == 0 {
		return nil, fmt.Errorf("the %q role needs at least one service (--service NAME)", RolePrimary)
	}
	if len(roles) == 0 {
		return nil, fmt.Errorf("no role: a certificate needs %q, %q or both (--role)", RolePrimary, RoleStandby)
	}
	return out, nil
}

func serialHex(n *big.Int) string {
	if n == nil {
		return ""
	}
	return strings.ToLower(n.Text(16))
}

// RevokedFile, in a credentials directory, lists revoked certificate serials (hex,
// as `ftrun keygen show` and logs print them), one a line, '#' starting a comment.
// Both ends read it at every handshake (again only when it changed), so revoking a
// certificate takes adding a line on the hosts that would talk to its holder.
const RevokedFile = "revoked"

// revocations caches the revoked serials of one file, reread when it changes.
type revocations struct {
	path string

	mu      sync.Mutex
	modTime time.Time
	size    int64
	serials map[string]bool
	err     error
}

// revoked reports whether serial is listed. A file that cannot be read (other than
// a missing one) revokes everything: it fails closed, and says why.
func (r *revocations) revoked(serial string) (bool, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	fi, err := os.Stat(r.path)
	if errors.Is(err, os.ErrNotExist) {
		r.serials, r.err, r.modTime, r.size = nil, nil, time.Time{}, 0
		return false, nil
	}
	if err != nil {
		return true, fmt.Errorf("revocation list %q: %w", r.path, err)
	}
	if !fi.ModTime().Equal(r.modTime) || fi.Size() != r.size || (r.serials == nil && r.err == nil) {
		r.modTime, r.size = fi.ModTime(), fi.Size()
		r.serials, r.err = readRevoked(r.path)
	}
	if r.err != nil {
		return true, r.err
	}
	return r.serials[serial], nil
}

func readRevoked(path string) (map[string]bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("revocation list %q: %w", path, err)
	}
	defer f.Close()
	out := map[string]bool{}
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line, _, _ := strings.Cut(sc.Text(), "#")
		line = strings.ToLower(strings.TrimSpace(strings.ReplaceAll(line, ":", "")))
		if line == "" {
			continue
		}
		v, ok := new(big.Int).SetString(line, 16)
		if !ok {
			return nil, fmt.Errorf("revocation list %q line %d: %q is not a hex serial", path, n, line)
		}
		out[serialHex(v)] = true
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("revocation list %q: %w", path, err)
	}
	return out, nil
}

// verifyPeer is the check both ends run on the peer's verified certificate: not
// revoked, and holding role.
func (c *Config) verifyPeer(role string) func(tls.ConnectionState) error {
	return func(cs tls.ConnectionState) error {
		id := PeerIdentity(cs)
		if id.Name == "" && id.Serial == "" {
			return fmt.Errorf("%w: no verified peer certificate", ErrForbidden)
		}
		if bad, err := c.revoked.revoked(id.Serial); bad {
			if err != nil {
				return fmt.Errorf("%w: %w", ErrForbidden, err)
			}
			return fmt.Errorf("%w: certificate %s is revoked (listed in %q)", ErrForbidden, id, c.revoked.path)
		}
		if !id.Has(role) {
			return fmt.Errorf("%w: certificate %s lacks the %q role (issue it with `ftrun keygen issue --role %s`)", ErrForbidden, id, role, role)
		}
		return nil
	}
}
